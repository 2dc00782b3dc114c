package kinesink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesistest"
)

// The engine tests run the real engine over an in-process JetStream into a
// real kinesalite, through the fault proxy, with the checkpoint in NATS KV
// as sink-kinesis runs it.

type harness struct {
	t     *testing.T
	js    jetstream.JetStream
	store *checkpoint.KV
	cfg   Config

	events []envelope.Event
	next   map[string]uint64
}

func newHarness(t *testing.T, endpoint string) *harness {
	t.Helper()
	h := &harness{t: t, next: map[string]uint64{}}
	_, h.js = testenv.NATS(t).Connect(t)
	ctx := context.Background()
	if _, err := natsutil.EnsureStream(ctx, h.js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	store, err := checkpoint.NewKV(ctx, h.js, "")
	if err != nil {
		t.Fatal(err)
	}
	h.store = store
	h.cfg = testConfig(t, endpoint, uniqueStream("eng"))
	h.cfg.Batch = sink.BatchConfig{MaxEvents: 300, MaxBytes: 256 << 10, MaxInterval: 5 * time.Millisecond}
	h.cfg.Retry = sink.RetryConfig{Initial: 5 * time.Millisecond, Max: 100 * time.Millisecond}
	h.cfg.ShutdownTimeout = 5 * time.Second
	return h
}

// event makes the next event of stream sid.
func (h *harness) event(sid string, data string) envelope.Event {
	h.next[sid]++
	v := h.next[sid]
	return envelope.Event{
		ID: fmt.Sprintf("%s-%d", sid, v), StreamID: sid, Category: "conf", Type: "Updated", Version: v,
		Time: time.Now().UTC(), Data: json.RawMessage(data),
	}
}

// publishN appends n small events round robin over `streams` streams.
func (h *harness) publishN(n, streams int) {
	evs := make([]envelope.Event, n)
	for i := range evs {
		sid := fmt.Sprintf("s%03d", i%streams)
		evs[i] = h.event(sid, fmt.Sprintf(`{"n":%d,"note":"<&>"}`, i))
	}
	h.publish(evs...)
}

func (h *harness) publish(evs ...envelope.Event) {
	h.t.Helper()
	futures := make([]jetstream.PubAckFuture, len(evs))
	for i := range evs {
		f, err := h.js.PublishMsgAsync(evs[i].ToMsg())
		if err != nil {
			h.t.Fatalf("publish: %v", err)
		}
		futures[i] = f
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			evs[i].Position = ack.Sequence
		case err := <-f.Err():
			h.t.Fatalf("publish %s: %v", evs[i].ID, err)
		case <-time.After(30 * time.Second):
			h.t.Fatal("publish timed out")
		}
	}
	h.events = append(h.events, evs...)
}

func (h *harness) head() uint64 { return h.events[len(h.events)-1].Position }

// running is the engine's run and the writer it runs, whose stats the
// tests read.
type running struct {
	*sinktest.Running
	w *Writer
}

func (h *harness) start() *running {
	h.t.Helper()
	w, err := NewWriter(h.cfg, testLog())
	if err != nil {
		h.t.Fatal(err)
	}
	eng, err := sink.New(h.cfg.Config, h.js, w, h.store, testLog())
	if err != nil {
		h.t.Fatal(err)
	}
	return &running{Running: sinktest.Start(h.t, eng), w: w}
}

