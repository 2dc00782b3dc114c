package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/testenv"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesistest"
)

// The tests of a sink its error policy stops (on_error: stop, the default):
// the process stays up, stopped before the event; jetsyncctl status,
// /readyz and /metrics say where and why; jetsyncctl skip, resume and reset
// act on it live, and every action that does not apply is refused with exit
// code 2 and changes nothing.

// running reports whether the process has not exited.
func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case err := <-p.done:
		p.done <- err
		return false
	default:
		return true
	}
}

// appendOne appends one event to order stream sid and returns its position.
func (s *stack) appendOne(sid, id, typ, data string) uint64 {
	s.t.Helper()
	body, _ := json.Marshal([]appendReq{{ID: id, Type: typ, Data: json.RawMessage(data)}})
	code, resp := s.post("/streams/order/"+sid+"/events", body)
	if code != 200 {
		s.t.Fatalf("append %s: %d %s", typ, code, resp)
	}
	var ar appendResp
	if err := json.Unmarshal(resp, &ar); err != nil || len(ar.Positions) != 1 {
		s.t.Fatalf("append answer %s: %v", resp, err)
	}
	return ar.Positions[0]
}

// controlStatus reads a sink's status straight from the control bucket.
func (s *stack) controlStatus(name string) control.Status {
	s.t.Helper()
	_, js := s.nats.Connect(s.t)
	ctl, err := control.Open(context.Background(), js)
	if err != nil {
		s.t.Fatal(err)
	}
	st, err := ctl.Status(context.Background(), name)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

// stoppedSink is one sink under test: its name, process, admin address
// and checkpoint as its store holds it.
type stoppedSink struct {
	s          *stack
	name       string
	p          func() *proc
	admin      string
	checkpoint func() uint64
}

// waitStopped waits until the sink reports itself stopped at pos and checks
// everything an operator sees: the process is alive, the checkpoint stays
// just before the event, jetsyncctl status names the event (id, type) and
// the target's error, /readyz answers 503 saying the same, /healthz and
// /metrics keep serving.
func (k stoppedSink) waitStopped(pos uint64, id, typ, errPart string) {
	t := k.s.t
	t.Helper()
	var out string
	line := regexp.MustCompile(fmt.Sprintf(`(?m)^%s\s+stopped\s+%d\s`, regexp.QuoteMeta(k.name), pos-1))
	testenv.Eventually(t, 60*time.Second, func() bool {
		if !k.p().running() {
			t.Fatalf("%s exited at a refused event; it must stay up, stopped:\n%s", k.name, lastLines(k.p().output(), 20))
		}
		out, _ = k.s.ctl("status")
		return line.MatchString(out) && strings.Contains(out, fmt.Sprintf("at position %d ", pos))
	}, "%s never reported stopped at %d:\n%s", k.name, pos, out)
	for _, want := range []string{
		fmt.Sprintf("%s is stopped by its error policy (on_error: stop)", k.name),
		fmt.Sprintf("event:   %s, type %s", id, typ), errPart,
		"jetsyncctl resume " + k.name, "jetsyncctl skip " + k.name,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("jetsyncctl status lacks %q:\n%s", want, out)
		}
	}
	t.Logf("jetsyncctl status:\n%s", out)
	if cp := k.checkpoint(); cp != pos-1 {
		t.Fatalf("stored checkpoint %d, want %d: just before the refused event", cp, pos-1)
	}
	st := k.s.controlStatus(k.name)
	if st.State != "stopped" || st.Stopped == nil || st.Stopped.Position != pos || st.Stopped.ID != id || st.Stopped.Type != typ ||
		!strings.Contains(st.Stopped.Error, errPart) || st.Stopped.Since.IsZero() {
		t.Fatalf("status in the control bucket: %+v (stopped %+v)", st, st.Stopped)
	}
	code, body := get(k.admin + "/readyz")
	var ready struct {
		Ready    bool          `json:"ready"`
		Problems []string      `json:"problems"`
		Stopped  *control.Stop `json:"stopped"`
	}
	if err := json.Unmarshal([]byte(body), &ready); code != 503 || err != nil || ready.Ready || ready.Stopped == nil ||
		ready.Stopped.Position != pos || ready.Stopped.ID != id || len(ready.Problems) == 0 ||
		!strings.Contains(ready.Problems[0], fmt.Sprintf("stopped by its error policy at position %d", pos)) ||
		!strings.Contains(ready.Problems[0], errPart) {
		t.Fatalf("/readyz = %d %s; want 503 naming the event and the error", code, body)
	}
	if code, _ := get(k.admin + "/healthz"); code != 200 {
		t.Fatalf("/healthz = %d while stopped", code)
	}
	if got := metric(t, k.admin+"/metrics", "jetsync_sink_stopped_position"); got != float64(pos) {
		t.Fatalf("jetsync_sink_stopped_position = %v, want %d", got, pos)
	}
}

