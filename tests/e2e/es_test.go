package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// esStack is the bridge stack plus an Elasticsearch node and sink-es.
type esStack struct {
	*stack
	esURL  string
	es     *elasticsearch.Client
	name   string // sink name (its checkpoint key)
	alias  string
	config string
	kv     jetstream.KeyValue
	sinkES *proc
}

var esSeq int

// newESStack starts NATS, the bridge (and Redis, unused here) and finds the
// shared test Elasticsearch; sink-es is started by startSinkES.
func newESStack(t *testing.T, maxEvents int) *esStack {
	t.Helper()
	esSeq++
	s := &esStack{stack: newStack(t), esURL: testenv.Elasticsearch(t)}
	s.name = fmt.Sprintf("orders-es-%d", esSeq)
	s.alias = fmt.Sprintf("e2e-orders-%d-%d", time.Now().UnixNano()%1e6, esSeq)
	es, err := elasticsearch.NewClient(elasticsearch.Config{Addresses: []string{s.esURL}})
	if err != nil {
		t.Fatal(err)
	}
	s.es = es
	t.Cleanup(func() { _ = es.Close(context.Background()) })
	s.config = writeFile(t, "sink-es.yaml", esSinkYAML(s.nats.URL(), s.esURL, s.name, s.alias, maxEvents, testenv.FreePort(t)))
	_, js := s.nats.Connect(t)
	kv, err := js.CreateOrUpdateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "jetsync-checkpoints", History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	s.kv = kv
	return s
}

// esSinkYAML maps the e2e workload: placed replaces the document, updated
// and shipped merge into it, cancelled deletes it.
func esSinkYAML(natsURL, esURL, name, alias string, maxEvents, adminPort int) string {
	return fmt.Sprintf(`name: %s
nats: {url: %q}
http: {listen: "127.0.0.1:%d"}
stream: EVENTS
filters: ["events.order.>"]
batch: {max_events: %d, max_bytes: 1MiB, max_interval: 20ms}
retry: {initial: 20ms, max: 500ms}
on_error: stop
shutdown_timeout: 5s
elasticsearch: {urls: [%q]}
indices:
  %s:
    settings: {number_of_shards: 1, number_of_replicas: 0}
    mappings:
      properties:
        total: {type: double}
        status: {type: keyword}
mappings:
  OrderPlaced:
    - {action: index, index: %s}
  OrderUpdated:
    - {action: merge, index: %s}
  OrderShipped:
    - {action: merge, index: %s, project: '{shipping: .data, status: .data.status}'}
  OrderCancelled:
    - {action: delete, index: %s}
`, name, natsURL, adminPort, maxEvents, esURL, alias, alias, alias, alias, alias)
}

func (s *esStack) startSinkES() {
	if s.sinkES == nil {
		s.sinkES = startProc(s.t, "sink-es", "-config", s.config)
		return
	}
	s.sinkES.start()
}

// checkpoint reads sink-es's checkpoint from the NATS KV bucket.
func (s *esStack) checkpoint() uint64 {
	e, err := s.kv.Get(context.Background(), s.name)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(e.Value()), 10, 64)
	return n
}

// esDoc is a document of the orders index.
type esDoc struct {
	Source  map[string]any
	Pos     uint64
	Version uint64
}

