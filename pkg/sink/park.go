package sink

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// Per-stream parking, on_error "park". With "dead-letter" a sink moves on
// after a refused event, and later events of the same stream are applied on
// top of the hole. With "park" the refused event is dead-lettered and its
// stream (its subject) is parked behind it: every later event of that
// stream is dead-lettered too, marked ParkedBehind that position, without
// being attempted, while every other stream flows on in order.
//
// The parked streams live in the dead-letter store, not in memory: the
// engine lists them from there when it starts (an event parks its stream
// from its position on, so a replay after a reset applies what came before
// the hole again and parks the rest again). Only the write loop changes
// them, between two batches, no write in flight: a parked event is stored
// before its batch is written (before the checkpoint moves past it), and
// a retry or discard, run there too, sees every parked event of the stream
// stored. Events of the stream that come after an un-park are applied in
// order, after everything the retry applied.

// DeadLetterStore is a DeadLetterer that can also list and delete a sink's
// dead letters, which parking needs (pkg/deadletter implements it).
type DeadLetterStore interface {
	DeadLetterer
	// StoredLetters returns sink's dead letters in position order.
	StoredLetters(ctx context.Context, sink string) ([]StoredLetter, error)
	// DeleteLetter removes one dead letter; one already gone is no error.
	DeleteLetter(ctx context.Context, seq uint64) error
}

// StoredLetter is a dead letter as its store keeps it.
type StoredLetter struct {
	DeadLetter        // Err is nil: Reason says why
	Seq        uint64 // the store's id for it
	Reason     string
	Time       time.Time
}

// ParkedStream is one stream the error policy "park" holds.
type ParkedStream struct {
	Subject string // events.<category>.<streamId>
	// Position is the stream's first event in the dead-letter store: it
	// and every later event of the stream are parked there.
	Position uint64
	Events   int    // the stream's events in the dead-letter store
	Reason   string // why the event at Position was refused
	Since    time.Time
}

// parking is the set of parked streams, by subject.
type parking struct {
	mu      sync.Mutex
	streams map[string]*parkedStream
}

type parkedStream struct {
	ParkedStream
	last uint64 // the highest position parked
}

// count returns how many streams and events are parked.
func (p *parking) count() (streams, events int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.streams {
		events += s.Events
	}
	return len(p.streams), events
}

// behind returns the position the stream of subject is parked behind when
// an event of it at pos is to be parked.
func (p *parking) behind(subject string, pos uint64) (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.streams[subject]
	if s == nil || pos < s.Position {
		return 0, false
	}
	return s.Position, true
}

func (p *parking) has(subject string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.streams[subject] != nil
}

// add records a dead letter of subject at pos; reason is set for a refused
// event, empty for one parked behind another.
func (p *parking) add(subject string, pos uint64, reason string, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.streams == nil {
		p.streams = map[string]*parkedStream{}
	}
	s := p.streams[subject]
	switch {
	case s == nil:
		p.streams[subject] = &parkedStream{ParkedStream{Subject: subject, Position: pos, Events: 1, Reason: reason, Since: at}, pos}
	case pos < s.Position: // refused again after a reset: earlier than before
		s.Position, s.Events = pos, s.Events+1
		if reason != "" {
			s.Reason = reason
		}
	case pos > s.last:
		s.last, s.Events = pos, s.Events+1
	}
	// Otherwise a position stored before (a replay): the store keeps one.
}

// blockAt says the stream stays parked at pos with events left, after a
// retry that stopped there.
func (p *parking) blockAt(subject string, pos uint64, events int, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.streams[subject]; s != nil {
		s.Position, s.Events, s.Reason = pos, events, reason
	}
}

func (p *parking) remove(subject string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.streams, subject)
}

func (p *parking) replace(streams map[string]*parkedStream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.streams = streams
}

// Parks reports whether the sink parks streams (on_error "park").
func (e *Engine) Parks() bool { return e.letters != nil }

// Parked returns the streams the sink parks, oldest hole first.
func (e *Engine) Parked() []ParkedStream {
	e.parked.mu.Lock()
	out := make([]ParkedStream, 0, len(e.parked.streams))
	for _, s := range e.parked.streams {
		out = append(out, s.ParkedStream)
	}
	e.parked.mu.Unlock()
	slices.SortFunc(out, func(a, b ParkedStream) int { return cmp.Compare(a.Position, b.Position) })
	return out
}

// streamSubject reports whether subject is one stream's
// (events.<category>.<streamId>): only those are parked.
func streamSubject(subject string) bool {
	toks := strings.Split(subject, ".")
	return len(toks) == 3 && toks[0] == envelope.SubjectPrefix && toks[1] != "" && toks[2] != ""
}

