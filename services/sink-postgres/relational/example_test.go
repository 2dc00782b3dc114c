package relational

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func exampleConfig(t *testing.T) Config {
	t.Helper()
	cfg := DefaultConfig()
	if err := config.Load("../sink-postgres.example.yaml", "", &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// The example config loads and is valid as shipped.
func TestExampleConfigLoads(t *testing.T) {
	cfg := exampleConfig(t)
	if cfg.Name != "orders-pg" || len(cfg.Mappings) != 3 || len(cfg.Tables["orders"].Columns) != 4 || len(cfg.Mappings["OrderPlaced"]) != 2 {
		t.Fatalf("example config read as %+v", cfg)
	}
}

// TestExampleAgainstPostgres runs the example's mappings against a real
// PostgreSQL: orders rows, and order_lines from the raw SQL over the
// items array; a replay changes nothing, a cancel removes both.
func TestExampleAgainstPostgres(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	cfg := exampleConfig(t)
	cfg.Postgres.URL = srv.URL
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
	b := &sink.Batch{Events: []envelope.Event{
		ev(1, "OrderPlaced", "o1", `{"customerId": "c1", "total": 12.5, "items": [{"sku": "a", "qty": 2, "price": 5}, {"sku": "b", "qty": 1, "price": 2.5}]}`),
		ev(2, "OrderPlaced", "o2", `{"customerId": "c2", "total": 1, "items": [{"sku": "c", "qty": 1, "price": 1}]}`),
		ev(3, "OrderShipped", "o1", `{}`),
		ev(4, "OrderCancelled", "o2", `{}`),
	}, Through: 4}
	if err := w.WriteBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	want := "o1/c1/shipped/12.5 | o1#1 a 2x5 o1#2 b 1x2.5"
	state := func() string {
		return query(t, conn, `SELECT coalesce((SELECT string_agg(order_id||'/'||customer_id||'/'||status||'/'||total, ' ' ORDER BY order_id) FROM orders), '')||' | '||
			coalesce((SELECT string_agg(order_id||'#'||line_no||' '||sku||' '||qty||'x'||price, ' ' ORDER BY order_id, line_no) FROM order_lines), '')`)
	}
	if got := state(); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if err := w.ResetCheckpoint(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteBatch(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != want {
		t.Fatalf("after a replay got %q, want %q", got, want)
	}
}
