package sink

import (
	"context"
	"errors"
	"fmt"

	"github.com/jetsync/jetsync/pkg/checkpoint"
)

// A sink run WithHoldOnStop does not end when the error policy "stop"
// halts it: it holds before the refused event, connected, with the
// checkpoint just before it, and does what an operator asks:
//
//   - Skip: store the event as a dead letter (or log it), move the
//     checkpoint past it, read on;
//   - Resume: read on from the checkpoint, trying the event again (after the
//     target was fixed);
//   - Reset: move the checkpoint anywhere (the request every state takes);
//   - Redeliver: dead letters are re-applied while it holds, the writer
//     being idle.
//
// Everything the hold does happens on Run's goroutine, between two runs of
// the pipeline, so no write is in flight.

// hold is one stop of the sink, waiting for an operator.
type hold struct {
	stop    *StopError
	actions chan holdAction
	done    chan struct{} // closed when the hold ends
}

// holdAction is an operator's Skip or Resume.
type holdAction struct {
	ctx      context.Context
	skip     bool
	position uint64 // 0, or where the operator saw the sink stopped
	done     chan error
}

// Stopped returns the event the error policy holds the sink before, nil
// when it is not stopped.
func (e *Engine) Stopped() *StopError {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.held == nil {
		return nil
	}
	return e.held.stop
}

// Skip moves a sink stopped by its error policy past the event it stopped
// at and lets it read on: the event is stored as a dead letter when the
// engine has a dead-letter store (WithDeadLetters), else logged with its
// position. position, unless 0, is where the operator saw the sink stopped;
// stopped elsewhere, it refuses. It returns the skipped event once the
// checkpoint is past it, and ErrNotStopped (nothing changed) when the sink
// is not stopped there.
func (e *Engine) Skip(ctx context.Context, position uint64) (*StopError, error) {
	h, err := e.act(ctx, holdAction{skip: true, position: position})
	if err != nil {
		return nil, err
	}
	return h.stop, nil
}

// Resume lets a sink stopped by its error policy read on from its
// checkpoint, so it tries the event it stopped at again (after the target
// was fixed), and returns that stop. The error is nil once that event is
// applied, the new *StopError when the sink stopped again (at the same
// event or a later one), ErrNotStopped when it was not stopped (at
// position, unless 0): nothing changed, and ctx's error when neither
// happened in time (the sink goes on trying).
func (e *Engine) Resume(ctx context.Context, position uint64) (*StopError, error) {
	h, err := e.act(ctx, holdAction{position: position})
	if err != nil {
		return nil, err
	}
	for {
		ch := e.changes()
		if e.stats.checkpoint.Load() >= h.stop.Position {
			return h.stop, nil
		}
		if s := e.Stopped(); s != nil && s != h.stop {
			return h.stop, s
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return h.stop, ctx.Err()
		}
	}
}

// DeadLetters reports whether Skip stores the events it skips.
func (e *Engine) DeadLetters() bool { return e.dlq != nil }

// act hands an operator's action to the hold and waits for its answer.
func (e *Engine) act(ctx context.Context, a holdAction) (*hold, error) {
	e.mu.Lock()
	h := e.held
	e.mu.Unlock()
	if h == nil {
		return nil, fmt.Errorf("%w (it is %s)", ErrNotStopped, e.Stats().State)
	}
	a.ctx, a.done = ctx, make(chan error, 1)
	select {
	case h.actions <- a:
	case <-h.done:
		return nil, fmt.Errorf("%w (it went on meanwhile)", ErrNotStopped)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case err := <-a.done:
		return h, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// holdAt holds the sink before stop's event until an operator acts or ctx
// ends. It returns a reset request to apply, nil and nil to read on from
// the checkpoint, or ctx's error; a sink that exits while stopped still
// reports the stop (Stopped).
func (e *Engine) holdAt(ctx context.Context, stop *StopError) (*resetRequest, error) {
	h := &hold{stop: stop, actions: make(chan holdAction), done: make(chan struct{})}
	e.mu.Lock()
	e.held = h
	e.mu.Unlock()
	e.stats.setError(stop)
	e.stats.setState(StateStopped)
	e.notify()
	e.log.Error("sink stopped by its error policy; waiting for an operator (jetsyncctl skip, resume or reset)",
		"position", stop.Position, "id", stop.ID, "type", stop.Type, "subject", stop.Subject, "err", stop.Reason)

	release := func() {
		e.stats.setState(StateStarting)
		e.mu.Lock()
		e.held = nil
		e.mu.Unlock()
		close(h.done)
		e.notify()
	}
	for {
		select {
		case <-ctx.Done():
			close(h.done)
			e.log.Warn("shutting down while stopped; the sink stops at the same event when it starts again, unless it is skipped or the target fixed",
				"position", stop.Position, "checkpoint", e.stats.checkpoint.Load())
			return nil, ctx.Err()
		case r := <-e.resets:
			release()
			return &r, nil
		case r := <-e.redeliveries:
			r.done <- e.serve(r)
		case a := <-h.actions:
			if a.position != 0 && a.position != stop.Position {
				a.done <- fmt.Errorf("%w at position %d: it is stopped at %d", ErrNotStopped, a.position, stop.Position)
				continue
			}
			if a.skip {
				if err := e.skipBounded(ctx, a.ctx, stop); err != nil {
					a.done <- err
					continue
				}
			} else {
				e.log.Info("operator resumes: trying the event again", "position", stop.Position, "id", stop.ID)
			}
			release()
			a.done <- nil
			return nil, nil
		}
	}
}

// skipBounded is skip for as long as the operator waits (actx) and the
// sink runs (ctx).
func (e *Engine) skipBounded(ctx, actx context.Context, stop *StopError) error {
	sctx, cancel := context.WithCancel(actx)
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	return e.skip(sctx, stop)
}

// skip stores stop's event as a dead letter (or logs it), then moves the
// checkpoint past it, in that order: a crash in between stops the sink at
// the same event again, and skipping it again stores one dead letter (the
// store deduplicates by sink and position).
func (e *Engine) skip(ctx context.Context, stop *StopError) error {
	if e.dlq != nil {
		e.log.Warn("operator skips event: dead-lettering it", "position", stop.Position, "id", stop.ID, "type", stop.Type, "err", stop.Reason)
		if err := e.retry(ctx, "store dead letter", func(ctx context.Context) error {
			return e.dlq.DeadLetter(ctx, e.cfg.Name, stop.letter())
		}); err != nil {
			return fmt.Errorf("storing the skipped event as a dead letter: %w", err)
		}
	} else {
		e.log.Error("operator skips event", "position", stop.Position, "id", stop.ID, "type", stop.Type, "subject", stop.Subject, "err", stop.Reason)
	}
	if e.stats.checkpoint.Load() < stop.Position {
		past := newBatch(nil, stop.Position)
		if err := e.retry(ctx, "move checkpoint past skipped event", func(ctx context.Context) error {
			err := e.writeOnce(ctx, past)
			if errors.Is(err, checkpoint.ErrConflict) {
				return Permanent(err) // another instance of this sink: never overwrite it
			}
			return err
		}); err != nil {
			return fmt.Errorf("moving the checkpoint past position %d: %w", stop.Position, err)
		}
		e.setCheckpoint(stop.Position)
	}
	e.stats.skipped.Add(1)
	if e.dlq != nil {
		e.obs.EventFailed("dead-lettered")
	} else {
		e.obs.EventFailed("skipped")
	}
	return nil
}
