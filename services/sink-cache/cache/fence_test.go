package cache

import (
	"errors"
	"slices"
	"testing"

	"github.com/jetsync/jetsync/pkg/sink"
)

// TestStaleEpochIsRefused: once a newer tenure raised the fence, the
// former active's batches (and resets, and dead-letter retries) fail with
// ErrFenced, permanently, and write nothing; the new active writes on.
func TestStaleEpochIsRefused(t *testing.T) {
	r := startRedis(t)
	old := r.writer(t, opsConfig)
	if err := old.Fence(t.Context(), 5); err != nil {
		t.Fatal(err)
	}
	r.checkpoint(t, old)
	write(t, old, batch(event(1, "Placed", "1", `{}`)))

	cur := r.writer(t, opsConfig)
	if err := cur.Fence(t.Context(), 9); err != nil {
		t.Fatal(err)
	}
	if cp := r.checkpoint(t, cur); cp != 1 {
		t.Fatalf("checkpoint %d, want 1", cp)
	}

	err := old.WriteBatch(t.Context(), batch(event(2, "Cancelled", "1", `{}`)))
	if !errors.Is(err, sink.ErrFenced) || !errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("stale write: %v, want a permanent ErrFenced", err)
	}
	if err := old.ResetCheckpoint(t.Context(), 0); !errors.Is(err, sink.ErrFenced) {
		t.Errorf("stale reset: %v, want ErrFenced", err)
	}
	redo := batch(event(2, "Cancelled", "1", `{}`))
	redo.Redelivery, redo.Through = true, 0
	if err := old.WriteBatch(t.Context(), redo); !errors.Is(err, sink.ErrFenced) {
		t.Errorf("stale redelivery: %v, want ErrFenced", err)
	}
	if err := old.Fence(t.Context(), 7); !errors.Is(err, sink.ErrFenced) {
		t.Errorf("fencing below the current epoch: %v, want ErrFenced", err)
	}
	if got := r.list(t, "log:1"); !slices.Equal(got, []string{"1"}) {
		t.Errorf("log after the stale writes: %q, want just 1", got)
	}
	if !r.exists(t, "order:1") {
		t.Error("order:1 deleted by a fenced write")
	}
	if cp := r.checkpoint(t, cur); cp != 1 {
		t.Errorf("checkpoint %d after the stale writes, want 1", cp)
	}

	write(t, cur, batch(event(2, "Cancelled", "1", `{}`)))
	if got := r.list(t, "log:1"); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("log: %q, want 1 2", got)
	}
	if got := r.get(t, old.FenceKey()); got != "9" {
		t.Errorf("fence %q, want 9", got)
	}
}

// TestFenceRaisedMidTransactionAbortsIt: the new active raises the fence
// after the former active read it and before its EXEC (a process frozen
// between the two): the WATCH makes the EXEC fail, nothing of the batch
// lands, and the retry is refused.
func TestFenceRaisedMidTransactionAbortsIt(t *testing.T) {
	r := startRedis(t)
	old := r.writer(t, opsConfig)
	if err := old.Fence(t.Context(), 5); err != nil {
		t.Fatal(err)
	}
	r.checkpoint(t, old)
	cur := r.writer(t, opsConfig)
	fenced := false
	old.client().AddHook(&execHook{before: func() {
		if !fenced {
			fenced = true
			if err := cur.Fence(t.Context(), 9); err != nil {
				t.Errorf("Fence: %v", err)
			}
		}
	}})
	b := batch(event(1, "Placed", "1", `{}`), event(2, "Placed", "2", `{}`))
	err := old.WriteBatch(t.Context(), b)
	if err == nil {
		t.Fatal("the batch committed although the fence moved under its WATCH")
	}
	if err := old.WriteBatch(t.Context(), b); !errors.Is(err, sink.ErrFenced) {
		t.Fatalf("retry: %v, want ErrFenced", err)
	}
	if r.exists(t, "order:1") || r.exists(t, "log:1") || r.exists(t, "order:2") {
		t.Error("part of the aborted batch landed")
	}
	if cp := r.checkpoint(t, cur); cp != 0 {
		t.Errorf("checkpoint %d, want 0", cp)
	}
}
