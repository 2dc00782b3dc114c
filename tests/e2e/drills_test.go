package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// drillScale multiplies the drills' sizes: 1 in `make test`, more with
// `make drills` (JETSYNC_DRILL_SCALE=10).
func drillScale() int {
	if n, err := strconv.Atoi(os.Getenv("JETSYNC_DRILL_SCALE")); err == nil && n > 0 {
		return n
	}
	return 1
}

// rssKB reads a process's resident set size from /proc.
func rssKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// TestDrillNATSRestart: stop and start NATS (same port, same file store)
// while events are appended and applied: the bridge answers 503 meanwhile,
// clients retry with the same ids, bridge and sink reconnect by themselves,
// nothing is lost, reordered or applied twice.
func TestDrillNATSRestart(t *testing.T) {
	s := newStack(t)
	s.startSink()
	w := newWorkload(50*drillScale(), 100)
	appendDone := make(chan error, 1)
	go func() { appendDone <- w.appendAll(s, 5, 4) }()
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() > 1000 }, "no progress before the restart")
	restarts := 2
	for i := range restarts {
		s.nats.Stop()
		time.Sleep(500 * time.Millisecond) // the outage itself
		s.nats.Start()
		t.Logf("NATS restart %d done at checkpoint %d", i+1, s.checkpoint())
		time.Sleep(300 * time.Millisecond)
	}
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink never caught up after NATS restarts (at %d of %d)", s.checkpoint(), head)
	w.verify(t, s)
	t.Logf("drill NATS restart: %d events, %d restarts, %d client retries, 0 lost, 0 applied twice", w.total(), restarts, s.retries.Load())
}

// TestDrillDuplicateAppends: the same append sent twice (a client retry
// after a timeout) is stored and applied once.
func TestDrillDuplicateAppends(t *testing.T) {
	s := newStack(t)
	s.startSink()
	w := newWorkload(20, 20)
	if err := w.appendAll(s, 4, 2); err != nil {
		t.Fatal(err)
	}
	dups := 0
	for _, sid := range w.streams { // every append again, as a retry would
		for lo := 0; lo < 20; lo += 4 {
			body, _ := json.Marshal(w.events[sid][lo : lo+4])
			code, resp := s.post("/streams/order/"+sid+"/events?expectedVersion="+strconv.Itoa(lo), body)
			var ar struct {
				Duplicate bool     `json:"duplicate"`
				Positions []uint64 `json:"positions"`
			}
			_ = json.Unmarshal(resp, &ar)
			// Only the stream's last append is recognised as a retry
			// (200, duplicate); an older one is a conflict (409) since
			// the stream has moved on. Neither stores anything.
			if !(code == 200 && ar.Duplicate) && code != 409 {
				t.Fatalf("re-sent append to %s: %d %s", sid, code, resp)
			}
			dups++
		}
	}
	head := w.head()
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() >= head }, "no catch-up")
	code, body := get(s.bridgeURL + "/streams/order/" + w.streams[0])
	if code != 200 || !strings.Contains(body, `"version":20`) {
		t.Fatalf("stream state after duplicates: %d %s", code, body)
	}
	_, js := s.nats.Connect(t)
	str, err := js.Stream(context.Background(), "EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(w.total()) {
		t.Fatalf("stream holds %d events, want %d: a duplicate was stored", info.State.Msgs, w.total())
	}
	w.verify(t, s)
	t.Logf("drill duplicates: %d events, %d appends re-sent, 0 stored twice, 0 applied twice", w.total(), dups)
}
