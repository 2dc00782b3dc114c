package checkpoint_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestKVFence: a new active instance fences the checkpoint before it reads
// it; the former active, which loaded the checkpoint before, can no longer
// save, even though the position did not move; the new one saves on.
func TestKVFence(t *testing.T) {
	_, js := testenv.NATS(t).Connect(t)
	ctx := context.Background()
	old, _ := checkpoint.NewKV(ctx, js, "")
	cur, _ := checkpoint.NewKV(ctx, js, "")
	if err := cur.Fence(ctx, "fresh"); err != nil { // no checkpoint yet
		t.Fatal(err)
	}
	if cp, err := cur.Load(ctx, "fresh"); err != nil || cp != 0 {
		t.Fatalf("fenced fresh checkpoint = %d, %v; want 0", cp, err)
	}

	if err := old.Save(ctx, "s1", 10); err != nil {
		t.Fatal(err)
	}
	if err := cur.Fence(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if cp, err := cur.Load(ctx, "s1"); err != nil || cp != 10 {
		t.Fatalf("checkpoint after the fence = %d, %v; want 10 unchanged", cp, err)
	}
	if err := old.Save(ctx, "s1", 20); !errors.Is(err, checkpoint.ErrConflict) {
		t.Fatalf("the fenced instance saved: %v, want ErrConflict", err)
	}
	if err := cur.Save(ctx, "s1", 20); err != nil {
		t.Fatal(err)
	}
	if cp, _ := cur.Load(ctx, "s1"); cp != 20 {
		t.Fatalf("checkpoint %d, want 20", cp)
	}
}
