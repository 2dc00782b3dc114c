package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// The integration tests run the real engine over an in-process JetStream
// into a real redis-server and compare Redis with a fold of the same events
// computed here, independently of the writer.

const foldMappings = `
batch: {max_events: 200, max_bytes: 64KiB, max_interval: 5ms}
retry: {initial: 10ms, max: 200ms}
shutdown_timeout: 5s
mappings:
  Created:
    - {op: set, key: "doc:{streamId}"}
    - {op: merge, key: "h:{streamId}"}
    - {op: append, key: "applied:{streamId}", value: "{position}"}
    - {op: incr, key: "count:{category}", field: "{type}"}
  Updated:
    - {op: set, key: "doc:{streamId}"}
    - {op: merge, key: "h:{streamId}"}
    - {op: append, key: "applied:{streamId}", value: "{position}"}
    - {op: incr, key: "count:{category}", field: "{type}"}
  Deleted:
    - {op: del, key: "doc:{streamId}"}
    - {op: del, key: "h:{streamId}"}
    - {op: append, key: "applied:{streamId}", value: "{position}"}
    - {op: incr, key: "count:{category}", field: "{type}"}
`

const category = "item"

// harness is one test's NATS, Redis, sink config and published events.
type harness struct {
	t     *testing.T
	redis *testRedis
	js    jetstream.JetStream
	cfg   Config

	mu     sync.Mutex
	events []envelope.Event // published, with positions
	next   map[string]uint64
}

