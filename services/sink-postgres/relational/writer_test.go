package relational

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func ev(pos uint64, typ, sid, data string) envelope.Event {
	return envelope.Event{ID: fmt.Sprint(pos), StreamID: sid, Category: "order", Type: typ, Version: pos, Position: pos, Data: json.RawMessage(data)}
}

func newTestWriter(t *testing.T, url, name string) *Writer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.Postgres.URL = url
	cfg.Tables = map[string]Table{"orders_" + name: {Columns: map[string]string{"order_id": "text", "total": "numeric", "status": "text"}, PrimaryKey: []string{"order_id"}}}
	key := map[string]string{"order_id": "{streamId}"}
	tbl := "orders_" + name
	cfg.Mappings = map[string][]Action{
		"Placed": {{Action: ActionUpsert, Table: tbl, Key: key, Project: `{total: .data.total}`}},
		"Paid":   {{Action: ActionPatch, Table: tbl, Key: key, Project: `{status: "paid"}`}},
		"Gone":   {{Action: ActionDelete, Table: tbl, Key: key}},
	}
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close(ctx); _ = w.Close(ctx) })
	if _, err := w.LoadCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	return w
}

// TestWriterPatchReplayAndSecondInstance: a patch keeps the other columns,
// a batch applied again changes nothing (older positions lose), and a
// second instance of the sink is stopped by the checkpoint row.
func TestWriterPatchReplayAndSecondInstance(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	w := newTestWriter(t, srv.URL, "w1")
	b1 := &sink.Batch{Events: []envelope.Event{
		ev(1, "Placed", "o1", `{"total": 10}`), ev(2, "Paid", "o1", `{}`),
		ev(3, "Placed", "o2", `{"total": 20}`), ev(4, "Placed", "o3", `{"total": 30}`), ev(5, "Gone", "o3", `{}`),
	}, Through: 5}
	if err := w.WriteBatch(ctx, b1); err != nil {
		t.Fatal(err)
	}
	b2 := &sink.Batch{Events: []envelope.Event{ev(6, "Paid", "o2", `{}`)}, Through: 6}
	if err := w.WriteBatch(ctx, b2); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	state := func() string {
		var s string
		if err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(order_id||'='||total||'/'||coalesce(status,'-')||'@'||_position, ' ' ORDER BY order_id), '') FROM orders_w1`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	want := "o1=10/paid@2 o2=20/paid@6"
	if got := state(); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}

	// Replay from 0 (as jetsyncctl reset --to-start): the state stays.
	if err := w.ResetCheckpoint(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for _, b := range []*sink.Batch{b1, b2} {
		if err := w.WriteBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if got := state(); got != want {
		t.Fatalf("after replay got %q, want %q", got, want)
	}

	// A second instance loads the checkpoint; the first one writes on;
	// the second's next write must stop.
	w2 := newTestWriter(t, srv.URL, "w1")
	if err := w.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev(7, "Placed", "o4", `{"total": 1}`)}, Through: 7}); err != nil {
		t.Fatal(err)
	}
	err = w2.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev(8, "Placed", "o5", `{"total": 1}`)}, Through: 8})
	if !errors.Is(err, ErrConcurrentWriter) || !errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("second instance: got %v, want a permanent ErrConcurrentWriter", err)
	}

	// A row the projection cannot fill is a per-event failure.
	err = w.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev(8, "Placed", "o5", `[1]`)}, Through: 8})
	var be *sink.BatchError
	if !errors.As(err, &be) || len(be.Failures) != 1 {
		t.Fatalf("got %v, want a BatchError for the one event", err)
	}
}

// TestWriterCommitReplyLost: a batch whose COMMIT went through while its
// reply was lost is retried by the engine; finding the checkpoint row at
// the batch's own Through means it is applied, not a second instance.
func TestWriterCommitReplyLost(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	w := newTestWriter(t, srv.URL, "w2")
	b := &sink.Batch{Events: []envelope.Event{ev(1, "Placed", "o1", `{"total": 10}`)}, Through: 1}
	if err := w.WriteBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	w.last.Store(0) // as if the commit's reply had been lost
	if err := w.WriteBatch(ctx, b); err != nil {
		t.Fatalf("retry of a committed batch: %v", err)
	}
	if got := w.last.Load(); got != 1 {
		t.Fatalf("last = %d, want 1", got)
	}
}

// TestWriterSessionRandomPageCost: the writer's sessions plan with
// random_page_cost 1.1 (a batch's deletes probe the key index rather than
// scan the table), unless postgres.url sets another.
func TestWriterSessionRandomPageCost(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	show := func(w *Writer) string {
		var v string
		if err := w.getPool().QueryRow(ctx, "SHOW random_page_cost").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got := show(newTestWriter(t, srv.URL, "rpc1")); got != SessionRandomPageCost {
		t.Errorf("random_page_cost = %s, want %s", got, SessionRandomPageCost)
	}
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("random_page_cost", "4")
	u.RawQuery = q.Encode()
	if got := show(newTestWriter(t, u.String(), "rpc2")); got != "4" {
		t.Errorf("with ?random_page_cost=4 in postgres.url: random_page_cost = %s", got)
	}
}
