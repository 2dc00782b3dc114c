package relational

import (
	"context"
	"fmt"
	"testing"

	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// BenchmarkWriteBatch writes batches of 1000 order events (upserts, patches
// and deletes over 500 orders) through the writer into a real server, for
// profiling the sink's own cost per event:
//
//	go test -run '^$' -bench WriteBatch -cpuprofile /tmp/pg.cpu ./services/sink-postgres/relational/
//
// The sink against its ceilings is measured by bench/cmd/jetbench -sinks postgres.
func BenchmarkWriteBatch(b *testing.B) {
	srv := testenv.Postgres(b)
	w, batch := benchWriter(b, srv.URL)
	ctx := context.Background()
	if err := w.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	defer w.Close(ctx)
	if _, err := w.LoadCheckpoint(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		bt := batch()
		b.StartTimer()
		if err := w.WriteBatch(ctx, bt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkPrepare is the sink's own work on a batch before PostgreSQL
// sees it (mapping, folding, the statements and their arrays), without a
// server:
//
//	go test -run '^$' -bench Prepare -benchmem ./services/sink-postgres/relational/
func BenchmarkPrepare(b *testing.B) {
	w, batch := benchWriter(b, "postgres://unused")
	w.cols = map[string]map[string]string{"orders": {"order_id": "text", "customer_id": "text", "status": "text",
		"currency": "text", "total": "numeric", "carrier": "text", PositionColumn: "bigint"}}
	w.known = writable(w.cols)
	bt := batch()
	ctx := context.Background()
	for b.Loop() {
		p := w.prepare(ctx, bt)
		if len(p.failures) > 0 || len(p.queries) == 0 {
			b.Fatalf("failures %v, %d queries", p.failures, len(p.queries))
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}

// benchWriter is a writer with the benchmark's order mappings and a
// source of batches of 1000 order events (upserts, patches and deletes
// over 500 orders).
func benchWriter(b *testing.B, url string) (*Writer, func() *sink.Batch) {
	cfg := DefaultConfig()
	cfg.Name = "bench"
	cfg.Postgres.URL = url
	cfg.Tables = map[string]Table{"orders": {Columns: map[string]string{"order_id": "text", "customer_id": "text", "status": "text", "currency": "text", "total": "numeric", "carrier": "text"}, PrimaryKey: []string{"order_id"}}}
	key := map[string]string{"order_id": "{streamId}"}
	up := Action{Action: ActionUpsert, Table: "orders", Key: key, Project: `{customer_id: .data.customerId, status: .data.status, currency: .data.currency, total: .data.total}`}
	cfg.Mappings = map[string][]Action{
		"OrderPlaced":    {up},
		"OrderUpdated":   {up},
		"OrderShipped":   {{Action: ActionPatch, Table: "orders", Key: key, Project: `{status: "shipped", carrier: .data.carrier}`}},
		"OrderCancelled": {{Action: ActionDelete, Table: "orders", Key: key}},
	}
	w, err := NewWriter(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	types := []string{"OrderPlaced", "OrderUpdated", "OrderUpdated", "OrderShipped", "OrderUpdated", "OrderCancelled"}
	pos := uint64(0)
	return w, func() *sink.Batch {
		bt := &sink.Batch{}
		for range 1000 {
			pos++
			typ := types[pos%uint64(len(types))]
			data := fmt.Sprintf(`{"orderId":"o-%d","customerId":"c-%05d","status":"updated","currency":"EUR","total":%d.50,"carrier":"DHL","items":[{"sku":"SKU-1","qty":2,"price":9.99}],"note":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"}`, pos%500, pos%977, pos%1000)
			bt.Events = append(bt.Events, ev(pos, typ, fmt.Sprintf("o-%d", pos%500), data))
		}
		bt.Through = pos
		return bt
	}
}