// ctlExpect runs jetsyncctl and checks its exit code and output.
func (k stoppedSink) ctlExpect(code int, want string, args ...string) string {
	k.s.t.Helper()
	return k.s.ctlExpect(code, want, args...)
}

// ctlExpect runs jetsyncctl and checks its exit code and output.
func (s *stack) ctlExpect(code int, want string, args ...string) string {
	t := s.t
	t.Helper()
	out, got := s.ctl(args...)
	if got != code || !strings.Contains(out, want) {
		t.Fatalf("jetsyncctl %s: exit %d, want %d and %q:\n%s", strings.Join(args, " "), got, code, want, out)
	}
	t.Logf("jetsyncctl %s -> %s", strings.Join(args, " "), strings.TrimSpace(out))
	return out
}

// refusals checks that skip and resume refuse an unknown sink, a position
// the sink is not stopped at, and changes nothing; stoppedAt is where the
// sink is stopped (0: it is not stopped).
func (k stoppedSink) refusals(stoppedAt uint64) {
	t := k.s.t
	t.Helper()
	cp := k.checkpoint()
	k.ctlExpect(2, `unknown sink "nosuch"`, "skip", "nosuch")
	k.ctlExpect(2, `unknown sink "nosuch"`, "resume", "nosuch")
	k.ctlExpect(2, "name one sink", "skip")
	if stoppedAt != 0 {
		k.ctlExpect(2, fmt.Sprintf("is stopped at position %d, not %d: nothing changed", stoppedAt, stoppedAt+1),
			"skip", k.name, "--position", strconv.FormatUint(stoppedAt+1, 10))
		k.ctlExpect(2, fmt.Sprintf("is stopped at position %d, not %d", stoppedAt, stoppedAt+1),
			"resume", k.name, "--position", strconv.FormatUint(stoppedAt+1, 10))
		if st := k.s.controlStatus(k.name); st.Stopped == nil || st.Stopped.Position != stoppedAt {
			t.Fatalf("a refused action changed the stop: %+v", st)
		}
	} else {
		k.ctlExpect(2, "not stopped by its error policy: skip applies only to a stopped sink; nothing changed", "skip", k.name)
		k.ctlExpect(2, "not stopped by its error policy: resume applies only to a stopped sink; nothing changed", "resume", k.name)
	}
	if got := k.checkpoint(); got != cp {
		t.Fatalf("a refused action moved the checkpoint from %d to %d", cp, got)
	}
}

// waitGoing waits until the sink is running again with its checkpoint at
// least pos.
func (k stoppedSink) waitGoing(pos uint64) {
	t := k.s.t
	t.Helper()
	testenv.Eventually(t, 60*time.Second, func() bool {
		st := k.s.controlStatus(k.name)
		return k.checkpoint() >= pos && st.Stopped == nil && (st.State == "live" || st.State == "catching-up")
	}, "%s did not go on to %d: checkpoint %d, status %+v", k.name, pos, k.checkpoint(), k.s.controlStatus(k.name))
}

