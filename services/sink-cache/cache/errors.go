package cache

import (
	"errors"

	"github.com/jetsync/jetsync/pkg/mapping"
)

var (
	// ErrNotConnected is returned by WriteBatch and LoadCheckpoint before
	// Connect succeeded or after Close. The engine retries it.
	ErrNotConnected = errors.New("redis writer is not connected")

	// ErrConcurrentWriter means the checkpoint key changed between reading it
	// and committing a batch: another instance of the same sink is writing.
	// It is returned wrapped in sink.Permanent, so the sink stops instead of
	// racing the other instance.
	ErrConcurrentWriter = errors.New("another instance of this sink is writing to the same checkpoint key")

	// ErrAuth means Redis refused the credentials (WRONGPASS, NOAUTH) or the
	// user lacks a permission (NOPERM). Returned wrapped in sink.Permanent.
	ErrAuth = errors.New("redis refused the credentials or a permission")

	// ErrBadCheckpoint means the checkpoint key holds something other than a
	// position. Returned wrapped in sink.Permanent: fix or delete the key.
	ErrBadCheckpoint = errors.New("checkpoint key does not hold a position")

	// ErrUnknownType is the per-event failure for an event type without a
	// mapping when unknown_types is "error".
	ErrUnknownType = errors.New("no mapping for event type")

	// ErrNotObject is the per-event failure of hset and merge when the data
	// (or the projection's output) is not a JSON object.
	ErrNotObject = errors.New("not a JSON object")

	// ErrProjection is the per-event failure of a projection that fails at
	// run time or does not produce exactly one value.
	ErrProjection = mapping.ErrProjection

	// ErrPartiallyApplied means Redis committed a batch (and its checkpoint)
	// but refused some of its commands at execution time, e.g. WRONGTYPE when
	// a key holds another data type than the mapping expects. Redis does not
	// roll a transaction back, so with on_error "stop" the sink stops with
	// this error (wrapped in sink.Permanent) after the checkpoint moved; with
	// "skip" the failures are logged and the sink goes on.
	ErrPartiallyApplied = errors.New("redis refused commands of a committed batch")
)
