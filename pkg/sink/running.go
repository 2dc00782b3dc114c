package sink

import (
	"context"
	"fmt"
	"time"
)

// Running is an engine run in a goroutine of its own by Start, for callers
// that drive it (a rebuild): Run's result is received once, by that
// goroutine, and kept, so Done/Err and Stop may look at it in any order and
// as often as they like. (Receiving it from a channel in two places hung a
// rebuild whose engine had stopped by itself: the second receive never
// returned.)
type Running struct {
	eng    *Engine
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error         // what Run returned, once done is closed
}

// Start runs e until Stop; ctx's values are kept, its cancellation is not
// (Stop decides when the engine ends).
func (e *Engine) Start(ctx context.Context) *Running {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &Running{eng: e, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = e.Run(ctx)
	}()
	return r
}

// Engine is the engine that runs.
func (r *Running) Engine() *Engine { return r.eng }

// Done is closed once Run has returned; Err then says what it returned.
func (r *Running) Done() <-chan struct{} { return r.done }

// Err is what Run returned; valid once Done is closed.
func (r *Running) Err() error { return r.err }

// Stop cancels the engine and returns what Run returned, waiting at most
// timeout; it may be called again, and after Run returned by itself.
func (r *Running) Stop(timeout time.Duration) error {
	r.cancel()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.done:
		return r.err
	case <-t.C:
		return fmt.Errorf("the engine did not stop within %s of cancellation (state %s)", timeout, r.eng.Stats().State)
	}
}
