package relational

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/sink"
)

// Fencing (hot standby, sink.Fencer): the sink's jetsync_checkpoints row
// holds, beside the position, the epoch of the sink's newest tenure. A new
// active instance raises it before it reads the checkpoint; every batch of
// this writer locks the row (SELECT ... FOR UPDATE) in its own transaction
// and commits only while the row still holds this writer's epoch. Raising
// the epoch takes the same row lock, so it waits for a batch in flight to
// commit or roll back, and every later batch of the former active sees the
// higher epoch and writes nothing. A former active frozen inside its
// transaction holds the lock until PostgreSQL ends its idle transaction
// (idle_in_transaction_session_timeout, below).

var _ sink.Fencer = (*Writer)(nil)

// idleInTransactionTimeout is the writer's sessions' idle_in_transaction_session_timeout
// unless postgres.url sets one.
const idleInTransactionTimeout = "5s"

// Fence raises the sink's epoch to epoch, or fails with sink.ErrFenced
// when a newer tenure holds it already.
func (w *Writer) Fence(ctx context.Context, epoch uint64) error {
	pool := w.getPool()
	if pool == nil {
		return ErrNotConnected
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+CheckpointTable+` (sink, position) VALUES ($1, 0) ON CONFLICT (sink) DO NOTHING`, w.name); err != nil {
			return classify(err, "creating the checkpoint row")
		}
		var cur int64
		if err := tx.QueryRow(ctx, `SELECT epoch FROM `+CheckpointTable+` WHERE sink = $1 FOR UPDATE`, w.name).Scan(&cur); err != nil {
			return classify(err, "reading the epoch")
		}
		if uint64(cur) > epoch {
			return w.fenced(uint64(cur), epoch)
		}
		if _, err := tx.Exec(ctx, `UPDATE `+CheckpointTable+` SET epoch = $2 WHERE sink = $1`, w.name, int64(epoch)); err != nil {
			return classify(err, "raising the epoch")
		}
		return nil
	})
	if err == nil {
		w.epoch.Store(epoch)
	}
	return err
}

func (w *Writer) fenced(cur, mine uint64) error {
	return sink.Permanent(fmt.Errorf("%w: the %s row of sink %q holds epoch %d, this instance's is %d: it lost the lease, and writes nothing more",
		sink.ErrFenced, CheckpointTable, w.name, cur, mine))
}
