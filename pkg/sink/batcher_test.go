package sink

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

func ev(pos uint64, dataLen int) envelope.Event {
	return envelope.Event{ID: "id", StreamID: "s", Category: "c", Type: "T", Version: pos, Position: pos,
		Data: json.RawMessage(`"` + strings.Repeat("x", dataLen) + `"`)}
}

func TestBatcherTriggers(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name      string
		maxEvents int
		maxBytes  int
		adds      []envelope.Event
		wantFull  []bool
	}{
		{"count", 3, 1 << 20, []envelope.Event{ev(1, 1), ev(2, 1), ev(3, 1)}, []bool{false, false, true}},
		{"bytes", 100, 300, []envelope.Event{ev(1, 100), ev(2, 100), ev(3, 100)}, []bool{false, true, true}},
		{"one huge event is a batch of its own", 100, 300, []envelope.Event{ev(1, 1000)}, []bool{true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBatcher(tc.maxEvents, tc.maxBytes, time.Second)
			for i, e := range tc.adds {
				if got := b.Add(e, t0); got != tc.wantFull[i] {
					t.Fatalf("Add #%d full = %v, want %v (bytes %d)", i, got, tc.wantFull[i], b.batch.Bytes)
				}
			}
			out := b.Flush()
			if out.Len() != len(tc.adds) || out.Through != tc.adds[len(tc.adds)-1].Position {
				t.Fatalf("flushed %d events through %d", out.Len(), out.Through)
			}
			if !b.Empty() {
				t.Fatal("batcher not empty after Flush")
			}
		})
	}
}

func TestBatcherInterval(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := NewBatcher(10, 1<<20, 100*time.Millisecond)
	if d := b.UntilNext(t0); d >= 0 {
		t.Fatalf("empty batcher wants a flush in %s", d)
	}
	b.Add(ev(1, 1), t0)
	if d := b.UntilNext(t0.Add(30 * time.Millisecond)); d != 70*time.Millisecond {
		t.Fatalf("UntilNext = %s, want 70ms (measured from the first event)", d)
	}
	b.Add(ev(2, 1), t0.Add(90*time.Millisecond))
	if d := b.UntilNext(t0.Add(150 * time.Millisecond)); d != 0 {
		t.Fatalf("overdue batch: UntilNext = %s, want 0", d)
	}
	b.Flush()
	b.Skip(7, t0.Add(time.Second))
	if b.Empty() || b.UntilNext(t0.Add(time.Second)) != 100*time.Millisecond {
		t.Fatal("a skipped position must still be flushed (to move the checkpoint)")
	}
	if out := b.Flush(); out.Len() != 0 || out.Through != 7 {
		t.Fatalf("skip-only batch = %d events through %d, want 0 through 7", out.Len(), out.Through)
	}
}

func TestBackoffGrowsAndIsBounded(t *testing.T) {
	for attempt := range 40 {
		d := backoff(attempt, 10*time.Millisecond, time.Second)
		ceiling := min(10*time.Millisecond<<min(attempt, 30), time.Second)
		if d < ceiling/2 || d > ceiling {
			t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, ceiling/2, ceiling)
		}
	}
}
