package search

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

func testPlanner(t *testing.T) *planner {
	t.Helper()
	cfg := orderConfig(t, "http://127.0.0.1:9", "plan", "orders")
	return &planner{byType: compileMappings(&cfg, nil), pf: DefaultPositionField}
}

func ev(pos uint64, sid, typ, data string) envelope.Event {
	return envelope.Event{ID: sid + "-" + typ, StreamID: sid, Category: "order", Type: typ, Version: pos, Position: pos,
		Time: time.Unix(1700000000, 0).UTC(), Data: json.RawMessage(data)}
}

// fold plans events and folds each chain as the first round would,
// assuming Elasticsearch holds nothing yet.
func fold(t *testing.T, pl *planner, events ...envelope.Event) map[string]*item {
	t.Helper()
	chains, failures, err := pl.build(context.Background(), events)
	if err != nil || len(failures) > 0 {
		t.Fatalf("build: %v %v", err, failures)
	}
	out := map[string]*item{}
	for _, c := range chains {
		it, needBase, err := c.next(pl.pf)
		if needBase {
			c.state = docState{known: true}
			it, _, err = c.next(pl.pf)
		}
		if err != nil {
			t.Fatal(err)
		}
		out[c.key.id] = it
	}
	return out
}

func TestFoldOneItemPerDocument(t *testing.T) {
	pl := testPlanner(t)
	items := fold(t, pl,
		ev(1, "a", tPlaced, `{"total":1,"lines":{"x":1}}`),
		ev(2, "b", tUpdated, `{"status":"new"}`), // merge into nothing: an upsert
		ev(3, "a", tUpdated, `{"lines":{"y":2},"status":"paid"}`),
		ev(4, "c", tPlaced, `{"total":3}`),
		ev(5, "c", tDeleted, `{}`),
		ev(6, "a", tUpdated, `{"lines":{"x":9},"tags":null}`),
		ev(7, "d", tDeleted, `{}`),
		ev(8, "d", tUpdated, `{"n":1}`),
		ev(9, "e", tReplaced, `{"total":5}`),
	)
	want := map[string]struct {
		kind opKind
		pos  uint64
		src  string
		evs  int
	}{
		"a": {opIndex, 6, `{"_position":6,"lines":{"x":9,"y":2},"status":"paid","tags":null,"total":1}`, 3},
		"b": {opIndex, 2, `{"_position":2,"status":"new"}`, 1},
		"c": {opDelete, 5, ``, 2},
		"d": {opIndex, 8, `{"_position":8,"n":1}`, 2},
		"e": {opIndex, 9, `{"_position":9,"by":"Replaced","status":"replaced","total":5,"v":9}`, 1},
	}
	for id, w := range want {
		it := items[id]
		if it == nil {
			t.Fatalf("%s: no item", id)
		}
		if it.kind != w.kind || it.pos != w.pos || string(it.src) != w.src || len(it.events) != w.evs {
			t.Errorf("%s: got %s at %d %s (%d events), want %s at %d %s (%d events)", id, it.kind, it.pos, it.src, len(it.events), w.kind, w.pos, w.src, w.evs)
		}
	}
}

