package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func TestAppendStoresEventsAsSent(t *testing.T) {
	e := newEnv(t)
	body := `[
	  {"id":"o1-1","type":"OrderPlaced","data":{"amount": 12, "items":["a"]},"metadata":{"correlationId": "c-1"},"time":"2024-05-01T12:00:00.123456789Z"},
	  {"id":"o1-2","type":"OrderPaid","data":{"amount":12},"category":"order","streamId":"o1"},
	  {"id":"o1-3","type":"OrderShipped","data":null,"metadata":null}
	]`
	// Another stream's event first, so positions are not just 1..n.
	wantStatus(t, e.post(t, "order", "other", newEvents("other", 2)), http.StatusOK)

	before := time.Now()
	r := e.post(t, "order", "o1", body)
	after := time.Now()
	wantStatus(t, r, http.StatusOK)
	if r.Version != 3 || r.Duplicate {
		t.Fatalf("answer %+v, want version 3, not duplicate", r)
	}
	if len(r.Positions) != 3 || r.Positions[0] != 3 || r.Positions[1] != 4 || r.Positions[2] != 5 {
		t.Fatalf("positions %v, want [3 4 5]", r.Positions)
	}

	got := readSubject(t, e.js, "events.order.o1")
	if len(got) != 3 {
		t.Fatalf("stored %d events, want 3", len(got))
	}
	want := []struct {
		id, typ, data, metadata string
	}{
		{"o1-1", "OrderPlaced", `{"amount": 12, "items":["a"]}`, `{"correlationId":"c-1"}`},
		{"o1-2", "OrderPaid", `{"amount":12}`, ""},
		{"o1-3", "OrderShipped", `null`, ""},
	}
	for i, ev := range got {
		w := want[i]
		if ev.ID != w.id || ev.Type != w.typ || ev.Category != "order" || ev.StreamID != "o1" {
			t.Errorf("event %d: %+v", i, ev)
		}
		if ev.Version != uint64(i+1) || ev.Position != r.Positions[i] {
			t.Errorf("event %d: version %d position %d, want %d and %d", i, ev.Version, ev.Position, i+1, r.Positions[i])
		}
		if string(ev.Data) != w.data {
			t.Errorf("event %d: data %s, want %s byte for byte", i, ev.Data, w.data)
		}
		if string(ev.Metadata) != w.metadata {
			t.Errorf("event %d: metadata %q, want %q", i, ev.Metadata, w.metadata)
		}
	}
	if want := time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC); !got[0].Time.Equal(want) {
		t.Errorf("time %v, want %v", got[0].Time, want)
	}
	for _, ev := range got[1:] { // no time given: the bridge's clock
		if ev.Time.Before(before.Add(-time.Millisecond)) || ev.Time.After(after.Add(time.Millisecond)) {
			t.Errorf("%s: time %v not within the request (%v..%v)", ev.ID, ev.Time, before, after)
		}
	}

	// A second append continues the versions and the positions.
	r2 := e.post(t, "order", "o1", newEvents("o1-b", 2))
	wantStatus(t, r2, http.StatusOK)
	if r2.Version != 5 || r2.Positions[0] != 6 || r2.Positions[1] != 7 {
		t.Fatalf("second append %+v, want version 5 at [6 7]", r2)
	}
	st := do(t, http.MethodGet, e.srv.URL+"/streams/order/o1", "")
	wantStatus(t, st, http.StatusOK)
	if st.Version != 5 || st.LastPosition != 7 {
		t.Fatalf("GET stream %+v, want version 5, lastPosition 7", st)
	}
	st = do(t, http.MethodGet, e.srv.URL+"/streams/order/nobody", "")
	wantStatus(t, st, http.StatusOK)
	if st.Version != 0 || st.LastPosition != 0 {
		t.Fatalf("GET missing stream %+v, want zeros", st)
	}
}

