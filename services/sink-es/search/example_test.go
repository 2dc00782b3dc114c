package search

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// The orders dashboard of sink-es.example.yaml (and docs/sink-es.md), run
// against the real node: the documents the doc shows are these.
func TestExampleOrdersDashboard(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	cfg := DefaultConfig()
	if err := config.Load("../sink-es.example.yaml", "", &cfg); err != nil {
		t.Fatal(err)
	}
	// Own index names, so the test shares the node with the others.
	prefix := uniqueName("ex")
	rename := map[string]string{"orders": prefix + "-orders", "order-events": prefix + "-order-events"}
	indices := map[string]IndexConfig{}
	for name, ic := range cfg.Indices {
		ic.Settings["number_of_replicas"] = 0
		indices[rename[name]] = ic
	}
	cfg.Indices = indices
	for _, acts := range cfg.Mappings {
		for i := range acts {
			acts[i].Index = rename[acts[i].Index]
		}
	}
	cfg.Elasticsearch.URLs = []string{url}
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)

	at := func(s string) time.Time { tm, _ := time.Parse(time.RFC3339, "2026-11-25T10:"+s+"Z"); return tm }
	mk := func(pos uint64, sid, typ, tm, data string) envelope.Event {
		return envelope.Event{ID: "e" + string(rune('0'+pos)), StreamID: sid, Category: "order", Type: typ, Version: 1,
			Time: at(tm), Position: pos, Data: json.RawMessage(data)}
	}
	events := []envelope.Event{
		mk(1, "order-7", "OrderPlaced", "00:00", `{"customer":"c-42","total":99.5,"lines":[{"sku":"a","qty":1},{"sku":"b","qty":2}]}`),
		mk(2, "order-8", "OrderPlaced", "01:00", `{"customer":"c-7","total":10}`),
		mk(3, "order-7", "OrderShipped", "05:00", `{"carrier":"dhl","tracking":"123"}`),
		mk(4, "order-8", "OrderCancelled", "06:00", `{"reason":"customer"}`),
		mk(5, "order-9", "OrderPlaced", "07:00", `{"customer":"c-1","total":5}`),
		mk(6, "order-9", "OrderArchived", "08:00", `{}`),
	}
	if err := w.WriteBatch(ctx, &sink.Batch{Events: events, Through: 6}); err != nil {
		t.Fatal(err)
	}
	compareDocs(t, map[string]doc{
		"order-7": {Pos: 3, Source: map[string]any{"orderId": "order-7", "customer": "c-42", "total": 99.5, "lines": 2.0,
			"status": "shipped", "placedAt": "2026-11-25T10:00:00Z", "shippedAt": "2026-11-25T10:05:00Z", "carrier": "dhl"}},
		"order-8": {Pos: 4, Source: map[string]any{"orderId": "order-8", "customer": "c-7", "total": 10.0, "lines": 0.0,
			"status": "cancelled", "placedAt": "2026-11-25T10:01:00Z"}},
	}, readDocs(t, es, prefix+"-orders"))
	timeline := readDocs(t, es, prefix+"-order-events")
	if len(timeline) != 5 || timeline["e3"].Source["type"] != "OrderShipped" || timeline["e3"].Pos != 3 {
		t.Errorf("order-events: %v", timeline)
	}
	for id, d := range readDocs(t, es, prefix+"-orders") {
		t.Logf("orders/%s _version %d: %s", id, d.Version, js(d.Source))
	}
}