func TestMergeNeedsBaseAndSkipsApplied(t *testing.T) {
	pl := testPlanner(t)
	chains, _, _ := pl.build(context.Background(), []envelope.Event{
		ev(5, "a", tUpdated, `{"n":5}`), ev(6, "a", tUpdated, `{"m":6}`), ev(9, "a", tUpdated, `{"n":9}`)})
	c := chains[0]
	if _, needBase, _ := c.next(pl.pf); !needBase {
		t.Fatal("a merge into an unknown document must ask for it first")
	}
	// Elasticsearch holds the document at position 6: 5 and 6 are in it.
	c.state = docState{known: true, exists: true, src: []byte(`{"_position":6,"n":5,"m":6,"k":1}`), pos: 6}
	c.dropApplied()
	it, _, err := c.next(pl.pf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(it.src), `{"_position":9,"k":1,"m":6,"n":9}`; got != want || it.pos != 9 || len(it.events) != 1 {
		t.Errorf("got %s at %d over %v, want %s at 9 over one event", got, it.pos, it.events, want)
	}
	c.state = docState{known: true, exists: true, src: []byte(`{"_position":9}`), pos: 9}
	c.ops = c.ops[:0]
	if it, nb, _ := c.next(pl.pf); it != nil || nb {
		t.Error("nothing is left to do once the document is past every event")
	}
}

func TestUnfoldWritesOneEventPerItem(t *testing.T) {
	pl := testPlanner(t)
	chains, _, _ := pl.build(context.Background(), []envelope.Event{
		ev(1, "a", tPlaced, `{"total":1}`), ev(2, "a", tUpdated, `{"n":2}`), ev(3, "a", tUpdated, `{"n":3}`)})
	c := chains[0]
	c.unfold = true
	var got []string
	for {
		it, _, err := c.next(pl.pf)
		if err != nil {
			t.Fatal(err)
		}
		if it == nil {
			break
		}
		got = append(got, string(it.src))
		c.applied(it)
	}
	want := []string{`{"_position":1,"total":1}`, `{"_position":2,"n":2,"total":1}`, `{"_position":3,"n":3,"total":1}`}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestPlanFailures(t *testing.T) {
	cfg := orderConfig(t, "http://127.0.0.1:9", "plan", "orders")
	cfg.Indices["by-{category}"] = IndexConfig{}
	cfg.Mappings["Tagged"] = []Action{{Action: ActionIndex, Index: "by-{category}", Project: `.data.missing[0]`}}
	cfg.UnknownTypes = UnknownError
	pl := &planner{byType: compileMappings(&cfg, nil), pf: DefaultPositionField, unknownErr: true}
	upper := ev(4, "a", "Tagged", `{}`)
	upper.Category = "Order"
	_, failures, err := pl.build(context.Background(), []envelope.Event{
		ev(1, "a", tPlaced, `[1,2]`),
		ev(2, "a", "Nope", `{}`),
		ev(3, "a", tPlaced, `{"ok":true}`),
		upper,
		ev(5, "a", "Tagged", `{}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]error{0: ErrNotObject, 1: ErrUnknownType, 3: ErrBadTarget, 4: ErrNotObject}
	if len(failures) != len(want) {
		t.Fatalf("failures %v, want events %v", failures, want)
	}
	for _, f := range failures {
		if w, ok := want[f.Index]; !ok || !strings.Contains(f.Err.Error(), w.Error()) {
			t.Errorf("event %d: %v, want %v", f.Index, f.Err, want[f.Index])
		}
	}
}

func TestWithPosition(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{}`, `{"_position":7}`},
		{`{"a":1}`, `{"_position":7,"a":1}`},
		{` { "a" : 1 }`, `{"_position":7,"a" : 1 }`},
		{`{"_position":1,"a":"<&>"}`, `{"_position":7,"a":"<&>"}`},
	} {
		got, err := withPosition([]byte(tc.in), DefaultPositionField, 7)
		if err != nil || string(got) != tc.want {
			t.Errorf("withPosition(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestAppendItem(t *testing.T) {
	c := &chain{key: docKey{"orders", `a"b`}, alias: true}
	got := string(appendItem(nil, &item{c: c, kind: opIndex, pos: 42, src: []byte(`{"x":1}`)}))
	want := `{"index":{"_index":"orders","_id":"a\"b","version":42,"version_type":"external","require_alias":true}}` + "\n" + `{"x":1}` + "\n"
	if got != want {
		t.Errorf("index:\n%s\nwant\n%s", got, want)
	}
	got = string(appendItem(nil, &item{c: c, kind: opDelete, pos: 43}))
	want = `{"delete":{"_index":"orders","_id":"a\"b","version":43,"version_type":"external"}}` + "\n"
	if got != want {
		t.Errorf("delete:\n%s\nwant\n%s", got, want)
	}
}

func TestClassify(t *testing.T) {
	blocked := &esError{Type: "cluster_block_exception"}
	for _, tc := range []struct {
		kind opKind
		r    bulkResult
		want verdict
	}{
		{opIndex, bulkResult{Status: 201}, applied},
		{opIndex, bulkResult{Status: 409, Error: &esError{Type: "version_conflict_engine_exception"}}, applied},
		{opDelete, bulkResult{Status: 404, Result: "not_found"}, applied},
		{opDelete, bulkResult{Status: 409}, applied},
		{opScript, bulkResult{Status: 409}, retry},
		{opIndex, bulkResult{Status: 429}, retry},
		{opIndex, bulkResult{Status: 503}, retry},
		{opIndex, bulkResult{Status: 403, Error: blocked}, retry},
		{opIndex, bulkResult{Status: 403, Error: &esError{Type: "security_exception"}}, refused},
		{opIndex, bulkResult{Status: 400, Error: &esError{Type: "mapper_parsing_exception"}}, refused},
		{opIndex, bulkResult{Status: 404, Error: &esError{Type: "index_not_found_exception"}}, refused},
		{opScript, bulkResult{Status: 400, Error: &esError{Type: "illegal_argument_exception"}}, refused},
	} {
		if got := classify(tc.kind, tc.r); got != tc.want {
			t.Errorf("%s %d %v: got %d, want %d", tc.kind, tc.r.Status, tc.r.Error, got, tc.want)
		}
	}
}

func TestGuardScript(t *testing.T) {
	s := guardScript("_position", "ctx._source.n = params.event.data.n")
	for _, want := range []string{"ctx._source['_position'] >= params.position", "ctx.op = 'noop'", "ctx._source.n = params.event.data.n", "ctx._source['_position'] = params.position"} {
		if !strings.Contains(s, want) {
			t.Errorf("guard script lacks %q:\n%s", want, s)
		}
	}
}

func TestIndexPattern(t *testing.T) {
	for in, want := range map[string]string{
		"orders":                   "orders",
		"orders-{category}":        "orders-*",
		"{sink}-{category}-{type}": "s-*-*",
		"a{{b}}-{streamId}":        "a{b}-*",
	} {
		if got := indexPattern(in, "s"); got != want {
			t.Errorf("indexPattern(%q) = %q, want %q", in, got, want)
		}
	}
}
