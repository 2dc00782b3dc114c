package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// workload is the events a test appends, per stream, in order, and what
// the bridge answered for them.
type workload struct {
	streams   []string
	events    map[string][]appendReq // per stream, in version order
	positions map[string][]uint64    // per stream, as the bridge answered
	mu        sync.Mutex
}

// newWorkload makes perStream events for each of n streams: placed, then
// updates, shipments (merged into a hash), cancellations and re-placements,
// so that a reordered or lost event changes the final state.
func newWorkload(n, perStream int) *workload {
	w := &workload{events: map[string][]appendReq{}, positions: map[string][]uint64{}}
	for i := range n {
		sid := fmt.Sprintf("order-%03d", i)
		w.streams = append(w.streams, sid)
		for v := 1; v <= perStream; v++ {
			typ := "OrderUpdated"
			var data string
			switch {
			case v == 1 || v%25 == 1:
				typ = "OrderPlaced"
			case v%25 == 0:
				typ = "OrderCancelled"
			case v%10 == 3:
				typ = "OrderShipped"
				data = fmt.Sprintf(`{"status":"shipped-%d","carrier":"c%d","parcels":%d}`, v, v%3, v)
			}
			if data == "" {
				data = fmt.Sprintf(`{"order":%q,"version":%d,"total":%d.5,"lines":["sku-%d"]}`, sid, v, v*3, v%7)
			}
			w.events[sid] = append(w.events[sid], appendReq{ID: fmt.Sprintf("%s-%d", sid, v), Type: typ, Data: json.RawMessage(data)})
		}
	}
	return w
}

func (w *workload) total() int {
	n := 0
	for _, evs := range w.events {
		n += len(evs)
	}
	return n
}

// postRetrying is a careful client: on 503 or a lost connection it sends
// the same request again (same event ids), for up to a minute. A retry of
// an append that was in fact stored is answered as a duplicate.
func (s *stack) postRetrying(path string, body []byte) (int, []byte) {
	deadline := time.Now().Add(time.Minute)
	for {
		code, resp := s.post(path, body)
		if (code != 503 && code != 0) || time.Now().After(deadline) {
			return code, resp
		}
		s.retries.Add(1)
		time.Sleep(50 * time.Millisecond)
	}
}

