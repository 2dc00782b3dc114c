package sink_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// fixableWriter is poisonWriter until fix is set: then the target takes
// the poison events too (an operator fixed it).
type fixableWriter struct {
	poisonWriter
	fixed atomic.Bool
}

func (f *fixableWriter) WriteBatch(ctx context.Context, b *sink.Batch) error {
	if !f.fixed.Load() {
		return f.poisonWriter.WriteBatch(ctx, b)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range b.Events {
		f.applied = append(f.applied, ev.Position)
	}
	return nil
}

// memLetters keeps dead letters in memory.
type memLetters struct {
	mu      sync.Mutex
	letters []sink.DeadLetter
}

func (m *memLetters) DeadLetter(_ context.Context, _ string, dl sink.DeadLetter) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.letters = append(m.letters, dl)
	return nil
}

func (m *memLetters) all() []sink.DeadLetter {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]sink.DeadLetter(nil), m.letters...)
}

// heldEngine runs an engine WithHoldOnStop over publishMix's 21 events
// (the bad one at 11) until it holds there.
func heldEngine(t *testing.T, malformed bool, opts ...sink.Option) (*sinktest.Running, *fixableWriter, *checkpoint.KV) {
	t.Helper()
	srv, _ := publishMix(t, malformed)
	_, js := srv.Connect(t)
	store, err := checkpoint.NewKV(context.Background(), js, "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := sink.DefaultConfig("held")
	cfg.Batch.MaxEvents = 4 // the bad event sits inside a batch
	w := &fixableWriter{}
	eng, err := sink.New(cfg, js, w, store, slog.New(slog.NewTextHandler(io.Discard, nil)), append(opts, sink.WithHoldOnStop())...)
	if err != nil {
		t.Fatal(err)
	}
	r := sinktest.Start(t, eng)
	waitStopped(t, r, 11, nil)
	return r, w, store
}

// waitStopped waits until the engine holds at pos, stopped by another
// StopError than prev, and checks the checkpoint is just before it.
func waitStopped(t *testing.T, r *sinktest.Running, pos uint64, prev *sink.StopError) *sink.StopError {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() bool {
		select {
		case <-r.Done():
			t.Fatalf("Run returned %v; a sink WithHoldOnStop must hold", r.Err())
		default:
		}
		s := r.Eng.Stats()
		return s.State == sink.StateStopped && s.Stopped != nil && s.Stopped != prev
	}, "the sink never held at %d: %+v", pos, r.Eng.Stats())
	s := r.Eng.Stats()
	if s.Stopped.Position != pos || s.Checkpoint != pos-1 {
		t.Fatalf("stopped at %d with checkpoint %d, want at %d with checkpoint %d", s.Stopped.Position, s.Checkpoint, pos, pos-1)
	}
	if !errors.Is(s.Stopped, sink.ErrStopped) || s.LastError != s.Stopped.Error() {
		t.Fatalf("stop %v (last error %q) is not an ErrStopped reported as the last error", s.Stopped, s.LastError)
	}
	return s.Stopped
}

func TestHoldOnStopResumeAfterFix(t *testing.T) {
	r, w, store := heldEngine(t, false)
	ctx := context.Background()
	first := r.Eng.Stopped()
	if first.ID != "e11" || first.Type != "Poison" || first.Subject != "events.c.s1" || first.Time.IsZero() {
		t.Fatalf("stop %+v does not name the event", first)
	}
	if cp, _ := store.Load(ctx, "held"); cp != 10 {
		t.Fatalf("stored checkpoint %d, want 10", cp)
	}

	// Resume without a fix: the target refuses it again, and says so.
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resumed, err := r.Eng.Resume(rctx, 11)
	var again *sink.StopError
	if !errors.As(err, &again) || again.Position != 11 || resumed != first {
		t.Fatalf("Resume before the fix = %v, %v; want the stop it resumed and a new stop at 11", resumed, err)
	}
	second := waitStopped(t, r, 11, first)

	// A wrong position or a skip of a running sink changes nothing.
	if _, err := r.Eng.Skip(rctx, 12); !errors.Is(err, sink.ErrNotStopped) {
		t.Fatalf("Skip at the wrong position = %v, want ErrNotStopped", err)
	}
	if r.Eng.Stopped() != second || r.Eng.Stats().Checkpoint != 10 {
		t.Fatal("a refused Skip changed the sink")
	}

	w.fixed.Store(true)
	if _, err := r.Eng.Resume(rctx, 0); err != nil {
		t.Fatalf("Resume after the fix = %v", err)
	}
	r.WaitFor(t, 21, 20*time.Second)
	if got := w.positions(); len(got) != 21 || got[10] != 11 {
		t.Fatalf("applied %v, want 1..21 in order", got)
	}
	if _, err := r.Eng.Resume(rctx, 0); !errors.Is(err, sink.ErrNotStopped) {
		t.Fatalf("Resume of a running sink = %v, want ErrNotStopped", err)
	}
	if err := r.Stop(t); err != nil {
		t.Fatalf("Run = %v after a clean stop", err)
	}
}

