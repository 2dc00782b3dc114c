package kinesink

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/mapping"
)

func maker(t *testing.T, key, project string) *recordMaker {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Kinesis.StreamName = "s"
	cfg.Kinesis.PartitionKey = key
	cfg.Kinesis.Project = project
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w.maker.Load()
}

func sampleEvent() envelope.Event {
	return envelope.Event{
		ID: "e-1", StreamID: "order-42", Category: "order", Type: "OrderPlaced", Version: 3,
		Time: time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC), Position: 1234,
		Data: json.RawMessage(`{"total": 42, "note": "<b>&</b>"}`), Metadata: json.RawMessage(`{"correlationId":"c-9"}`),
	}
}

func TestEnvelopeRecord(t *testing.T) {
	ev := sampleEvent()
	r, err := maker(t, DefaultPartitionKey, "").make(context.Background(), &ev)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"position":1234,"id":"e-1","streamId":"order-42","category":"order","type":"OrderPlaced","version":3,` +
		`"time":"2026-01-02T03:04:05.0000006Z","data":{"total":42,"note":"<b>&</b>"},"metadata":{"correlationId":"c-9"}}`
	if string(r.data) != want {
		t.Errorf("record\n got %s\nwant %s", r.data, want)
	}
	if r.key != "order-42" || r.pos != 1234 || r.size() != len(want)+len("order-42") {
		t.Errorf("key %q pos %d size %d", r.key, r.pos, r.size())
	}
}

func TestProjectedRecordCarriesThePosition(t *testing.T) {
	ev := sampleEvent()
	m := maker(t, "{category}:{streamId}", `{id: .streamId, total: .data.total, position: 7}`)
	r, err := m.make(context.Background(), &ev)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.data) != `{"id":"order-42","position":1234,"total":42}` || r.key != "order:order-42" {
		t.Errorf("record %s key %q", r.data, r.key)
	}
	for expr, want := range map[string]string{
		`.data.total`:                  "it must be an object",
		`.data[]`:                      "more than one value",
		`empty`:                        "no value",
		`{a: (.data.note | tonumber)}`: "projection failed",
	} {
		_, err := maker(t, DefaultPartitionKey, expr).make(context.Background(), &ev)
		if !errors.Is(err, ErrProjection) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want ErrProjection saying %q", expr, err, want)
		}
	}
}

func TestRecordLimits(t *testing.T) {
	ev := sampleEvent()
	m := maker(t, DefaultPartitionKey, "")
	// Data that brings data + partition key to exactly 1MiB is fine, one
	// byte more is not.
	grow := func(n int) envelope.Event {
		e := ev
		e.Data = json.RawMessage(`"` + strings.Repeat("x", n) + `"`)
		return e
	}
	empty := grow(0)
	r0, err := m.make(context.Background(), &empty)
	if err != nil {
		t.Fatal(err)
	}
	exact := grow(MaxRecordBytes - r0.size())
	r, err := m.make(context.Background(), &exact)
	if err != nil || r.size() != MaxRecordBytes {
		t.Fatalf("record of %d bytes: %v", r.size(), err)
	}
	over := grow(MaxRecordBytes - r0.size() + 1)
	if _, err := m.make(context.Background(), &over); !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("record of 1MiB+1: %v, want ErrRecordTooLarge", err)
	}

	long := ev
	long.StreamID = strings.Repeat("k", 200)
	if _, err := maker(t, "{category}-{streamId}-{streamId}", "").make(context.Background(), &long); !errors.Is(err, ErrPartitionKey) {
		t.Errorf("a 406-character partition key: %v, want ErrPartitionKey", err)
	}
	uni := ev
	uni.StreamID = strings.Repeat("é", 256) // 256 characters, 512 bytes: allowed
	if r, err := m.make(context.Background(), &uni); err != nil || len(r.key) != 512 {
		t.Errorf("256 two-byte characters: %v", err)
	}
}

func TestTemplate(t *testing.T) {
	ev := &envelope.Event{ID: "e-1", StreamID: "42", Category: "order", Type: "OrderPlaced", Version: 7, Position: 1234}
	for in, want := range map[string]string{
		"{streamId}":                              "42",
		"{category}-{streamId}":                   "order-42",
		"{sink}/{type}@{version}:{position}/{id}": "kin/OrderPlaced@7:1234/e-1",
		"{{{streamId}}}":                          "{42}",
		"fixed":                                   "fixed",
	} {
		tmpl, err := mapping.CompileTemplate(in, "kin", true)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := tmpl.Render(ev); got != want {
			t.Errorf("%q rendered %q, want %q", in, got, want)
		}
	}
	for _, bad := range []string{"{streamid}", "{}", "{streamId", "a}", "{a{streamId}"} {
		if _, err := mapping.CompileTemplate(bad, "kin", true); err == nil {
			t.Errorf("%q compiled", bad)
		}
	}
}