func TestAppendExpectedVersion(t *testing.T) {
	e := newEnv(t)
	r := e.post(t, "acct", "a1", newEvents("a", 2), HeaderExpectedVersion, "0")
	wantStatus(t, r, http.StatusOK)

	check409 := func(r apiResp, expected, current uint64) {
		t.Helper()
		wantStatus(t, r, http.StatusConflict)
		if r.Error != "wrong expected version" || r.ExpectedVersion == nil || *r.ExpectedVersion != expected || r.CurrentVersion == nil || *r.CurrentVersion != current {
			t.Fatalf("409 answer %+v, want expected %d current %d", r, expected, current)
		}
	}
	// The stream exists now: 0 is wrong.
	check409(do(t, http.MethodPost, e.srv.URL+"/streams/acct/a1/events?expectedVersion=0", newEvents("b", 1)), 0, 2)
	check409(e.post(t, "acct", "a1", newEvents("b", 1), HeaderExpectedVersion, "1"), 1, 2)
	check409(do(t, http.MethodPost, e.srv.URL+"/streams/acct/a1/events?expectedVersion=7", newEvents("b", 1)), 7, 2)

	r = do(t, http.MethodPost, e.srv.URL+"/streams/acct/a1/events?expectedVersion=2", newEvents("b", 3))
	wantStatus(t, r, http.StatusOK)
	if r.Version != 5 {
		t.Fatalf("version %d, want 5", r.Version)
	}
	if n := msgCount(t, e.js); n != 5 {
		t.Fatalf("stream holds %d messages, want 5 (no failed append stored anything)", n)
	}

	// Query and header disagreeing is a bad request.
	r = do(t, http.MethodPost, e.srv.URL+"/streams/acct/a1/events?expectedVersion=5", newEvents("c", 1), HeaderExpectedVersion, "4")
	wantStatus(t, r, http.StatusBadRequest)
	if r.Field != HeaderExpectedVersion {
		t.Fatalf("field %q", r.Field)
	}
}

// A batch the server refuses at commit stores none of its messages, also
// when only a later message of it fails a check.
func TestAtomicBatchFailureStoresNothing(t *testing.T) {
	e := newEnv(t)
	wantStatus(t, e.post(t, "cart", "c1", newEvents("c1", 3)), http.StatusOK)
	before := msgCount(t, e.js)
	ctx := context.Background()

	batch := func(prefix string, n int) []*nats.Msg {
		msgs := make([]*nats.Msg, n)
		for i := range msgs {
			ev := envelope.Event{ID: fmt.Sprintf("%s-%d", prefix, i), Category: "cart", StreamID: "c1", Type: "T", Version: uint64(4 + i), Time: time.Now(), Data: []byte(`{}`)}
			msgs[i] = ev.ToMsg()
		}
		return msgs
	}
	// Wrong expected last subject sequence on the first message.
	_, _, err := e.app.publish(ctx, batch("x", 5), 99)
	if !isAPIError(err, jetstream.JSErrCodeStreamWrongLastSequence) {
		t.Fatalf("publish with a wrong last sequence: %v, want wrong last sequence", err)
	}
	// The first message is fine; the fourth expects another subject's state.
	msgs := batch("y", 5)
	msgs[3].Subject = "events.cart.c2"
	msgs[3].Header.Set(jetstream.ExpectedLastSubjSeqHeader, "42")
	_, _, err = e.app.publish(ctx, msgs, 3)
	if !isAPIError(err, jetstream.JSErrCodeStreamWrongLastSequence) {
		t.Fatalf("batch failing on its 4th message: %v, want wrong last sequence", err)
	}
	if n := msgCount(t, e.js); n != before {
		t.Fatalf("stream holds %d messages after failed batches, want %d", n, before)
	}
	if got := readSubject(t, e.js, "events.cart.c1"); len(got) != 3 {
		t.Fatalf("stream c1 has %d events, want 3", len(got))
	}
	// The good batch still goes in.
	last, _, err := e.app.publish(ctx, batch("z", 5), 3)
	if err != nil || last != before+5 {
		t.Fatalf("good batch: last %d, %v", last, err)
	}
}

