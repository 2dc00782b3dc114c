// Package checkpoint stores how far each sink has applied the event stream:
// the position (stream sequence) of the last event it applied, 0 for none.
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/natsutil"
)

// Store keeps one checkpoint per sink name.
type Store interface {
	// Load returns the sink's checkpoint, 0 when it has none.
	Load(ctx context.Context, sink string) (uint64, error)
	// Save moves the checkpoint forward to pos.
	Save(ctx context.Context, sink string, pos uint64) error
}

// Resetter moves a checkpoint anywhere, backwards included: the one way to
// replay.
type Resetter interface {
	Reset(ctx context.Context, sink string, pos uint64) error
}

// DefaultBucket is the NATS KV bucket that holds checkpoints.
const DefaultBucket = "jetsync-checkpoints"

// KV keeps checkpoints in a NATS KV bucket. Every Save is a compare-and-set
// against the revision this process last saw, so two instances of one sink
// cannot silently overwrite each other.
type KV struct {
	kv jetstream.KeyValue

	mu  sync.Mutex
	rev map[string]uint64 // last revision seen per sink
	pos map[string]uint64 // last position seen per sink
}

var _ interface {
	Store
	Resetter
} = (*KV)(nil)

// NewKV opens the checkpoint bucket, creating it (one replica) when
// missing.
func NewKV(ctx context.Context, js jetstream.JetStream, bucket string) (*KV, error) {
	return OpenKV(ctx, js, bucket, 1)
}

// BucketConfig is the checkpoint bucket's configuration.
func BucketConfig(bucket string, replicas int) jetstream.KeyValueConfig {
	if bucket == "" {
		bucket = DefaultBucket
	}
	return jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "jetsync sink checkpoints",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// Provision creates the checkpoint bucket or updates it to replicas (the
// bridge, on a cluster: R3 checkpoints survive a node).
func Provision(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) error {
	_, err := natsutil.ProvisionKV(ctx, js, BucketConfig(bucket, replicas), "stream.replicas")
	return err
}

// OpenKV opens the checkpoint bucket as it is (never changing what the
// bridge provisioned), creating it with replicas when missing.
func OpenKV(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (*KV, error) {
	cfg := BucketConfig(bucket, replicas)
	bucket = cfg.Bucket
	kv, err := natsutil.OpenKV(ctx, js, cfg, "checkpoint.replicas")
	if err != nil {
		return nil, fmt.Errorf("opening checkpoint bucket %s: %w", bucket, err)
	}
	return &KV{kv: kv, rev: map[string]uint64{}, pos: map[string]uint64{}}, nil
}

// Load reads the sink's checkpoint and remembers its revision for Save.
func (s *KV) Load(ctx context.Context, sink string) (uint64, error) {
	e, err := s.kv.Get(ctx, sink)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		s.remember(sink, 0, 0)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("loading checkpoint of %s: %w", sink, err)
	}
	pos, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("checkpoint of %s holds %q, not a position: reset it with a valid position", sink, e.Value())
	}
	s.remember(sink, e.Revision(), pos)
	return pos, nil
}

func (s *KV) remember(sink string, rev, pos uint64) {
	s.mu.Lock()
	s.rev[sink], s.pos[sink] = rev, pos
	s.mu.Unlock()
}

// Save stores pos if it is ahead of the last position seen.
func (s *KV) Save(ctx context.Context, sink string, pos uint64) error {
	s.mu.Lock()
	rev, loaded := s.rev[sink]
	last := s.pos[sink]
	s.mu.Unlock()
	if !loaded {
		if _, err := s.Load(ctx, sink); err != nil {
			return err
		}
		return s.Save(ctx, sink, pos)
	}
	if pos < last {
		return fmt.Errorf("%w: %s is at %d, asked to save %d", ErrBackwards, sink, last, pos)
	}
	if pos == last {
		return nil
	}
	val := []byte(strconv.FormatUint(pos, 10))
	var newRev uint64
	var err error
	if rev == 0 {
		newRev, err = s.kv.Create(ctx, sink, val)
	} else {
		newRev, err = s.kv.Update(ctx, sink, val, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("saving checkpoint of %s: %w", sink, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("saving checkpoint of %s: %w", sink, err)
	}
	s.remember(sink, newRev, pos)
	return nil
}

// Reset sets the checkpoint to pos unconditionally. The engine calls it
// while it writes nothing (see sink.Engine.Reset); another process still
// holding the old revision sees its next Save fail with ErrConflict.
func (s *KV) Reset(ctx context.Context, sink string, pos uint64) error {
	rev, err := s.kv.Put(ctx, sink, []byte(strconv.FormatUint(pos, 10)))
	if err != nil {
		return fmt.Errorf("resetting checkpoint of %s: %w", sink, err)
	}
	s.remember(sink, rev, pos)
	return nil
}

// Fence writes the sink's checkpoint again unchanged, with a
// compare-and-set, so that its revision moves: an earlier holder of the
// sink's lease still saving with the revision it loaded gets ErrConflict
// from then on (hot standby; sink.StoreFencer). The caller loads the
// checkpoint again afterwards.
func (s *KV) Fence(ctx context.Context, sink string) error {
	e, err := s.kv.Get(ctx, sink)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		_, err = s.kv.Create(ctx, sink, []byte("0"))
	} else if err == nil {
		_, err = s.kv.Update(ctx, sink, e.Value(), e.Revision())
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("fencing checkpoint of %s: it changed meanwhile (an earlier holder still saving): %w", sink, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("fencing checkpoint of %s: %w", sink, err)
	}
	s.mu.Lock()
	delete(s.rev, sink) // Save loads it again
	s.mu.Unlock()
	return nil
}
