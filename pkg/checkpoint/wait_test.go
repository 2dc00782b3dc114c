package checkpoint_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func TestKVForwardOnlyConflictAndWait(t *testing.T) {
	_, js := testenv.NATS(t).Connect(t)
	ctx := context.Background()
	a, err := checkpoint.NewKV(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	if cp, err := a.Load(ctx, "s1"); err != nil || cp != 0 {
		t.Fatalf("fresh checkpoint = %d, %v", cp, err)
	}
	if err := a.Save(ctx, "s1", 10); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, "s1", 5); !errors.Is(err, checkpoint.ErrBackwards) {
		t.Fatalf("saving backwards: %v, want ErrBackwards", err)
	}
	// A second instance of the same sink loaded the same revision; once the
	// first saves, the second's save must fail loudly.
	b, _ := checkpoint.NewKV(ctx, js, "")
	if _, err := b.Load(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, "s1", 20); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(ctx, "s1", 30); !errors.Is(err, checkpoint.ErrConflict) {
		t.Fatalf("second instance saved over the first: %v", err)
	}
	// Reset is the one way back; the resetting store keeps working.
	if err := a.Reset(ctx, "s1", 3); err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, "s1", 4); err != nil {
		t.Fatalf("save after reset: %v", err)
	}

	for name, wait := range map[string]func(context.Context, uint64) error{
		"watch": func(ctx context.Context, pos uint64) error { return a.WaitFor(ctx, "s1", pos) },
		"poll":  func(ctx context.Context, pos uint64) error { return checkpoint.WaitFor(ctx, a, "s1", pos) },
	} {
		t.Run(name, func(t *testing.T) {
			cp, _ := a.Load(ctx, "s1")
			short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			if err := wait(short, cp+1); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("waiting for an unapplied position: %v, want a timeout", err)
			}
			done := make(chan error, 1)
			go func() {
				c, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				done <- wait(c, cp+1)
			}()
			time.Sleep(20 * time.Millisecond) // let the waiter start before the save it waits for
			if err := a.Save(ctx, "s1", cp+1); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("wait did not return after the save: %v", err)
			}
		})
	}
}
