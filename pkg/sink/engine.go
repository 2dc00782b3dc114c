package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
)

// pendingEvents bounds the events decoded but not yet batched, between the
// consumer and the batch loop. Memory of a sink is bounded by about
// 2 × batch.max_bytes (the batch being written, the batch filling up) plus
// what the consumer pulls ahead: max(batch.max_bytes, NATS max payload +
// 64KiB), plus these events.
const pendingEvents = 256

// Observer receives what the engine measures (pkg/metrics implements it
// with Prometheus), so the engine itself imports no metrics library.
type Observer interface {
	// BatchWritten is called after each batch is applied and checkpointed.
	BatchWritten(b *Batch, took time.Duration)
	// Retried is called for each failed attempt that will be retried.
	Retried(err error)
	// EventFailed is called for each event the error policy handled:
	// kind is "skipped", "dead-lettered" or "stopped".
	EventFailed(kind string)
}

// DeadLetter is an event (or a message that is not one) the sink gives up
// on, with why.
type DeadLetter struct {
	Subject  string
	Position uint64
	Header   nats.Header
	Data     []byte
	Err      error
	// ParkedBehind, when not 0, is the position of the earlier event of
	// the same stream that parked it (on_error "park"): this event was
	// not attempted.
	ParkedBehind uint64
}

// DeadLetterer stores dead letters (pkg/deadletter: the dlq.<sink> stream).
type DeadLetterer interface {
	DeadLetter(ctx context.Context, sink string, dl DeadLetter) error
}

// Option configures an Engine.
type Option func(*Engine)

// WithObserver reports measurements to o.
func WithObserver(o Observer) Option { return func(e *Engine) { e.obs = o } }

// WithDeadLetters sends refused events to d when on_error is "dead-letter"
// or "park" (then d must be a DeadLetterStore), and the event an operator
// skips (Skip) under "stop".
func WithDeadLetters(d DeadLetterer) Option { return func(e *Engine) { e.dlq = d } }

// WithHoldOnStop keeps Run going when the error policy "stop" halts the
// sink: it holds before the event, connected and with the checkpoint just
// before it (state stopped; Stopped says which event and why), until an
// operator's Skip, Resume or Reset, or the end of ctx. Without it Run
// returns the *StopError, which suits one-shot runs (rebuilds, tests).
func WithHoldOnStop() Option { return func(e *Engine) { e.holdOnStop = true } }

// Engine runs one sink: ordered consumer → batcher → writer → checkpoint.
type Engine struct {
	cfg   Config
	js    jetstream.JetStream
	w     Writer
	store checkpoint.Store // nil when w is a CheckpointWriter
	log   *slog.Logger
	obs   Observer
	dlq   DeadLetterer
	stats stats

	holdOnStop   bool
	lease        Lease // the tenure Run writes under (RunUnder); nil without one
	resets       chan resetRequest
	redeliveries chan redelivery

	letters DeadLetterStore // the dead-letter store parking needs (on_error "park")
	parked  parking
	headS   jetstream.Stream // the event stream, for the stall check (stall.go)

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever the checkpoint moves or the sink stops
	held    *hold         // the stop the sink holds at, nil while it is not stopped
}

type resetRequest struct {
	pos  uint64
	done chan error
}

// redelivery is work done between two batches, no write in flight: dead
// letters re-applied (b), or a parked stream retried or discarded (f).
type redelivery struct {
	ctx  context.Context
	b    *Batch
	f    func(context.Context) error
	done chan error
}

// serve does r's work.
func (e *Engine) serve(r redelivery) error {
	if r.f != nil {
		return r.f(r.ctx)
	}
	return e.redeliver(r.ctx, r.b)
}

