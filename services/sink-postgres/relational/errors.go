package relational

import (
	"errors"

	"github.com/jetsync/jetsync/pkg/mapping"
)

var (
	// ErrNotConnected is returned by WriteBatch and LoadCheckpoint before
	// Connect succeeded or after Close. The engine retries it.
	ErrNotConnected = errors.New("postgres writer is not connected")

	// ErrConcurrentWriter means the sink's jetsync_checkpoints row no longer
	// holds what this process last read or wrote: another instance of the
	// same sink is writing. Returned wrapped in sink.Permanent, so the sink
	// stops instead of racing the other instance.
	ErrConcurrentWriter = errors.New("another instance of this sink is writing to the same checkpoint row")

	// ErrSchema means a table the mappings write is missing (and not
	// declared under tables:, so it cannot be created) or lacks a column
	// the sink needs. Returned wrapped in sink.Permanent at start.
	ErrSchema = errors.New("table does not fit the mappings")

	// ErrRefused means PostgreSQL refused an event's writes for good (a
	// value the column's type refuses, a NULL into NOT NULL, a unique
	// violation on another column). It is the per-event failure of a
	// *sink.BatchError naming the event's id and position, the table, the
	// column and PostgreSQL's message; on_error decides, and the batch is
	// written again without the event.
	ErrRefused = errors.New("postgres refused the batch's rows")

	// ErrUnknownType is the per-event failure for an event type without a
	// mapping when unknown_types is "error".
	ErrUnknownType = errors.New("no mapping for event type")

	// ErrNotObject is the per-event failure of upsert and patch when the
	// data (or the projection's output) is not a JSON object.
	ErrNotObject = errors.New("not a JSON object")

	// ErrUnknownColumn is the per-event failure of a row naming a column
	// the table does not have.
	ErrUnknownColumn = errors.New("no such column")

	// ErrMissingParam is the per-event failure of a raw SQL action whose
	// params object lacks a :name the statement uses.
	ErrMissingParam = errors.New("params lack")

	// ErrUnusedParam is the per-event failure of a raw SQL action whose
	// params object gives a name the statement does not use (a typo).
	ErrUnusedParam = errors.New("params give a name the sql does not use:")

	// ErrProjection is the per-event failure of a projection that fails at
	// run time or does not produce exactly one value.
	ErrProjection = mapping.ErrProjection
)
