package kinesink

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// The principal the bridge stores with an event (the Jetsync-Principal
// header) reaches Kinesis in the default record's metadata: the engine
// runs over a real NATS into a real kinesalite and the records are read
// back from the stream.
func TestPrincipalInRecordFromEngine(t *testing.T) {
	tg := newTarget(t)
	h := newHarness(t, tg.srv.URL)
	a := h.event("a", `{"n":1}`)
	a.Metadata, a.Principal = json.RawMessage(`{"correlationId":"c1"}`), "orders-service"
	b := h.event("b", `{"n":2}`)
	b.Principal = "CN=billing,O=acme"
	c := h.event("c", `{"n":3}`)                // appended without auth
	for _, ev := range []envelope.Event{a, b} { // the principal travels in the header
		if got := ev.ToMsg().Header.Get(envelope.HeaderPrincipal); got != ev.Principal {
			t.Fatalf("%s: header %s = %q, want %q", ev.ID, envelope.HeaderPrincipal, got, ev.Principal)
		}
	}
	h.publish(a, b, c)
	r := h.start()
	r.WaitFor(t, h.head(), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	recs := readBack(t, tg.kc, h.cfg.Kinesis.StreamName)
	want := map[string]string{
		a.ID: `{"correlationId":"c1","principal":"orders-service"}`,
		b.ID: `{"principal":"CN=billing,O=acme"}`,
		c.ID: `null`,
	}
	seen := map[string]bool{}
	for _, rec := range recs {
		var got struct {
			ID       string         `json:"id"`
			Metadata map[string]any `json:"metadata"`
		}
		if err := json.Unmarshal(rec.Data, &got); err != nil {
			t.Fatalf("record %s: %v", rec.Data, err)
		}
		w, ok := want[got.ID]
		if !ok {
			t.Errorf("unexpected record %s", rec.Data)
			continue
		}
		seen[got.ID] = true
		md, _ := json.Marshal(got.Metadata)
		if string(md) != w {
			t.Errorf("%s: metadata %s, want %s (record %s)", got.ID, md, w, rec.Data)
		}
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("%s: no record", id)
		}
	}
}
