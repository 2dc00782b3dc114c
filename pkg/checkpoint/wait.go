package checkpoint

import (
	"context"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Loader reads a sink's checkpoint. Every Store is one; a target that keeps
// its own checkpoint offers one too (sink-cache: cache.Checkpoints).
type Loader interface {
	Load(ctx context.Context, sink string) (uint64, error)
}

// WaitFor returns once sink has applied position pos, or ctx ends: the
// read-your-writes step between appending (the bridge answers positions)
// and querying the read model. It polls, quickly at first.
func WaitFor(ctx context.Context, l Loader, sink string, pos uint64) error {
	wait := time.Millisecond
	for {
		cp, err := l.Load(ctx, sink)
		if err == nil && cp >= pos {
			return nil
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// WaitFor is WaitFor for the KV store, without polling: it watches the
// sink's key and returns on the first update at or past pos.
func (s *KV) WaitFor(ctx context.Context, sink string, pos uint64) error {
	w, err := s.kv.Watch(ctx, sink)
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case e := <-w.Updates():
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue // nil ends the initial values
			}
			if cp, err := strconv.ParseUint(string(e.Value()), 10, 64); err == nil && cp >= pos {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
