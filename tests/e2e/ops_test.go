package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/testenv"
	"github.com/jetsync/jetsync/services/sink-cache/cache"
)

// secondSink starts another sink-cache, "cache2", writing the same keys in
// Redis database 1: a second read model that resets of "cache" must not
// touch.
func (s *stack) secondSink() (*proc, *redis.Client) {
	s.t.Helper()
	yaml := strings.Replace(sinkYAML(s.nats.URL(), s.redis.Addr(), testenv.FreePort(s.t)), "name: cache", "name: cache2", 1)
	yaml = strings.Replace(yaml, fmt.Sprintf("redis: {addr: %q}", s.redis.Addr()), fmt.Sprintf("redis: {addr: %q, db: 1}", s.redis.Addr()), 1)
	p := startProc(s.t, "sink-cache", "-config", writeFile(s.t, "sink-cache2.yaml", yaml))
	rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr(), DB: 1})
	s.t.Cleanup(func() { rdb.Close() })
	return p, rdb
}

func checkpointIn(rdb *redis.Client, name string) uint64 {
	v, _ := rdb.Get(context.Background(), "jetsync:checkpoint:"+name).Uint64()
	return v
}

// TestResetWhileLiveUnderLoad: reset "cache" to the start while events are
// appended; it goes back, catches up and ends with the fold, and "cache2"
// is untouched (its applied log holds every position once).
func TestResetWhileLiveUnderLoad(t *testing.T) {
	s := newStack(t)
	s.startSink()
	_, rdb2 := s.secondSink()
	w := newWorkload(100, 100)
	appendDone := make(chan error, 1)
	go func() { appendDone <- w.appendAll(s, 5, 4) }()

	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() > 2000 }, "cache never got going")
	testenv.Eventually(t, 30*time.Second, func() bool {
		out, code := s.ctl("status")
		return code == 0 && strings.Contains(out, "cache2")
	}, "both sinks never reported their status")
	out, code := s.ctl("reset", "cache", "--to-start")
	if code != 0 {
		t.Fatalf("reset: exit %d: %s", code, out)
	}
	t.Log(strings.TrimSpace(out))
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 90*time.Second, func() bool { return s.checkpoint() >= head && checkpointIn(rdb2, "cache2") >= head },
		"sinks never caught up after the reset")
	// It went back: the first events were applied a second time.
	first, _ := s.rdb.LRange(context.Background(), "applied:"+w.streams[0], 0, -1).Result()
	if len(first) <= len(w.events[w.streams[0]]) {
		t.Fatalf("cache was reset to the start but applied %s's events only %d times", w.streams[0], len(first))
	}
	w.verifyIn(t, s.rdb, false) // same read model as one pass
	w.verifyIn(t, rdb2, true)   // the other sink: every event exactly once
	out, _ = s.ctl("status")
	t.Logf("after catch-up:\n%s", out)
}

// TestReplayFollowsToHead: replay resets and follows until caught up.
func TestReplayFollowsToHead(t *testing.T) {
	s := newStack(t)
	s.startSink()
	w := newWorkload(20, 50)
	if err := w.appendAll(s, 10, 4); err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() >= head }, "not caught up")
	out, code := s.ctl("replay", "cache", "--to-seq", "1")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("caught up: %d events replayed to position %d", head, head)) {
		t.Fatalf("replay: exit %d:\n%s", code, out)
	}
	w.verifyIn(t, s.rdb, false)
}

