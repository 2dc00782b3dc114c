package search

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// catchUpEvents is the benchmark's stream: 100,000 OrderPlaced-like events
// over 10,000 orders (10 each, round robin), ~150 bytes of data each.
func catchUpEvents(n, streams int) []envelope.Event {
	events := make([]envelope.Event, n)
	for i := range events {
		sid := fmt.Sprintf("order-%05d", i%streams)
		v := i/streams + 1
		events[i] = envelope.Event{ID: fmt.Sprintf("bench-%s-%d", sid, v), StreamID: sid, Category: "order", Type: tPlaced,
			Version: uint64(v), Time: time.Now().UTC(),
			Data: json.RawMessage(fmt.Sprintf(`{"total":%d,"status":"placed","customer":"c-%d","lines":{"sku-%d":%d},"note":"%040d"}`, i, i%977, i%13, v, i))}
	}
	return events
}

// BenchmarkCatchUp100k measures a 100,000-event catch-up from NATS into
// Elasticsearch with the default batch settings (1000 events, 1 MiB, 20ms),
// and, in the same run, a raw bulk loader writing the same documents (same
// ids, sources, external versions, 1000 per request, one request at a time)
// without NATS or the engine; and between them the Writer alone (the same
// batches of 1000 through WriteBatch, no NATS, no engine). Each iteration is
// one catch-up of each:
//
//	go test -run '^$' -bench CatchUp100k -benchtime=3x ./search/
func BenchmarkCatchUp100k(b *testing.B) {
	const total, streams = 100_000, 10_000
	url := testenv.Elasticsearch(b)
	es := newES(b, url)
	n := newNATS(b)
	events := catchUpEvents(total, streams)
	start := time.Now()
	n.publish(b, events)
	published := time.Since(start)
	// The node has just started: warm its JIT up with the raw loader, so
	// the first measured run is not the one paying for it.
	start = time.Now()
	rawLoad(b, es, events)
	b.Logf("N=%d: published %d events to JetStream in %s; warm-up (raw loader, not measured) %s",
		b.N, total, published.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// Sink and raw loader alternate, so both see the same machine (it is
	// shared, and its load varies by a factor of several).
	var sinkTime, writerTime, rawTime time.Duration
	for i := range b.N {
		alias := uniqueName("bench")
		cfg := orderConfig(b, url, uniqueName("bench"), alias)
		cfg.Batch = sink.DefaultConfig("x").Batch
		w, err := NewWriter(cfg, testLog())
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		r := n.start(b, cfg, w)
		r.WaitFor(b, headOf(events), 5*time.Minute)
		took := time.Since(start)
		if err := r.Stop(b); err != nil {
			b.Fatal(err)
		}
		sinkTime += took
		st, ws := r.Eng.Stats(), w.Stats()
		if got := len(readDocs(b, es, alias)); got != streams {
			b.Fatalf("%d documents, want %d", got, streams)
		}
		esCall(b, es, esapi.IndicesDeleteRequest{Index: []string{alias + "-*"}}, nil)

		// The Writer alone: the same batches of 1000, no NATS, no engine.
		walias := uniqueName("benchw")
		wcfg := orderConfig(b, url, "benchw", walias)
		ww, err := NewWriter(wcfg, testLog())
		if err != nil {
			b.Fatal(err)
		}
		if err := ww.Connect(context.Background()); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		for lo := 0; lo < total; lo += 1000 {
			if err := ww.WriteBatch(context.Background(), &sink.Batch{Events: events[lo : lo+1000], Through: events[lo+999].Position}); err != nil {
				b.Fatal(err)
			}
		}
		wtook := time.Since(start)
		writerTime += wtook
		_ = ww.Close(context.Background())
		esCall(b, es, esapi.IndicesDeleteRequest{Index: []string{walias + "-*"}}, nil)

		start = time.Now()
		rawLoad(b, es, events)
		raw := time.Since(start)
		rawTime += raw
		b.Logf("run %d: sink %s = %.0f events/s (%d batches, %d bulk requests, %d items, %s waiting for bulk answers); writer alone %s = %.0f events/s; raw bulk loader %s = %.0f events/s",
			i+1, took.Round(time.Millisecond), float64(total)/took.Seconds(), st.Batches, ws.Bulks, ws.Items, ws.BulkTime.Round(time.Millisecond),
			wtook.Round(time.Millisecond), float64(total)/wtook.Seconds(), raw.Round(time.Millisecond), float64(total)/raw.Seconds())
	}
	b.ReportMetric(float64(total*b.N)/sinkTime.Seconds(), "sink-events/s")
	b.ReportMetric(float64(total*b.N)/writerTime.Seconds(), "writer-events/s")
	b.ReportMetric(float64(total*b.N)/rawTime.Seconds(), "raw-events/s")
}

// rawLoad writes the documents the sink writes for events (same ids,
// sources with the position, external versions) into a new index, 1000 per
// bulk request, one request at a time; then deletes the index.
func rawLoad(b *testing.B, es *elasticsearch.Client, events []envelope.Event) {
	index := uniqueName("raw")
	esCall(b, es, esapi.IndicesCreateRequest{Index: index, Body: bytes.NewReader([]byte(
		`{"settings":{"number_of_shards":1,"number_of_replicas":0}}`))}, nil)
	defer esCall(b, es, esapi.IndicesDeleteRequest{Index: []string{index}}, nil)
	var buf []byte
	for lo := 0; lo < len(events); lo += 1000 {
		buf = buf[:0]
		for _, e := range events[lo:min(lo+1000, len(events))] {
			it := &item{c: &chain{key: docKey{index, e.StreamID}}, kind: opIndex, pos: e.Position}
			it.src, _ = withPosition(e.Data, DefaultPositionField, e.Position)
			buf = appendItem(buf, it)
		}
		res, err := esapi.BulkRequest{Body: bytes.NewReader(buf), FilterPath: []string{"errors"}}.Do(context.Background(), es)
		if err != nil {
			b.Fatal(err)
		}
		var out struct{ Errors bool }
		_ = json.NewDecoder(res.Body).Decode(&out)
		res.Body.Close()
		if res.IsError() || out.Errors {
			b.Fatalf("raw bulk: %s errors=%v", res.Status(), out.Errors)
		}
	}
}

// BenchmarkProjection is the cost per event of planning an index action
// with a gojq projection (envelope decode, jq run, encode), against the
// same action without one (the data as stored).
//
//	go test -run '^$' -bench Projection -benchmem ./search/
func BenchmarkProjection(b *testing.B) {
	cfg := orderConfig(b, "http://127.0.0.1:9", "bench", "orders")
	cfg.Mappings["Proj"] = []Action{{Action: ActionIndex, Index: "orders",
		Project: `{orderId: .streamId, customer: .data.customer, total: .data.total, lines: (.data.lines | length), status: "placed", placedAt: .time}`}}
	cfg.Mappings["Raw"] = []Action{{Action: ActionIndex, Index: "orders"}}
	pl := &planner{byType: compileMappings(&cfg, nil), pf: DefaultPositionField}
	e := catchUpEvents(1, 1)[0]
	e.Position = 12345
	ctx := context.Background()
	for _, typ := range []string{"Proj", "Raw"} {
		b.Run(typ, func(b *testing.B) {
			a := &pl.byType[typ][0]
			b.ReportAllocs()
			for b.Loop() {
				if _, _, o, err := pl.op(ctx, a, mapping.NewInput(&e), 0); err != nil || len(o.data) == 0 {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("jq-only", func(b *testing.B) {
		code := pl.byType["Proj"][0].project
		env, _ := mapping.EnvelopeObject(&e)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := code.RunValue(ctx, env); err != nil {
				b.Fatal(err)
			}
		}
	})
}
