package search

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// A catch-up applies every event in order: the documents equal the fold,
// each records the position of its last event (also its _version), and
// every batch is one bulk request and at most one mget.
func TestCatchUpEqualsFold(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	n := newNATS(t)
	alias := uniqueName("orders")
	cfg := orderConfig(t, url, "catchup", alias)
	events := orderEvents("c", 3000, 40)
	n.publish(t, events)
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	r := n.start(t, cfg, w)
	r.WaitFor(t, headOf(events), 60*time.Second)
	more := orderEvents("c2", 500, 40)[0:500]
	for i := range more { // live: events appended while it runs
		more[i].ID += "-live"
		more[i].Version += 1000
	}
	n.publish(t, more)
	r.WaitFor(t, headOf(more), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	compareDocs(t, foldOrders(append(events, more...)), readDocs(t, es, alias))

	st, ws := r.Eng.Stats(), w.Stats()
	t.Logf("%d events in %d batches: %d bulk requests, %d mgets, %d items", st.Applied, st.Batches, ws.Bulks, ws.Mgets, ws.Items)
	if ws.Bulks > st.Batches || ws.Mgets > st.Batches {
		t.Errorf("%d bulk requests and %d mgets for %d batches: want at most one of each per batch", ws.Bulks, ws.Mgets, st.Batches)
	}
	if ws.Items >= st.Applied {
		t.Errorf("%d items for %d events: a document's events in one batch must fold into one item", ws.Items, st.Applied)
	}
}

// A document that violates the index mapping fails alone: only its event
// goes to the error policy, the rest of the batch is indexed.
func TestMappingViolationFailsOnlyThatEvent(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	alias := uniqueName("orders")
	cfg := orderConfig(t, url, "mapping", alias)
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)

	events := []envelope.Event{
		ev(1, "a", tPlaced, `{"total":1}`),
		ev(2, "b", tPlaced, `{"total":"not a number"}`), // total is a long
		ev(3, "c", tPlaced, `{"total":3}`),
		ev(4, "d", tPlaced, `{"total":4}`),
		ev(5, "d", tUpdated, `{"total":"four"}`), // folded with 4 and 6: the writer must find this one
		ev(6, "d", tUpdated, `{"status":"x"}`),
		ev(7, "e", tUpdated, `{"total":7}`),
	}
	b := &sink.Batch{Events: events, Through: 7}
	err = w.WriteBatch(ctx, b)
	var be *sink.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("WriteBatch = %v, want a *sink.BatchError", err)
	}
	var idx []int
	for _, f := range be.Failures {
		idx = append(idx, f.Index)
		if !errors.Is(f.Err, ErrRefused) || !strings.Contains(f.Err.Error(), "mapper_parsing_exception") {
			t.Errorf("failure %d: %v, want ErrRefused with Elasticsearch's reason", f.Index, f.Err)
		}
	}
	if len(idx) != 2 || idx[0] != 1 || idx[1] != 4 {
		t.Fatalf("failed events %v, want [1 4] (positions 2 and 5)", idx)
	}
	got := readDocs(t, es, alias)
	compareDocs(t, map[string]doc{
		"a": {Source: map[string]any{"total": 1.0}, Pos: 1},
		"c": {Source: map[string]any{"total": 3.0}, Pos: 3},
		"d": {Source: map[string]any{"total": 4.0}, Pos: 4}, // 5 refused, 6 waits for the next write
		"e": {Source: map[string]any{"total": 7.0}, Pos: 7},
	}, got)

	// The engine drops the failures ("skip") and writes the rest again:
	// what landed already is a version conflict, counted as applied.
	kept := &sink.Batch{Through: 7}
	for i, e := range events {
		if i != 1 && i != 4 {
			kept.Events = append(kept.Events, e)
		}
	}
	if err := w.WriteBatch(ctx, kept); err != nil {
		t.Fatalf("writing the rest: %v", err)
	}
	want := foldOrders(kept.Events)
	compareDocs(t, want, readDocs(t, es, alias))
}