// TestDeadLetters: a poison event goes to dlq.cache with its headers, later
// events are applied in order, and retry after fixing the mapping applies it.
func TestDeadLetters(t *testing.T) {
	s := newStack(t)
	dlqYAML := strings.Replace(sinkYAML(s.nats.URL(), s.redis.Addr(), testenv.FreePort(t)), "on_error: stop", "on_error: dead-letter", 1)
	s.sinkConfig = writeFile(t, "sink-dlq.yaml", dlqYAML)
	s.startSink()

	post := func(sid string, evs ...appendReq) []uint64 {
		body, _ := json.Marshal(evs)
		code, resp := s.post("/streams/order/"+sid+"/events", body)
		if code != 200 {
			t.Fatalf("append: %d %s", code, resp)
		}
		var ar appendResp
		_ = json.Unmarshal(resp, &ar)
		return ar.Positions
	}
	post("order-1", appendReq{ID: "p1", Type: "OrderPlaced", Data: json.RawMessage(`{"n":1}`)})
	poison := post("order-1", appendReq{ID: "p2", Type: "OrderShipped", Data: json.RawMessage(`"not-an-object"`)})[0]
	after := post("order-1",
		appendReq{ID: "p3", Type: "OrderShipped", Data: json.RawMessage(`{"status":"shipped"}`)},
		appendReq{ID: "p4", Type: "OrderUpdated", Data: json.RawMessage(`{"n":4}`)})
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() >= after[1] }, "sink did not move past the poison event")

	ctx := context.Background()
	if v, _ := s.rdb.Get(ctx, "order:order-1").Result(); v != `{"n":4}` {
		t.Fatalf("later events not applied: order:order-1 = %q", v)
	}
	if got, _ := s.rdb.LRange(ctx, "applied:order-1", 0, -1).Result(); strings.Join(got, ",") != fmt.Sprintf("%d,%d,%d", poison-1, after[0], after[1]) {
		t.Fatalf("applied log %v: want every event but the poison one, in order", got)
	}
	_, js := s.nats.Connect(t)
	q, err := deadletter.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	letters, err := q.List(ctx, "cache")
	if err != nil || len(letters) != 1 {
		t.Fatalf("dead letters: %v, %v; want the poison event", letters, err)
	}
	l := letters[0]
	if l.Position != poison || l.Subject != "events.order.order-1" || l.Sink != "cache" || l.Time.IsZero() ||
		!strings.Contains(l.Error, "not an object") && !strings.Contains(l.Error, "object") || string(l.Data) != `"not-an-object"` {
		t.Fatalf("dead letter %+v lacks its headers", l)
	}
	out, code := s.ctl("dlq", "list", "cache")
	if code != 0 || !strings.Contains(out, strconv.FormatUint(poison, 10)) || !strings.Contains(out, "OrderShipped") {
		t.Fatalf("dlq list: exit %d\n%s", code, out)
	}
	out, code = s.ctl("dlq", "show", "cache", strconv.FormatUint(l.Seq, 10))
	if code != 0 || !strings.Contains(out, "Jetsync-Dlq-Error") || !strings.Contains(out, `"not-an-object"`) {
		t.Fatalf("dlq show: exit %d\n%s", code, out)
	}
	// Retrying with the mapping unchanged fails and keeps the letter.
	if out, code = s.ctl("dlq", "retry", "cache"); code == 0 {
		t.Fatalf("retry with the broken mapping succeeded:\n%s", out)
	}
	// Fix the mapping (store shipments whole), restart, retry: applied.
	fixed := strings.Replace(dlqYAML, `{op: merge, key: "shipping:{streamId}"}`, `{op: set, key: "shipping-raw:{streamId}"}`, 1)
	if fixed == dlqYAML {
		t.Fatal("test bug: the mapping was not changed")
	}
	s.sinkConfig = writeFile(t, "sink-fixed.yaml", fixed)
	if code := s.sink.stop(15 * time.Second); code != 0 {
		t.Fatalf("sink exit %d", code)
	}
	s.sink = nil
	s.startSink()
	testenv.Eventually(t, 30*time.Second, func() bool {
		out, code = s.ctl("dlq", "retry", "cache")
		return code == 0
	}, "dlq retry never succeeded: %s", out)
	if !strings.Contains(out, "re-applied 1 dead letter") {
		t.Fatalf("dlq retry: %s", out)
	}
	if v, _ := s.rdb.Get(ctx, "shipping-raw:order-1").Result(); v != `"not-an-object"` {
		t.Fatalf("retried dead letter not applied: %q", v)
	}
	if left, _ := q.List(ctx, "cache"); len(left) != 0 {
		t.Fatalf("retried dead letter still queued: %+v", left)
	}
}

