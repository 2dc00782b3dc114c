package relational

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestRefusedValuesArePerEvent: values PostgreSQL refuses (text into an
// integer column, NULL into NOT NULL through raw SQL, a unique violation
// on another column) fail their own events only, each error naming the
// event, position, table, column and PostgreSQL's message; nothing of the
// batch is committed, and the batch written again without them (as the
// engine does after on_error) applies the rest in order, once.
func TestRefusedValuesArePerEvent(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	w, conn := rawWriter(t, srv.URL, "iso")
	events := []envelope.Event{
		ev(1, "Placed", "o1", `{"total": 1}`),
		ev(2, "Placed", "o2", `{"total": "lots"}`), // text into integer
		ev(3, "Deposited", "a1", `{"amount": 5}`),
		ev(4, "Deposited", "a1", `{"amount": null}`), // NULL into NOT NULL
		ev(5, "EmailSet", "a2", `{"email": "a1@x"}`), // unique violation on email
		ev(6, "Placed", "o3", `{"total": 3}`),
	}
	err := w.WriteBatch(ctx, &sink.Batch{Events: events, Through: 6})
	var be *sink.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("got %v, want a BatchError", err)
	}
	want := map[int][]string{
		1: {"event 2 at position 2", "mappings.Placed[0]", "table orders, column total", `invalid input syntax for type integer: "lots"`},
		3: {"event 4 at position 4", "mappings.Deposited[0]", "table accounts, column balance", "not-null constraint"},
		4: {"event 5 at position 5", "mappings.EmailSet[0]", "table accounts, column email", "duplicate key value", "Key (email)=(a1@x) already exists"},
	}
	if len(be.Failures) != len(want) {
		t.Errorf("%d failures, want %d: %v", len(be.Failures), len(want), be)
	}
	for _, f := range be.Failures {
		if !errors.Is(f.Err, ErrRefused) {
			t.Errorf("#%d: %v is not ErrRefused", f.Index, f.Err)
		}
		for _, s := range want[f.Index] {
			if !strings.Contains(f.Err.Error(), s) {
				t.Errorf("#%d: %v does not say %q", f.Index, f.Err, s)
			}
		}
		if want[f.Index] == nil {
			t.Errorf("unexpected failure #%d: %v", f.Index, f.Err)
		}
	}
	state := func() string {
		return query(t, conn, `SELECT coalesce((SELECT string_agg(order_id||'='||total, ' ' ORDER BY order_id) FROM orders), '')||
			' | '||(SELECT string_agg(id||'='||balance||'/'||email, ' ' ORDER BY id) FROM accounts)||
			' | placed='||(SELECT n FROM counters)||' checkpoint='||(SELECT position FROM jetsync_checkpoints WHERE sink = 'iso')`)
	}
	if got, want := state(), " | a1=0/a1@x a2=0/a2@x | placed=0 checkpoint=0"; got != want {
		t.Fatalf("after the refused batch: %q, want nothing written %q", got, want)
	}
	kept := &sink.Batch{Events: []envelope.Event{events[0], events[2], events[5]}, Through: 6}
	if err := w.WriteBatch(ctx, kept); err != nil {
		t.Fatal(err)
	}
	if got, want := state(), "o1=1 o3=3 | a1=5/a1@x a2=0/a2@x | placed=2 checkpoint=6"; got != want {
		t.Fatalf("after the batch without them: %q, want %q", got, want)
	}
}

// TestRefusalFromFoldedRowsOnly: a unique violation between two rows of one
// multi-row statement that written one at a time succeed (the second
// event frees the value) is not blamed on any event: the batch is applied
// event by event in order, with the checkpoint.
func TestRefusalFromFoldedRowsOnly(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.Name = "fold"
	cfg.Postgres.URL = srv.URL
	cfg.Tables = map[string]Table{"users": {Columns: map[string]string{"id": "text", "email": "text"}, PrimaryKey: []string{"id"}}}
	cfg.Mappings = map[string][]Action{"Set": {{Action: ActionUpsert, Table: "users", Key: map[string]string{"id": "{streamId}"}, Project: `{email: .data.email}`}}}
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	if _, err := w.LoadCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	_, conn := rawWriter(t, srv.URL, "unused")
	if _, err := conn.Exec(ctx, `CREATE UNIQUE INDEX users_email ON users (email)`); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev(1, "Set", "u1", `{"email": "x"}`)}, Through: 1}); err != nil {
		t.Fatal(err)
	}
	// u2 takes x after u1 gave it up; folded, u2's row (first seen) comes
	// first in the multi-row upsert and conflicts with u1's old x.
	b := &sink.Batch{Events: []envelope.Event{ev(2, "Set", "u2", `{"email": "z"}`), ev(3, "Set", "u1", `{"email": "y"}`), ev(4, "Set", "u2", `{"email": "x"}`)}, Through: 4}
	if err := w.WriteBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got, want := query(t, conn, `SELECT string_agg(id||'='||email, ' ' ORDER BY id)||' @'||(SELECT position FROM jetsync_checkpoints WHERE sink = 'fold') FROM users`), "u1=y u2=x @4"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
