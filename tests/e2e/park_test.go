package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestParkElasticsearch: sink-es with on_error: park over interleaved
// orders. The index refuses the OrderPlaced of two orders (a coupon that
// is not a number, for a double field): each order's stream is parked, its
// later events dead-lettered behind it without being attempted (the
// document never appears, though updates would create it), while every
// other order is applied and equals the fold of its events. jetsyncctl
// status, /metrics and the dead-letter stream show the parked streams; a
// retry the index still refuses keeps the stream parked; a restart keeps
// both parked and parks a new event of one; after the mapping is fixed, a
// retry re-applies the stream in order and un-parks it, so the index
// equals an independent fold of the whole log; discard drops the other
// stream's events and un-parks it.
func TestParkElasticsearch(t *testing.T) {
	s := newESStack(t, 5)
	cfg := strings.Replace(readFileT(t, s.config), "on_error: stop", "on_error: park", 1)
	cfg = strings.Replace(cfg, "        status: {type: keyword}\n", "        status: {type: keyword}\n        coupon: {type: double}\n", 1)
	if !strings.Contains(cfg, "coupon") || !strings.Contains(cfg, "on_error: park") {
		t.Fatal("test bug: the config was not changed")
	}
	s.config = writeFile(t, "sink-es-park.yaml", cfg)
	admin := "http://" + regexp.MustCompile(`listen: "([^"]+)"`).FindStringSubmatch(cfg)[1]
	s.startSinkES()

	w := newESWorkload(12, 8)
	parked := []string{"order-003", "order-007"}
	for _, sid := range parked {
		ev := &w.events[sid][0]
		var d map[string]any
		if err := json.Unmarshal(ev.Data, &d); err != nil || ev.Type != "OrderPlaced" {
			t.Fatalf("test bug: %s starts with %s %s", sid, ev.Type, ev.Data)
		}
		d["coupon"] = "not-a-number"
		ev.Data, _ = json.Marshal(d)
	}
	if err := w.appendAll(s.stack, 1, 4); err != nil { // one event per request: orders interleave
		t.Fatal(err)
	}
	waitApplied := func(pos uint64) {
		t.Helper()
		testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= pos }, "sink-es checkpoint %d never reached %d", s.checkpoint(), pos)
	}
	waitApplied(w.head())
	appendOne := func(sid, typ, data string) uint64 {
		t.Helper()
		id := fmt.Sprintf("%s-%d", sid, len(w.events[sid])+1)
		pos := s.appendOne(sid, id, typ, data)
		w.events[sid] = append(w.events[sid], appendReq{ID: id, Type: typ, Data: json.RawMessage(data)})
		w.positions[sid] = append(w.positions[sid], pos)
		return pos
	}

	_, js := s.nats.Connect(t)
	q, err := deadletter.Open(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	// letters checks the dead letters of order sid: every event of it,
	// the first refused by the index, the rest parked behind it.
	letters := func(sid string) int {
		t.Helper()
		all, err := q.List(context.Background(), s.name)
		if err != nil {
			t.Fatal(err)
		}
		var got []deadletter.Letter
		for _, l := range all {
			if l.Subject == "events.order."+sid {
				got = append(got, l)
			}
		}
		for i, l := range got {
			if l.Position != w.positions[sid][i] {
				t.Fatalf("dead letter %d of %s at position %d, want %d", i, sid, l.Position, w.positions[sid][i])
			}
			switch {
			case i == 0 && (l.ParkedBehind != 0 || !strings.Contains(l.Error, "mapper_parsing_exception")):
				t.Fatalf("first dead letter of %s: %+v; want the index's refusal", sid, l)
			case i > 0 && (l.ParkedBehind != w.positions[sid][0] || !strings.Contains(l.Error, "not attempted")):
				t.Fatalf("dead letter %d of %s: parked behind %d (%s); want %d", i, sid, l.ParkedBehind, l.Error, w.positions[sid][0])
			}
		}
		return len(got)
	}
	// checkDocs compares the index with the fold of each order but skip;
	// the parked orders must have no document at all.
	checkDocs := func(skip string, absent ...string) {
		t.Helper()
		docs := s.docs(t)
		for _, sid := range w.streams {
			got, ok := docs[sid]
			if slices.Contains(absent, sid) {
				if ok {
					t.Fatalf("%s is parked, yet its document exists (an event applied on top of the hole): %+v", sid, got)
				}
				continue
			}
			if sid == skip {
				continue
			}
			want, pos := esFoldStream(w.events[sid], w.positions[sid], len(w.events[sid]))
			if !ok || !reflect.DeepEqual(got.Source, want) || got.Pos != pos || got.Version != pos {
				t.Fatalf("%s: got %+v (present %v)\nwant %v at %d", sid, got, ok, want, pos)
			}
		}
	}
	checkDocs("", parked...)
	for _, sid := range parked {
		if n := letters(sid); n != 8 {
			t.Fatalf("%s: %d dead letters, want its 8 events", sid, n)
		}
	}
	var out string
	testenv.Eventually(t, 10*time.Second, func() bool { // the status is published once a second
		out, _ = s.ctl("status")
		return strings.Contains(out, fmt.Sprintf("%s parks 2 stream(s) (on_error: park), 16 event(s) in dlq.%s", s.name, s.name))
	}, "jetsyncctl status:\n%s", out)
	t.Logf("jetsyncctl status:\n%s", out)
	for _, sid := range parked {
		if want := fmt.Sprintf("order/%s behind position %d (8 event(s)", sid, w.positions[sid][0]); !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "mapper_parsing_exception") || !regexp.MustCompile(`(?m)^`+s.name+`\s+live \[2 parked\]`).MatchString(out) {
		t.Fatalf("status lacks the refusal or the parked note:\n%s", out)
	}
	if got := metric(t, admin+"/metrics", "jetsync_sink_parked_streams"); got != 2 {
		t.Fatalf("jetsync_sink_parked_streams = %v, want 2", got)
	}
	if got := metric(t, admin+"/metrics", "jetsync_sink_parked_events"); got != 16 {
		t.Fatalf("jetsync_sink_parked_events = %v, want 16", got)
	}

	// Refused, nothing changed: a stream not parked, a malformed name,
	// dead letters by number or all at once on a parking sink.
	s.ctlExpect(2, "events.order.order-001 has no parked events", "dlq", "retry", s.name, "--stream", "order/order-001")
	s.ctlExpect(2, "name it CATEGORY/ID", "dlq", "retry", s.name, "--stream", "order-001")
	s.ctlExpect(2, "discard a parked stream with --stream CATEGORY/ID", "dlq", "discard", s.name, "--all")
	s.ctlExpect(2, "retried with the rest of its stream, in order", "dlq", "retry", s.name, "1")
	// The index is unchanged: still refused, still parked.
	s.ctlExpect(1, fmt.Sprintf("order/order-003 stays parked: stream stays parked at position %d (0 of its 8", w.positions["order-003"][0]),
		"dlq", "retry", s.name, "--stream", "order/order-003")
	if n := letters("order-003"); n != 8 {
		t.Fatalf("order-003: %d dead letters after a refused retry, want 8", n)
	}
	checkDocs("", parked...)

	// Restart: both streams are parked again, from the dead-letter
	// stream; a new event of a parked order is parked, others applied.
	if code := s.sinkES.stop(15 * time.Second); code != 0 {
		t.Fatalf("sink-es exited %d on SIGTERM", code)
	}
	s.startSinkES()
	appendOne("order-003", "OrderUpdated", `{"version":9,"total":27.5}`)
	waitApplied(appendOne("order-001", "OrderUpdated", `{"version":9,"total":1.5}`))
	if n := letters("order-003"); n != 9 {
		t.Fatalf("order-003: %d dead letters after the restart, want 9", n)
	}
	checkDocs("", parked...)
	testenv.Eventually(t, 10*time.Second, func() bool {
		st := s.controlStatus(s.name)
		return st.ParkedStreams == 2 && st.ParkedEvents == 17
	}, "status after the restart: %+v", s.controlStatus(s.name))

	// Fix the index; the retry applies order-003's events in order and
	// un-parks it; its next event is applied as usual.
	res, err := esapi.IndicesPutMappingRequest{Index: []string{s.aliasIndex(t)},
		Body: strings.NewReader(`{"properties":{"coupon":{"type":"double","ignore_malformed":true}}}`)}.Do(context.Background(), s.es)
	if err != nil || res.IsError() {
		t.Fatalf("fixing the mapping: %v %v", res, err)
	}
	res.Body.Close()
	s.ctlExpect(0, "re-applied 9 parked event(s) of order/order-003 in position order; order/order-003 is un-parked",
		"dlq", "retry", s.name, "--stream", "order/order-003")
	waitApplied(appendOne("order-003", "OrderShipped", `{"status":"shipped-10","carrier":"c1","parcels":10}`))
	if n := letters("order-003"); n != 0 {
		t.Fatalf("order-003: %d dead letters left after the retry", n)
	}
	checkDocs("order-007") // every other order equals the fold of its whole log
	if got := metric(t, admin+"/metrics", "jetsync_sink_parked_streams"); got != 1 {
		t.Fatalf("jetsync_sink_parked_streams = %v after the retry, want 1", got)
	}

	// Discard order-007: its parked events are dropped and it is
	// un-parked; its next event is applied on top of the hole.
	s.ctlExpect(0, "discarded 8 parked event(s) of order/order-007", "dlq", "discard", s.name, "--stream", "order/order-007")
	if n := letters("order-007"); n != 0 {
		t.Fatalf("order-007: %d dead letters left after the discard", n)
	}
	s.ctlExpect(2, "events.order.order-007 has no parked events", "dlq", "discard", s.name, "--stream", "order/order-007")
	late := s.appendOne("order-007", "order-007-late", "OrderUpdated", `{"version":9,"total":4.5}`)
	waitApplied(late)
	if d := s.docs(t)["order-007"]; d.Pos != late || !reflect.DeepEqual(d.Source, map[string]any{"version": 9.0, "total": 4.5}) {
		t.Fatalf("order-007 after the discard: %+v", d)
	}
	if got := metric(t, admin+"/metrics", "jetsync_sink_parked_streams"); got != 0 {
		t.Fatalf("jetsync_sink_parked_streams = %v after the discard, want 0", got)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return s.controlStatus(s.name).ParkedStreams == 0 }, "status still lists parked streams")

	// Down: refused, nothing changed.
	s.sinkES.kill()
	s.ctlExpect(2, fmt.Sprintf("sink %s is not running", s.name), "dlq", "retry", s.name, "--stream", "order/order-003")
}