// Another bridge appending between our read and our commit makes the
// server refuse our batch; without an expected version we retry, with one
// the client learns the new version.
func TestAppendConflictWithAnotherBridge(t *testing.T) {
	e := newEnv(t)
	other := newEnvOn(t, e.ns)

	var once sync.Once
	e.app.beforePublish = func() {
		once.Do(func() {
			wantStatus(t, other.post(t, "inv", "i1", newEvents("other", 2)), http.StatusOK)
		})
	}
	r := e.post(t, "inv", "i1", newEvents("mine", 2))
	wantStatus(t, r, http.StatusOK)
	if r.Version != 4 || r.Positions[0] != 3 {
		t.Fatalf("answer %+v, want version 4 from position 3 (retried after the other bridge)", r)
	}
	if s := e.app.Stats(); s.Retries != 1 || s.Appends != 1 {
		t.Fatalf("stats %+v, want 1 retry and 1 append", s)
	}
	got := readSubject(t, e.js, "events.inv.i1")
	for i, id := range []string{"other-0", "other-1", "mine-0", "mine-1"} {
		if got[i].ID != id || got[i].Version != uint64(i+1) {
			t.Fatalf("event %d is %s v%d, want %s v%d", i, got[i].ID, got[i].Version, id, i+1)
		}
	}

	// The same with a single event, which goes as a plain publish.
	once = sync.Once{}
	e.app.beforePublish = func() {
		once.Do(func() {
			wantStatus(t, other.post(t, "inv", "i1", newEvents("other-single", 2)), http.StatusOK)
		})
	}
	r = e.post(t, "inv", "i1", newEvents("mine-single", 1))
	wantStatus(t, r, http.StatusOK)
	if r.Version != 7 || len(r.Positions) != 1 {
		t.Fatalf("single event answer %+v, want version 7", r)
	}
	// This time the bridge knew the stream's head from its own append and
	// published without reading it: the server refused the stale head.
	if s := e.app.Stats(); s.Retries != 1 || s.StaleHeads != 1 {
		t.Fatalf("stats %+v, want 1 retry and 1 stale head", s)
	}

	once = sync.Once{}
	e.app.beforePublish = func() {
		once.Do(func() {
			wantStatus(t, other.post(t, "inv", "i2", newEvents("other2", 1)), http.StatusOK)
		})
	}
	r = e.post(t, "inv", "i2", newEvents("mine2", 1), HeaderExpectedVersion, "0")
	wantStatus(t, r, http.StatusConflict)
	if r.CurrentVersion == nil || *r.CurrentVersion != 1 {
		t.Fatalf("409 answer %+v, want currentVersion 1", r)
	}
	if got := readSubject(t, e.js, "events.inv.i2"); len(got) != 1 {
		t.Fatalf("stream i2 has %d events, want 1", len(got))
	}
}

// Appends to one stream from 8 clients over two bridges never interleave:
// each append's events are contiguous, versions have no gaps.
func TestConcurrentAppendsNeverInterleave(t *testing.T) {
	a := newEnv(t)
	b := newEnvOn(t, a.ns)
	envs := []*apiEnv{a, b}
	const workers, appends, perAppend = 8, 20, 5

	type result struct {
		prefix string
		r      apiResp
	}
	results := make(chan result, workers*appends)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range appends {
				prefix := fmt.Sprintf("w%d-a%d", w, i)
				r := envs[w%2].post(t, "ledger", "L", newEvents(prefix, perAppend))
				results <- result{prefix, r}
			}
		})
	}
	wg.Wait()
	close(results)

	got := readSubject(t, a.js, "events.ledger.L")
	if len(got) != workers*appends*perAppend {
		t.Fatalf("stored %d events, want %d", len(got), workers*appends*perAppend)
	}
	byPos := map[uint64]envelope.Event{}
	for i, ev := range got {
		if ev.Version != uint64(i+1) {
			t.Fatalf("event %d (%s) has version %d, want %d", i, ev.ID, ev.Version, i+1)
		}
		if i > 0 && ev.Position <= got[i-1].Position {
			t.Fatalf("positions not increasing at %d", i)
		}
		byPos[ev.Position] = ev
	}
	for res := range results {
		wantStatus(t, res.r, http.StatusOK)
		p := res.r.Positions
		if len(p) != perAppend {
			t.Fatalf("%s: positions %v", res.prefix, p)
		}
		for i := range p {
			ev := byPos[p[i]]
			if i > 0 && p[i] != p[i-1]+1 {
				t.Fatalf("%s: positions %v not contiguous", res.prefix, p)
			}
			if want := fmt.Sprintf("%s-%d", res.prefix, i); ev.ID != want {
				t.Fatalf("%s: position %d holds %q, want %q (appends interleaved)", res.prefix, p[i], ev.ID, want)
			}
		}
		if ev := byPos[p[perAppend-1]]; ev.Version != res.r.Version {
			t.Fatalf("%s: answered version %d, stored %d", res.prefix, res.r.Version, ev.Version)
		}
	}
	t.Logf("bridge A %+v, bridge B %+v", a.app.Stats(), b.app.Stats())
}