// appendAll posts every event through the bridge, perRequest events per
// request, with `workers` clients; each stream's requests go in order.
func (w *workload) appendAll(s *stack, perRequest, workers int) error {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for wk := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []string
			for i, sid := range w.streams {
				if i%workers == wk {
					mine = append(mine, sid)
				}
			}
			rounds := (len(w.events[w.streams[0]]) + perRequest - 1) / perRequest
			for r := range rounds {
				for _, sid := range mine {
					evs := w.events[sid]
					lo, hi := r*perRequest, min((r+1)*perRequest, len(evs))
					if lo >= hi {
						continue
					}
					body, _ := json.Marshal(evs[lo:hi])
					code, resp := s.postRetrying("/streams/order/"+sid+"/events?expectedVersion="+strconv.Itoa(lo), body)
					if code != 200 && code != 201 {
						errs <- fmt.Errorf("append to %s: %d %s", sid, code, resp)
						return
					}
					var ar appendResp
					if err := json.Unmarshal(resp, &ar); err != nil || len(ar.Positions) != hi-lo {
						errs <- fmt.Errorf("append to %s: bad answer %s", sid, resp)
						return
					}
					w.mu.Lock()
					w.positions[sid] = append(w.positions[sid], ar.Positions...)
					w.mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when no worker failed
}

func (w *workload) head() uint64 {
	var h uint64
	for _, ps := range w.positions {
		for _, p := range ps {
			h = max(h, p)
		}
	}
	return h
}

// verify compares Redis with an independent fold of the workload: the
// document of each order, its merged shipping hash, and the applied log,
// which must hold every position exactly once and in order.
func (w *workload) verify(t *testing.T, s *stack) {
	t.Helper()
	w.verifyIn(t, s.rdb, true)
}

// verifyIn checks the read model in rdb; checkApplied=false skips the
// applied log (after a replay it holds positions twice, by design).
func (w *workload) verifyIn(t *testing.T, rdb *redis.Client, checkApplied bool) {
	t.Helper()
	ctx := context.Background()
	bad := 0
	fail := func(format string, args ...any) {
		t.Errorf(format, args...)
		if bad++; bad > 10 {
			t.FailNow()
		}
	}
	for _, sid := range w.streams {
		var doc string
		ship := map[string]string{}
		for _, ev := range w.events[sid] {
			switch ev.Type {
			case "OrderPlaced", "OrderUpdated":
				doc = string(ev.Data)
			case "OrderCancelled":
				doc = ""
			case "OrderShipped":
				var m map[string]any
				_ = json.Unmarshal(ev.Data, &m)
				for k, v := range m {
					if s, ok := v.(string); ok {
						ship[k] = s
					} else {
						b, _ := json.Marshal(v)
						ship[k] = string(b)
					}
				}
			}
		}
		got, err := rdb.Get(ctx, "order:"+sid).Result()
		if doc == "" {
			if err == nil {
				fail("order:%s = %s, want deleted", sid, got)
			}
		} else if err != nil || got != doc {
			fail("order:%s = %q (%v), want %q", sid, got, err, doc)
		}
		gotShip, _ := rdb.HGetAll(ctx, "shipping:"+sid).Result()
		if fmt.Sprint(gotShip) != fmt.Sprint(ship) {
			fail("shipping:%s = %v, want %v", sid, gotShip, ship)
		}
		if !checkApplied {
			continue
		}
		applied, _ := rdb.LRange(ctx, "applied:"+sid, 0, -1).Result()
		want := make([]string, 0, len(w.positions[sid]))
		ps := append([]uint64(nil), w.positions[sid]...)
		sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
		for _, p := range ps {
			want = append(want, strconv.FormatUint(p, 10))
		}
		if strings.Join(applied, ",") != strings.Join(want, ",") {
			fail("applied:%s: each position must be applied once, in order\n got %v\nwant %v", sid, applied, want)
		}
	}
}

// TestPipeline10k: 10,000 events over 100 streams appended through the
// bridge's HTTP API reach Redis through sink-cache; the state equals the
// fold.
func TestPipeline10k(t *testing.T) {
	s := newStack(t)
	s.startSink()
	w := newWorkload(100, 100)
	start := time.Now()
	if err := w.appendAll(s, 10, 8); err != nil {
		t.Fatal(err)
	}
	appended := time.Since(start)
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink checkpoint %d never reached head %d", s.checkpoint(), head)
	total := time.Since(start)
	t.Logf("10k pipeline: %d events appended in %s (%.0f events/s through the HTTP API); applied in Redis %s after the first append: %.0f events/s end to end",
		w.total(), appended.Round(time.Millisecond), float64(w.total())/appended.Seconds(), total.Round(time.Millisecond), float64(w.total())/total.Seconds())
	w.verify(t, s)

	// SIGTERM: flush, commit, exit 0 promptly.
	begin := time.Now()
	if code := s.sink.stop(15 * time.Second); code != 0 {
		t.Fatalf("sink-cache exited %d after SIGTERM", code)
	}
	t.Logf("sink-cache stopped in %s after SIGTERM", time.Since(begin).Round(time.Millisecond))
	if code := s.bridge.stop(15 * time.Second); code != 0 {
		t.Fatalf("bridge exited %d after SIGTERM", code)
	}
}

// TestSinkKilledRepeatedly: SIGKILL the sink at random moments while events
// are appended and caught up; after restarts Redis holds the fold and no
// event was applied twice (the batch and its checkpoint commit in one
// MULTI/EXEC).
func TestSinkKilledRepeatedly(t *testing.T) {
	s := newStack(t)
	s.sinkConfig = writeFile(t, "sink-small-batches.yaml",
		strings.Replace(sinkYAML(s.nats.URL(), s.redis.Addr(), testenv.FreePort(t)), "max_events: 500", "max_events: 20", 1))
	s.startSink()
	w := newWorkload(100*drillScale(), 100)
	appendDone := make(chan error, 1)
	go func() { appendDone <- w.appendAll(s, 10, 4) }()
	kills := 12 * drillScale()
	killWhileAppending(t, "sink", kills, appendDone, s.checkpoint, w.head, func() { s.sink.kill() }, s.startSink)
	w.verify(t, s)
	t.Logf("%d events, %d SIGKILLs, 0 lost, 0 applied twice (verified against the applied-positions log)", w.total(), kills)
}

// TestRedisOutage: stop redis-server mid-run and start it again; the sink
// retries by itself and nothing is lost or applied twice.
func TestRedisOutage(t *testing.T) {
	s := newStack(t)
	s.startSink()
	w := newWorkload(50, 100)
	appendDone := make(chan error, 1)
	go func() { appendDone <- w.appendAll(s, 5, 4) }()
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() > 500 }, "sink never started applying")
	s.redis.Stop()
	// The outage lasts while the appender adds events the sink cannot
	// write: it must stop pulling, not buffer them.
	peak := 0
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		peak = max(peak, rssKB(s.sink.cmd.Process.Pid))
	}
	s.redis.Start()
	// batch.max_bytes is 1MiB: a bounded sink stays far below 100 MiB.
	if peak == 0 || peak > 100*1024 {
		t.Errorf("sink RSS peaked at %d KiB during the outage", peak)
	}
	t.Logf("drill Redis outage: 2s down, sink RSS peak %d KiB during it", peak)
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink never caught up after the outage")
	w.verify(t, s)
	if !strings.Contains(s.sink.output(), "retrying") {
		t.Errorf("the sink never logged a retry, so the outage was not exercised:\n%s", s.sink.output())
	}
}