// TestStoppedElasticsearch: a document the index mapping refuses
// ({"total":"not-a-number"} for a double field) stops sink-es; resume with
// the index unchanged stops it again; skip dead-letters the event and goes
// on; a reset while stopped moves it past another such event; after the
// mapping is fixed (ignore_malformed), resume applies the event.
func TestStoppedElasticsearch(t *testing.T) {
	s := newESStack(t, 100)
	admin := regexp.MustCompile(`listen: "([^"]+)"`).FindStringSubmatch(readFileT(t, s.config))[1]
	s.startSinkES()
	k := stoppedSink{s: s.stack, name: s.name, p: func() *proc { return s.sinkES }, admin: "http://" + admin, checkpoint: s.checkpoint}

	s.appendOne("order-1", "es-1", "OrderPlaced", `{"total":1}`)
	bad := s.appendOne("order-2", "es-2", "OrderPlaced", `{"total":"not-a-number"}`)
	after := s.appendOne("order-3", "es-3", "OrderPlaced", `{"total":3}`)
	k.waitStopped(bad, "es-2", "OrderPlaced", "mapper_parsing_exception")
	k.refusals(bad)

	// The index is unchanged: the event is refused again, and resume says so.
	k.ctlExpect(1, fmt.Sprintf("stopped again at position %d: event es-2 (type OrderPlaced) is still refused", bad), "resume", s.name)
	k.waitStopped(bad, "es-2", "OrderPlaced", "mapper_parsing_exception")

	k.ctlExpect(0, fmt.Sprintf("skipped event es-2 (type OrderPlaced) at position %d of %s: stored as a dead letter in dlq.%s", bad, s.name, s.name),
		"skip", s.name, "--position", strconv.FormatUint(bad, 10))
	k.waitGoing(after)
	docs := s.docs(t)
	if _, ok := docs["order-2"]; ok || docs["order-3"].Pos != after {
		t.Fatalf("after skip: documents %v; want order-3 applied and order-2 not", docs)
	}
	if out := k.ctlExpect(0, strconv.FormatUint(bad, 10), "dlq", "list", s.name); !strings.Contains(out, "event es-2 (type OrderPlaced): elasticsearch refused") {
		t.Fatalf("dlq list lacks the error:\n%s", out)
	}
	k.refusals(0)

	// Reset while stopped: to just after the event.
	bad2 := s.appendOne("order-4", "es-4", "OrderPlaced", `{"total":"NaN-ish"}`)
	after2 := s.appendOne("order-5", "es-5", "OrderPlaced", `{"total":5}`)
	k.waitStopped(bad2, "es-4", "OrderPlaced", "mapper_parsing_exception")
	k.ctlExpect(0, "it applies the reset now", "reset", s.name, "--to-seq", strconv.FormatUint(after2, 10))
	k.waitGoing(after2)
	if docs := s.docs(t); docs["order-5"].Pos != after2 {
		t.Fatalf("after the reset: order-5 not applied: %v", docs)
	}

	// Fix the index: malformed totals are ignored from now on. Resume
	// applies the very event it stopped at.
	bad3 := s.appendOne("order-6", "es-6", "OrderPlaced", `{"total":"still-not-a-number"}`)
	k.waitStopped(bad3, "es-6", "OrderPlaced", "mapper_parsing_exception")
	res, err := esapi.IndicesPutMappingRequest{Index: []string{s.aliasIndex(t)},
		Body: strings.NewReader(`{"properties":{"total":{"type":"double","ignore_malformed":true}}}`)}.Do(context.Background(), s.es)
	if err != nil || res.IsError() {
		t.Fatalf("fixing the mapping: %v %v", res, err)
	}
	res.Body.Close()
	k.ctlExpect(0, fmt.Sprintf("resumed %s: event es-6 (type OrderPlaced) at position %d is applied", s.name, bad3), "resume", s.name)
	k.waitGoing(bad3)
	if d := s.docs(t)["order-6"]; d.Pos != bad3 || d.Source["total"] != "still-not-a-number" {
		t.Fatalf("order-6 after the fix: %+v", d)
	}
	k.refusals(0)

	// Down: the actions are refused and change nothing.
	s.sinkES.kill()
	k.ctlExpect(2, fmt.Sprintf("sink %s is down", s.name), "skip", s.name)
	k.ctlExpect(2, fmt.Sprintf("sink %s is down", s.name), "resume", s.name)
}