// New checks the pieces fit together. store may be nil only when w is a
// CheckpointWriter.
func New(cfg Config, js jetstream.JetStream, w Writer, store checkpoint.Store, log *slog.Logger, opts ...Option) (*Engine, error) {
	if _, ok := w.(CheckpointWriter); ok {
		store = nil // the target keeps the checkpoint, atomically with the data
	} else if store == nil {
		return nil, errors.New("sink: a checkpoint store is required for a writer that does not keep its own")
	}
	if log == nil {
		log = slog.Default()
	}
	e := &Engine{cfg: cfg, js: js, w: w, store: store, log: log.With("sink", cfg.Name),
		obs: nopObserver{}, resets: make(chan resetRequest), redeliveries: make(chan redelivery),
		changed: make(chan struct{})}
	for _, o := range opts {
		o(e)
	}
	if (cfg.OnError == OnErrorDeadLetter || cfg.OnError == OnErrorPark) && e.dlq == nil {
		return nil, fmt.Errorf("sink: on_error is %s but no dead-letter store was given", cfg.OnError)
	}
	if cfg.OnError == OnErrorPark {
		ls, ok := e.dlq.(DeadLetterStore)
		if !ok {
			return nil, errors.New("sink: on_error is park but the dead-letter store cannot list and delete dead letters")
		}
		e.letters = ls
	}
	e.stats.setState(StateStarting)
	return e, nil
}

type nopObserver struct{}

func (nopObserver) BatchWritten(*Batch, time.Duration) {}
func (nopObserver) Retried(error)                      {}
func (nopObserver) EventFailed(string)                 {}

// Stats returns the sink's counters.
func (e *Engine) Stats() Snapshot {
	s := e.stats.snapshot(e.cfg.Name)
	s.Stopped = e.Stopped()
	s.ParkedStreams, s.ParkedEvents = e.parked.count()
	return s
}

// Name is the sink's name.
func (e *Engine) Name() string { return e.cfg.Name }

// Config is the configuration the engine runs with.
func (e *Engine) Config() Config { return e.cfg }

// setCheckpoint records a new checkpoint and wakes WaitFor callers.
func (e *Engine) setCheckpoint(pos uint64) {
	e.stats.checkpoint.Store(pos)
	e.stats.checkpointKnown.Store(true)
	e.notify()
}

// notify wakes everyone waiting for the checkpoint or the state to change.
func (e *Engine) notify() {
	e.mu.Lock()
	close(e.changed)
	e.changed = make(chan struct{})
	e.mu.Unlock()
}

// changes returns the channel the next change closes.
func (e *Engine) changes() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.changed
}

