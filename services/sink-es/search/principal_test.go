package search

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// The principal the bridge stores with an event (the Jetsync-Principal
// header) reaches Elasticsearch through the metadata a projection reads:
// the sink runs over a real NATS into a real Elasticsearch.
func TestPrincipalInProjectedDocument(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	n := newNATS(t)
	alias := uniqueName("who")
	cfg := orderConfig(t, url, "principal", alias)
	cfg.Mappings = map[string][]Action{
		tPlaced: {{Action: ActionIndex, Index: alias, Project: `.data + {by: .metadata.principal, corr: .metadata.correlationId}`}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	events := []envelope.Event{
		{ID: "a1", StreamID: "a", Category: "order", Type: tPlaced, Version: 1, Time: time.Now().UTC(),
			Data: json.RawMessage(`{"total":1}`), Metadata: json.RawMessage(`{"correlationId":"c1"}`), Principal: "orders-service"},
		{ID: "b1", StreamID: "b", Category: "order", Type: tPlaced, Version: 1, Time: time.Now().UTC(),
			Data: json.RawMessage(`{"total":2}`), Principal: "CN=billing,O=acme"},
		{ID: "c1", StreamID: "c", Category: "order", Type: tPlaced, Version: 1, Time: time.Now().UTC(),
			Data: json.RawMessage(`{"total":3}`)}, // appended without auth
	}
	for _, ev := range events[:2] { // the principal travels in the header
		if got := ev.ToMsg().Header.Get(envelope.HeaderPrincipal); got != ev.Principal {
			t.Fatalf("%s: header %s = %q, want %q", ev.ID, envelope.HeaderPrincipal, got, ev.Principal)
		}
	}
	n.publish(t, events)
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	r := n.start(t, cfg, w)
	r.WaitFor(t, headOf(events), 60*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	got := readDocs(t, es, alias)
	want := map[string]string{
		"a": `{"by":"orders-service","corr":"c1","total":1}`,
		"b": `{"by":"CN=billing,O=acme","corr":null,"total":2}`,
		"c": `{"by":null,"corr":null,"total":3}`,
	}
	if len(got) != len(want) {
		t.Errorf("%d documents, want %d: %v", len(got), len(want), got)
	}
	for id, w := range want {
		d, ok := got[id]
		if !ok {
			t.Errorf("%s: missing", id)
			continue
		}
		if s := js(d.Source); s != w {
			t.Errorf("%s = %s, want %s", id, s, w)
		}
	}
}