// TestWaitReadYourWrites: /wait answers as soon as the position is applied
// (default batch settings), times out cleanly, and the Go helper does the
// same through the checkpoint store.
func TestWaitReadYourWrites(t *testing.T) {
	s := newStack(t)
	defaults := regexp.MustCompile(`(?m)^(batch|retry|shutdown_timeout):.*\n`).ReplaceAllString(sinkYAML(s.nats.URL(), s.redis.Addr(), testenv.FreePort(t)), "")
	s.sinkConfig = writeFile(t, "sink-defaults.yaml", defaults)
	admin := regexp.MustCompile(`listen: "([^"]+)"`).FindStringSubmatch(defaults)[1]
	s.startSink()
	testenv.Eventually(t, 20*time.Second, func() bool { c, _ := get("http://" + admin + "/healthz"); return c == 200 }, "sink admin never up")

	const n = 200
	viaHTTP := make([]time.Duration, 0, n)
	viaStore := make([]time.Duration, 0, n)
	loader := cache.Checkpoints{Client: s.rdb}
	for i := range n {
		start := time.Now()
		body, _ := json.Marshal([]appendReq{{ID: fmt.Sprint("w", i), Type: "OrderUpdated", Data: json.RawMessage(`{"i":1}`)}})
		code, resp := s.post(fmt.Sprintf("/streams/order/ryw-%d/events", i%10), body)
		if code != 200 {
			t.Fatalf("append: %d %s", code, resp)
		}
		var ar appendResp
		_ = json.Unmarshal(resp, &ar)
		pos := ar.Positions[0]
		if i%2 == 0 {
			code, body := get(fmt.Sprintf("http://%s/wait?position=%d&timeout=2s", admin, pos))
			if code != 200 {
				t.Fatalf("/wait for %d: %d %s", pos, code, body)
			}
			viaHTTP = append(viaHTTP, time.Since(start))
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := checkpoint.WaitFor(ctx, loader, "cache", pos)
			cancel()
			if err != nil {
				t.Fatalf("checkpoint.WaitFor %d: %v", pos, err)
			}
			viaStore = append(viaStore, time.Since(start))
		}
		if v, _ := s.rdb.Get(context.Background(), fmt.Sprintf("order:ryw-%d", i%10)).Result(); v != `{"i":1}` {
			t.Fatalf("after the wait the write is not visible: %q", v)
		}
	}
	t.Logf("append-to-visible, default batch settings (flush_when_idle, max_interval 20ms), low load: /wait p50 %s p99 %s; checkpoint.WaitFor p50 %s p99 %s",
		pct(viaHTTP, 50), pct(viaHTTP, 99), pct(viaStore, 50), pct(viaStore, 99))

	start := time.Now()
	code, body := get(fmt.Sprintf("http://%s/wait?position=999999&timeout=150ms", admin))
	if code != 408 || time.Since(start) > 2*time.Second {
		t.Fatalf("/wait beyond head: %d %s after %s, want 408 after ~150ms", code, body, time.Since(start))
	}
	for _, q := range []string{"position=abc", "position=5&timeout=forever", ""} {
		if code, body := get("http://" + admin + "/wait?" + q); code != 400 {
			t.Fatalf("/wait?%s: %d %s, want 400", q, code, body)
		}
	}
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(10 * time.Microsecond)
}

// metric reads one sample of a metric from a /metrics page.
func metric(t *testing.T, url, name string) float64 {
	code, body := get(url)
	if code != 200 {
		return -1
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			return v
		}
	}
	t.Fatalf("%s has no metric %s", url, name)
	return 0
}

