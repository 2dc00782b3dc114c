package sink

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/natsutil"
)

// Reasons a consumer is recreated from the checkpoint
// (jetsync_sink_consumer_recreated_total{reason}).
const (
	// RecreatedStalled: the stream's head for the sink's filters moved past
	// the last event delivered, the sink had applied everything delivered,
	// and nothing (no event) arrived for stall_timeout. An ordered
	// consumer can stay silent like this after a stream leader change or
	// a server restart without reporting an error (nats.go and
	// nats-server issue trackers); its heartbeats, if any, do not help,
	// so the head is what tells.
	RecreatedStalled = "stalled"
	// RecreatedClosed: the consumer closed by itself (it gave up
	// recovering, e.g. after a server restart).
	RecreatedClosed = "closed"
)

// ConsumerObserver is an Observer that also counts consumers recreated
// from the checkpoint (an optional power, found by type assertion).
type ConsumerObserver interface {
	ConsumerRecreated(reason string)
}

// errConsumerLost ends a run whose consumer stalled or closed; Run starts
// a new consumer from the checkpoint.
type errConsumerLost struct{ reason string }

func (e *errConsumerLost) Error() string { return "sink: the event consumer " + e.reason }

// stallWatch tells a consumer that stalled from one that is quiet because
// the stream is, or busy because the target is slow. The batch loop owns
// it: no locks.
type stallWatch struct {
	timeout   time.Duration // 0: off
	delivered uint64        // position of the last message the consumer delivered
	lastSeen  time.Time     // when it arrived (or the consumer started)
}

func newStallWatch(timeout time.Duration, from uint64) stallWatch {
	return stallWatch{timeout: timeout, delivered: from, lastSeen: time.Now()}
}

// tick returns the channel to check the watch on, nil when it is off.
func (w *stallWatch) ticker() (<-chan time.Time, func()) {
	if w.timeout <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(max(w.timeout/4, 10*time.Millisecond))
	return t.C, t.Stop
}

func (w *stallWatch) saw(pos uint64, now time.Time) {
	w.delivered, w.lastSeen = pos, now
}

// stalled reports whether the consumer is stuck: quiet for the timeout
// while the sink is idle (everything delivered is applied: a slow target
// stops the pull on purpose) and the stream holds events past the last
// one delivered. It asks the stream for its head only when the rest holds.
func (e *Engine) stalled(ctx context.Context, w *stallWatch, now time.Time) (bool, uint64) {
	if w.timeout <= 0 || now.Sub(w.lastSeen) < w.timeout {
		return false, 0
	}
	if e.stats.checkpoint.Load() < w.delivered {
		return false, 0 // the pipeline is still applying what arrived
	}
	s, err := e.headStream(ctx)
	if err != nil {
		e.log.Debug("stall check: no stream", "err", err)
		return false, 0
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	head, err := natsutil.LastPosition(qctx, s, e.cfg.Filters)
	if err != nil {
		e.log.Debug("stall check: no head", "err", err)
		return false, 0
	}
	w.lastSeen = now // check again only after another timeout
	return head > max(w.delivered, e.stats.checkpoint.Load()), head
}

// headStream is the event stream, looked up once (each lookup is a
// request to the server). Only the batch loop calls it.
func (e *Engine) headStream(ctx context.Context) (jetstream.Stream, error) {
	if e.headS != nil {
		return e.headS, nil
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := e.js.Stream(qctx, e.cfg.Stream)
	if err != nil {
		return nil, err
	}
	e.headS = s
	return s, nil
}

// consumerLost records and logs a consumer recreated for reason.
func (e *Engine) consumerLost(reason string, attrs ...any) error {
	e.stats.recreated.Add(1)
	if o, ok := e.obs.(ConsumerObserver); ok {
		o.ConsumerRecreated(reason)
	}
	e.log.Warn("event consumer "+reason+"; recreating it from the checkpoint",
		append([]any{"reason", reason, "checkpoint", e.stats.checkpoint.Load()}, attrs...)...)
	return &errConsumerLost{reason: reason}
}

// isConsumerLost reports whether a run ended because its consumer was
// lost (Run starts a new one).
func isConsumerLost(err error) bool {
	var lost *errConsumerLost
	return errors.As(err, &lost)
}
