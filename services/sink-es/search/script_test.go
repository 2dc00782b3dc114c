package search

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// hasPainless asks the server whether it runs painless scripts. The test
// node (Elasticsearch core without modules) does not; a full Elasticsearch
// given as ES_URL does.
func hasPainless(t *testing.T, es *elasticsearch.Client) bool {
	var out struct {
		LanguageContexts []struct {
			Language string `json:"language"`
		} `json:"language_contexts"`
	}
	esCall(t, es, esapi.GetScriptLanguagesRequest{}, &out)
	for _, l := range out.LanguageContexts {
		if l.Language == "painless" {
			return true
		}
	}
	return false
}

// Script actions run painless in Elasticsearch. Against the test node,
// which has no painless, the test asserts the clear per-event refusal and
// that the error policy applies to those events alone. Against a full
// Elasticsearch (ES_URL), it asserts what the script does and that its
// position guard makes a replay a no-op.
func TestScriptAction(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	n := newNATS(t)
	alias := uniqueName("orders")
	cfg := orderConfig(t, url, "script", alias)
	cfg.OnError = sink.OnErrorSkip
	cfg.Mappings["Counted"] = []Action{{Action: ActionScript, Index: alias,
		Script: "ctx._source.count = (ctx._source.count == null ? 0 : ctx._source.count) + params.event.data.by"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var events []envelope.Event
	for i := range 30 {
		sid := []string{"a", "b", "c"}[i%3]
		typ, data := tUpdated, `{"status":"s"}`
		if i%5 == 0 {
			typ, data = "Counted", `{"by":2}`
		}
		events = append(events, envelope.Event{ID: "sc-" + string(rune('a'+i)), StreamID: sid, Category: "order", Type: typ,
			Version: uint64(i + 1), Data: []byte(data)})
	}
	n.publish(t, events)
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}

	if !hasPainless(t, es) {
		t.Log("this Elasticsearch has no painless (the test node): asserting the refusal and the error policy")
		ctx := context.Background()
		if err := w.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		err := w.WriteBatch(ctx, &sink.Batch{Events: events, Through: headOf(events)})
		var be *sink.BatchError
		// The first script event of each document is refused; what follows
		// it on that document waits for the next write (the engine's).
		if !errors.As(err, &be) || len(be.Failures) != 3 {
			t.Fatalf("WriteBatch = %v, want the first script event of each of the 3 documents refused", err)
		}
		for _, f := range be.Failures {
			if events[f.Index].Type != "Counted" || !errors.Is(f.Err, ErrRefused) || !strings.Contains(f.Err.Error(), "painless") {
				t.Errorf("failure of event %d (%s): %v; want ErrRefused saying painless is not supported", f.Index, events[f.Index].Type, f.Err)
			}
		}
		_ = w.Close(ctx)

		r := n.start(t, cfg, w) // on_error: skip
		r.WaitFor(t, headOf(events), 30*time.Second)
		if st := r.Eng.Stats(); st.Skipped != 6 {
			t.Errorf("the engine skipped %d events, want the 6 script events", st.Skipped)
		}
		var rest []envelope.Event
		for _, e := range events {
			if e.Type != "Counted" {
				rest = append(rest, e)
			}
		}
		compareDocs(t, foldOrders(rest), readDocs(t, es, alias))
		return
	}

	t.Log("this Elasticsearch runs painless: asserting the script and its guard")
	r := n.start(t, cfg, w)
	r.WaitFor(t, headOf(events), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	check := func() map[string]doc {
		docs := readDocs(t, es, alias)
		for _, id := range []string{"a", "b", "c"} {
			want, last := 0.0, uint64(0)
			for _, e := range events {
				if e.StreamID == id {
					last = e.Position
					if e.Type == "Counted" {
						want += 2
					}
				}
			}
			d := docs[id]
			if d.Source["count"] != want || d.Pos != last {
				t.Errorf("%s: count %v at %d, want %v at %d", id, d.Source["count"], d.Pos, want, last)
			}
		}
		return docs
	}
	before := check()
	if err := n.store.Reset(context.Background(), cfg.Name, 0); err != nil {
		t.Fatal(err)
	}
	r = n.start(t, cfg, w)
	r.WaitFor(t, headOf(events), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	after := check()
	for id, d := range before {
		if after[id].SeqNo != d.SeqNo {
			t.Errorf("%s: a replay wrote the document again (_seq_no %d -> %d)", id, d.SeqNo, after[id].SeqNo)
		}
	}
}