func TestHoldOnStopSkip(t *testing.T) {
	for _, malformed := range []bool{false, true} {
		t.Run(map[bool]string{false: "refused", true: "malformed"}[malformed], func(t *testing.T) {
			dlq := &memLetters{}
			r, w, store := heldEngine(t, malformed, sink.WithDeadLetters(dlq))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			stop, err := r.Eng.Skip(ctx, 11)
			if err != nil || stop.Position != 11 {
				t.Fatalf("Skip = %v, %v", stop, err)
			}
			r.WaitFor(t, 21, 20*time.Second)
			letters := dlq.all()
			if len(letters) != 1 || letters[0].Position != 11 || letters[0].Subject != "events.c.s1" || !errors.Is(letters[0].Err, stop.Reason) {
				t.Fatalf("dead letters %+v, want the skipped event at 11 with its reason", letters)
			}
			got := w.positions()
			if len(got) != 20 || got[9] != 10 || got[10] != 12 {
				t.Fatalf("applied %v, want 1..21 without 11", got)
			}
			if s := r.Eng.Stats(); s.Skipped != 1 || s.Stopped != nil || s.State != sink.StateRunning {
				t.Fatalf("after skip: %+v", s)
			}
			if cp, _ := store.Load(context.Background(), "held"); cp != 21 {
				t.Fatalf("stored checkpoint %d, want 21", cp)
			}
			if _, err := r.Eng.Skip(ctx, 0); !errors.Is(err, sink.ErrNotStopped) {
				t.Fatalf("Skip of a running sink = %v, want ErrNotStopped", err)
			}
		})
	}
}

// TestHoldOnStopReset: a reset works while stopped: back to the start it
// stops at the same event again; past it, it reads on.
func TestHoldOnStopReset(t *testing.T) {
	r, w, _ := heldEngine(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first := r.Eng.Stopped()
	if err := r.Eng.Reset(ctx, 0); err != nil {
		t.Fatal(err)
	}
	waitStopped(t, r, 11, first)
	if got := w.positions(); len(got) != 20 {
		t.Fatalf("applied %d events, want 1..10 twice", len(got))
	}
	if err := r.Eng.Reset(ctx, 11); err != nil {
		t.Fatal(err)
	}
	r.WaitFor(t, 21, 20*time.Second)
	if s := r.Eng.Stats(); s.Stopped != nil || s.Skipped != 0 {
		t.Fatalf("after a reset past the event: %+v", s)
	}
}

// TestHoldOnStopRedeliverAndExit: dead letters are re-applied while the
// sink holds, and a sink cancelled while stopped exits cleanly and still
// reports the stop.
func TestHoldOnStopRedeliverAndExit(t *testing.T) {
	r, w, _ := heldEngine(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ev := envelope.Event{ID: "dl-3", StreamID: "s9", Category: "c", Type: "Ok", Version: 1, Position: 3, Data: json.RawMessage(`{}`)}
	if err := r.Eng.Redeliver(ctx, []envelope.Event{ev}); err != nil {
		t.Fatalf("Redeliver while stopped = %v", err)
	}
	if got := w.positions(); got[len(got)-1] != 3 {
		t.Fatalf("redelivered event not applied: %v", got)
	}
	stop := r.Eng.Stopped()
	if err := r.Stop(t); err != nil {
		t.Fatalf("Run = %v when cancelled while stopped, want nil", err)
	}
	if s := r.Eng.Stats(); s.State != sink.StateExited || s.Stopped != stop {
		t.Fatalf("after exit: state %s, stopped %v; want exited, still naming the stop", s.State, s.Stopped)
	}
}
