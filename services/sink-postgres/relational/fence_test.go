package relational

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestStaleEpochIsRefused: once a newer tenure raised the epoch in the
// checkpoint row, the former active's batches, resets and fences fail
// with a permanent ErrFenced and change nothing; the new active writes on.
func TestStaleEpochIsRefused(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	old := newTestWriter(t, srv.URL, "f1")
	if err := old.Fence(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := old.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev(1, "Placed", "o1", `{"total": 10}`)}, Through: 1}); err != nil {
		t.Fatal(err)
	}

	cur := newTestWriter(t, srv.URL, "f1")
	if err := cur.Fence(ctx, 9); err != nil {
		t.Fatal(err)
	}
	if cp, err := cur.LoadCheckpoint(ctx); err != nil || cp != 1 {
		t.Fatalf("checkpoint %d (%v), want 1", cp, err)
	}

	err := old.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev(2, "Gone", "o1", `{}`)}, Through: 2})
	if !errors.Is(err, sink.ErrFenced) || !errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("stale write: %v, want a permanent ErrFenced", err)
	}
	if err := old.ResetCheckpoint(ctx, 0); !errors.Is(err, sink.ErrFenced) {
		t.Errorf("stale reset: %v, want ErrFenced", err)
	}
	if err := old.Fence(ctx, 7); !errors.Is(err, sink.ErrFenced) {
		t.Errorf("fencing below the current epoch: %v, want ErrFenced", err)
	}
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows := func() (n int, pos, epoch int64) {
		if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM orders_f1), position, epoch FROM jetsync_checkpoints WHERE sink = 'f1'`).Scan(&n, &pos, &epoch); err != nil {
			t.Fatal(err)
		}
		return
	}
	if n, pos, epoch := rows(); n != 1 || pos != 1 || epoch != 9 {
		t.Errorf("after the stale writes: %d rows, checkpoint %d, epoch %d; want 1, 1, 9", n, pos, epoch)
	}
	if err := cur.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev(2, "Gone", "o1", `{}`)}, Through: 2}); err != nil {
		t.Fatal(err)
	}
	if n, pos, _ := rows(); n != 0 || pos != 2 {
		t.Errorf("after the new active's write: %d rows, checkpoint %d; want 0, 2", n, pos)
	}
}

// TestFenceWaitsOutAFrozenTransaction: a former active frozen inside its
// batch's transaction (before the whole pipeline, its Sync included, was
// sent) holds the checkpoint row; the new active's fence
// waits until PostgreSQL ends that idle transaction, and the frozen
// transaction can commit nothing afterwards.
func TestFenceWaitsOutAFrozenTransaction(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	cur := newTestWriter(t, srv.URL, "f2") // creates the tables and the row

	// The frozen active: the row lock of a batch's first statement, then nothing.
	frozen, err := pgx.Connect(ctx, srv.URL+"&idle_in_transaction_session_timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Close(ctx)
	tx, err := frozen.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var cp int64
	if err := tx.QueryRow(ctx, `SELECT position FROM jetsync_checkpoints WHERE sink = 'f2' FOR UPDATE`).Scan(&cp); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO orders_f2 (order_id, total, _position) VALUES ('zombie', 1, 1)`); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cur.Fence(fctx, 9); err != nil {
		t.Fatalf("fence behind a frozen transaction: %v", err)
	}
	waited := time.Since(start)
	t.Logf("fence waited %s for the frozen transaction", waited.Round(time.Millisecond))
	if waited < time.Second {
		t.Errorf("the fence did not wait for the transaction holding the row (%s)", waited)
	}
	// The frozen process wakes up and goes on with its transaction.
	_, err = tx.Exec(ctx, `UPDATE jetsync_checkpoints SET position = 1 WHERE sink = 'f2'`)
	if err == nil {
		err = tx.Commit(ctx)
	}
	if err == nil {
		t.Fatal("the frozen transaction committed after the fence")
	}
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	var pos, epoch int64
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM orders_f2), position, epoch FROM jetsync_checkpoints WHERE sink = 'f2'`).Scan(&n, &pos, &epoch); err != nil {
		t.Fatal(err)
	}
	if n != 0 || pos != 0 || epoch != 9 {
		t.Errorf("%d rows, checkpoint %d, epoch %d; want 0, 0, 9", n, pos, epoch)
	}
}