// docs reads every document through the alias (after a refresh).
func (s *esStack) docs(t *testing.T) map[string]esDoc {
	t.Helper()
	docs, err := s.tryDocs()
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func (s *esStack) tryDocs() (map[string]esDoc, error) {
	ctx := context.Background()
	res, err := esapi.IndicesRefreshRequest{Index: []string{s.alias}}.Do(ctx, s.es)
	if err != nil {
		return nil, err
	}
	res.Body.Close()
	version := true
	res, err = esapi.SearchRequest{Index: []string{s.alias}, Size: esapi.IntPtr(10000), Version: &version,
		Body: strings.NewReader(`{"query":{"match_all":{}}}`)}.Do(ctx, s.es)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.IsError() {
		return nil, fmt.Errorf("search %s: %s: %s", s.alias, res.Status(), body)
	}
	var out struct {
		Hits struct {
			Hits []struct {
				ID      string         `json:"_id"`
				Version uint64         `json:"_version"`
				Source  map[string]any `json:"_source"`
			} `json:"hits"`
		} `json:"hits"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, err
	}
	docs := map[string]esDoc{}
	for _, h := range out.Hits.Hits {
		d := esDoc{Source: h.Source, Version: h.Version}
		if p, ok := h.Source["_position"].(float64); ok {
			d.Pos = uint64(p)
		}
		delete(d.Source, "_position")
		docs[h.ID] = d
	}
	return docs, nil
}

// newESWorkload is like newWorkload, but its streams do not all end with a
// cancellation, so the final read model is not empty: placed, updates,
// shipments, a cancellation every 30 and a re-placement after it.
func newESWorkload(n, perStream int) *workload {
	w := &workload{events: map[string][]appendReq{}, positions: map[string][]uint64{}}
	for i := range n {
		sid := fmt.Sprintf("order-%03d", i)
		w.streams = append(w.streams, sid)
		for v := 1; v <= perStream; v++ {
			typ := "OrderUpdated"
			data := fmt.Sprintf(`{"order":%q,"version":%d,"total":%d.5,"lines":["sku-%d"],"notes":{"v%d":%d}}`, sid, v, v*3, v%7, v%5, v)
			switch {
			case v == 1 || v%30 == 1:
				typ = "OrderPlaced"
				data = fmt.Sprintf(`{"order":%q,"total":%d.5,"status":"placed","notes":{"placed":%d}}`, sid, v, v)
			case v%30 == 0:
				typ, data = "OrderCancelled", `{"reason":"customer"}`
			case v%10 == 3:
				typ = "OrderShipped"
				data = fmt.Sprintf(`{"status":"shipped-%d","carrier":"c%d","parcels":%d}`, v, v%3, v)
			}
			w.events[sid] = append(w.events[sid], appendReq{ID: fmt.Sprintf("%s-%d", sid, v), Type: typ, Data: json.RawMessage(data)})
		}
	}
	return w
}

// esFoldStream folds one stream's first k events independently of the sink:
// the document and the position of its last event (nil when deleted).
func esFoldStream(evs []appendReq, positions []uint64, k int) (map[string]any, uint64) {
	var doc map[string]any
	var pos uint64
	for i, ev := range evs[:k] {
		var data map[string]any
		_ = json.Unmarshal(ev.Data, &data)
		switch ev.Type {
		case "OrderPlaced":
			doc = data
		case "OrderUpdated":
			if doc == nil {
				doc = map[string]any{}
			}
			esMerge(doc, data)
		case "OrderShipped":
			if doc == nil {
				doc = map[string]any{}
			}
			esMerge(doc, map[string]any{"shipping": data, "status": data["status"]})
		case "OrderCancelled":
			doc = nil
		}
		pos = positions[i]
	}
	return doc, pos
}

// esMerge is Elasticsearch's partial-update merge: objects recursively,
// anything else replaced.
func esMerge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				esMerge(dm, sm)
				continue
			}
			cp := map[string]any{}
			esMerge(cp, sm)
			v = cp
		}
		dst[k] = v
	}
}

// verifyES compares the documents with the fold of every event: sources,
// positions, and _version equal to the position.
func (w *workload) verifyES(t *testing.T, docs map[string]esDoc) {
	t.Helper()
	bad := 0
	fail := func(format string, args ...any) {
		t.Errorf(format, args...)
		if bad++; bad > 10 {
			t.FailNow()
		}
	}
	present := 0
	for _, sid := range w.streams {
		want, pos := esFoldStream(w.events[sid], w.positions[sid], len(w.events[sid]))
		got, ok := docs[sid]
		switch {
		case want == nil && ok:
			fail("%s: present at %d, want deleted", sid, got.Pos)
		case want == nil:
		case !ok:
			fail("%s: missing, want %v", sid, want)
		case !reflect.DeepEqual(got.Source, want):
			fail("%s: got %v\nwant %v", sid, got.Source, want)
		case got.Pos != pos || got.Version != pos:
			fail("%s: position %d, _version %d; want both %d (the last event)", sid, got.Pos, got.Version, pos)
		default:
			present++
		}
	}
	if len(docs) != present {
		fail("%d documents in the index, %d expected", len(docs), present)
	}
	if present == 0 {
		t.Fatal("the fold is empty: the test proves nothing")
	}
}

// TestElasticsearchPipeline10k: 10,000 events over 100 streams appended
// through the bridge reach Elasticsearch through sink-es; the documents
// equal an independent fold, with the right positions.
func TestElasticsearchPipeline10k(t *testing.T) {
	s := newESStack(t, 1000)
	s.startSinkES()
	w := newESWorkload(100, 100)
	start := time.Now()
	if err := w.appendAll(s.stack, 10, 8); err != nil {
		t.Fatal(err)
	}
	appended := time.Since(start)
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink-es checkpoint %d never reached head %d", s.checkpoint(), head)
	total := time.Since(start)
	t.Logf("10k to Elasticsearch: %d events appended in %s; checkpoint at the head %s after the first append (%.0f events/s end to end)",
		w.total(), appended.Round(time.Millisecond), total.Round(time.Millisecond), float64(w.total())/total.Seconds())
	w.verifyES(t, s.docs(t))

	begin := time.Now()
	if code := s.sinkES.stop(15 * time.Second); code != 0 {
		t.Fatalf("sink-es exited %d after SIGTERM", code)
	}
	t.Logf("sink-es stopped in %s after SIGTERM", time.Since(begin).Round(time.Millisecond))
}

// TestElasticsearchSinkKilled: SIGKILL sink-es at random moments, between a
// bulk request and its checkpoint among others, while events are appended.
// Nothing is lost (the final documents equal the fold), and nothing
// regresses: sampled all along, every document only ever moves forward and
// always equals the fold of its stream up to its position.
func TestElasticsearchSinkKilled(t *testing.T) {
	s := newESStack(t, 20)
	s.startSinkES()
	w := newESWorkload(100, 100)
	appendDone := make(chan error, 1)
	go func() { appendDone <- w.appendAll(s.stack, 10, 4) }()

	type sample struct {
		sid string
		doc esDoc
	}
	var samples []sample
	var sampleErrs []error
	stopSampling := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(50 * time.Millisecond):
			}
			docs, err := s.tryDocs()
			if err != nil {
				// Before the sink created the index, or just after, while
				// its shard is not started yet: not readable yet, not wrong.
				if !strings.Contains(err.Error(), "index_not_found") && !strings.Contains(err.Error(), "no_shard_available") {
					sampleErrs = append(sampleErrs, err)
				}
				continue
			}
			for sid, d := range docs {
				samples = append(samples, sample{sid, d})
			}
		}
	}()

	const kills = 8
	killWhileAppending(t, "sink-es", kills, appendDone, s.checkpoint, w.head, func() { s.sinkES.kill() }, s.startSinkES)
	close(stopSampling)
	wg.Wait()
	w.verifyES(t, s.docs(t))
	for _, err := range sampleErrs {
		t.Errorf("reading the index while the sink was killed: %v", err)
	}

	// Every sampled document is a state its stream really had, and a
	// stream's documents never go back.
	last := map[string]uint64{}
	bad := 0
	for _, smp := range samples {
		ps := w.positions[smp.sid]
		k := -1
		for i, p := range ps {
			if p == smp.doc.Pos {
				k = i
			}
		}
		want, _ := esFoldStream(w.events[smp.sid], ps, k+1)
		switch {
		case k < 0:
			t.Errorf("%s: sampled at position %d, which is no event of the stream", smp.sid, smp.doc.Pos)
		case smp.doc.Pos < last[smp.sid]:
			t.Errorf("%s: regressed from position %d to %d", smp.sid, last[smp.sid], smp.doc.Pos)
		case !reflect.DeepEqual(want, smp.doc.Source):
			t.Errorf("%s at %d: sampled %v, but the stream's state there is %v", smp.sid, smp.doc.Pos, smp.doc.Source, want)
		default:
			last[smp.sid] = smp.doc.Pos
			continue
		}
		if bad++; bad > 10 {
			t.FailNow()
		}
	}
	t.Logf("%d events, %d SIGKILLs, 0 lost; %d document samples, none regressed or inconsistent", w.total(), kills, len(samples))
}

// TestElasticsearchRebuildCommand: `sink-es rebuild` builds a new index
// from position 0 while sink-es and the appends go on, swaps the alias and
// deletes the old index; reads through the alias never fail or see nothing.
func TestElasticsearchRebuildCommand(t *testing.T) {
	s := newESStack(t, 500)
	s.startSinkES()
	w := newESWorkload(60, 100)
	// Half the events before the rebuild, the rest during it.
	first := &workload{streams: w.streams, events: map[string][]appendReq{}, positions: w.positions}
	second := &workload{streams: w.streams, events: map[string][]appendReq{}, positions: w.positions}
	for _, sid := range w.streams {
		first.events[sid], second.events[sid] = w.events[sid][:50], w.events[sid][50:]
	}
	if err := first.appendAll(s.stack, 10, 4); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= w.head() }, "sink-es never caught up")
	// The live index must be searchable before the reads start: its first
	// periodic refresh (1s) may not have come yet when the sink caught up
	// quickly, and a read then sees an empty index that the rebuild did not
	// cause.
	testenv.Eventually(t, 10*time.Second, func() bool { n, err := s.count(); return err == nil && n > 0 }, "the live index never became searchable")
	before := s.aliasIndex(t)

	var reads, failures, empty int
	var firstFailure error
	stopReads := make(chan struct{})
	readsDone := make(chan struct{})
	go func() {
		defer close(readsDone)
		for {
			select {
			case <-stopReads:
				return
			default:
			}
			n, err := s.count()
			reads++
			switch {
			case err != nil:
				failures++
				if firstFailure == nil {
					firstFailure = err
				}
			case n == 0:
				empty++
			}
		}
	}()
	appendDone := make(chan error, 1)
	go func() { appendDone <- second.appendAllFrom(s.stack, 50, 5, 2) }()
	rebuild := startProc(t, "sink-es", "rebuild", "-config", s.config)
	if code := rebuild.waitExit(90 * time.Second); code != 0 {
		t.Fatalf("sink-es rebuild exited %d:\n%s", code, rebuild.output())
	}
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	close(stopReads)
	<-readsDone
	t.Logf("sink-es rebuild:\n%s", lastLines(rebuild.output(), 3))
	after := s.aliasIndex(t)
	if after == before {
		t.Fatalf("the alias still points to %s", before)
	}
	if failures > 0 || empty > 0 {
		t.Errorf("%d reads through the alias during the rebuild: %d failed (first: %v), %d saw an empty index", reads, failures, firstFailure, empty)
	}
	res, err := esapi.IndicesExistsRequest{Index: []string{before}}.Do(context.Background(), s.es)
	if err != nil || res.StatusCode != 404 {
		t.Errorf("the old index %s still exists (%v %v)", before, res, err)
	}
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= w.head() }, "sink-es never caught up after the rebuild")
	w.verifyES(t, s.docs(t))
	t.Logf("%d reads through the alias during the rebuild, none failed or empty; alias %s: %s -> %s", reads, s.alias, before, after)
}

// appendAllFrom is appendAll for a workload whose streams are already at
// version from (expectedVersion continues from there); like appendAll, it
// sends a request again on 503 or a lost connection.
func (w *workload) appendAllFrom(s *stack, from, perRequest, workers int) error {
	shifted := &workload{streams: w.streams, events: map[string][]appendReq{}, positions: map[string][]uint64{}}
	for _, sid := range w.streams {
		shifted.events[sid] = append(make([]appendReq, from), w.events[sid]...)
	}
	// appendAll sends events[lo:hi] with expectedVersion=lo; skip the padding.
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for wk := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, sid := range w.streams {
				if i%workers != wk {
					continue
				}
				evs := shifted.events[sid]
				for lo := from; lo < len(evs); lo += perRequest {
					hi := min(lo+perRequest, len(evs))
					body, _ := json.Marshal(evs[lo:hi])
					code, resp := s.postRetrying("/streams/order/"+sid+"/events?expectedVersion="+strconv.Itoa(lo), body)
					var ar appendResp
					if (code != 200 && code != 201) || json.Unmarshal(resp, &ar) != nil || len(ar.Positions) != hi-lo {
						errs <- fmt.Errorf("append to %s: %d %s", sid, code, resp)
						return
					}
					w.mu.Lock()
					w.positions[sid] = append(w.positions[sid], ar.Positions...)
					w.mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// aliasIndex is the one index the alias points to.
func (s *esStack) aliasIndex(t *testing.T) string {
	t.Helper()
	res, err := esapi.IndicesGetAliasRequest{Name: []string{s.alias}}.Do(context.Background(), s.es)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil || len(out) != 1 {
		t.Fatalf("alias %s: %v %v", s.alias, out, err)
	}
	for k := range out {
		return k
	}
	return ""
}

// count asks for the number of documents through the alias.
func (s *esStack) count() (int, error) {
	res, err := esapi.CountRequest{Index: []string{s.alias}}.Do(context.Background(), s.es)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.IsError() {
		return 0, fmt.Errorf("%s: %s", res.Status(), body)
	}
	var out struct {
		Count int `json:"count"`
	}
	return out.Count, json.Unmarshal(body, &out)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestElasticsearchBadConfigFailsAtStart: a bad sink-es config stops it at
// start with exit code 2 and a message naming the key.
func TestElasticsearchBadConfigFailsAtStart(t *testing.T) {
	base := esSinkYAML("nats://127.0.0.1:1", "http://127.0.0.1:1", "bad", "orders", 100, 1)
	cases := []struct{ name, yaml, want string }{
		{"unknown action", strings.Replace(base, "{action: delete,", "{action: erase,", 1), "mappings.OrderCancelled[0].action"},
		{"bad expression", strings.Replace(base, "'{shipping: .data, status: .data.status}'", "'{shipping: .data'", 1), "mappings.OrderShipped[0].project"},
		{"missing index settings", strings.Replace(base, "{action: merge, index: orders}", "{action: merge, index: invoices}", 1), "mappings.OrderUpdated[0].index"},
		{"unknown key", strings.Replace(base, "elasticsearch: {", "elasticsearch: {urll: x, ", 1), "elasticsearch.urll"},
		{"bad index name", strings.ReplaceAll(base, "orders", "Orders"), "indices.Orders"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.yaml == base {
				t.Fatal("the case changed nothing")
			}
			p := startProc(t, "sink-es", "-config", writeFile(t, "bad.yaml", tc.yaml))
			if code := p.waitExit(20 * time.Second); code != 2 {
				t.Fatalf("sink-es exited %d, want 2; output:\n%s", code, p.output())
			}
			if !strings.Contains(p.output(), tc.want) {
				t.Fatalf("sink-es output does not name %s:\n%s", tc.want, p.output())
			}
		})
	}
}