// With the engine: on_error skip drops the refused event and the sink goes
// on; on_error stop halts just before it.
func TestErrorPolicyWithEngine(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	for _, policy := range []string{sink.OnErrorSkip, sink.OnErrorStop} {
		t.Run(policy, func(t *testing.T) {
			n := newNATS(t)
			alias := uniqueName("orders")
			cfg := orderConfig(t, url, "policy", alias)
			cfg.OnError = policy
			events := orderEvents("p", 400, 10)
			bad := 150
			events[bad].Type, events[bad].Data = tPlaced, []byte(`{"total":"bad"}`)
			n.publish(t, events)
			w, err := NewWriter(cfg, testLog())
			if err != nil {
				t.Fatal(err)
			}
			r := n.start(t, cfg, w)
			if policy == sink.OnErrorSkip {
				r.WaitFor(t, headOf(events), 30*time.Second)
				if st := r.Eng.Stats(); st.Skipped != 1 {
					t.Errorf("skipped %d events, want 1", st.Skipped)
				}
				want := append(append([]envelope.Event{}, events[:bad]...), events[bad+1:]...)
				compareDocs(t, foldOrders(want), readDocs(t, es, alias))
				return
			}
			select {
			case <-r.Done():
				if err := r.Err(); !errors.Is(err, sink.ErrStopped) || !strings.Contains(err.Error(), "mapper_parsing_exception") {
					t.Fatalf("Run = %v, want ErrStopped with the reason", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("the sink did not stop within 30s (stats %+v)", r.Eng.Stats())
			}
			if cp := r.Eng.Stats().Checkpoint; cp != events[bad].Position-1 {
				t.Errorf("checkpoint %d, want %d (just before the refused event)", cp, events[bad].Position-1)
			}
		})
	}
}

// Elasticsearch refuses writes for a while (a write block on one index: 403
// cluster_block_exception per item): only the refused items are sent again,
// in order, the checkpoint waits, and nothing is lost once it is lifted.
func TestRetryRefusedItems(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	n := newNATS(t)
	alias := uniqueName("orders")
	other := alias + "-log"
	cfg := orderConfig(t, url, "retry", alias)
	cfg.Indices[other] = IndexConfig{}
	for typ, acts := range cfg.Mappings { // every event also lands in a log index, one document per event
		cfg.Mappings[typ] = append(acts, Action{Action: ActionIndex, Index: other, ID: "{id}", Project: `{type: .type, position: .position}`})
	}
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	first := orderEvents("r", 300, 10)
	n.publish(t, first)
	r := n.start(t, cfg, w)
	r.WaitFor(t, headOf(first), 30*time.Second)

	var aliasInfo map[string]any
	esCall(t, es, esapi.IndicesGetAliasRequest{Name: []string{alias}}, &aliasInfo)
	var concrete string
	for k := range aliasInfo {
		concrete = k
	}
	esCall(t, es, esapi.IndicesPutSettingsRequest{Index: []string{concrete}, Body: strings.NewReader(`{"index.blocks.write":true}`)}, nil)
	before, beforeBatches, beforeRetries := w.Stats(), r.Eng.Stats().Batches, r.Eng.Stats().Retries
	second := orderEvents("r2", 300, 10)
	for i := range second {
		second[i].Version += 1000
	}
	n.publish(t, second)
	// Retries of this batch: a busy Elasticsearch may have made the first
	// phase retry too.
	testenv.Eventually(t, 30*time.Second, func() bool { return r.Eng.Stats().Retries >= beforeRetries+3 }, "the sink never retried")
	if cp := r.Eng.Stats().Checkpoint; cp >= second[0].Position {
		t.Fatalf("checkpoint moved to %d while the items of %d.. were refused", cp, second[0].Position)
	}
	log := readDocs(t, es, other)
	// The batch being retried holds the first of them at least (how many
	// more depends on how fast they were published: under load the
	// batcher's interval may close it after a few).
	for _, e := range second[:1] {
		if _, ok := log[e.ID]; !ok {
			t.Fatalf("the log index's items were not applied while the orders index was blocked (%s missing)", e.ID)
		}
	}
	esCall(t, es, esapi.IndicesPutSettingsRequest{Index: []string{concrete}, Body: strings.NewReader(`{"index.blocks.write":null}`)}, nil)
	r.WaitFor(t, headOf(second), 30*time.Second)
	after := w.Stats()
	all := append(first, second...)
	compareDocs(t, foldOrders(all), readDocs(t, es, alias))
	if got := len(readDocs(t, es, other)); got != len(all) {
		t.Errorf("log index holds %d documents, want %d", got, len(all))
	}
	// Items sent = one per event for the log index + one per order and
	// batch (folded) + one per refusal (a refused item is sent again, the
	// others never).
	retried := after.RetriedItems - before.RetriedItems
	batches := r.Eng.Stats().Batches - beforeBatches
	sent := after.Items - before.Items
	t.Logf("%d retries by the engine; %d item refusals; %d items sent for %d events in %d batches", r.Eng.Stats().Retries, retried, sent, len(second), batches)
	if retried == 0 || sent > uint64(len(second))+10*batches+retried {
		t.Errorf("%d items sent, more than %d events + %d orders x %d batches + %d refusals: only refused items may be sent again",
			sent, len(second), 10, batches, retried)
	}
}

// Bad index settings fail at start (Connect), naming the config key; the
// engine does not retry them.
func TestBadIndexSettingsFailAtConnect(t *testing.T) {
	url := testenv.Elasticsearch(t)
	alias := uniqueName("orders")
	cfg := orderConfig(t, url, "bad", alias)
	cfg.Indices[alias] = IndexConfig{Settings: map[string]any{"number_of_shards": "many"}}
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	err = w.Connect(context.Background())
	if !errors.Is(err, sink.ErrPermanent) || !errors.Is(err, ErrIndexSetup) || !strings.Contains(err.Error(), "indices."+alias) {
		t.Fatalf("Connect = %v, want a permanent ErrIndexSetup naming indices.%s", err, alias)
	}
}

// A templated index name becomes an index template; each rendered index is
// created with its mappings on first write.
func TestTemplatedIndex(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	prefix := uniqueName("bycat")
	cfg := orderConfig(t, url, "tmpl", prefix)
	name := prefix + "-{category}"
	cfg.Indices = map[string]IndexConfig{name: {Mappings: map[string]any{"properties": map[string]any{"total": map[string]any{"type": "long"}}}}}
	cfg.Mappings = map[string][]Action{tPlaced: {{Action: ActionIndex, Index: name}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	e1, e2 := ev(1, "a", tPlaced, `{"total":1}`), ev(2, "b", tPlaced, `{"total":"x"}`)
	e2.Category = "invoice"
	err = w.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{e1, e2}, Through: 2})
	var be *sink.BatchError
	if !errors.As(err, &be) || len(be.Failures) != 1 || be.Failures[0].Index != 1 {
		t.Fatalf("WriteBatch = %v; want event 1 refused by the template's mapping", err)
	}
	compareDocs(t, map[string]doc{"a": {Source: map[string]any{"total": 1.0}, Pos: 1}}, readDocs(t, es, prefix+"-order"))
}

// A batch is one bulk request unless it would exceed max_request_bytes;
// then it is split there, and only there.
func TestSplitsOnlyPastMaxRequestBytes(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	alias := uniqueName("orders")
	cfg := orderConfig(t, url, "split", alias)
	cfg.Elasticsearch.MaxRequestBytes = 64 << 10
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	pad := strings.Repeat("x", 1000)
	var events []envelope.Event
	for i := range 300 { // ~1.1 KB per item: ~330 KB, 6 requests of at most 64 KiB
		events = append(events, ev(uint64(i+1), fmt.Sprintf("o%03d", i), tPlaced, fmt.Sprintf(`{"total":%d,"pad":%q}`, i, pad)))
	}
	if err := w.WriteBatch(ctx, &sink.Batch{Events: events[:50], Through: 50}); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Bulks != 1 {
		t.Fatalf("%d bulk requests for a 55 KB batch, want 1", st.Bulks)
	}
	if err := w.WriteBatch(ctx, &sink.Batch{Events: events[50:], Through: 300}); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Bulks-1 != 5 {
		t.Errorf("%d bulk requests for a 275 KB batch with max_request_bytes 64KiB, want 5", st.Bulks-1)
	}
	compareDocs(t, foldOrders(events), readDocs(t, es, alias))
}
