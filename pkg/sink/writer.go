// Package sink is jetsync's shared engine: it reads the event stream with an
// ordered consumer from a checkpoint, batches events by count, bytes and
// time, writes each batch through a Writer with one write in flight, and
// moves the checkpoint only after a write succeeded.
package sink

import (
	"context"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// Writer writes batches to one target (Redis, Elasticsearch, Kinesis, ...).
// The engine calls WriteBatch from one goroutine, one batch at a time, in
// stream order.
//
// WriteBatch returns nil when the whole batch is applied, a *BatchError for
// events that fail permanently, an error wrapping ErrPermanent when nothing
// will ever succeed, and any other error for a transient failure that the
// engine retries with backoff (the same batch, again).
type Writer interface {
	Connect(ctx context.Context) error
	WriteBatch(ctx context.Context, b *Batch) error
	Close(ctx context.Context) error
}

// CheckpointWriter is a Writer that stores the sink's checkpoint in the
// target itself, atomically with each batch (as Batch.Through). The engine
// then keeps no checkpoint of its own for it, and writes empty batches to
// move the checkpoint past events that produced no write.
type CheckpointWriter interface {
	Writer
	LoadCheckpoint(ctx context.Context) (uint64, error)
}

// CheckpointResetter is implemented by a CheckpointWriter whose checkpoint
// can be moved anywhere (replay). The engine calls it while no write is in
// flight; it must be atomic with respect to WriteBatch.
type CheckpointResetter interface {
	ResetCheckpoint(ctx context.Context, pos uint64) error
}

// Preparer is implemented by a writer whose work on a batch splits into
// turning events into the target's commands, which needs only the CPU, and
// the write, which mostly waits for the target. The engine prepares the next
// batch on its own goroutine while the current one is written, so the two
// overlap (sink-postgres spends about a third of a batch's time preparing
// it; BENCHMARKS.md). Prepare must not touch the target or the writer's
// checkpoint; what it returns reaches WriteBatch as Batch.Prepared, which
// WriteBatch must check is still valid (e.g. the mappings were not
// reloaded since) and otherwise ignore. Batch.Prepared is nil for a batch
// the engine made or changed after Prepare (a retry of some of its events,
// parked streams taken out, dead letters re-applied).
type Preparer interface {
	Prepare(ctx context.Context, b *Batch) any
}

// Fencer is a Writer whose target can refuse, atomically with each write,
// the writes of an instance that lost the sink's lease (hot standby,
// pkg/lease). Fence records epoch in the target as the newest tenure, and
// from then on every WriteBatch (and ResetCheckpoint) of this writer
// checks, in the same transaction as its data and checkpoint, that the
// target still holds epoch: once a newer instance fenced the target, they
// fail with an error wrapping ErrFenced and ErrPermanent and write
// nothing. Fence itself fails with ErrFenced when the target already holds
// a newer epoch. The engine calls Fence once connected, before reading the
// checkpoint, at the start of each tenure (Engine.RunUnder).
type Fencer interface {
	Fence(ctx context.Context, epoch uint64) error
}

// Pinger is implemented by writers that can tell whether their target is
// reachable right now without writing; /readyz uses it.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Batch is a run of consecutive events of the sink's filtered stream.
type Batch struct {
	Events []envelope.Event
	// Through is the checkpoint once this batch is applied: the position of
	// the last event it covers, which may be past the last event in Events
	// when events were skipped.
	Through uint64
	// Bytes is the sum of the events' sizes.
	Bytes int
	// Redelivery marks dead letters re-applied on an operator's request
	// (jetsyncctl dlq retry): apply the events as they are, in order, and
	// leave the checkpoint alone (Through is 0).
	Redelivery bool
	// Prepared is what the writer's Prepare returned for exactly this
	// batch (see Preparer), or nil.
	Prepared any

	// refused are messages within the batch that are not events, for the
	// write loop to dead-letter (and park their streams) before writing it
	// under on_error "park".
	refused []DeadLetter
}

// Len is the number of events in the batch.
func (b *Batch) Len() int { return len(b.Events) }