func TestAppendRetryIsIdempotent(t *testing.T) {
	e := newEnv(t)
	body := newEvents("pay", 3)
	first := e.post(t, "pay", "p1", body, HeaderExpectedVersion, "0")
	wantStatus(t, first, http.StatusOK)

	// The same append again, with or without the expected version: the
	// first answer again, marked duplicate, nothing stored.
	for _, hdr := range [][]string{nil, {HeaderExpectedVersion, "0"}} {
		again := e.post(t, "pay", "p1", body, hdr...)
		wantStatus(t, again, http.StatusOK)
		if !again.Duplicate || again.Version != first.Version || fmt.Sprint(again.Positions) != fmt.Sprint(first.Positions) {
			t.Fatalf("retry answered %+v, want duplicate of %+v", again, first)
		}
	}
	if n := msgCount(t, e.js); n != 3 {
		t.Fatalf("stream holds %d messages, want 3", n)
	}

	// A single event (a plain publish, not a batch) retried.
	one := e.post(t, "pay", "p1", newEvents("single", 1))
	wantStatus(t, one, http.StatusOK)
	again := e.post(t, "pay", "p1", newEvents("single", 1))
	if again.code != http.StatusOK || !again.Duplicate || again.Positions[0] != one.Positions[0] || again.Version != 4 {
		t.Fatalf("single retry answered %+v, want duplicate of %+v", again, one)
	}

	// Once the stream has moved on, the old ids are a conflict naming the id.
	wantStatus(t, e.post(t, "pay", "p1", newEvents("later", 1)), http.StatusOK)
	r := e.post(t, "pay", "p1", body)
	wantStatus(t, r, http.StatusConflict)
	if r.Field != "events[0].id" || r.ID != "pay-0" || r.Position != first.Positions[0] {
		t.Fatalf("answer %+v, want events[0].id pay-0 at %d", r, first.Positions[0])
	}
	// A new append reusing one stored id.
	r = e.post(t, "pay", "p1", `[{"id":"fresh","type":"T","data":{}},{"id":"pay-1","type":"T","data":{}}]`)
	wantStatus(t, r, http.StatusConflict)
	if r.Field != "events[1].id" || r.ID != "pay-1" {
		t.Fatalf("answer %+v, want events[1].id pay-1", r)
	}
	r = e.post(t, "pay", "p1", `[{"id":"single-0","type":"T","data":{}}]`)
	wantStatus(t, r, http.StatusConflict)
	if r.Field != "events[0].id" || r.ID != "single-0" || r.Position != one.Positions[0] {
		t.Fatalf("answer %+v, want events[0].id single-0 at %d", r, one.Positions[0])
	}
	// An id used by another stream.
	r = e.post(t, "pay", "p2", `[{"id":"pay-2","type":"T","data":{}}]`)
	wantStatus(t, r, http.StatusConflict)
	if r.Field != "events" || !strings.Contains(r.Error, "another stream") {
		t.Fatalf("answer %+v, want a conflict naming another stream", r)
	}
	if n := msgCount(t, e.js); n != 5 {
		t.Fatalf("stream holds %d messages, want 5", n)
	}
}

