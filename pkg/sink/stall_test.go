package sink_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// slowWriter records positions; while slow is set each batch takes delay.
type slowWriter struct {
	mu      sync.Mutex
	applied map[uint64]int
	slow    atomic.Bool
	delay   time.Duration
}

func (w *slowWriter) Connect(context.Context) error { return nil }
func (w *slowWriter) Close(context.Context) error   { return nil }
func (w *slowWriter) WriteBatch(ctx context.Context, b *sink.Batch) error {
	if w.slow.Load() {
		select {
		case <-time.After(w.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range b.Events {
		w.applied[ev.Position]++
	}
	return nil
}

func (w *slowWriter) check(t *testing.T, head uint64) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for p := uint64(1); p <= head; p++ {
		if w.applied[p] != 1 {
			t.Fatalf("position %d applied %d times, want once", p, w.applied[p])
		}
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type stallEnv struct {
	js   jetstream.JetStream
	str  jetstream.Stream
	next int
	w    *slowWriter
	log  *syncBuf
	run  *sinktest.Running
}

func newStallEnv(t *testing.T) *stallEnv {
	t.Helper()
	_, js := testenv.NATS(t).Connect(t)
	ctx := context.Background()
	str, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig())
	if err != nil {
		t.Fatal(err)
	}
	store, err := checkpoint.NewKV(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	e := &stallEnv{js: js, str: str, w: &slowWriter{applied: map[uint64]int{}, delay: 3 * time.Second}, log: &syncBuf{}}
	cfg := sink.DefaultConfig("stall")
	cfg.StallTimeout = time.Second
	eng, err := sink.New(cfg, js, e.w, store, slog.New(slog.NewTextHandler(e.log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.run = sinktest.Start(t, eng)
	return e
}

func (e *stallEnv) publish(t *testing.T, n int) uint64 {
	t.Helper()
	var last uint64
	for range n {
		e.next++
		ev := envelope.Event{ID: fmt.Sprintf("e%d", e.next), Category: "c", StreamID: fmt.Sprintf("s%d", e.next%5), Type: "T",
			Version: uint64(e.next), Time: time.Now(), Data: []byte("{}")}
		ack, err := e.js.PublishMsg(context.Background(), ev.ToMsg())
		if err != nil {
			t.Fatal(err)
		}
		last = ack.Sequence
	}
	return last
}

// pauseConsumers pauses every consumer of the stream on the server for an
// hour: the consumer stays, keeps its heartbeats, reports no error and
// delivers nothing, as a consumer stalled after a leader change does.
func (e *stallEnv) pauseConsumers(t *testing.T) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	names := e.str.ConsumerNames(ctx)
	for name := range names.Name() {
		if _, err := e.js.PauseConsumer(ctx, natsutil.DefaultStream, name, time.Now().Add(time.Hour)); err != nil {
			t.Fatalf("pausing consumer %s: %v", name, err)
		}
		n++
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestStalledConsumerIsRecreated: a consumer that silently stops
// delivering while the stream moves on is recreated from the checkpoint
// within about stall_timeout, counted and logged; nothing is lost or
// applied twice.
func TestStalledConsumerIsRecreated(t *testing.T) {
	e := newStallEnv(t)
	head := e.publish(t, 50)
	e.run.WaitFor(t, head, 20*time.Second)
	if n := e.pauseConsumers(t); n != 1 {
		t.Fatalf("paused %d consumers, want the sink's one", n)
	}
	head = e.publish(t, 50)
	e.run.WaitFor(t, head, 30*time.Second)
	e.w.check(t, head)
	if got := e.run.Eng.Stats().ConsumerRecreated; got < 1 {
		t.Fatalf("ConsumerRecreated = %d after a stall", got)
	}
	if !strings.Contains(e.log.String(), "event consumer stalled; recreating it from the checkpoint") {
		t.Fatalf("no log line for the stall:\n%s", e.log.String())
	}
}

// TestQuietOrBusyIsNoStall: a stream with nothing new, and a sink busy
// writing to a slow target for several stall timeouts, are not stalls.
func TestQuietOrBusyIsNoStall(t *testing.T) {
	e := newStallEnv(t)
	head := e.publish(t, 20)
	e.run.WaitFor(t, head, 20*time.Second)
	time.Sleep(3 * time.Second) // three stall timeouts with nothing to read
	if got := e.run.Eng.Stats().ConsumerRecreated; got != 0 {
		t.Fatalf("a quiet stream recreated the consumer %d times:\n%s", got, e.log.String())
	}
	e.w.slow.Store(true) // each batch now takes 3s
	head = e.publish(t, 20)
	e.run.WaitFor(t, head, 60*time.Second)
	e.w.check(t, head)
	if got := e.run.Eng.Stats().ConsumerRecreated; got != 0 {
		t.Fatalf("a slow target recreated the consumer %d times:\n%s", got, e.log.String())
	}
}
