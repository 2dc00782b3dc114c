package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestDrillBridgeKilledMidAppend: SIGKILL `bridge serve`, and with it the
// NATS server it embeds, at random moments while 16 clients append batches
// of 1..8 events; restart it each time on the same ports and store. Clients
// send every append that got no clear answer again with the same ids.
// Reading the stream back with nats.go then proves each append all or
// nothing, never interleaved with another, versions gap-free, every
// acknowledged append at exactly its answered positions, and a retry of a
// stored append answered as a duplicate with the stored positions.
func TestDrillBridgeKilledMidAppend(t *testing.T) {
	const clients, ownPerClient = 16, 3
	shared := []string{"shared-0", "shared-1"}
	kills := 10 * drillScale()

	natsPort, httpPort := testenv.FreePort(t), testenv.FreePort(t)
	d := &bridgeDrill{
		url: fmt.Sprintf("http://127.0.0.1:%d", httpPort),
		http: &http.Client{
			Timeout:   15 * time.Second, // above append.timeout (5s): a slow append answers 503 first
			Transport: &http.Transport{MaxIdleConnsPerHost: 2 * clients},
		},
	}
	cfg := writeFile(t, "bridge-embedded.yaml", fmt.Sprintf(`http: {listen: "127.0.0.1:%d"}
nats: {url: "", embedded: {host: 127.0.0.1, port: %d, store_dir: %q}}
stream: {name: EVENTS}
`, httpPort, natsPort, t.TempDir()))
	bridge := startProc(t, "bridge", "serve", "-config", cfg)
	d.waitReady(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // a failed test stops the clients
	began := time.Now()
	cs := make([]*drillClient, clients)
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := range cs {
		c := &drillClient{id: i, d: d, shared: shared, version: map[string]uint64{}}
		for j := range ownPerClient {
			c.own = append(c.own, fmt.Sprintf("c%d-s%d", i, j))
		}
		cs[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.run(ctx); err != nil {
				errs <- err
			}
		}()
	}

	testenv.Eventually(t, 20*time.Second, func() bool { return d.acked.Load() >= 50 }, "no appends acknowledged before the first kill")
	for k := 1; k <= kills; k++ {
		time.Sleep(time.Duration(100+rand.IntN(601)) * time.Millisecond)
		inflight, acked := d.inflight.Load(), d.acked.Load()
		bridge.kill()
		down := time.Now()
		bridge.start()
		d.waitReady(t)
		t.Logf("kill %d: %d appends in flight, %d acknowledged before; ready again after %s",
			k, inflight, acked, time.Since(down).Round(time.Millisecond))
	}
	time.Sleep(300 * time.Millisecond) // load on the last incarnation too
	d.stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	loaded := time.Since(began)

	var appends []*drillAppend
	for _, c := range cs {
		appends = append(appends, c.appends...)
		for _, e := range c.problems {
			t.Error(e)
		}
	}
	if n := d.internal.Load(); n > 0 {
		t.Errorf("the bridge answered 500 to %d requests, e.g. %s", n, d.firstInternal.Load())
	}
	stored := readAllEvents(t, fmt.Sprintf("nats://127.0.0.1:%d", natsPort))
	r := checkAllOrNothing(t, appends, stored)
	d.checkStates(t, stored)

	t.Logf("drill bridge killed mid-append: %d appends (%d acknowledged, %d refused on a version conflict, %d unknown after a retry: %d stored whole, %d absent), %d events stored, %d kills, %d retries, %d duplicates answered, %d lost, %d doubled, %d partial; load %s, total %s",
		len(appends), r.acked, r.refused, r.unknown, r.unknownStored, r.unknown-r.unknownStored, len(stored), kills,
		d.retries.Load(), r.duplicates, r.lost, r.doubled, r.partial, loaded.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

// bridgeDrill is the shared state of the drill's clients.
type bridgeDrill struct {
	url           string
	http          *http.Client
	stop          atomic.Bool  // finish the append at hand, then return
	inflight      atomic.Int64 // requests awaiting an answer
	acked         atomic.Int64
	retries       atomic.Int64 // requests sent again after no clear answer
	internal      atomic.Int64 // 500 answers
	firstInternal atomic.Value // string: the first 500 answer
}

func (d *bridgeDrill) waitReady(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() bool {
		code, _ := get(d.url + "/readyz")
		return code == 200
	}, "bridge never became ready")
}

// post sends one append; code 0 means no answer (connection error, timeout).
func (d *bridgeDrill) post(ctx context.Context, path string, body []byte) (int, []byte) {
	d.inflight.Add(1)
	defer d.inflight.Add(-1)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url+path, bytes.NewReader(body))
	if err != nil {
		return 0, []byte(err.Error())
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.http.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil { // cut off mid-answer: no clear answer
		return 0, []byte(err.Error())
	}
	return resp.StatusCode, b
}

type appendOutcome int

const (
	acked   appendOutcome = iota // 200: stored at the answered positions
	refused                      // 409 to the first attempt: nothing stored
	unknown                      // 409 to a retry: the first attempt may have stored it
)

// drillAppend is one append as the client saw it.
type drillAppend struct {
	stream    string // stream id in category "drill"
	ids       []string
	expected  int64 // ?expectedVersion, -1 without
	attempts  int
	outcome   appendOutcome
	positions []uint64 // as answered (acked)
	version   uint64   // as answered (acked)
	duplicate bool     // answered "duplicate": true
}

func (a *drillAppend) subject() string { return envelope.StreamSubject("drill", a.stream) }

// drillClient owns a few streams (every other one appended with
// ?expectedVersion=) and shares two streams with every other client, always
// with ?expectedVersion= from its last view of them, so appends conflict.
type drillClient struct {
	id       int
	d        *bridgeDrill
	own      []string
	shared   []string
	version  map[string]uint64 // last known version per stream
	appends  []*drillAppend
	problems []string
}

func (c *drillClient) run(ctx context.Context) error {
	pad := strings.Repeat("x", 140)
	for n := 0; !c.d.stop.Load(); n++ {
		a := &drillAppend{expected: -1}
		var own bool
		if rand.IntN(4) == 0 {
			a.stream = c.shared[rand.IntN(len(c.shared))]
			a.expected = int64(c.version[a.stream])
		} else {
			i := rand.IntN(len(c.own))
			a.stream, own = c.own[i], true
			if i%2 == 0 {
				a.expected = int64(c.version[a.stream])
			}
		}
		evs := make([]appendReq, 1+rand.IntN(8))
		for e := range evs {
			id := fmt.Sprintf("c%d-a%d-e%d", c.id, n, e)
			a.ids = append(a.ids, id)
			evs[e] = appendReq{ID: id, Type: "DrillAppended", Data: json.RawMessage(fmt.Sprintf(
				`{"client":%d,"append":%d,"event":%d,"of":%d,"pad":%q}`, c.id, n, e, len(evs), pad))}
		}
		body, _ := json.Marshal(evs)
		path := "/streams/drill/" + a.stream + "/events"
		if a.expected >= 0 {
			path += fmt.Sprintf("?expectedVersion=%d", a.expected)
		}
		if err := c.send(ctx, a, path, body); err != nil {
			return err
		}
		c.appends = append(c.appends, a)
		if own && a.outcome != acked {
			c.problems = append(c.problems, fmt.Sprintf("append %v to own stream %s (expectedVersion %d) was refused with 409 after %d attempts: nobody else writes there",
				a.ids, a.stream, a.expected, a.attempts))
		}
	}
	return nil
}

// send posts one append until it gets 200 or a definite refusal, sending
// the same body again after no clear answer (no answer, 503, 500, or 409
// "kept changing").
func (c *drillClient) send(ctx context.Context, a *drillAppend, path string, body []byte) error {
	deadline := time.Now().Add(45 * time.Second)
	for {
		a.attempts++
		code, resp := c.d.post(ctx, path, body)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch code {
		case 200:
			var ar struct {
				Positions []uint64 `json:"positions"`
				Version   uint64   `json:"version"`
				Duplicate bool     `json:"duplicate"`
			}
			if err := json.Unmarshal(resp, &ar); err != nil || len(ar.Positions) != len(a.ids) {
				return fmt.Errorf("append %v to %s: bad answer %s", a.ids, a.stream, resp)
			}
			a.outcome, a.positions, a.version, a.duplicate = acked, ar.Positions, ar.Version, ar.Duplicate
			c.version[a.stream] = ar.Version
			c.d.acked.Add(1)
			return nil
		case 409:
			var cb struct {
				CurrentVersion *uint64 `json:"currentVersion"`
				ID             string  `json:"id"`
				Field          string  `json:"field"`
			}
			_ = json.Unmarshal(resp, &cb)
			if cb.CurrentVersion == nil && cb.ID == "" && cb.Field == "" {
				break // ErrConflict: the stream kept changing; retry
			}
			if cb.CurrentVersion == nil {
				return fmt.Errorf("append %v to %s (attempt %d): duplicate id although every id is new: %s", a.ids, a.stream, a.attempts, resp)
			}
			c.version[a.stream] = *cb.CurrentVersion
			a.outcome = refused
			if a.attempts > 1 {
				a.outcome = unknown
			}
			return nil
		case 0, 503:
		case 500:
			c.d.internal.Add(1)
			c.d.firstInternal.CompareAndSwap(nil, string(resp))
		default:
			return fmt.Errorf("append %v to %s: %d %s", a.ids, a.stream, code, resp)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("append %v to %s: no clear answer in 45s, the last %d %s", a.ids, a.stream, code, resp)
		}
		c.d.retries.Add(1)
		time.Sleep(time.Duration(20+rand.IntN(30)) * time.Millisecond)
	}
}

// storedEvent is one message of the EVENTS stream.
type storedEvent struct {
	seq     uint64
	subject string
	id      string
	version uint64
}

// readAllEvents reads the whole EVENTS stream with an ordered consumer.
func readAllEvents(t *testing.T, natsURL string) []storedEvent {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("connecting to the embedded NATS: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	str, err := js.Stream(ctx, "EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != info.State.LastSeq || info.State.FirstSeq > 1 {
		t.Errorf("the stream has holes: %d messages, sequences %d..%d", info.State.Msgs, info.State.FirstSeq, info.State.LastSeq)
	}
	cons, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]storedEvent, 0, info.State.Msgs)
	for uint64(len(out)) < info.State.Msgs {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("reading the stream at %d of %d: %v", len(out), info.State.Msgs, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			var v uint64
			_, _ = fmt.Sscan(m.Headers().Get(envelope.HeaderVersion), &v)
			out = append(out, storedEvent{seq: meta.Sequence.Stream, subject: m.Subject(), id: m.Headers().Get(envelope.HeaderID), version: v})
		}
		if err := batch.Error(); err != nil || (n == 0 && ctx.Err() != nil) {
			t.Fatalf("reading the stream at %d of %d: %v %v", len(out), info.State.Msgs, err, ctx.Err())
		}
	}
	return out
}

type drillReport struct {
	acked, refused, unknown, unknownStored, duplicates int
	lost, doubled, partial                             int
}

// checkAllOrNothing checks the stored stream against every append.
func checkAllOrNothing(t *testing.T, appends []*drillAppend, stored []storedEvent) drillReport {
	t.Helper()
	bad := 0
	fail := func(format string, args ...any) {
		t.Errorf(format, args...)
		if bad++; bad > 20 {
			t.FailNow()
		}
	}
	var r drillReport

	// Per stream, versions run 1..N in stream order.
	next := map[string]uint64{}
	byID := map[string]storedEvent{}
	for _, ev := range stored {
		next[ev.subject]++
		if ev.version != next[ev.subject] {
			fail("%s at position %d (id %s) has version %d, want %d: versions must run 1..N without gaps", ev.subject, ev.seq, ev.id, ev.version, next[ev.subject])
			next[ev.subject] = ev.version
		}
		if first, dup := byID[ev.id]; dup {
			r.doubled++
			fail("id %s stored twice: at %d (%s v%d) and at %d (%s v%d)", ev.id, first.seq, first.subject, first.version, ev.seq, ev.subject, ev.version)
			continue
		}
		byID[ev.id] = ev
	}

	known := map[string]bool{}
	for _, a := range appends {
		var found []storedEvent
		for _, id := range a.ids {
			known[id] = true
			if ev, ok := byID[id]; ok {
				found = append(found, ev)
			}
		}
		switch a.outcome {
		case acked:
			r.acked++
		case refused:
			r.refused++
		case unknown:
			r.unknown++
		}
		if a.duplicate {
			r.duplicates++
			if a.attempts == 1 {
				fail("append %v to %s was answered as a duplicate on its first attempt", a.ids, a.stream)
			}
		}
		switch {
		case len(found) == 0:
			if a.outcome == acked {
				r.lost++
				fail("append %v to %s was acknowledged at %v (duplicate %v, %d attempts) but is not stored", a.ids, a.stream, a.positions, a.duplicate, a.attempts)
			}
			continue
		case len(found) < len(a.ids):
			r.partial++
			fail("append %v to %s is partly stored: %d of %d events, %+v", a.ids, a.stream, len(found), len(a.ids), found)
			continue
		}
		for i, ev := range found {
			if ev.subject != a.subject() || ev.version != found[0].version+uint64(i) || ev.seq != found[0].seq+uint64(i) {
				fail("append %v to %s is not stored contiguously and in order: %+v", a.ids, a.stream, found)
				break
			}
		}
		switch a.outcome {
		case refused:
			fail("append %v to %s was refused on its first attempt but is stored: %+v", a.ids, a.stream, found)
		case unknown:
			r.unknownStored++
		case acked:
			got := make([]uint64, len(found))
			for i, ev := range found {
				got[i] = ev.seq
			}
			if fmt.Sprint(got) != fmt.Sprint(a.positions) || a.version != found[len(found)-1].version {
				fail("append %v to %s was answered positions %v version %v (duplicate %v) but is stored at %v version %d",
					a.ids, a.stream, a.positions, a.version, a.duplicate, got, found[len(found)-1].version)
			}
		}
	}
	for _, ev := range stored {
		if !known[ev.id] {
			fail("stored id %s at %d belongs to no append", ev.id, ev.seq)
		}
	}
	return r
}

// checkStates compares GET /streams/drill/{id} with the stored stream.
func (d *bridgeDrill) checkStates(t *testing.T, stored []storedEvent) {
	t.Helper()
	last := map[string]storedEvent{}
	for _, ev := range stored {
		last[ev.subject] = ev
	}
	for subject, ev := range last {
		id := strings.TrimPrefix(subject, "events.drill.")
		code, body := get(d.url + "/streams/drill/" + id)
		want := fmt.Sprintf(`{"version":%d,"lastPosition":%d}`, ev.version, ev.seq)
		if code != 200 || strings.TrimSpace(body) != want {
			t.Errorf("GET /streams/drill/%s: %d %s, want %s", id, code, body, want)
		}
	}
}
