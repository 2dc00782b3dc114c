package search

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopElasticsearch()
	os.Exit(code)
}

var indexSeq atomic.Int64

// uniqueName is a lowercase name no other test of this binary uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%d-%d", prefix, time.Now().UnixNano()%1e9, indexSeq.Add(1))
}

// testLog writes to stderr in verbose runs only.
func testLog() *slog.Logger {
	out := io.Discard
	if testing.Verbose() {
		out = os.Stderr
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newES(t testing.TB, url string) *elasticsearch.Client {
	t.Helper()
	es, err := elasticsearch.NewClient(elasticsearch.Config{Addresses: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = es.Close(context.Background()) })
	return es
}

// esCall runs an esapi request and decodes its JSON answer into out.
func esCall(t testing.TB, es *elasticsearch.Client, req esapi.Request, out any) {
	t.Helper()
	res, err := req.Do(context.Background(), es)
	if err != nil {
		t.Fatalf("%T: %v", req, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.IsError() {
		t.Fatalf("%T: %s: %s", req, res.Status(), body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%T: %v in %s", req, err, body)
		}
	}
}

// doc is a document as read back, for comparisons.
type doc struct {
	Source  map[string]any
	Version int64
	SeqNo   int64
	Pos     uint64
}

// readDocs refreshes index (or alias) and returns every document by id.
func readDocs(t testing.TB, es *elasticsearch.Client, index string) map[string]doc {
	t.Helper()
	esCall(t, es, esapi.IndicesRefreshRequest{Index: []string{index}}, nil)
	var out struct {
		Hits struct {
			Hits []struct {
				ID      string         `json:"_id"`
				Version int64          `json:"_version"`
				SeqNo   int64          `json:"_seq_no"`
				Source  map[string]any `json:"_source"`
			} `json:"hits"`
		} `json:"hits"`
	}
	version, seq := true, true
	esCall(t, es, esapi.SearchRequest{Index: []string{index}, Size: esapi.IntPtr(10000), Version: &version, SeqNoPrimaryTerm: &seq,
		Body: strings.NewReader(`{"query":{"match_all":{}}}`)}, &out)
	docs := make(map[string]doc, len(out.Hits.Hits))
	for _, h := range out.Hits.Hits {
		d := doc{Source: h.Source, Version: h.Version, SeqNo: h.SeqNo}
		if p, ok := h.Source[DefaultPositionField].(float64); ok {
			d.Pos = uint64(p)
		}
		delete(d.Source, DefaultPositionField)
		docs[h.ID] = d
	}
	return docs
}

// natsEnv is an in-process JetStream server with the event stream and the
// checkpoint store.
type natsEnv struct {
	srv   *testenv.NATSServer
	js    jetstream.JetStream
	store *checkpoint.KV
}

func newNATS(t testing.TB) *natsEnv {
	t.Helper()
	srv := testenv.NATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	store, err := checkpoint.NewKV(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	return &natsEnv{srv: srv, js: js, store: store}
}

// publish appends events (positions are filled in).
func (n *natsEnv) publish(t testing.TB, events []envelope.Event) {
	t.Helper()
	futures := make([]jetstream.PubAckFuture, len(events))
	for i := range events {
		f, err := n.js.PublishMsgAsync(events[i].ToMsg())
		if err != nil {
			t.Fatalf("publishing: %v", err)
		}
		futures[i] = f
	}
	select {
	case <-n.js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		t.Fatal("publishing did not complete")
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			events[i].Position = ack.Sequence
		case err := <-f.Err():
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}

func (n *natsEnv) start(t testing.TB, cfg Config, w sink.Writer) *sinktest.Running {
	t.Helper()
	eng, err := sink.New(cfg.Config, n.js, w, n.store, testLog())
	if err != nil {
		t.Fatal(err)
	}
	return sinktest.Start(t, eng)
}

// Event types of the tests' order model.
const (
	tPlaced   = "Placed"   // index: the data is the document
	tUpdated  = "Updated"  // merge the data
	tDeleted  = "Deleted"  // delete
	tReplaced = "Replaced" // index a projection
)

const replacedProjection = `{total: .data.total, status: "replaced", by: .type, v: .version}`

// orderConfig is a sink writing the order model into alias.
func orderConfig(t testing.TB, esURL, name, alias string) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.Filters = []string{"events.order.>"}
	cfg.Batch = sink.BatchConfig{MaxEvents: 200, MaxBytes: 256 << 10, MaxInterval: 5 * time.Millisecond}
	cfg.Retry = sink.RetryConfig{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Elasticsearch.URLs = []string{esURL}
	cfg.Indices = map[string]IndexConfig{alias: {
		Settings: map[string]any{"number_of_shards": 1, "number_of_replicas": 0},
		Mappings: map[string]any{"properties": map[string]any{
			"total": map[string]any{"type": "long"}, "status": map[string]any{"type": "keyword"},
		}},
	}}
	cfg.Mappings = map[string][]Action{
		tPlaced:   {{Action: ActionIndex, Index: alias}},
		tUpdated:  {{Action: ActionMerge, Index: alias}},
		tDeleted:  {{Action: ActionDelete, Index: alias}},
		tReplaced: {{Action: ActionIndex, Index: alias, Project: replacedProjection}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// orderEvents makes n events over streams orders in which order matters:
// places, merges (nested objects too), deletes, re-places and projections.
func orderEvents(prefix string, n, streams int) []envelope.Event {
	next := map[string]int{}
	events := make([]envelope.Event, 0, n)
	for i := range n {
		sid := fmt.Sprintf("order-%03d", i%streams)
		next[sid]++
		v := next[sid]
		typ, data := tUpdated, fmt.Sprintf(`{"status":"s%d","lines":{"l%d":%d},"n":%d}`, v, v%4, v, v)
		switch {
		case v == 1 || v%11 == 1:
			typ, data = tPlaced, fmt.Sprintf(`{"total":%d,"status":"placed","lines":{"l0":1},"tags":["a","b%d"]}`, v*10, v)
		case v%11 == 0:
			typ, data = tDeleted, `{}`
		case v%7 == 0:
			typ, data = tReplaced, fmt.Sprintf(`{"total":%d}`, v*100)
		}
		events = append(events, envelope.Event{
			ID: fmt.Sprintf("%s-%s-%d", prefix, sid, v), StreamID: sid, Category: "order", Type: typ,
			Version: uint64(v), Time: time.Now().UTC(), Data: json.RawMessage(data),
		})
	}
	return events
}

// foldOrders is the read model the order events must produce, computed
// independently of the sink: id -> document and the position of the last
// event applied to it.
func foldOrders(events []envelope.Event) map[string]doc {
	out := map[string]doc{}
	for _, ev := range events {
		var data map[string]any
		_ = json.Unmarshal(ev.Data, &data)
		switch ev.Type {
		case tPlaced:
			out[ev.StreamID] = doc{Source: data, Pos: ev.Position}
		case tReplaced:
			out[ev.StreamID] = doc{Source: map[string]any{"total": data["total"], "status": "replaced", "by": ev.Type, "v": float64(ev.Version)}, Pos: ev.Position}
		case tUpdated:
			d := out[ev.StreamID]
			if d.Source == nil {
				d.Source = map[string]any{}
			}
			deepMerge(d.Source, data)
			d.Pos = ev.Position
			out[ev.StreamID] = d
		case tDeleted:
			delete(out, ev.StreamID)
		}
	}
	return out
}

func deepMerge(dst, src map[string]any) {
	for k, v := range src {
		if sm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				deepMerge(dm, sm)
				continue
			}
			cp := map[string]any{}
			deepMerge(cp, sm)
			v = cp
		}
		dst[k] = v
	}
}

// compareDocs reports every difference of documents and positions; the
// external version must equal the position.
func compareDocs(t testing.TB, want, got map[string]doc) {
	t.Helper()
	bad := 0
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w := want[k]
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("%s: missing, want %v at %d", k, w.Source, w.Pos)
		case !reflect.DeepEqual(w.Source, g.Source):
			t.Errorf("%s: got %v, want %v", k, js(g.Source), js(w.Source))
		case w.Pos != g.Pos:
			t.Errorf("%s: position %d, want %d", k, g.Pos, w.Pos)
		case uint64(g.Version) != g.Pos:
			t.Errorf("%s: _version %d, want the position %d", k, g.Version, g.Pos)
		default:
			continue
		}
		if bad++; bad > 10 {
			t.Fatal("too many differences")
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: present (%v), want absent", k, js(g.Source))
		}
	}
}

func js(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return strings.TrimSpace(b.String())
}

func headOf(events []envelope.Event) uint64 { return events[len(events)-1].Position }