// loadParked lists the parked streams from the dead-letter store: each of
// the sink's dead letters parks its stream from its position on (those of
// an earlier "dead-letter" policy too: their streams have a hole).
func (e *Engine) loadParked(ctx context.Context) error {
	letters, err := e.letters.StoredLetters(ctx, e.cfg.Name)
	if err != nil {
		return fmt.Errorf("listing dead letters: %w", err)
	}
	var p parking
	for _, l := range letters {
		if streamSubject(l.Subject) {
			p.add(l.Subject, l.Position, l.Reason, l.Time)
		}
	}
	if p.streams == nil {
		p.streams = map[string]*parkedStream{}
	}
	e.parked.replace(p.streams)
	if n, events := e.parked.count(); n > 0 {
		e.log.Warn("streams parked in the dead-letter store (jetsyncctl dlq retry or discard --stream)", "streams", n, "events", events)
	}
	return nil
}

// letterOf is ev as a dead letter.
func letterOf(ev envelope.Event, reason error) DeadLetter {
	msg := ev.ToMsg()
	return DeadLetter{Subject: msg.Subject, Position: ev.Position, Header: msg.Header, Data: ev.Data, Err: reason}
}

// storeLetter keeps dl in the dead-letter store, retrying until it is there: it
// must be before the checkpoint moves past it.
func (e *Engine) storeLetter(ctx context.Context, dl DeadLetter) error {
	return e.retry(ctx, "store dead letter", func(ctx context.Context) error { return e.dlq.DeadLetter(ctx, e.cfg.Name, dl) })
}

// refuse dead-letters an event (or message) the target or the decoder
// refused, and parks its stream behind it.
func (e *Engine) refuse(ctx context.Context, dl DeadLetter) error {
	e.log.Error("dead-lettering event and parking its stream", "position", dl.Position, "subject", dl.Subject, "err", dl.Err)
	if err := e.storeLetter(ctx, dl); err != nil {
		return err
	}
	if streamSubject(dl.Subject) {
		e.parked.add(dl.Subject, dl.Position, dl.Err.Error(), time.Now())
	}
	e.stats.skipped.Add(1)
	e.obs.EventFailed("dead-lettered")
	return nil
}

// parkEvent dead-letters ev, not attempted, behind the position its stream
// is parked at.
func (e *Engine) parkEvent(ctx context.Context, ev envelope.Event, subject string, behind uint64) error {
	dl := letterOf(ev, fmt.Errorf("event %s (type %s) parked behind position %d of %s: not attempted", ev.ID, ev.Type, behind, subject))
	dl.ParkedBehind = behind
	e.log.Warn("parking event", "position", ev.Position, "id", ev.ID, "type", ev.Type, "subject", subject, "behind", behind)
	if err := e.storeLetter(ctx, dl); err != nil {
		return err
	}
	e.parked.add(subject, ev.Position, "", time.Now())
	e.stats.skipped.Add(1)
	e.obs.EventFailed("parked")
	return nil
}

// parkBatch runs before b is written: it dead-letters the messages of b
// that are not events and parks their streams, then takes the events of
// parked streams out of b, dead-lettered. It returns the batch to write.
func (e *Engine) parkBatch(ctx context.Context, b *Batch) (*Batch, error) {
	for _, dl := range b.refused {
		if err := e.refuse(ctx, dl); err != nil {
			return nil, err
		}
	}
	b.refused = nil
	if n, _ := e.parked.count(); n == 0 {
		return b, nil
	}
	var kept []envelope.Event
	for i, ev := range b.Events {
		subject := ev.Subject()
		if behind, ok := e.parked.behind(subject, ev.Position); ok {
			if kept == nil {
				kept = append(make([]envelope.Event, 0, len(b.Events)), b.Events[:i]...)
			}
			if err := e.parkEvent(ctx, ev, subject, behind); err != nil {
				return nil, err
			}
			continue
		}
		if kept != nil {
			kept = append(kept, ev)
		}
	}
	if kept == nil {
		return b, nil
	}
	return newBatch(kept, b.Through), nil
}

// parkFailed is applyPolicy for "park": the events of b that failed are
// dead-lettered and park their streams, the later events of those streams
// in b are parked (not written again), and the rest is the batch to write.
func (e *Engine) parkFailed(ctx context.Context, b *Batch, failed map[int]error) (*Batch, error) {
	kept := &Batch{Events: make([]envelope.Event, 0, len(b.Events)-len(failed)), Through: b.Through}
	for i, ev := range b.Events {
		subject := ev.Subject()
		if err, bad := failed[i]; bad {
			if err := e.refuse(ctx, letterOf(ev, fmt.Errorf("event %s (type %s): %w", ev.ID, ev.Type, err))); err != nil {
				return nil, err
			}
			continue
		}
		if behind, ok := e.parked.behind(subject, ev.Position); ok {
			if err := e.parkEvent(ctx, ev, subject, behind); err != nil {
				return nil, err
			}
			continue
		}
		kept.Events = append(kept.Events, ev)
		kept.Bytes += ev.Size()
	}
	return kept, nil
}

// RetryParked re-applies the parked events of the stream on subject, in
// position order, one at a time, between two batches, and un-parks the
// stream when all went through. It returns how many were applied (each one
// applied leaves the dead-letter store); when the target still refuses one,
// an error wrapping ErrStillParked: the stream stays parked at that event,
// with it and the rest, and nothing after it was applied. ErrNotParked
// means the stream is not parked: nothing changed.
func (e *Engine) RetryParked(ctx context.Context, subject string) (int, error) {
	var n atomic.Int64
	err := e.parkedAction(ctx, subject, func(ctx context.Context) error {
		return e.retryParked(ctx, subject, func() { n.Add(1) })
	})
	return int(n.Load()), err
}

