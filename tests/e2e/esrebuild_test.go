package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestElasticsearchRebuildRefusedEvent: `sink-es rebuild` whose new index
// refuses an event (its config maps shipping.parcels as a boolean, the log
// holds numbers) ends by itself with exit code 1 and names the event and
// Elasticsearch's reason; the alias stays on the live index, which the live
// sink-es keeps writing, and the unfinished index is deleted, or kept with
// -keep-failed, as the message says.
func TestElasticsearchRebuildRefusedEvent(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep-failed=%v", keep), func(t *testing.T) {
			s := newESStack(t, 50)
			s.startSinkES()
			all := newESWorkload(20, 29) // (a 30th event would cancel every order)
			w, more := all.split(20)     // before the rebuild; after it
			if err := w.appendAll(s.stack, 10, 4); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= w.head() }, "sink-es never caught up")
			before := s.aliasIndex(t)

			// The first event the new mapping refuses: the first shipment.
			var badID string
			var badPos uint64
			for _, sid := range w.streams {
				for i, ev := range w.events[sid] {
					if ev.Type == "OrderShipped" {
						if p := w.positions[sid][i]; badPos == 0 || p < badPos {
							badID, badPos = ev.ID, p
						}
						break
					}
				}
			}
			live, err := os.ReadFile(s.config)
			if err != nil {
				t.Fatal(err)
			}
			changed := strings.Replace(string(live), "status: {type: keyword}\n",
				"status: {type: keyword}\n        shipping: {properties: {parcels: {type: boolean}}}\n", 1)
			if changed == string(live) {
				t.Fatal("the mapping change changed nothing")
			}
			args := []string{"rebuild", "-config", writeFile(t, "rebuild.yaml", changed)}
			if keep {
				args = append(args, "-keep-failed")
			}
			start := time.Now()
			rebuild := startProc(t, "sink-es", args...)
			code := rebuild.waitExit(90 * time.Second)
			out := rebuild.output()
			t.Logf("sink-es rebuild exited %d after %s:\n%s", code, time.Since(start).Round(time.Millisecond), lastLines(out, 1))
			if code != 1 {
				t.Fatalf("sink-es rebuild exited %d, want 1:\n%s", code, out)
			}
			want := []string{
				fmt.Sprintf("event %s (type OrderShipped) at position %d:", badID, badPos),
				"status 400",
				fmt.Sprintf("alias %s still points to the live index %s", s.alias, before),
			}
			if keep {
				want = append(want, "is kept (-keep-failed)")
			} else {
				want = append(want, "is deleted (-keep-failed keeps it)")
			}
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("the rebuild's output does not say %q:\n%s", w, out)
				}
			}
			if after := s.aliasIndex(t); after != before {
				t.Errorf("the alias moved from %s to %s", before, after)
			}
			others := s.indicesBesides(t, before)
			switch {
			case !keep && len(others) > 0:
				t.Errorf("the unfinished index is still there: %v", others)
			case keep && len(others) != 1:
				t.Errorf("indices besides the live one: %v, want the one kept", others)
			case keep && !strings.Contains(out, "the unfinished index "+others[0]+" is kept"):
				t.Errorf("the output does not name the kept index %s:\n%s", others[0], out)
			}
			if keys := s.rebuildKeys(t); len(keys) > 0 {
				t.Errorf("the rebuild's checkpoint is still there: %v", keys)
			}

			// The live sink goes on writing into the live index.
			if err := more.appendAllFrom(s.stack, 20, 5, 2); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= all.head() }, "sink-es never caught up after the failed rebuild")
			all.verifyES(t, s.docs(t))
		})
	}
}