func newHarness(t *testing.T, body string) *harness {
	t.Helper()
	h := &harness{t: t, redis: startRedis(t), next: map[string]uint64{}}
	_, h.js = testenv.NATS(t).Connect(t)
	if _, err := natsutil.EnsureStream(t.Context(), h.js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	h.cfg = DefaultConfig()
	if err := config.Decode([]byte(body), &h.cfg); err != nil {
		t.Fatal(err)
	}
	h.cfg.NATS.URL = "nats://unused.invalid:4222" // the tests hand the engine their JetStream
	h.cfg.Redis.Addr = h.redis.srv.Addr()
	if err := h.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

// nextEvent makes the next event of stream i: created, updated a few
// times, deleted, created again; the order decides the outcome.
func (h *harness) nextEvent(i int) envelope.Event {
	sid := fmt.Sprintf("s%02d", i)
	h.next[sid]++
	v := h.next[sid]
	typ := "Updated"
	switch {
	case v%5 == 0:
		typ = "Deleted"
	case v%5 == 1:
		typ = "Created"
	}
	return envelope.Event{
		ID: fmt.Sprintf("%s-%d", sid, v), StreamID: sid, Category: category, Type: typ, Version: v, Time: time.Now(),
		Data: json.RawMessage(fmt.Sprintf(`{"stream": %q, "v": %d, "k%d": {"n": %d}}`, sid, v, v%3, v)),
	}
}

// publish appends evs and records their positions.
func (h *harness) publish(evs ...envelope.Event) {
	h.t.Helper()
	futures := make([]jetstream.PubAckFuture, len(evs))
	for i := range evs {
		f, err := h.js.PublishMsgAsync(evs[i].ToMsg())
		if err != nil {
			h.t.Errorf("publish: %v", err)
			return
		}
		futures[i] = f
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			evs[i].Position = ack.Sequence
		case err := <-f.Err():
			h.t.Errorf("publish %s: %v", evs[i].ID, err)
			return
		case <-time.After(10 * time.Second):
			h.t.Errorf("publish %s: no ack within 10s", evs[i].ID)
			return
		}
	}
	h.mu.Lock()
	h.events = append(h.events, evs...)
	h.mu.Unlock()
}

// publishN appends n events round-robin over streams streams.
func (h *harness) publishN(n, streams int) {
	h.t.Helper()
	evs := make([]envelope.Event, n)
	for i := range evs {
		evs[i] = h.nextEvent(i % streams)
	}
	h.publish(evs...)
}

// lastSeq is the stream's last sequence, as the server says.
func (h *harness) lastSeq() uint64 {
	h.t.Helper()
	s, err := h.js.Stream(h.t.Context(), natsutil.DefaultStream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(h.t.Context())
	if err != nil {
		h.t.Fatal(err)
	}
	return info.State.LastSeq
}

func (h *harness) start(w *Writer) *sinktest.Running {
	h.t.Helper()
	log := slog.New(slog.NewTextHandler(h.t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	eng, err := sink.New(h.cfg.Config, h.js, w, nil, log)
	if err != nil {
		h.t.Fatal(err)
	}
	return sinktest.Start(h.t, eng)
}

func (h *harness) newWriter() *Writer {
	h.t.Helper()
	w, err := NewWriter(h.cfg, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return w
}

// redisCheckpoint reads the checkpoint straight from Redis.
func (h *harness) redisCheckpoint() uint64 {
	s, err := h.redis.rdb.Get(context.Background(), "jetsync:checkpoint:"+h.cfg.Name).Result()
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

// waitCaughtUp polls until the checkpoint in Redis is the stream's last
// sequence, failing early if Run returns.
func (h *harness) waitCaughtUp(r *sinktest.Running, timeout time.Duration) {
	h.t.Helper()
	want := h.lastSeq()
	testenv.Eventually(h.t, timeout, func() bool {
		select {
		case <-r.Done():
			h.t.Fatalf("Run returned before catching up to %d: %v", want, r.Err())
		default:
		}
		return h.redisCheckpoint() == want
	}, "checkpoint in Redis %d, want %d (stats %+v)", h.redisCheckpoint(), want, r.Eng.Stats())
}

// foldState is what Redis must hold for a run of events.
type foldState struct {
	docs    map[string]string            // doc:{streamId}
	hashes  map[string]map[string]string // h:{streamId}
	applied map[string][]string          // applied:{streamId}
	counts  map[string]string            // count:item
}

// fold computes the read model from the events alone; skip leaves out
// events the sink dropped by its error policy.
func fold(events []envelope.Event, skip func(envelope.Event) bool) foldState {
	f := foldState{docs: map[string]string{}, hashes: map[string]map[string]string{}, applied: map[string][]string{}, counts: map[string]string{}}
	counts := map[string]int{}
	for _, ev := range events {
		if skip != nil && skip(ev) {
			continue
		}
		sid := ev.StreamID
		switch ev.Type {
		case "Created", "Updated":
			f.docs[sid] = string(ev.Data)
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(ev.Data, &fields); err != nil {
				panic(err)
			}
			if f.hashes[sid] == nil {
				f.hashes[sid] = map[string]string{}
			}
			for k, raw := range fields {
				var s string
				if json.Unmarshal(raw, &s) == nil {
					f.hashes[sid][k] = s
				} else {
					f.hashes[sid][k] = string(raw)
				}
			}
		case "Deleted":
			delete(f.docs, sid)
			delete(f.hashes, sid)
		}
		f.applied[sid] = append(f.applied[sid], strconv.FormatUint(ev.Position, 10))
		counts[ev.Type]++
	}
	for typ, n := range counts {
		f.counts[typ] = strconv.Itoa(n)
	}
	return f
}

// compare checks Redis against the fold, key by key.
func (h *harness) compare(want foldState) {
	h.t.Helper()
	t, r := h.t, h.redis
	ctx := context.Background()
	keys := func(pattern string) []string {
		ks, err := r.rdb.Keys(ctx, pattern).Result()
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	if got := len(keys("doc:*")); got != len(want.docs) {
		t.Errorf("%d doc keys, want %d", got, len(want.docs))
	}
	for sid, data := range want.docs {
		if got := r.get(t, "doc:"+sid); got != data {
			t.Errorf("doc:%s = %s, want %s", sid, got, data)
		}
	}
	if got := len(keys("h:*")); got != len(want.hashes) {
		t.Errorf("%d hash keys, want %d", got, len(want.hashes))
	}
	for sid, fields := range want.hashes {
		if got := r.hash(t, "h:"+sid); !maps(got, fields) {
			t.Errorf("h:%s = %v, want %v", sid, got, fields)
		}
	}
	if got := len(keys("applied:*")); got != len(want.applied) {
		t.Errorf("%d applied logs, want %d", got, len(want.applied))
	}
	for sid, log := range want.applied {
		if got := r.list(t, "applied:"+sid); !slices.Equal(got, log) {
			t.Errorf("applied:%s holds %d positions, want %d once each in order\n got: %v\nwant: %v", sid, len(got), len(log), got, log)
		}
	}
	if got := r.hash(t, "count:"+category); !maps(got, want.counts) {
		t.Errorf("count:%s = %v, want %v", category, got, want.counts)
	}
}

func TestSinkCatchUpRestartAndLive(t *testing.T) {
	h := newHarness(t, foldMappings)
	h.publishN(2000, 20)
	w := h.newWriter()
	r := h.start(w)
	h.waitCaughtUp(r, 30*time.Second)
	h.compare(fold(h.events, nil))

	// Live: events appended while it runs.
	h.publishN(300, 20)
	h.waitCaughtUp(r, 20*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatalf("Run returned %v after cancellation, want nil", err)
	}
	h.compare(fold(h.events, nil))

	// Restart from the checkpoint in Redis, with the same (closed) writer.
	h.publishN(500, 20)
	r = h.start(w)
	h.waitCaughtUp(r, 20*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatalf("second Run returned %v, want nil", err)
	}
	h.compare(fold(h.events, nil))
	if s := r.Eng.Stats(); s.Applied != 500 || s.Checkpoint != h.lastSeq() {
		t.Errorf("second run applied %d events up to %d; want 500 up to %d", s.Applied, s.Checkpoint, h.lastSeq())
	}
}

// publishWithPoison publishes before events, an Updated event whose data
// is not an object (merge refuses it), then after events.
func (h *harness) publishWithPoison(before, after int) envelope.Event {
	h.publishN(before, 5)
	poison := h.nextEvent(0)
	poison.Type = "Updated"
	poison.Data = json.RawMessage(`"not-an-object"`)
	h.publish(poison)
	h.publishN(after, 5)
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.events[before]
}

func TestPoisonEventSkipped(t *testing.T) {
	h := newHarness(t, foldMappings+"on_error: skip\n")
	poison := h.publishWithPoison(60, 60)
	r := h.start(h.newWriter())
	h.waitCaughtUp(r, 20*time.Second)
	if s := r.Eng.Stats(); s.Skipped != 1 {
		t.Errorf("skipped %d events, want 1", s.Skipped)
	}
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	h.compare(fold(h.events, func(ev envelope.Event) bool { return ev.Position == poison.Position }))
}

func TestPoisonEventStops(t *testing.T) {
	h := newHarness(t, foldMappings+"on_error: stop\n")
	poison := h.publishWithPoison(60, 60)
	r := h.start(h.newWriter())
	var err error
	select {
	case <-r.Done():
		err = r.Err()
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not stop at the poison event")
	}
	if !errors.Is(err, sink.ErrStopped) {
		t.Fatalf("Run returned %v, want an error wrapping sink.ErrStopped", err)
	}
	if cp := h.redisCheckpoint(); cp != poison.Position-1 {
		t.Fatalf("checkpoint in Redis %d, want %d (just before the poison)", cp, poison.Position-1)
	}
	h.compare(fold(h.events, func(ev envelope.Event) bool { return ev.Position >= poison.Position }))

	// A restart stops at the same event again, and writes nothing more.
	r = h.start(h.newWriter())
	select {
	case <-r.Done():
		err = r.Err()
	case <-time.After(20 * time.Second):
		t.Fatal("restarted Run did not stop at the poison event")
	}
	if !errors.Is(err, sink.ErrStopped) || h.redisCheckpoint() != poison.Position-1 {
		t.Fatalf("restart: %v, checkpoint %d", err, h.redisCheckpoint())
	}
}

func TestRedisOutage(t *testing.T) {
	h := newHarness(t, foldMappings)
	h.publishN(500, 20)
	r := h.start(h.newWriter())
	h.waitCaughtUp(r, 20*time.Second)

	// Keep events flowing in the background for the whole outage.
	stopPub := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopPub:
				return
			case <-tick.C:
				h.publishN(20, 20)
			}
		}
	}()
	applied := r.Eng.Stats().Applied
	testenv.Eventually(t, 10*time.Second, func() bool { return r.Eng.Stats().Applied > applied+100 }, "no live events applied before the outage")

	h.redis.srv.Stop()
	testenv.Eventually(t, 20*time.Second, func() bool { return r.Eng.Stats().Retries > 0 }, "the sink never noticed Redis was down")
	retries := r.Eng.Stats().Retries
	testenv.Eventually(t, 10*time.Second, func() bool { return r.Eng.Stats().Retries > retries+2 }, "the sink stopped retrying")
	h.redis.srv.Start()
	applied = r.Eng.Stats().Applied
	testenv.Eventually(t, 20*time.Second, func() bool { return r.Eng.Stats().Applied > applied+100 }, "the sink did not resume after Redis came back")
	close(stopPub)
	<-pubDone

	h.waitCaughtUp(r, 20*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events, %d retries during the outage", len(h.events), r.Eng.Stats().Retries)
	h.compare(fold(h.events, nil))
}

// TestStopDuringBacklog cancels Run while it is still catching up with a
// backlog (SIGTERM during a rebuild): Run must return promptly, and the
// next Run must finish the job without losing or repeating an event.
func TestStopDuringBacklog(t *testing.T) {
	h := newHarness(t, foldMappings)
	h.cfg.Batch.MaxEvents = 20 // many small batches: the backlog outlasts the cancel
	h.publishN(4000, 20)
	r := h.start(h.newWriter())
	last := h.lastSeq()
	testenv.Eventually(t, 10*time.Second, func() bool { return h.redisCheckpoint() > 0 }, "no batch written")
	if err := r.Stop(t); err != nil { // fails the test if Run hangs
		t.Fatalf("Run returned %v after cancellation, want nil", err)
	}
	if cp := h.redisCheckpoint(); cp >= last {
		t.Logf("the backlog was gone before the cancel (checkpoint %d): this run proves less", cp)
	}
	r = h.start(h.newWriter())
	h.waitCaughtUp(r, 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	h.compare(fold(h.events, nil))
}