// DiscardParked drops the parked events of the stream on subject from the
// dead-letter store and un-parks it, between two batches: its later events
// are applied again (on top of the hole, as the operator chose). It
// returns how many were dropped, or ErrNotParked (nothing changed).
func (e *Engine) DiscardParked(ctx context.Context, subject string) (int, error) {
	var n atomic.Int64
	err := e.parkedAction(ctx, subject, func(ctx context.Context) error {
		return e.discardParked(ctx, subject, func() { n.Add(1) })
	})
	return int(n.Load()), err
}

// parkedAction runs f in the write loop, between two batches.
func (e *Engine) parkedAction(ctx context.Context, subject string, f func(context.Context) error) error {
	if e.letters == nil {
		return fmt.Errorf("%w: sink %s does not park streams (on_error is %s)", ErrNotParked, e.cfg.Name, e.cfg.OnError)
	}
	if !streamSubject(subject) {
		return fmt.Errorf("%w: %q is not a stream's subject (events.<category>.<streamId>)", ErrNotParked, subject)
	}
	r := redelivery{ctx: ctx, f: f, done: make(chan error, 1)}
	return ask(ctx, e.redeliveries, r, r.done)
}

// parkedLetter is one parked position and every copy of it in the store.
type parkedLetter struct {
	StoredLetter
	seqs []uint64
}

// streamLetters lists the stream's dead letters in position order, one per
// position (a replay after a reset may have stored one twice).
func (e *Engine) streamLetters(ctx context.Context, subject string) ([]parkedLetter, error) {
	all, err := e.letters.StoredLetters(ctx, e.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("listing dead letters: %w", err)
	}
	var out []parkedLetter
	for _, l := range all {
		if l.Subject != subject {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Position == l.Position {
			out[n-1].seqs = append(out[n-1].seqs, l.Seq)
			continue
		}
		out = append(out, parkedLetter{l, []uint64{l.Seq}})
	}
	return out, nil
}

func (e *Engine) notParked(subject string) error {
	return fmt.Errorf("%w: %s has no parked events in the dead-letter store of %s", ErrNotParked, subject, e.cfg.Name)
}

func (e *Engine) retryParked(ctx context.Context, subject string, applied func()) error {
	if !e.parked.has(subject) {
		return e.notParked(subject)
	}
	letters, err := e.streamLetters(ctx, subject)
	if err != nil {
		return err
	}
	for i, l := range letters {
		stay := func(err error) error {
			e.parked.blockAt(subject, l.Position, len(letters)-i, err.Error())
			e.log.Warn("parked stream stays parked", "subject", subject, "position", l.Position, "applied", i, "err", err)
			return fmt.Errorf("%w at position %d (%d of its %d parked events applied before it): %w", ErrStillParked, l.Position, i, len(letters), err)
		}
		ev, err := envelope.FromMsg(l.Subject, l.Header, l.Data, l.Position)
		if err != nil {
			return stay(fmt.Errorf("the dead letter is not a valid event, discard the stream instead: %w", err))
		}
		b := newBatch([]envelope.Event{ev}, 0)
		b.Redelivery = true
		if err := e.redeliver(ctx, b); err != nil {
			return stay(fmt.Errorf("event %s (type %s) is still refused: %w", ev.ID, ev.Type, err))
		}
		for _, seq := range l.seqs {
			if err := e.retry(ctx, "delete re-applied dead letter", func(ctx context.Context) error { return e.letters.DeleteLetter(ctx, seq) }); err != nil {
				// Applied, still stored: the next retry applies it again.
				return stay(fmt.Errorf("event %s is re-applied but its dead letter %d could not be removed: %w", ev.ID, seq, err))
			}
		}
		applied()
	}
	e.parked.remove(subject)
	e.log.Info("parked stream re-applied and un-parked", "subject", subject, "events", len(letters))
	return nil
}

func (e *Engine) discardParked(ctx context.Context, subject string, dropped func()) error {
	if !e.parked.has(subject) {
		return e.notParked(subject)
	}
	letters, err := e.streamLetters(ctx, subject)
	if err != nil {
		return err
	}
	for i, l := range letters {
		for _, seq := range l.seqs {
			if err := e.retry(ctx, "discard parked event", func(ctx context.Context) error { return e.letters.DeleteLetter(ctx, seq) }); err != nil {
				e.parked.blockAt(subject, l.Position, len(letters)-i, "discard interrupted")
				return fmt.Errorf("discarding the parked events of %s: %d of %d dropped, it stays parked at position %d: %w", subject, i, len(letters), l.Position, err)
			}
		}
		dropped()
	}
	e.parked.remove(subject)
	e.log.Warn("parked stream discarded and un-parked: its later events are applied on top of the hole", "subject", subject, "events", len(letters))
	return nil
}
