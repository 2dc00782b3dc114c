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

// The configs `make up` and docker compose run write the rows the README
// shows, against the real server (the shipped example: example_test.go).
func TestDeployConfigs(t *testing.T) {
	srv := testenv.Postgres(t)
	for _, file := range []string{"../../../deploy/local/sink-postgres.yaml", "../../../deploy/config/sink-postgres.yaml"} {
		t.Run(file, func(t *testing.T) {
			cfg := DefaultConfig()
			if err := config.Load(file, "", &cfg); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			// Each file starts from no orders table and no checkpoint.
			if _, err := conn.Exec(ctx, `DROP TABLE IF EXISTS orders; DROP TABLE IF EXISTS order_lines; DROP TABLE IF EXISTS jetsync_checkpoints`); err != nil {
				t.Fatal(err)
			}
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
				ev(1, "OrderPlaced", "o-1", `{"customerId": "c-9", "total": 42.5}`),
				ev(2, "OrderShipped", "o-1", `{"carrier": "dhl"}`),
				ev(3, "OrderPlaced", "o-2", `{"customerId": "c-8", "total": 7}`),
				ev(4, "OrderCancelled", "o-2", `{}`),
			}, Through: 4}
			if err := w.WriteBatch(ctx, b); err != nil {
				t.Fatal(err)
			}
			var customer, status, total string
			var pos int64
			if err := conn.QueryRow(ctx, `SELECT customer_id, status, total::text, _position FROM orders WHERE order_id = 'o-1'`).Scan(&customer, &status, &total, &pos); err != nil {
				t.Fatal(err)
			}
			if customer != "c-9" || status != "shipped" || total != "42.5" || pos != 2 {
				t.Fatalf("o-1 is (%s, %s, %s, %d), want (c-9, shipped, 42.5, 2)", customer, status, total, pos)
			}
			var n int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&n); err != nil || n != 1 {
				t.Fatalf("orders holds %d rows (%v), want 1: o-2 was cancelled", n, err)
			}
		})
	}
}