// TestDrillElasticsearchRebuild: `sink-es rebuild` while events keep being
// appended through the bridge, NATS is restarted and the live sink-es is
// SIGKILLed, several times, during it: the rebuild finishes by itself, the
// alias moves to the new index, the old one is deleted, and the index
// equals an independent fold of the whole log.
func TestDrillElasticsearchRebuild(t *testing.T) {
	scale := drillScale()
	s := newESStack(t, 50)
	s.startSinkES()
	const backlog, perStream = 40, 100 // events per stream before the rebuild, in all
	w := newESWorkload(40*scale, perStream)
	first, second := w.split(backlog)
	if err := first.appendAll(s.stack, 10, 4); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= w.head() }, "sink-es never caught up")
	before := s.aliasIndex(t)
	start := time.Now()

	appendDone := make(chan error, 1)
	go func() { appendDone <- second.appendAllFrom(s.stack, backlog, 5, 4) }()
	rebuild := startProc(t, "sink-es", "rebuild", "-config", s.config)
	running := func() bool { return len(s.rebuildKeys(t)) > 0 } // its checkpoint exists from its first batch to its end
	testenv.Eventually(t, 30*time.Second, running, "the rebuild never wrote a batch")

	kill := func() {
		s.sinkES.kill()
		s.startSinkES()
	}
	kill()
	if !running() {
		t.Fatal("the rebuild finished before the NATS restart: the drill proves nothing; make the backlog larger")
	}
	s.nats.Stop()
	time.Sleep(500 * time.Millisecond) // the outage
	s.nats.Start()
	faults := 2 // the first kill and the NATS restart, both during the rebuild
	kills := 1
	for range 4*scale - 1 {
		time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		during := running()
		kill()
		kills++
		if during {
			faults++
		}
	}
	code := rebuild.waitExit(120 * time.Second)
	t.Logf("sink-es rebuild exited %d after %s:\n%s", code, time.Since(start).Round(time.Millisecond), lastLines(rebuild.output(), 3))
	if code != 0 {
		t.Fatalf("sink-es rebuild exited %d:\n%s", code, rebuild.output())
	}
	if !strings.Contains(rebuild.output(), "disconnected from NATS") {
		t.Errorf("the rebuild never lost NATS: the restart was not during it")
	}
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink-es never caught up after the rebuild (at %d of %d)", s.checkpoint(), head)

	after := s.aliasIndex(t)
	if after == before {
		t.Fatalf("the alias still points to %s", before)
	}
	if others := s.indicesBesides(t, after); len(others) > 0 {
		t.Errorf("indices besides the new one: %v (the old one is %s)", others, before)
	}
	if keys := s.rebuildKeys(t); len(keys) > 0 {
		t.Errorf("the rebuild's checkpoint is still there: %v", keys)
	}
	w.verifyES(t, s.docs(t))
	t.Logf("drill rebuild: %d events (%d before the rebuild), 1 NATS restart and %d sink-es SIGKILLs (%d faults while the rebuild ran), %d client retries; alias %s -> %s, equal to the fold, in %s",
		w.total(), backlog*len(w.streams), kills, faults, s.retries.Load(), before, after, time.Since(start).Round(time.Millisecond))
}

// rebuildKeys lists the checkpoint keys of running rebuilds (none when
// NATS does not answer).
func (s *esStack) rebuildKeys(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil
	}
	var keys []string
	for k := range lister.Keys() {
		if strings.HasPrefix(k, s.name+"-rebuild-") {
			keys = append(keys, k)
		}
	}
	return keys
}

// split cuts w's streams after k events each: two workloads that share
// w's positions (the second is appended with appendAllFrom(k)).
func (w *workload) split(k int) (first, second *workload) {
	first = &workload{streams: w.streams, events: map[string][]appendReq{}, positions: w.positions}
	second = &workload{streams: w.streams, events: map[string][]appendReq{}, positions: w.positions}
	for _, sid := range w.streams {
		first.events[sid], second.events[sid] = w.events[sid][:k], w.events[sid][k:]
	}
	return first, second
}

// indicesBesides lists the indices named like the alias's (alias-*) other
// than index.
func (s *esStack) indicesBesides(t *testing.T, index string) []string {
	t.Helper()
	res, err := esapi.IndicesGetRequest{Index: []string{s.alias + "-*"}}.Do(context.Background(), s.es)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]json.RawMessage
	if res.IsError() || json.NewDecoder(res.Body).Decode(&out) != nil {
		t.Fatalf("listing %s-*: %s", s.alias, res.Status())
	}
	var names []string
	for name := range out {
		if name != index {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