// TestLagMetricsRiseAndFall: while the sink cannot apply (Redis down) the
// lag gauges rise; after catch-up they are back at zero.
func TestLagMetricsRiseAndFall(t *testing.T) {
	s := newStack(t)
	s.startSink()
	m := s.sinkAdmin + "/metrics"
	w := newWorkload(10, 20)
	if err := w.appendAll(s, 10, 2); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return metric(t, m, "jetsync_sink_checkpoint_position") >= float64(w.head()) }, "no catch-up")
	testenv.Eventually(t, 10*time.Second, func() bool { return metric(t, m, "jetsync_sink_lag_events") == 0 }, "lag not zero when caught up")

	s.redis.Stop()
	more := newWorkload(10, 40)
	for sid := range more.events { // continue the same streams' versions
		more.events[sid] = more.events[sid][20:]
	}
	for _, sid := range more.streams {
		evs := more.events[sid]
		for i := range evs {
			evs[i].ID += "-b"
		}
		body, _ := json.Marshal(evs)
		if code, resp := s.post("/streams/order/"+sid+"/events", body); code != 200 {
			t.Fatalf("append: %d %s", code, resp)
		}
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		return metric(t, m, "jetsync_sink_lag_events") >= 200 && metric(t, m, "jetsync_sink_lag_seconds") > 0
	}, "lag gauges did not rise while Redis was down: events %v seconds %v",
		metric(t, m, "jetsync_sink_lag_events"), metric(t, m, "jetsync_sink_lag_seconds"))
	if code, _ := get(s.sinkAdmin + "/readyz"); code != 503 {
		t.Errorf("/readyz = %d while Redis is down, want 503", code)
	}
	out, _ := s.ctl("status")
	t.Logf("during the outage:\n%s", out)
	s.redis.Start()
	testenv.Eventually(t, 30*time.Second, func() bool {
		return metric(t, m, "jetsync_sink_lag_events") == 0 && metric(t, m, "jetsync_sink_lag_seconds") == 0
	}, "lag gauges not back at zero after catch-up")
	if metric(t, m, "jetsync_sink_retries_total") == 0 {
		t.Error("no retries counted during the outage")
	}
	if code, body := get(s.sinkAdmin + "/readyz"); code != 200 {
		t.Errorf("/readyz = %d %s after recovery", code, body)
	}
}

// TestCtlBadInput: unknown sink, position beyond head, malformed time:
// exit 2, a message that says what is wrong, and nothing changed.
func TestCtlBadInput(t *testing.T) {
	s := newStack(t)
	s.startSink()
	w := newWorkload(5, 10)
	if err := w.appendAll(s, 10, 1); err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() >= head }, "no catch-up")
	testenv.Eventually(t, 10*time.Second, func() bool { out, _ := s.ctl("status"); return strings.Contains(out, "live") }, "no status")

	cases := []struct {
		args []string
		want string
	}{
		{[]string{"reset", "nosuch", "--to-start"}, `unknown sink "nosuch"; known sinks: cache`},
		{[]string{"reset", "cache", "--to-seq", strconv.FormatUint(head+5, 10)}, "beyond the stream head"},
		{[]string{"reset", "cache", "--to-time", "yesterday"}, `--to-time "yesterday": not an RFC 3339 time`},
		{[]string{"reset", "cache", "--to-time", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, "after the last event"},
		{[]string{"reset", "cache"}, "give exactly one of"},
		{[]string{"reset", "cache", "--to-seq", "0"}, "must be a position >= 1"},
		{[]string{"dlq", "show", "cache", "77"}, "no such dead letter"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
	}
	_, js := s.nats.Connect(t)
	ctl, err := control.Open(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		out, code := s.ctl(tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("jetsyncctl %s: exit %d, want 2 and %q:\n%s", strings.Join(tc.args, " "), code, tc.want, out)
		}
	}
	if r, err := ctl.PendingReset(context.Background(), "cache"); err != nil || r != nil {
		t.Fatalf("a rejected command left a reset request: %+v %v", r, err)
	}
	if cp := s.checkpoint(); cp != head {
		t.Fatalf("checkpoint moved to %d, want %d", cp, head)
	}
}