func TestAppendRejectsBadRequests(t *testing.T) {
	e := newEnv(t)
	ok := `[{"id":"e1","type":"T","data":{}}]`
	big := `[{"id":"big","type":"T","data":"` + strings.Repeat("x", testMaxBody) + `"}]`
	var many strings.Builder
	many.WriteString("[")
	for i := range MaxAppendEvents + 1 {
		if i > 0 {
			many.WriteString(",")
		}
		fmt.Fprintf(&many, `{"id":"m%d","type":"T","data":1}`, i)
	}
	many.WriteString("]")

	cases := []struct {
		name, method, path, body string
		hdr                      []string
		code                     int
		field                    string
	}{
		{"malformed JSON", "POST", "/streams/a/b/events", `[{"id":`, nil, 400, "body"},
		{"not an array", "POST", "/streams/a/b/events", `{"id":"x"}`, nil, 400, "body"},
		{"empty body", "POST", "/streams/a/b/events", ``, nil, 400, "body"},
		{"trailing data", "POST", "/streams/a/b/events", ok + `[]`, nil, 400, "body"},
		{"empty array", "POST", "/streams/a/b/events", `[]`, nil, 400, "events"},
		{"null", "POST", "/streams/a/b/events", `null`, nil, 400, "events"},
		{"event not an object", "POST", "/streams/a/b/events", `[1]`, nil, 400, "events[0]"},
		{"missing id", "POST", "/streams/a/b/events", `[{"type":"T","data":{}}]`, nil, 400, "events[0].id"},
		{"id with space", "POST", "/streams/a/b/events", `[{"id":"a b","type":"T","data":{}}]`, nil, 400, "events[0].id"},
		{"missing type", "POST", "/streams/a/b/events", ok[:len(ok)-1] + `,{"id":"e2","data":{}}]`, nil, 400, "events[1].type"},
		{"missing data", "POST", "/streams/a/b/events", `[{"id":"e1","type":"T"}]`, nil, 400, "events[0].data"},
		{"id not a string", "POST", "/streams/a/b/events", `[{"id":7,"type":"T","data":{}}]`, nil, 400, "events[0].id"},
		{"bad time", "POST", "/streams/a/b/events", `[{"id":"e1","type":"T","data":{},"time":"yesterday"}]`, nil, 400, "events[0].time"},
		{"metadata not an object", "POST", "/streams/a/b/events", `[{"id":"e1","type":"T","data":{},"metadata":[1]}]`, nil, 400, "events[0].metadata"},
		{"unknown field", "POST", "/streams/a/b/events", `[{"id":"e1","type":"T","data":{},"payload":{}}]`, nil, 400, "events[0].payload"},
		{"version given", "POST", "/streams/a/b/events", `[{"id":"e1","type":"T","data":{},"version":3}]`, nil, 400, "events[0].version"},
		{"other category", "POST", "/streams/a/b/events", `[{"id":"e1","type":"T","data":{},"category":"x"}]`, nil, 400, "events[0].category"},
		{"other stream", "POST", "/streams/a/b/events", `[{"id":"e1","type":"T","data":{},"streamId":"x"}]`, nil, 400, "events[0].streamId"},
		{"same id twice", "POST", "/streams/a/b/events", `[{"id":"e1","type":"T","data":{}},{"id":"e1","type":"T","data":{}}]`, nil, 400, "events[1].id"},
		{"too many events", "POST", "/streams/a/b/events", many.String(), nil, 400, "events"},
		{"dot in category", "POST", "/streams/a.b/c/events", ok, nil, 400, "category"},
		{"space in category", "POST", "/streams/a%20b/c/events", ok, nil, 400, "category"},
		{"star in category", "POST", "/streams/*/c/events", ok, nil, 400, "category"},
		{"dot in id", "POST", "/streams/a/c.d/events", ok, nil, 400, "streamId"},
		{"gt in id", "POST", "/streams/a/%3E/events", ok, nil, 400, "streamId"},
		{"star in id", "POST", "/streams/a/x*/events", ok, nil, 400, "streamId"},
		{"empty category", "POST", "/streams//c/events", ok, nil, 400, "category"},
		{"empty id", "POST", "/streams/a//events", ok, nil, 400, "streamId"},
		{"expectedVersion not a number", "POST", "/streams/a/b/events?expectedVersion=abc", ok, nil, 400, "expectedVersion"},
		{"expectedVersion negative", "POST", "/streams/a/b/events?expectedVersion=-1", ok, nil, 400, "expectedVersion"},
		{"expected version header not a number", "POST", "/streams/a/b/events", ok, []string{HeaderExpectedVersion, "two"}, 400, HeaderExpectedVersion},
		{"body too large", "POST", "/streams/a/b/events", big, nil, 413, "body"},
		{"GET on events", "GET", "/streams/a/b/events", "", nil, 405, ""},
		{"DELETE a stream", "DELETE", "/streams/a/b", "", nil, 405, ""},
		{"POST healthz", "POST", "/healthz", "", nil, 405, ""},
		{"unknown path", "GET", "/nope", "", nil, 404, ""},
		{"too deep", "POST", "/streams/a/b/events/more", ok, nil, 404, ""},
		{"GET bad stream id", "GET", "/streams/a/b.c", "", nil, 400, "streamId"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, c.method, e.srv.URL+c.path, c.body, c.hdr...)
			wantStatus(t, r, c.code)
			if r.Field != c.field {
				t.Errorf("field %q, want %q (error %q)", r.Field, c.field, r.Error)
			}
			if r.Error == "" {
				t.Error("no error message")
			}
			if c.code == 405 && r.hdr.Get("Allow") == "" {
				t.Error("405 without an Allow header")
			}
		})
	}
	if n := msgCount(t, e.js); n != 0 {
		t.Fatalf("bad requests stored %d messages", n)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	e := newEnv(t)
	wantStatus(t, do(t, http.MethodGet, e.srv.URL+"/healthz", ""), http.StatusOK)
	wantStatus(t, do(t, http.MethodGet, e.srv.URL+"/readyz", ""), http.StatusOK)
}

