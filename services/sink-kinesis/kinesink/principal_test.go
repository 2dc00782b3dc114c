package kinesink

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// The default record (the envelope as JSON) carries the principal the
// bridge stored, in its metadata.
func TestEnvelopeRecordHasPrincipal(t *testing.T) {
	in := envelope.Event{ID: "e1", Category: "order", StreamID: "o1", Type: "Placed", Version: 1, Time: time.Unix(0, 0),
		Data: json.RawMessage(`{}`), Metadata: json.RawMessage(`{"correlationId":"c1"}`), Principal: "orders-service"}
	m := in.ToMsg()
	ev, err := envelope.FromMsg(m.Subject, m.Header, m.Data, 3)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := EnvelopeJSON(&ev)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(rec, &got); err != nil {
		t.Fatal(err)
	}
	if got.Metadata["principal"] != "orders-service" || got.Metadata["correlationId"] != "c1" {
		t.Fatalf("record %s", rec)
	}
}
