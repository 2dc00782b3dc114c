package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/sink"
)

// Fencing (hot standby, sink.Fencer): the fence key, next to the
// checkpoint key (<checkpoint key>:fence, so a hash tag in it keeps both in
// one slot), holds the epoch of the sink's newest tenure. A new active
// instance raises it before it reads the checkpoint; every batch of this
// writer WATCHes it with the checkpoint and commits only while it still
// holds this writer's epoch. A frozen former active that wakes up finds a
// higher epoch (or its EXEC fails because the fence moved under its WATCH)
// and writes nothing.

var _ sink.Fencer = (*Writer)(nil)

// FenceKey is the Redis key holding the sink's fencing epoch.
func (w *Writer) FenceKey() string { return w.cpKey + ":fence" }

// Fence raises the fence to epoch, or fails with sink.ErrFenced when a
// newer tenure holds it already.
func (w *Writer) Fence(ctx context.Context, epoch uint64) error {
	rdb := w.client()
	if rdb == nil {
		return ErrNotConnected
	}
	key := w.FenceKey()
	err := rdb.Watch(ctx, func(tx *redis.Tx) error {
		cur, err := readFence(ctx, tx, key)
		if err != nil {
			return err
		}
		if cur > epoch {
			return w.fenced(cur, epoch)
		}
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, key, epoch, 0)
			return nil
		})
		return err
	}, key)
	if err != nil {
		return classify(fmt.Errorf("raising the fence %s to %d: %w", key, epoch, err))
	}
	w.epoch.Store(epoch)
	return nil
}

// checkFence, inside a WATCH of the fence key, refuses a write of a writer
// whose epoch is not the fence's. A writer never fenced (no lease) does
// not check.
func (w *Writer) checkFence(ctx context.Context, tx *redis.Tx) error {
	epoch := w.epoch.Load()
	if epoch == 0 {
		return nil
	}
	cur, err := readFence(ctx, tx, w.FenceKey())
	if err != nil {
		return err
	}
	if cur != epoch {
		return w.fenced(cur, epoch)
	}
	return nil
}

func (w *Writer) fenced(cur, mine uint64) error {
	return sink.Permanent(fmt.Errorf("%w: %s holds epoch %d, this instance's is %d: it lost the lease, and writes nothing more",
		sink.ErrFenced, w.FenceKey(), cur, mine))
}

// watchKeys are the keys a batch WATCHes.
func (w *Writer) watchKeys() []string {
	if w.epoch.Load() == 0 {
		return []string{w.cpKey}
	}
	return []string{w.cpKey, w.FenceKey()}
}

func readFence(ctx context.Context, c redis.StringCmdable, key string) (uint64, error) {
	s, err := c.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the fence %s: %w", key, err)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, sink.Permanent(fmt.Errorf("%s holds %q, not an epoch: delete it (the active instance sets it again when it starts)", key, s))
	}
	return n, nil
}