// With NATS down appends fail fast with 503 and store nothing; after it is
// back they work again and the stream has no gap.
func TestNATSDownAnswers503(t *testing.T) {
	e := newEnv(t)
	wantStatus(t, e.post(t, "s", "1", newEvents("before", 2)), http.StatusOK)

	e.ns.Stop()
	waitReady(t, e, http.StatusServiceUnavailable)
	r := e.post(t, "s", "1", newEvents("during", 2))
	wantStatus(t, r, http.StatusServiceUnavailable)
	if r.hdr.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	wantStatus(t, do(t, http.MethodGet, e.srv.URL+"/streams/s/1", ""), http.StatusServiceUnavailable)

	e.ns.Start()
	waitReady(t, e, http.StatusOK)
	var after apiResp
	testenv.Eventually(t, 10*time.Second, func() bool {
		after = e.post(t, "s", "1", newEvents("after", 2))
		return after.code != http.StatusServiceUnavailable
	}, "appends to work again")
	wantStatus(t, after, http.StatusOK)
	if after.Version != 4 {
		t.Fatalf("version %d after restart, want 4", after.Version)
	}
	got := readSubject(t, e.js, "events.s.1")
	ids := make([]string, len(got))
	for i, ev := range got {
		ids[i] = ev.ID
	}
	if strings.Join(ids, ",") != "before-0,before-1,after-0,after-1" {
		t.Fatalf("stored %v", ids)
	}
}

// NATS stopping while appends run leaves only whole appends behind.
func TestNATSStopDuringAppendsLeavesWholeAppends(t *testing.T) {
	e := newEnv(t)
	const workers, perAppend = 4, 5
	var (
		mu        sync.Mutex
		answered  = map[string]apiResp{} // appends answered 200
		failed    int                    // appends answered 503
		okSince   int
		stop      = make(chan struct{})
		restarted = make(chan struct{})
		wg        sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				prefix := fmt.Sprintf("w%d-%d", w, i)
				r := e.post(t, "crash", "c", newEvents(prefix, perAppend))
				mu.Lock()
				switch r.code {
				case http.StatusOK:
					answered[prefix] = r
					okSince++
				case http.StatusServiceUnavailable:
					failed++
				default:
					t.Errorf("%s: unexpected answer %+v", prefix, r)
				}
				mu.Unlock()
				if r.code == http.StatusServiceUnavailable {
					select { // no point hammering a stopped server
					case <-restarted:
					case <-stop:
						return
					}
				}
			}
		})
	}
	okCount := func() bool { mu.Lock(); defer mu.Unlock(); return okSince >= 20 }
	testenv.Eventually(t, 10*time.Second, okCount, "20 appends before the stop")
	e.ns.Stop()
	waitReady(t, e, http.StatusServiceUnavailable)
	e.ns.Start()
	mu.Lock()
	okSince = 0
	mu.Unlock()
	close(restarted)
	testenv.Eventually(t, 15*time.Second, okCount, "20 appends after the restart")
	close(stop)
	wg.Wait()

	got := readSubject(t, e.js, "events.crash.c")
	if len(got)%perAppend != 0 {
		t.Fatalf("%d events stored: not whole appends of %d", len(got), perAppend)
	}
	for i := 0; i < len(got); i += perAppend {
		prefix := got[i].ID[:strings.LastIndex(got[i].ID, "-")]
		for j := range perAppend {
			ev := got[i+j]
			if want := prefix + "-" + strconv.Itoa(j); ev.ID != want || ev.Version != uint64(i+j+1) {
				t.Fatalf("event %d is %s v%d, want %s v%d", i+j, ev.ID, ev.Version, want, i+j+1)
			}
			if j > 0 && ev.Position != got[i+j-1].Position+1 {
				t.Fatalf("append %s not contiguous", prefix)
			}
		}
		if r, found := answered[prefix]; found && r.Positions[0] != got[i].Position {
			t.Fatalf("append %s answered positions %v, stored from %d", prefix, r.Positions, got[i].Position)
		}
		delete(answered, prefix)
	}
	if len(answered) != 0 {
		t.Fatalf("%d appends answered 200 but are not stored", len(answered))
	}
	t.Logf("%d events stored, %d appends answered 503", len(got), failed)
}

func waitReady(t *testing.T, e *apiEnv, code int) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return do(t, http.MethodGet, e.srv.URL+"/readyz", "").code == code
	}, "readyz to answer %d", code)
}