// WaitFor blocks until the sink has applied position pos (read-your-writes)
// or ctx ends.
func (e *Engine) WaitFor(ctx context.Context, pos uint64) error {
	for {
		ch := e.changes()
		if e.stats.checkpoint.Load() >= pos {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Reset moves the sink to continue after pos (0 replays everything) while
// it runs: the consumer stops, the write in flight finishes, the checkpoint
// is reset in its store and consuming starts again from pos+1.
func (e *Engine) Reset(ctx context.Context, pos uint64) error {
	r := resetRequest{pos: pos, done: make(chan error, 1)}
	return ask(ctx, e.resets, r, r.done)
}

// Redeliver writes events again, in the order given, between two regular
// batches and without touching the checkpoint (dead letters re-applied by
// an operator). It returns once they are applied or failed.
func (e *Engine) Redeliver(ctx context.Context, events []envelope.Event) error {
	b := newBatch(events, 0)
	b.Redelivery = true
	r := redelivery{ctx: ctx, b: b, done: make(chan error, 1)}
	return ask(ctx, e.redeliveries, r, r.done)
}

// ask hands req to the running engine's loop and waits for its answer.
func ask[T any](ctx context.Context, to chan<- T, req T, done <-chan error) error {
	select {
	case to <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newBatch is a batch of events, checkpointing through.
func newBatch(events []envelope.Event, through uint64) *Batch {
	b := &Batch{Events: events, Through: through}
	for i := range events {
		b.Bytes += events[i].Size()
	}
	return b
}

// item is one message from the consumer, decoded or not.
type item struct {
	ev  envelope.Event
	bad *DeadLetter // set when the message is not a valid event
}

// Lease is the hot-standby lease an engine writes under (pkg/lease).
type Lease interface {
	// Check returns nil while the lease is held and not past its local
	// deadline; the engine calls it before every write and stops with its
	// error (made permanent) otherwise.
	Check() error
	// Epoch is the tenure's fencing token, handed to a Fencer writer or
	// checkpoint store when Run starts.
	Epoch() uint64
}

// StoreFencer is a checkpoint store that can make every earlier holder's
// next save fail (checkpoint.KV bumps the revision it compares and sets
// on). It fences the checkpoint only: the data a writer without Fencer
// writes before its checkpoint is saved is not covered.
type StoreFencer interface {
	Fence(ctx context.Context, sink string) error
}

// RunUnder runs the engine like Run for one tenure of the lease l: it
// fences the target (Fencer, StoreFencer) with l's epoch once connected,
// before reading the checkpoint, and checks l before every write, so
// nothing is written once l is lost, not even the last batch of the
// shutdown. It returns an error wrapping the lease's when l was lost, and
// one wrapping ErrFenced when a newer instance fenced the target.
func (e *Engine) RunUnder(ctx context.Context, l Lease) error {
	e.lease = l
	defer func() { e.lease = nil }()
	e.stats.setState(StateStarting)
	return e.Run(ctx)
}

// guard is called before each write: nil while the engine may write.
func (e *Engine) guard() error {
	if e.lease == nil {
		return nil
	}
	if err := e.lease.Check(); err != nil {
		return Permanent(err)
	}
	return nil
}

// fence makes the target refuse the writes of every earlier tenure.
func (e *Engine) fence(ctx context.Context) error {
	if e.lease == nil {
		return nil
	}
	epoch := e.lease.Epoch()
	if f, ok := e.w.(Fencer); ok {
		if err := e.retry(ctx, "fence target", func(ctx context.Context) error {
			if err := e.guard(); err != nil {
				return err
			}
			return f.Fence(ctx, epoch)
		}); err != nil {
			return err
		}
	}
	if f, ok := e.store.(StoreFencer); ok {
		if err := e.retry(ctx, "fence checkpoint", func(ctx context.Context) error {
			if err := e.guard(); err != nil {
				return err
			}
			return f.Fence(ctx, e.cfg.Name)
		}); err != nil {
			return err
		}
	}
	e.log.Info("target fenced", "epoch", epoch)
	return nil
}

// Run consumes until ctx is cancelled, then flushes what it holds and saves
// the checkpoint, taking at most cfg.ShutdownTimeout for that. It returns nil
// after a clean stop, a *StopError (ErrStopped) when the error policy halted
// it (unless WithHoldOnStop: then it holds, see Skip and Resume), and other
// errors when it could not go on.
func (e *Engine) Run(ctx context.Context) (err error) {
	defer func() {
		e.stats.setState(StateExited)
		if err != nil {
			e.stats.setError(err)
		}
		e.notify()
	}()

	// Writes may outlive ctx by ShutdownTimeout so the last batch lands.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	stopShutdownTimer := context.AfterFunc(ctx, func() { time.AfterFunc(e.cfg.ShutdownTimeout, wcancel) })
	defer stopShutdownTimer()

	if e.store != nil {
		// Known before the target answers, so a sink still connecting (or
		// waiting for its target) reports where it will resume, not 0.
		if err := e.retry(ctx, "load checkpoint", func(ctx context.Context) error {
			pos, err := e.loadCheckpoint(ctx)
			if err == nil {
				e.setCheckpoint(pos)
			}
			return err
		}); err != nil {
			return e.cleanStop(err)
		}
	}
	if err := e.retry(ctx, "connect to target", e.w.Connect); err != nil {
		return e.cleanStop(err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if cerr := e.w.Close(cctx); cerr != nil {
			e.log.Warn("closing target", "err", cerr)
		}
	}()
	if err := e.fence(ctx); err != nil {
		return e.cleanStop(err)
	}
	if e.letters != nil {
		// The parked streams live in the dead-letter store, not in memory.
		if err := e.retry(ctx, "load parked streams", e.loadParked); err != nil {
			return e.cleanStop(err)
		}
	}

	var lost int      // consumers lost in a row without progress
	var lostAt uint64 // the checkpoint when the last one was lost
	for {
		var pos uint64
		if err := e.retry(ctx, "load checkpoint", func(ctx context.Context) (err error) {
			pos, err = e.loadCheckpoint(ctx)
			return err
		}); err != nil {
			return e.cleanStop(err)
		}
		e.setCheckpoint(pos)

		reset, err := e.runFrom(ctx, wctx, pos)
		if reset == nil && isConsumerLost(err) {
			// Start a new consumer from the checkpoint; losing it again
			// without progress backs off.
			if e.stats.checkpoint.Load() > lostAt {
				lost = 0
			}
			lostAt = e.stats.checkpoint.Load()
			select {
			case <-time.After(backoff(lost, e.cfg.Retry.Initial, e.cfg.Retry.Max)):
			case <-ctx.Done():
				return e.cleanStop(ctx.Err())
			}
			lost++
			continue
		}
		if reset == nil {
			var stop *StopError
			if !e.holdOnStop || !errors.As(err, &stop) {
				return e.cleanStop(err)
			}
			if reset, err = e.holdAt(ctx, stop); err != nil {
				return e.cleanStop(err)
			}
			if reset == nil {
				continue // skipped or resumed: read on from the checkpoint
			}
		}
		err = e.applyReset(wctx, reset.pos)
		reset.done <- err
		if err != nil {
			return err
		}
	}
}

// runFrom runs the pipeline from pos+1 until ctx ends, a fatal error, or a
// reset request, which it returns after the write in flight has finished.
func (e *Engine) runFrom(ctx, wctx context.Context, pos uint64) (*resetRequest, error) {
	items := make(chan item, pendingEvents)
	handlerStop := make(chan struct{})
	var cc jetstream.ConsumeContext
	if err := e.retry(ctx, "start consumer", func(ctx context.Context) (err error) {
		cc, err = e.consume(ctx, pos, func(msg jetstream.Msg) {
			// Blocking here when the batch loop is behind is the
			// backpressure that stops pulling.
			it, ok := e.decode(msg)
			if !ok {
				return
			}
			select {
			case items <- it:
			case <-handlerStop:
			}
		})
		return err
	}); err != nil {
		return nil, err
	}
	e.log.Info("sink started", "from", pos+1, "filters", e.cfg.Filters)
	e.stats.setState(StateRunning)
	defer func() {
		close(handlerStop) // unblocks a handler waiting to hand over an event
		cc.Stop()
	}()

	q := newWriterQueue()
	writerDone := make(chan struct{})
	var writerErr error
	go func() {
		defer close(writerDone)
		writerErr = e.writeLoop(wctx, q)
	}()

	watch := newStallWatch(e.cfg.StallTimeout, pos)
	reset, loopErr := e.batchLoop(ctx, items, cc.Closed(), q, writerDone, &watch)
	close(q.batches)
	<-writerDone
	if writerErr != nil { // the writer's error is the cause; the loop only saw it stop
		if reset != nil {
			reset.done <- writerErr
		}
		return nil, writerErr
	}
	return reset, loopErr
}

// applyReset moves the checkpoint where the operator asked, in the store
// that holds it, atomically.
func (e *Engine) applyReset(ctx context.Context, pos uint64) error {
	e.log.Info("resetting checkpoint", "from", e.stats.checkpoint.Load(), "to", pos)
	if err := e.guard(); err != nil {
		return err
	}
	if e.store != nil {
		r, ok := e.store.(checkpoint.Resetter)
		if !ok {
			return Permanent(errors.New("this checkpoint store cannot be reset"))
		}
		return e.retry(ctx, "reset checkpoint", func(ctx context.Context) error { return r.Reset(ctx, e.cfg.Name, pos) })
	}
	r, ok := e.w.(CheckpointResetter)
	if !ok {
		return Permanent(fmt.Errorf("the target of sink %s keeps its checkpoint and cannot reset it", e.cfg.Name))
	}
	return e.retry(ctx, "reset checkpoint", func(ctx context.Context) error { return r.ResetCheckpoint(ctx, pos) })
}

// errWriterStopped ends the batch loop when the writer quit; Run then
// returns the writer's own error.
var errWriterStopped = errors.New("writer stopped")

// cleanStop turns the cancellation that ends every run into a clean exit.
func (e *Engine) cleanStop(err error) error {
	if errors.Is(err, context.Canceled) {
		e.log.Info("sink stopped", "checkpoint", e.stats.checkpoint.Load())
		return nil
	}
	return err
}

func (e *Engine) loadCheckpoint(ctx context.Context) (uint64, error) {
	if cw, ok := e.w.(CheckpointWriter); ok {
		return cw.LoadCheckpoint(ctx)
	}
	return e.store.Load(ctx, e.cfg.Name)
}

// consume starts an ordered consumer just after pos. The consumer keeps its
// cursor only in this process; the checkpoint is the sink's only memory.
// handle runs for each message, in stream order, one at a time, on the
// subscription's goroutine. A callback rather than the Messages iterator:
// the iterator's buffer is a channel of exactly the pull size, shared with
// heartbeats, and overflowed into "slow consumer" drops and consumer resets
// (dozens per run at max_events 100, a 10 s stall at 1); the callback's
// pending queue is bounded by the pull limits alone (BENCHMARKS.md).
func (e *Engine) consume(ctx context.Context, pos uint64, handle jetstream.MessageHandler) (jetstream.ConsumeContext, error) {
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: e.cfg.Filters, DeliverPolicy: jetstream.DeliverAllPolicy}
	if pos > 0 {
		cc.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cc.OptStartSeq = pos + 1
	}
	cons, err := e.js.OrderedConsumer(ctx, e.cfg.Stream, cc)
	if err != nil {
		return nil, fmt.Errorf("ordered consumer on stream %s: %w", e.cfg.Stream, err)
	}
	// A pull whose byte limit is below a message's size never delivers that
	// message: the sink would stall on it without an error. Pull at least a
	// whole max-size message (payload, subject and headers) at a time.
	pullBytes := max(int(e.cfg.Batch.MaxBytes), int(e.js.Conn().MaxPayload())+64<<10)
	return cons.Consume(handle,
		jetstream.PullMaxMessagesWithBytesLimit(e.cfg.Batch.MaxEvents, pullBytes),
		// The ordered consumer recovers by itself: it recreates its
		// consumer after a gap, a missed heartbeat or a reconnect.
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { e.log.Debug("consumer", "err", err) }))
}

// decode turns a message into an event, or into a dead letter when it is
// not a valid one. ok is false for a message without JetStream metadata,
// which has no position to stand at (the ordered consumer drops those
// before they get here).
func (e *Engine) decode(msg jetstream.Msg) (it item, ok bool) {
	pos, ok := streamSeq(msg.Reply())
	if !ok {
		md, err := msg.Metadata()
		if err != nil {
			e.log.Warn("message without metadata", "subject", msg.Subject(), "err", err)
			return item{}, false
		}
		pos = md.Sequence.Stream
	}
	ev, err := envelope.FromMsg(msg.Subject(), msg.Headers(), msg.Data(), pos)
	if err != nil {
		return item{bad: &DeadLetter{Subject: msg.Subject(), Position: pos, Header: msg.Headers(), Data: msg.Data(),
			Err: fmt.Errorf("malformed event at position %d: %w", pos, err)}}, true
	}
	return item{ev: ev}, true
}

// streamSeq is the stream sequence in a JetStream message's reply subject
// of the 9-token form ($JS.ACK.<stream>.<consumer>.<delivered>.<stream
// seq>.<consumer seq>.<time>.<pending>), without the allocations of
// Metadata, which parses every field (5% of a sink's CPU). ok is false
// for any other form; Metadata reads those.
func streamSeq(reply string) (seq uint64, ok bool) {
	const field = 5 // the stream sequence's token
	n, start := 0, 0
	for i := 0; i <= len(reply); i++ {
		if i < len(reply) && reply[i] != '.' {
			continue
		}
		if n == field {
			if seq, ok = parseSeq(reply[start:i]); !ok {
				return 0, false
			}
		}
		n++
		start = i + 1
	}
	if !ok || n != 9 || !strings.HasPrefix(reply, "$JS.ACK.") {
		return 0, false
	}
	return seq, true
}

// parseSeq is a sequence number in decimal digits.
func parseSeq(s string) (uint64, bool) {
	if s == "" || s[0] < '0' || s[0] > '9' { // ParseUint takes a sign
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// batchLoop owns the batcher: it adds events and hands full (or old enough)
// batches to the writer. Handing off blocks while the writer is busy, so at
// most one batch is written and one is filling. A reset request ends it
// without handing off the partial batch: those events are read again.
func (e *Engine) batchLoop(ctx context.Context, items <-chan item, consumerClosed <-chan struct{}, q *writerQueue, writerDone <-chan struct{}, watch *stallWatch) (*resetRequest, error) {
	b := NewBatcher(e.cfg.Batch.MaxEvents, int(e.cfg.Batch.MaxBytes), e.cfg.Batch.MaxInterval)
	stallTick, stopTick := watch.ticker()
	defer stopTick()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false

	handOff := func() error {
		if armed {
			timer.Stop()
			armed = false
		}
		if b.Empty() {
			return nil
		}
		q.inflight.Add(1)
		select {
		case q.batches <- b.Flush():
			return nil
		case <-writerDone:
			return errWriterStopped
		}
	}
	// flushIfIdle is group commit: nothing else is waiting to be read and
	// the writer has nothing to write, so waiting would only add latency.
	// While the writer is busy, events keep accumulating instead. Idle
	// means no batch handed off and unwritten: a writer that prepares
	// ahead takes the next batch while it writes one, and handing it a
	// part of a batch then only made batches smaller (4% of sink-postgres'
	// throughput, BENCHMARKS.md).
	flushIfIdle := func() (bool, error) {
		if !e.cfg.Batch.FlushWhenIdle || b.Empty() || len(items) != 0 || q.inflight.Load() != 0 {
			return false, nil
		}
		return true, handOff()
	}
	// add puts one delivered item in the batch: an event, or a malformed
	// message the error policy decides on. It reports whether the batch
	// was handed off (full, or the writer idle); an error ends the loop.
	add := func(it item, now time.Time) (handedOff bool, err error) {
		if it.bad == nil {
			watch.saw(it.ev.Position, now)
			if b.Add(it.ev, now) {
				return true, handOff()
			}
			return flushIfIdle()
		}
		watch.saw(it.bad.Position, now)
		switch {
		case e.cfg.OnError == OnErrorStop:
			e.log.Error("stopping at malformed event", "position", it.bad.Position, "err", it.bad.Err)
			e.obs.EventFailed("stopped")
			if err := handOff(); err != nil {
				return false, err
			}
			return false, stopAtMalformed(*it.bad)
		case e.letters != nil:
			// Parked by the write loop, which alone changes the parked
			// streams (park.go).
			b.Refuse(*it.bad, now)
		default:
			if err := e.giveUp(ctx, *it.bad); err != nil {
				return false, err
			}
			b.Skip(it.bad.Position, now)
		}
		return false, nil
	}

	for {
		select {
		case <-ctx.Done():
			return nil, handOff()
		case <-writerDone:
			return nil, errWriterStopped
		case r := <-e.resets:
			return &r, nil
		case <-timer.C:
			armed = false
			if err := handOff(); err != nil {
				return nil, err
			}
		case <-q.idle:
			if _, err := flushIfIdle(); err != nil {
				return nil, err
			}
		case <-consumerClosed:
			if err := handOff(); err != nil {
				return nil, err
			}
			return nil, e.consumerLost(RecreatedClosed, "delivered", watch.delivered)
		case now := <-stallTick:
			if stuck, head := e.stalled(ctx, watch, now); stuck {
				if err := handOff(); err != nil {
					return nil, err
				}
				return nil, e.consumerLost(RecreatedStalled, "delivered", watch.delivered, "head", head,
					"quiet_for", now.Sub(watch.lastSeen).Round(time.Millisecond), "stall_timeout", watch.timeout)
			}
		case it := <-items:
			// Take what else is queued, up to a batch's worth, without
			// going back through this select: entered once per event, its
			// many cases were 7% of a sink's CPU in a catch-up
			// (BENCHMARKS.md, sink-postgres). The other cases (a reset, a
			// stop) wait at most that long.
			for taken := 1; ; taken++ {
				now := time.Now()
				handedOff, err := add(it, now)
				if err != nil {
					return nil, err
				}
				if !handedOff && !armed {
					if d := b.UntilNext(now); d >= 0 {
						timer.Reset(d)
						armed = true
					}
				}
				if taken < e.cfg.Batch.MaxEvents {
					select {
					case it = <-items:
						continue
					default:
					}
				}
				break
			}
		}
	}
}

// giveUp skips an event under "skip", or stores it as a dead letter under
// "dead-letter" (retrying until the dead letter is stored: it must be safe
// before the checkpoint moves past the event).
func (e *Engine) giveUp(ctx context.Context, dl DeadLetter) error {
	e.stats.skipped.Add(1)
	if e.cfg.OnError != OnErrorDeadLetter && e.cfg.OnError != OnErrorPark {
		e.log.Error("skipping event", "position", dl.Position, "subject", dl.Subject, "err", dl.Err)
		e.obs.EventFailed("skipped")
		return nil
	}
	e.log.Error("dead-lettering event", "position", dl.Position, "subject", dl.Subject, "err", dl.Err)
	e.obs.EventFailed("dead-lettered")
	return e.retry(ctx, "store dead letter", func(ctx context.Context) error { return e.dlq.DeadLetter(ctx, e.cfg.Name, dl) })
}

// writeLoop writes batches in order, one at a time, and moves the
// checkpoint after each one that succeeded. Redeliveries are written
// between two batches.
func (e *Engine) writeLoop(ctx context.Context, q *writerQueue) error {
	var batches <-chan *Batch = q.batches
	if p, ok := e.w.(Preparer); ok {
		stop := make(chan struct{})
		defer close(stop)
		batches = prepareAhead(ctx, batches, p, stop)
	}
	for {
		select {
		case b, ok := <-batches:
			if !ok {
				return nil
			}
			if err := e.deliver(ctx, b); err != nil {
				return err
			}
			q.written()
		case r := <-e.redeliveries:
			r.done <- e.serve(r)
		}
	}
}

// writerQueue carries batches from the batch loop to the writer and knows
// whether the writer is idle.
type writerQueue struct {
	batches  chan *Batch
	inflight atomic.Int32  // batches handed off and not yet written
	idle     chan struct{} // a token when the last of them is written
}

func newWriterQueue() *writerQueue {
	return &writerQueue{batches: make(chan *Batch), idle: make(chan struct{}, 1)}
}

// written counts a batch written, and tells the batch loop when it was the
// last: a part of a batch waiting there can go now.
func (q *writerQueue) written() {
	if q.inflight.Add(-1) == 0 {
		select {
		case q.idle <- struct{}{}:
		default: // a token is waiting already
		}
	}
}

// prepareAhead prepares each batch from in on its own goroutine and hands
// it on, one batch ahead of the writer: the next batch is prepared while the
// current one is written. It ends when in closes or stop does.
func prepareAhead(ctx context.Context, in <-chan *Batch, p Preparer, stop <-chan struct{}) <-chan *Batch {
	out := make(chan *Batch)
	go func() {
		defer close(out)
		for {
			var b *Batch
			select {
			case bb, ok := <-in:
				if !ok {
					return
				}
				b = bb
			case <-stop:
				return
			}
			b.Prepared = p.Prepare(ctx, b)
			select {
			case out <- b:
			case <-stop:
				return
			}
		}
	}()
	return out
}

// redeliver writes dead letters again; transient errors are retried until
// the operator's request gives up (its ctx), permanent ones returned.
func (e *Engine) redeliver(ctx context.Context, b *Batch) error {
	return e.retry(ctx, "redeliver dead letters", func(ctx context.Context) error {
		if err := e.guard(); err != nil {
			return err
		}
		err := e.w.WriteBatch(ctx, b)
		var be *BatchError
		if errors.As(err, &be) {
			return Permanent(err)
		}
		return err
	})
}

// deliver writes b until it is applied, applying the error policy to events
// that fail permanently and retrying everything else.
func (e *Engine) deliver(ctx context.Context, b *Batch) error {
	if e.letters != nil {
		var err error
		if b, err = e.parkBatch(ctx, b); err != nil {
			return err
		}
	}
	for attempt := 0; ; attempt++ {
		start := time.Now()
		err := e.writeOnce(ctx, b)
		if err == nil {
			took := time.Since(start)
			e.stats.lastFlush.Store(int64(took))
			e.stats.batches.Add(1)
			e.stats.applied.Add(uint64(len(b.Events)))
			e.stats.bytes.Add(uint64(b.Bytes))
			e.setCheckpoint(b.Through)
			e.obs.BatchWritten(b, took)
			if attempt > 0 {
				e.stats.setState(StateRunning)
			}
			return nil
		}
		var be *BatchError
		switch {
		case errors.As(err, &be):
			next, stopErr := e.applyPolicy(ctx, b, be)
			if stopErr != nil {
				if next != nil {
					if err := e.deliver(ctx, next); err != nil {
						return err
					}
				}
				return stopErr
			}
			b, attempt = next, -1
			continue
		case errors.Is(err, ErrPermanent), errors.Is(err, checkpoint.ErrConflict), ctx.Err() != nil:
			return err
		}
		e.stats.retries.Add(1)
		e.stats.setError(err)
		e.stats.setState(StateRetrying)
		e.obs.Retried(err)
		wait := backoff(attempt, e.cfg.Retry.Initial, e.cfg.Retry.Max)
		e.log.Warn("write failed, retrying", "events", len(b.Events), "through", b.Through, "attempt", attempt+1, "in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// writeOnce writes the batch and, for writers without their own checkpoint,
// saves it afterwards: never before the data is in.
func (e *Engine) writeOnce(ctx context.Context, b *Batch) error {
	if err := e.guard(); err != nil {
		return err
	}
	if e.store == nil {
		return e.w.WriteBatch(ctx, b) // writes b.Through with the data
	}
	if len(b.Events) > 0 {
		if err := e.w.WriteBatch(ctx, b); err != nil {
			return err
		}
		if err := e.guard(); err != nil {
			return err
		}
	}
	return e.store.Save(ctx, e.cfg.Name, b.Through)
}

// applyPolicy returns the batch to write next after some of b's events
// failed for good. With "skip" or "dead-letter" that is b without them; with
// "stop" it is the part before the first failure (nil if none) and ErrStopped.
func (e *Engine) applyPolicy(ctx context.Context, b *Batch, be *BatchError) (*Batch, error) {
	failed := make(map[int]error, len(be.Failures))
	firstIdx := len(b.Events)
	for _, f := range be.Failures {
		if f.Index < 0 || f.Index >= len(b.Events) {
			continue
		}
		failed[f.Index] = f.Err
		firstIdx = min(firstIdx, f.Index)
	}
	if len(failed) == 0 { // a writer bug: never spin on it
		return nil, Permanent(fmt.Errorf("writer reported failures for events outside the batch: %w", be))
	}
	if e.cfg.OnError == OnErrorStop {
		ev := b.Events[firstIdx]
		e.log.Error("stopping at event the target refuses", "position", ev.Position, "id", ev.ID, "type", ev.Type, "err", failed[firstIdx])
		e.obs.EventFailed("stopped")
		stopErr := stopAt(ev, failed[firstIdx])
		if ev.Position <= 1 || firstIdx == 0 && ev.Position-1 <= e.stats.checkpoint.Load() {
			return nil, stopErr
		}
		return newBatch(b.Events[:firstIdx], ev.Position-1), stopErr
	}
	if e.letters != nil {
		return e.parkFailed(ctx, b, failed)
	}
	kept := &Batch{Events: make([]envelope.Event, 0, len(b.Events)-len(failed)), Through: b.Through}
	for i, ev := range b.Events {
		if err, bad := failed[i]; bad {
			msg := ev.ToMsg()
			dl := DeadLetter{Subject: msg.Subject, Position: ev.Position, Header: msg.Header, Data: ev.Data,
				Err: fmt.Errorf("event %s (type %s): %w", ev.ID, ev.Type, err)}
			if err := e.giveUp(ctx, dl); err != nil {
				return nil, err
			}
			continue
		}
		kept.Events = append(kept.Events, ev)
		kept.Bytes += ev.Size()
	}
	return kept, nil
}

// retry calls f until it succeeds, fails permanently or ctx ends.
func (e *Engine) retry(ctx context.Context, what string, f func(context.Context) error) error {
	for attempt := 0; ; attempt++ {
		err := f(ctx)
		if err == nil || errors.Is(err, ErrPermanent) || ctx.Err() != nil {
			if err == nil && ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		e.stats.setError(err)
		e.obs.Retried(err)
		wait := backoff(attempt, e.cfg.Retry.Initial, e.cfg.Retry.Max)
		e.log.Warn("retrying", "what", what, "in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// backoff is exponential with "equal jitter": half fixed, half random, so
// retries of many sinks spread out but never fire at once.
func backoff(attempt int, initial, maxWait time.Duration) time.Duration {
	d := maxWait
	if attempt < 30 {
		d = min(initial<<attempt, maxWait)
	}
	return d/2 + rand.N(d/2+1)
}