// TestEngineUnderFaults runs the engine while the proxy fails records of
// one call in four in every way it can (stored or not, the whole call
// throttled, the answer lost) and new events keep coming. Every event
// must be in the stream, each stream's events in order by both reader
// rules, and a position may occur twice only if a faulted call carried it.
func TestEngineUnderFaults(t *testing.T) {
	tg := newTarget(t)
	h := newHarness(t, tg.proxy.URL)
	h.cfg.Kinesis.MaxRecordsPerCall = 50 // many calls, so many faults
	rng := rand.New(rand.NewPCG(7, 11))
	tg.proxy.SetFault(func(c *kinesistest.Call) kinesistest.Fault {
		if c.Stream != h.cfg.Kinesis.StreamName || rng.IntN(4) != 0 {
			return kinesistest.Fault{}
		}
		some := func() []int {
			var idx []int
			for i := range c.Keys {
				if rng.IntN(10) == 0 {
					idx = append(idx, i)
				}
			}
			if len(idx) == 0 {
				idx = []int{rng.IntN(len(c.Keys))}
			}
			return idx
		}
		switch rng.IntN(4) {
		case 0:
			return kinesistest.Fault{FailEntries: some()}
		case 1:
			return kinesistest.Fault{RejectEntries: some()}
		case 2:
			return kinesistest.Fault{ThrottleCall: true}
		default:
			return kinesistest.Fault{DropReply: true}
		}
	})
	h.publishN(2000, 25)
	r := h.start()
	for range 5 {
		h.publishN(200, 25) // live, while earlier batches are retried
	}
	r.WaitFor(t, h.head(), 60*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	if cp, err := h.store.Load(context.Background(), h.cfg.Name); err != nil || cp != h.head() {
		t.Fatalf("checkpoint in KV %d (%v), want %d", cp, err, h.head())
	}

	count := checkAllInOrder(t, h.events, readBack(t, tg.kc, h.cfg.Kinesis.StreamName))
	retried := tg.proxy.Retried()
	dups := 0
	for pos, n := range count {
		if n > 1 {
			dups++
			if !retried[pos] {
				t.Errorf("position %d read back %d times but no retried call carried it", pos, n)
			}
		}
	}
	ws, es := r.w.Stats(), r.Eng.Stats()
	if es.Retries == 0 || ws.Failed == 0 || ws.Resent == 0 {
		t.Fatalf("no faults reached the sink: writer %+v, engine retries %d", ws, es.Retries)
	}
	t.Logf("%d events; writer %+v; engine retries %d; %d positions duplicated, all in faulted calls", len(h.events), ws, es.Retries, dups)
}

// oversizeProjection doubles the data, so an event of 600KB makes a record
// over 1MiB while NATS (1MB max payload) still takes the event.
const oversizeProjection = `{streamId, category, type, version, data, copy: .data}`

func (h *harness) publishWithOversize(t *testing.T) envelope.Event {
	// The consumer pulls at most batch.max_bytes at once: a message larger
	// than that is never delivered (the sink stalls on it), so the limit
	// must be at least NATS's max payload, as the 1MiB default is.
	h.cfg.Batch.MaxBytes = 1 << 20
	h.publishN(50, 5)
	big := h.event("big", `{"blob":"`+strings.Repeat("z", 600<<10)+`"}`)
	h.publish(big)
	h.publishN(50, 5)
	return h.events[50]
}

func TestOversizeEventSkipped(t *testing.T) {
	tg := newTarget(t)
	h := newHarness(t, tg.srv.URL)
	h.cfg.Kinesis.Project = oversizeProjection
	h.cfg.OnError = sink.OnErrorSkip
	big := h.publishWithOversize(t)
	r := h.start()
	r.WaitFor(t, h.head(), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	if s := r.Eng.Stats(); s.Skipped != 1 {
		t.Errorf("skipped %d, want 1", s.Skipped)
	}
	var rest []envelope.Event
	for _, ev := range h.events {
		if ev.Position != big.Position {
			rest = append(rest, ev)
		}
	}
	recs := readBack(t, tg.kc, h.cfg.Kinesis.StreamName)
	count := checkAllInOrder(t, rest, recs)
	if count[big.Position] != 0 {
		t.Errorf("the oversize event is in the stream")
	}
	for pos, n := range count {
		if n != 1 {
			t.Errorf("position %d read back %d times", pos, n)
		}
	}
	// The projection's records carry the position the sink added.
	if len(recs) == 0 || !strings.Contains(string(recs[0].Data), `"position":`) || !strings.Contains(string(recs[0].Data), `"copy":`) {
		t.Errorf("projected record %s lacks the position or the projection", recs[0].Data)
	}
}

func TestOversizeEventStops(t *testing.T) {
	tg := newTarget(t)
	h := newHarness(t, tg.srv.URL)
	h.cfg.Kinesis.Project = oversizeProjection
	h.cfg.OnError = sink.OnErrorStop
	big := h.publishWithOversize(t)
	r := h.start()
	var err error
	select {
	case <-r.Done():
		err = r.Err()
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop at the oversize event")
	}
	if !errors.Is(err, sink.ErrStopped) || !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("Run returned %v, want ErrStopped wrapping ErrRecordTooLarge", err)
	}
	if cp, _ := h.store.Load(context.Background(), h.cfg.Name); cp != big.Position-1 {
		t.Fatalf("checkpoint %d, want %d (just before the oversize event)", cp, big.Position-1)
	}
	count := checkAllInOrder(t, h.events[:50], readBack(t, tg.kc, h.cfg.Kinesis.StreamName))
	if len(count) != 50 {
		t.Errorf("%d positions in the stream, want the 50 before the oversize event", len(count))
	}
}