// TestBadConfigFailsAtStart: a malformed config stops each service at start
// with exit code 2 and a message naming the key.
func TestBadConfigFailsAtStart(t *testing.T) {
	cases := []struct {
		svc, yaml, want string
		args            []string
	}{
		{"sink-cache", "name: cache\nbatch: {max_evnts: 10}\n", "batch.max_evnts", nil},
		{"sink-cache", "name: cache\nredis: {addr: x}\nmappings:\n  A:\n    - {op: explode, key: k}\n", "mappings.A[0].op", nil},
		{"sink-cache", "name: cache\nbatch: {max_interval: soon}\n", "batch.max_interval", nil},
		{"bridge", "http: {max_body_bytes: huge}\n", "http.max_body_bytes", []string{"serve"}},
		{"bridge", "stream: {replicas: 9}\n", "stream.replicas", []string{"serve"}},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			path := writeFile(t, "bad.yaml", tc.yaml)
			p := startProc(t, tc.svc, append(tc.args, "-config", path)...)
			if code := p.waitExit(20 * time.Second); code != 2 {
				t.Fatalf("%s exited %d, want 2; output:\n%s", tc.svc, code, p.output())
			}
			if !strings.Contains(p.output(), tc.want) {
				t.Fatalf("%s output does not name %s:\n%s", tc.svc, tc.want, p.output())
			}
		})
	}
}

// killWhileAppending SIGKILLs a sink kills times at random moments while
// the appends behind appendDone run, restarting it after each kill; then it
// waits for the appends to end and for the sink's checkpoint to reach head.
func killWhileAppending(t *testing.T, name string, kills int, appendDone <-chan error, checkpoint, head func() uint64, kill, start func()) {
	t.Helper()
	for k := 1; k <= kills; k++ {
		time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		before := checkpoint()
		kill()
		t.Logf("kill %d at checkpoint %d", k, before)
		start()
	}
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	h := head()
	testenv.Eventually(t, 60*time.Second, func() bool { return checkpoint() >= h }, "%s never caught up after %d kills", name, kills)
}