// readFileT returns a file's content.
func readFileT(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestStoppedCache: sink-cache stops at a shipment whose data is not an
// object (its mapping merges it into a hash). Redis itself does not refuse
// such an event: the mapping does, so there is nothing to fix in the target
// and resume stops at it again; skip, reset while stopped and a stop with
// SIGTERM while stopped (exit 0, "down" with where it stopped) follow, and
// the fix of a mapping today is a restart with the new config.
func TestStoppedCache(t *testing.T) {
	s := newStack(t)
	s.startSink()
	k := stoppedSink{s: s, name: sinkName, p: func() *proc { return s.sink }, admin: s.sinkAdmin, checkpoint: s.checkpoint}
	ctx := context.Background()

	s.appendOne("order-1", "c-1", "OrderPlaced", `{"n":1}`)
	bad := s.appendOne("order-1", "c-2", "OrderShipped", `"not-an-object"`)
	after := s.appendOne("order-1", "c-3", "OrderUpdated", `{"n":3}`)
	k.waitStopped(bad, "c-2", "OrderShipped", "not a JSON object")
	k.refusals(bad)
	k.ctlExpect(1, fmt.Sprintf("stopped again at position %d", bad), "resume", sinkName)
	k.waitStopped(bad, "c-2", "OrderShipped", "not a JSON object")

	k.ctlExpect(0, fmt.Sprintf("skipped event c-2 (type OrderShipped) at position %d of cache: stored as a dead letter in dlq.cache", bad), "skip", sinkName)
	k.waitGoing(after)
	if v, _ := s.rdb.Get(ctx, "order:order-1").Result(); v != `{"n":3}` {
		t.Fatalf("after skip order:order-1 = %q", v)
	}
	if got, _ := s.rdb.LRange(ctx, "applied:order-1", 0, -1).Result(); strings.Join(got, ",") != fmt.Sprintf("%d,%d", bad-1, after) {
		t.Fatalf("applied log %v: want every event but the skipped one", got)
	}
	_, js := s.nats.Connect(t)
	q, err := deadletter.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if letters, err := q.List(ctx, sinkName); err != nil || len(letters) != 1 || letters[0].Position != bad || !strings.Contains(letters[0].Error, "c-2") {
		t.Fatalf("dead letters %+v %v: want the skipped event", letters, err)
	}
	k.refusals(0)

	// Reset while stopped, back to the start: it applies again up to the
	// event it skipped (skip does not fix it) and stops there again.
	bad2 := s.appendOne("order-2", "c-4", "OrderShipped", `[1,2]`)
	k.waitStopped(bad2, "c-4", "OrderShipped", "not a JSON object")
	k.ctlExpect(0, "it applies the reset now", "reset", sinkName, "--to-start")
	k.waitStopped(bad, "c-2", "OrderShipped", "not a JSON object")
	k.ctlExpect(0, "it applies the reset now", "reset", sinkName, "--to-seq", strconv.FormatUint(after, 10))
	k.waitStopped(bad2, "c-4", "OrderShipped", "not a JSON object")

	// SIGTERM while stopped: a clean exit, and status shows it down where
	// it stopped; actions are refused.
	if code := s.sink.stop(15 * time.Second); code != 0 {
		t.Fatalf("sink-cache exited %d on SIGTERM while stopped, want 0", code)
	}
	var out string
	testenv.Eventually(t, 20*time.Second, func() bool {
		out, _ = s.ctl("status")
		return regexp.MustCompile(fmt.Sprintf(`(?m)^cache\s+down \(seen \d+s ago\) \[stopped at %d\]\s+%d\s`, bad2, bad2-1)).MatchString(out)
	}, "status of the sink stopped, then down:\n%s", out)
	k.ctlExpect(2, "sink cache is down", "skip", sinkName)

	// The fix of a mapping today: a restart with the new config.
	fixed := strings.Replace(sinkYAML(s.nats.URL(), s.redis.Addr(), adminPort(s.sinkAdmin)),
		`{op: merge, key: "shipping:{streamId}"}`, `{op: set, key: "shipping-raw:{streamId}"}`, 1)
	s.sink = startProc(t, "sink-cache", "-config", writeFile(t, "sink-cache-fixed.yaml", fixed))
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() >= bad2 }, "the fixed sink did not apply %d", bad2)
	if v, _ := s.rdb.Get(ctx, "shipping-raw:order-2").Result(); v != `[1,2]` {
		t.Fatalf("after the fix shipping-raw:order-2 = %q", v)
	}
}

// adminPort is the port of an http://host:port address.
func adminPort(url string) int {
	p, _ := strconv.Atoi(url[strings.LastIndex(url, ":")+1:])
	return p
}

// kinesisProjection fails for an order whose total is not a number:
// Kinesis takes any record of up to 1MiB, so what stops sink-kinesis is
// the sink's own projection (or a record over 1MiB, or a bad partition
// key), never the target; there is nothing to fix in Kinesis for resume.
const kinesisProjection = `{id, streamId, type, total: (.data.total | tonumber)}`

