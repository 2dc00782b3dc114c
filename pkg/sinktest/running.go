package sinktest

import (
	"context"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// Running is one Run of an engine in a goroutine, for tests: every sink's
// tests start, wait for and stop engines the same way.
type Running struct {
	Eng    *sink.Engine
	cancel context.CancelFunc
	done   chan struct{}
	err    error // what Run returned, once done is closed
}

// Start runs eng until Stop or the end of the test.
func Start(t testing.TB, eng *sink.Engine) *Running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{Eng: eng, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = eng.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() { _ = r.Stop(t) })
	return r
}

// Done is closed when Run has returned; Err then says what it returned.
func (r *Running) Done() <-chan struct{} { return r.done }

// Err is what Run returned; call it after Done is closed.
func (r *Running) Err() error { return r.err }

// Stop cancels the run and returns what Run returned; it may be called again.
func (r *Running) Stop(t testing.TB) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(30 * time.Second):
		t.Fatal("sink did not stop within 30s of cancellation")
		return nil
	}
}

// WaitFor polls until the engine's checkpoint reaches pos, and fails the
// test if Run returns first.
func (r *Running) WaitFor(t testing.TB, pos uint64, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, func() bool {
		select {
		case <-r.done:
			t.Fatalf("sink stopped before reaching %d: %v", pos, r.err)
		default:
		}
		return r.Eng.Stats().Checkpoint >= pos
	}, "sink %s at %d, want %d", r.Eng.Name(), r.Eng.Stats().Checkpoint, pos)
}
