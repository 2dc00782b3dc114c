package relational

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func TestRewriteParams(t *testing.T) {
	for _, c := range []struct{ in, out, names, err string }{
		{in: "UPDATE accounts SET balance = balance + :amount WHERE id = :id", out: "UPDATE accounts SET balance = balance + $1 WHERE id = $2", names: "amount,id"},
		{in: "SELECT :a::jsonb, :a, ':no', E'\\':no', \"x:no\", $$ :no $$, $t$ :no $t$ -- :no\n/* :no /* :no */ */ :b", out: "SELECT $1::jsonb, $1, ':no', E'\\':no', \"x:no\", $$ :no $$, $t$ :no $t$ -- :no\n/* :no /* :no */ */ $2", names: "a,b"},
		{in: "SELECT a[1:2] FROM t", out: "SELECT a[1:2] FROM t"},
		{in: "UPDATE t SET n = $1", err: "positional"},
		{in: "SELECT 'open", err: "unterminated"},
		{in: " ", err: "empty"},
	} {
		out, names, err := rewriteParams(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: got %v, want an error with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || out != c.out || strings.Join(names, ",") != c.names {
			t.Errorf("%q:\n got %q %v %v\nwant %q %v", c.in, out, names, err, c.out, c.names)
		}
	}
}

func TestConfigRawSQL(t *testing.T) {
	if err := load(t, `
mappings:
  Deposited: [{sql: "UPDATE accounts SET balance = balance + :amount WHERE id = :id", params: '{amount: .data.amount, id: .streamId}'}]
  Other: [{sql: "SELECT :x", params: '.data | {x}'}]
`); err != nil {
		t.Fatal(err)
	}
	err := load(t, `
mappings:
  A: [{sql: "UPDATE t SET a = :a WHERE id = :id", params: '{a: .data.a, ide: .streamId}'}]
  B: [{sql: "UPDATE t SET a = $1", table: t, project: .data}]
  C: [{action: upsert, table: t, key: {id: "{streamId}"}, params: .data}]
`)
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{
		"mappings.A[0].params: does not give :id", `mappings.A[0].params: gives "ide"`,
		"mappings.B[0].sql: uses a positional parameter", "mappings.B[0].table", "mappings.B[0].project",
		"mappings.C[0].params",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

// rawWriter is a writer whose mappings mix row writes and raw SQL: Placed
// upserts the order, then logs (raw SQL) how many orders exist at that
// point (which shows the order of the writes) and counts the event in a
// non-idempotent counter; Deposited adds to an account's balance.
func rawWriter(t *testing.T, url, name string) (*Writer, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	for _, q := range []string{
		`CREATE TABLE accounts (id text PRIMARY KEY, balance numeric NOT NULL, email text UNIQUE)`,
		`CREATE TABLE counters (id text PRIMARY KEY, n bigint NOT NULL)`,
		`CREATE TABLE seen (position bigint PRIMARY KEY, orders bigint NOT NULL)`,
		`INSERT INTO accounts VALUES ('a1', 0, 'a1@x'), ('a2', 0, 'a2@x')`,
		`INSERT INTO counters VALUES ('placed', 0)`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.Postgres.URL = url
	cfg.Tables = map[string]Table{"orders": {Columns: map[string]string{"order_id": "text", "total": "integer"}, PrimaryKey: []string{"order_id"}}}
	cfg.Mappings = map[string][]Action{
		"Placed": {
			{Action: ActionUpsert, Table: "orders", Key: map[string]string{"order_id": "{streamId}"}, Project: `{total: .data.total}`},
			{SQL: `INSERT INTO seen (position, orders) VALUES (:pos, (SELECT count(*) FROM orders))`, Params: `{pos: .position}`},
			{SQL: `UPDATE counters SET n = n + 1 WHERE id = 'placed'`, Params: `{}`},
		},
		"Deposited": {{SQL: `UPDATE accounts SET balance = balance + :amount WHERE id = :id`, Params: `{amount: .data.amount, id: .streamId}`}},
		"EmailSet":  {{SQL: `UPDATE accounts SET email = :email WHERE id = :id`, Params: `.data + {id: .streamId}`}},
	}
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close(context.Background()) })
	if _, err := w.LoadCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	return w, conn
}

func query(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRawSQLInOrderExactlyOnce: raw SQL runs in event order between row
// writes, in the batch's transaction; a batch that failed transiently
// (a serialization failure inside the transaction) and is written again,
// or one whose commit reply was lost, is applied once: the non-idempotent
// counters are exact.
func TestRawSQLInOrderExactlyOnce(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	w, conn := rawWriter(t, srv.URL, "raw")
	b1 := &sink.Batch{Events: []envelope.Event{
		ev(1, "Placed", "o1", `{"total": 1}`), ev(2, "Deposited", "a1", `{"amount": 5}`),
		ev(3, "Placed", "o2", `{"total": 2}`), ev(4, "Placed", "o3", `{"total": 3}`), ev(5, "Deposited", "a1", `{"amount": 2.5}`),
	}, Through: 5}
	if err := w.WriteBatch(ctx, b1); err != nil {
		t.Fatal(err)
	}
	if got := query(t, conn, `SELECT string_agg(position||':'||orders, ' ' ORDER BY position) FROM seen`); got != "1:1 3:2 4:3" {
		t.Errorf("orders seen by the raw SQL = %q, want 1:1 3:2 4:3 (row writes before it applied, later ones not)", got)
	}

	// A serialization failure inside the next batch's transaction: a
	// transient error (not permanent, not per event), nothing of it kept.
	for _, q := range []string{
		`CREATE SEQUENCE flaky`,
		`CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			IF nextval('flaky') <= 2 THEN RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001'; END IF;
			RETURN NEW; END $$`,
		`CREATE TRIGGER flaky BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION flaky()`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	b2 := &sink.Batch{Events: []envelope.Event{ev(6, "Placed", "o4", `{"total": 4}`), ev(7, "Deposited", "a2", `{"amount": 1}`)}, Through: 7}
	for range 2 {
		err := w.WriteBatch(ctx, b2)
		var pe interface{ SQLState() string }
		var be *sink.BatchError
		if err == nil || errors.Is(err, sink.ErrPermanent) || errors.As(err, &be) || !errors.As(err, &pe) || pe.SQLState() != "40001" {
			t.Fatalf("serialization failure: got %v, want a transient 40001", err)
		}
		if got := query(t, conn, `SELECT position::text FROM jetsync_checkpoints WHERE sink = 'raw'`); got != "5" {
			t.Fatalf("checkpoint moved to %s on a failed batch", got)
		}
	}
	if err := w.WriteBatch(ctx, b2); err != nil { // the engine's retry
		t.Fatal(err)
	}
	// The commit of the next batch succeeds but its reply is "lost": the
	// engine writes the batch again, which must change nothing.
	b3 := &sink.Batch{Events: []envelope.Event{ev(8, "Deposited", "a1", `{"amount": 10}`), ev(9, "Placed", "o5", `{"total": 5}`)}, Through: 9}
	if err := w.WriteBatch(ctx, b3); err != nil {
		t.Fatal(err)
	}
	w.last.Store(7)
	if err := w.WriteBatch(ctx, b3); err != nil {
		t.Fatal(err)
	}
	want := "a1=17.5 a2=1 placed=5 checkpoint=9"
	got := query(t, conn, `SELECT (SELECT string_agg(id||'='||balance, ' ' ORDER BY id) FROM accounts)||' placed='||
		(SELECT n FROM counters)||' checkpoint='||(SELECT position FROM jetsync_checkpoints WHERE sink = 'raw')`)
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}

	// A parameter the params object lacks is a per-event error naming it.
	err := w.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev(10, "EmailSet", "a1", `{"mail": "x"}`)}, Through: 10})
	var be *sink.BatchError
	if !errors.As(err, &be) || len(be.Failures) != 1 || !errors.Is(be.Failures[0].Err, ErrMissingParam) || !strings.Contains(err.Error(), ":email") {
		t.Fatalf("got %v, want a per-event ErrMissingParam naming :email", err)
	}
}

// TestRawSQLRefusedAtStart: a statement PostgreSQL cannot prepare stops
// the sink at start, naming its key.
func TestRawSQLRefusedAtStart(t *testing.T) {
	srv := testenv.Postgres(t)
	cfg := DefaultConfig()
	cfg.Name = "bad"
	cfg.Postgres.URL = srv.URL
	cfg.Mappings = map[string][]Action{"X": {{SQL: `UPDATE nowhere SET n = :n`, Params: `{n: 1}`}}}
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = w.Connect(context.Background())
	if !errors.Is(err, ErrSchema) || !errors.Is(err, sink.ErrPermanent) || !strings.Contains(err.Error(), "mappings.X[0].sql") {
		t.Fatalf("got %v, want a permanent ErrSchema naming mappings.X[0].sql", err)
	}
}