// TestStoppedKinesis: a projection error stops sink-kinesis; resume stops
// at it again, skip moves past it, a reset while stopped too; the stream
// holds every other event once, in order.
func TestStoppedKinesis(t *testing.T) {
	k := newKinesisStack(t, 100)
	k.config = writeFile(t, "sink-kinesis-projected.yaml", strings.Replace(readFileT(t, k.config),
		"  create_stream_if_missing: true\n", "  create_stream_if_missing: true\n  project: '"+kinesisProjection+"'\n", 1))
	admin := regexp.MustCompile(`listen: "([^"]+)"`).FindStringSubmatch(readFileT(t, k.config))[1]
	k.startSink()
	ks := stoppedSink{s: k.stack, name: kinesisSinkName, p: func() *proc { return k.sink }, admin: "http://" + admin, checkpoint: k.checkpoint}

	good := []uint64{k.appendOne("order-1", "k-1", "OrderPlaced", `{"total":1}`)}
	bad := k.appendOne("order-2", "k-2", "OrderPlaced", `{"total":"not-a-number"}`)
	good = append(good, k.appendOne("order-3", "k-3", "OrderPlaced", `{"total":3}`))
	ks.waitStopped(bad, "k-2", "OrderPlaced", "kinesis.project")
	ks.refusals(bad)
	ks.ctlExpect(1, fmt.Sprintf("stopped again at position %d", bad), "resume", kinesisSinkName)
	ks.waitStopped(bad, "k-2", "OrderPlaced", "kinesis.project")
	ks.ctlExpect(0, fmt.Sprintf("skipped event k-2 (type OrderPlaced) at position %d", bad), "skip", kinesisSinkName)
	ks.waitGoing(good[1])
	ks.refusals(0)

	bad2 := k.appendOne("order-4", "k-4", "OrderUpdated", `{"total":"x"}`)
	good = append(good, k.appendOne("order-5", "k-5", "OrderPlaced", `{"total":5}`))
	ks.waitStopped(bad2, "k-4", "OrderUpdated", "kinesis.project")
	ks.ctlExpect(0, "it applies the reset now", "reset", kinesisSinkName, "--to-seq", strconv.FormatUint(good[2], 10))
	ks.waitGoing(good[2])

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	recs, err := kinesistest.ReadStream(ctx, k.kc, k.stream)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, r := range recs {
		var rec struct {
			Position uint64  `json:"position"`
			Total    float64 `json:"total"`
		}
		if err := json.Unmarshal(r.Data, &rec); err != nil {
			t.Fatalf("record %s: %v", r.Data, err)
		}
		got = append(got, rec.Position)
	}
	slices.Sort(got)
	if fmt.Sprint(got) != fmt.Sprint(good) {
		t.Fatalf("records at positions %v, want %v: every event but the two refused ones, once", got, good)
	}
}

// TestStatusStartingAndDownShowsCheckpoint: a sink that is starting (its
// target does not answer) or down shows the checkpoint it will resume
// from, read from its checkpoint store, and the lag from there, not
// position 0 with the whole stream as lag; a reset waiting for a sink that
// is down shows where it will resume instead.
func TestStatusStartingAndDownShowsCheckpoint(t *testing.T) {
	k := newKinesisStack(t, 100)
	k.startSink()
	w := newWorkload(5, 10)
	if err := w.appendAll(k.stack, 10, 1); err != nil {
		t.Fatal(err)
	}
	cp := w.head()
	k.waitCaughtUp(cp, 60*time.Second)
	if code := k.sink.stop(15 * time.Second); code != 0 {
		t.Fatalf("sink-kinesis exit %d", code)
	}
	more := newWorkload(5, 20)
	for _, sid := range more.streams {
		more.events[sid] = more.events[sid][10:] // the same streams' next versions
	}
	if err := more.appendAllFrom(k.stack, 10, 10, 1); err != nil {
		t.Fatal(err)
	}
	head := more.head()

	// Starting: Kinesis does not answer, so the sink keeps connecting.
	k.proxy.SetDown(true)
	k.startSink()
	row := func(state string, pos, lag uint64) *regexp.Regexp {
		return regexp.MustCompile(fmt.Sprintf(`(?m)^%s\s+%s\s+%d\s+%d\s+%d\s`, kinesisSinkName, state, pos, head, lag))
	}
	var out string
	testenv.Eventually(t, 30*time.Second, func() bool {
		out, _ = k.ctl("status")
		return row(`starting`, cp, head-cp).MatchString(out)
	}, "status of a starting sink, want position %d lag %d:\n%s", cp, head-cp, out)
	t.Logf("starting:\n%s", out)

	// Down: killed while starting (its last status said starting).
	k.sink.kill()
	testenv.Eventually(t, 20*time.Second, func() bool {
		out, _ = k.ctl("status")
		return row(`down \(seen \d+s ago\)`, cp, head-cp).MatchString(out)
	}, "status of a down sink, want position %d lag %d:\n%s", cp, head-cp, out)
	t.Logf("down:\n%s", out)

	// A reset waiting for it is where it resumes.
	k.ctlExpect(0, "it is not running; it applies the reset when it starts", "reset", kinesisSinkName, "--to-seq", "5")
	out, _ = k.ctl("status")
	if !row(`down \(seen \d+s ago\) \[reset pending\]`, 4, head-4).MatchString(out) {
		t.Fatalf("status with a reset pending, want position 4:\n%s", out)
	}

	// Back up, it resumes from the reset and catches up.
	k.proxy.SetDown(false)
	k.startSink()
	k.waitCaughtUp(head, 60*time.Second)
}
