package cache

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// The principal the bridge stores with an event (Jetsync-Principal) reaches
// Redis through the envelope's metadata, next to the client's metadata.
func TestPrincipalInMetadata(t *testing.T) {
	h := newHarness(t, `
batch: {max_events: 10, max_interval: 5ms}
mappings:
  Created:
    - {op: set, key: "who:{streamId}", project: "{by: .metadata.principal, corr: .metadata.correlationId}"}
`)
	h.publish(
		envelope.Event{ID: "a1", StreamID: "a", Category: category, Type: "Created", Version: 1, Time: time.Now(),
			Data: json.RawMessage(`{}`), Metadata: json.RawMessage(`{"correlationId":"c1"}`), Principal: "orders-service"},
		envelope.Event{ID: "b1", StreamID: "b", Category: category, Type: "Created", Version: 1, Time: time.Now(),
			Data: json.RawMessage(`{}`), Principal: "CN=billing,O=acme"},
		envelope.Event{ID: "c1", StreamID: "c", Category: category, Type: "Created", Version: 1, Time: time.Now(),
			Data: json.RawMessage(`{}`)}, // appended without auth
	)
	r := h.start(h.newWriter())
	h.waitCaughtUp(r, 20*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"who:a": `{"by":"orders-service","corr":"c1"}`,
		"who:b": `{"by":"CN=billing,O=acme","corr":null}`,
		"who:c": `{"by":null,"corr":null}`,
	} {
		var got, w any
		raw := h.redis.get(t, key)
		if err := json.Unmarshal([]byte(raw), &got); err != nil {
			t.Fatalf("%s: %q: %v", key, raw, err)
		}
		_ = json.Unmarshal([]byte(want), &w)
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(w)
		if string(gb) != string(wb) {
			t.Errorf("%s = %s, want %s", key, raw, want)
		}
	}
}
