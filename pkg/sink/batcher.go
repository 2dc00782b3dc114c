package sink

import (
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// Batcher accumulates events until one of its limits is reached. It owns no
// goroutine and no timer: the engine's loop asks it what to do, so its
// behaviour is a pure function of what was added and when.
type Batcher struct {
	maxEvents   int
	maxBytes    int
	maxInterval time.Duration

	batch Batch
	first time.Time // when the first event of the current batch arrived
}

// NewBatcher returns a batcher with the given limits (all must be positive).
func NewBatcher(maxEvents, maxBytes int, maxInterval time.Duration) *Batcher {
	return &Batcher{maxEvents: maxEvents, maxBytes: maxBytes, maxInterval: maxInterval}
}

// Add appends ev, received at now, and reports whether the batch is full
// (by count or by bytes) and should be flushed now.
func (b *Batcher) Add(ev envelope.Event, now time.Time) bool {
	if len(b.batch.Events) == 0 {
		b.first = now
		if b.batch.Events == nil {
			b.batch.Events = make([]envelope.Event, 0, min(b.maxEvents, 4096))
		}
	}
	b.batch.Events = append(b.batch.Events, ev)
	b.batch.Bytes += ev.Size()
	b.batch.Through = ev.Position
	return b.Full()
}

// Skip moves the batch's checkpoint past a position without adding an event
// (an event dropped by the error policy before it reached the batch).
func (b *Batcher) Skip(pos uint64, now time.Time) {
	if b.Empty() {
		b.first = now
	}
	b.batch.Through = pos
}

// Refuse moves the batch's checkpoint past a message that is not an
// event, keeping it with the batch for the writer's loop to dead-letter
// (on_error "park": its stream is parked there, in order).
func (b *Batcher) Refuse(dl DeadLetter, now time.Time) {
	b.Skip(dl.Position, now)
	b.batch.refused = append(b.batch.refused, dl)
}

// Full reports whether a count or byte limit is reached.
func (b *Batcher) Full() bool {
	return len(b.batch.Events) >= b.maxEvents || b.batch.Bytes >= b.maxBytes
}

// Empty reports whether there is nothing to flush, not even a checkpoint move.
func (b *Batcher) Empty() bool { return b.batch.Through == 0 && len(b.batch.Events) == 0 }

// UntilNext says how long until the interval limit forces a flush; it is
// negative when nothing is waiting.
func (b *Batcher) UntilNext(now time.Time) time.Duration {
	if b.Empty() {
		return -1
	}
	if d := b.maxInterval - now.Sub(b.first); d > 0 {
		return d
	}
	return 0
}

// Flush hands over the current batch and starts a new one.
func (b *Batcher) Flush() *Batch {
	out := b.batch
	b.batch = Batch{}
	return &out
}
