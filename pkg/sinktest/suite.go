// Package sinktest is the conformance suite every jetsync sink runs against
// its real target: ordering, catch-up, restart from the checkpoint, a crash
// between write and checkpoint, replay, and a target outage. A sink's test
// describes its target in a Target and calls Run, like Watermill's
// pubsub/tests.
package sinktest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// Event types of the suite's stream. A target maps them so that its read
// model ends up equal to Fold: Created and Updated store the event data as
// the document of the stream, Deleted removes it.
const (
	TypeCreated = "Created"
	TypeUpdated = "Updated"
	TypeDeleted = "Deleted"
)

// Category is the category of every suite event.
const Category = "conf"

// Target describes a sink under test and its real server.
type Target struct {
	// NewWriter returns a writer for the sink called name, mapping the
	// suite's event types as described above. Each name must get its own
	// namespace on the target (key prefix, index, stream).
	NewWriter func(t *testing.T, name string) sink.Writer
	// State reads sink name's read model: stream id → document as compact
	// JSON (the event data as stored). It is compared with Fold.
	State func(t *testing.T, name string) map[string]string
	// Applied, when set, counts how often each position was applied to
	// sink name's target (an applied-positions log).
	Applied func(t *testing.T, name string) map[uint64]int
	// AtLeastOnce says the target may apply a batch again after a crash
	// between its write and the checkpoint (duplicates then stay within
	// that one batch).
	AtLeastOnce bool
	// ResetCheckpoint moves the checkpoint of a CheckpointWriter back; not
	// needed for writers whose checkpoint lives in the engine's KV store.
	ResetCheckpoint func(t *testing.T, name string, pos uint64)
	// Outage, when set, takes the target down; calling the returned func
	// brings it back.
	Outage func(t *testing.T) (restore func())
}

// Run runs every conformance test against target.
func Run(t *testing.T, target Target) {
	t.Run("CatchUpInOrder", func(t *testing.T) { testCatchUp(t, target) })
	t.Run("RestartFromCheckpoint", func(t *testing.T) { testRestart(t, target) })
	t.Run("CrashBetweenWriteAndCheckpoint", func(t *testing.T) { testCrash(t, target) })
	t.Run("ReplayIsIdempotent", func(t *testing.T) { testReplay(t, target) })
	if target.Outage != nil {
		t.Run("TargetOutage", func(t *testing.T) { testOutage(t, target) })
	}
}

// env is one test's NATS server, stream and checkpoint store.
type env struct {
	t      *testing.T
	target Target
	js     jetstream.JetStream
	store  *checkpoint.KV
	events []envelope.Event // every event published, with positions
	name   string
	next   map[string]uint64 // next version per stream
}

func newEnv(t *testing.T, target Target) *env {
	srv := testenv.NATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	store, err := checkpoint.NewKV(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, target: target, js: js, store: store, name: fmt.Sprintf("conf%d", time.Now().UnixNano()%1e9), next: map[string]uint64{}}
}

// publish appends n events over streams stream ids, a mix of creates,
// updates and deletes in which the order decides the outcome.
func (e *env) publish(n, streams int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	futures := make([]jetstream.PubAckFuture, 0, n)
	batch := make([]envelope.Event, 0, n)
	for i := range n {
		sid := fmt.Sprintf("s%03d", i%streams)
		e.next[sid]++
		v := e.next[sid]
		typ := TypeUpdated
		switch {
		case v == 1:
			typ = TypeCreated
		case v%7 == 0:
			typ = TypeDeleted
		case v%7 == 1:
			typ = TypeCreated // recreated after a delete
		}
		ev := envelope.Event{
			ID: fmt.Sprintf("%s-%s-%d", e.name, sid, v), StreamID: sid, Category: Category, Type: typ, Version: v,
			Time: time.Now().UTC(),
			Data: json.RawMessage(fmt.Sprintf(`{"stream":%q,"version":%d,"pad":"%0*d"}`, sid, v, 20+i%50, i)),
		}
		f, err := e.js.PublishMsgAsync(ev.ToMsg())
		if err != nil {
			e.t.Fatalf("publishing: %v", err)
		}
		futures = append(futures, f)
		batch = append(batch, ev)
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-ctx.Done():
		e.t.Fatal("publishing did not complete")
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			batch[i].Position = ack.Sequence
		case err := <-f.Err():
			e.t.Fatalf("publish %d: %v", i, err)
		}
	}
	e.events = append(e.events, batch...)
}

func (e *env) head() uint64 {
	if len(e.events) == 0 {
		return 0
	}
	return e.events[len(e.events)-1].Position
}

func (e *env) start(w sink.Writer, cfgMod ...func(*sink.Config)) *Running {
	e.t.Helper()
	cfg := sink.DefaultConfig(e.name)
	cfg.Batch = sink.BatchConfig{MaxEvents: 100, MaxBytes: 64 << 10, MaxInterval: 5 * time.Millisecond}
	cfg.Retry = sink.RetryConfig{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	cfg.ShutdownTimeout = 5 * time.Second
	for _, m := range cfgMod {
		m(&cfg)
	}
	// Warnings (retries during outages) go to stderr in verbose runs.
	out := io.Discard
	if testing.Verbose() {
		out = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	eng, err := sink.New(cfg, e.js, w, e.store, log)
	if err != nil {
		e.t.Fatal(err)
	}
	return Start(e.t, eng)
}

// check compares the read model with the fold and, when the target counts
// applications, that each event was applied once (maxTimes for the
// positions in dupOK).
func (e *env) check(dupOK func(pos uint64) bool) {
	e.t.Helper()
	want := Fold(e.events)
	got := e.target.State(e.t, e.name)
	CompareState(e.t, want, got)
	if e.target.Applied == nil {
		return
	}
	applied := e.target.Applied(e.t, e.name)
	dups := 0
	for _, ev := range e.events {
		n := applied[ev.Position]
		switch {
		case n == 0:
			e.t.Errorf("event at position %d (%s) was never applied", ev.Position, ev.ID)
		case n > 1 && (dupOK == nil || !dupOK(ev.Position)):
			e.t.Errorf("event at position %d (%s) applied %d times", ev.Position, ev.ID, n)
		case n > 1:
			dups++
		}
	}
	if len(applied) > len(e.events) {
		e.t.Errorf("target applied %d distinct positions, only %d events exist", len(applied), len(e.events))
	}
	if dups > 0 {
		e.t.Logf("%d events applied twice after the simulated crash (allowed: at-least-once target)", dups)
	}
}

// Fold computes the read model the suite's events must produce,
// independently of any sink: stream id → compact data of its last event,
// absent when that event is a delete.
func Fold(events []envelope.Event) map[string]string {
	out := map[string]string{}
	for _, ev := range events {
		switch ev.Type {
		case TypeCreated, TypeUpdated:
			out[ev.StreamID] = Compact(ev.Data)
		case TypeDeleted:
			delete(out, ev.StreamID)
		}
	}
	return out
}

// Compact returns JSON without insignificant spaces, for comparisons.
func Compact(raw []byte) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}

// CompareState reports every difference between two read models.
func CompareState(t testing.TB, want, got map[string]string) {
	t.Helper()
	bad := 0
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("%s: missing, want %s", k, w)
			bad++
		} else if Compact([]byte(g)) != w {
			t.Errorf("%s: got %s, want %s", k, g, w)
			bad++
		}
		if bad > 10 {
			t.Fatalf("too many differences")
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: present (%s), want absent", k, g)
		}
	}
}

func testCatchUp(t *testing.T, target Target) {
	e := newEnv(t, target)
	e.publish(3000, 30)
	r := e.start(target.NewWriter(t, e.name))
	r.WaitFor(e.t, e.head(), 60*time.Second)
	// Live: events appended while the sink runs are applied too.
	e.publish(500, 30)
	r.WaitFor(e.t, e.head(), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatalf("Run returned %v after a clean stop", err)
	}
	e.check(nil)
}

func testRestart(t *testing.T, target Target) {
	e := newEnv(t, target)
	e.publish(1000, 20)
	r := e.start(target.NewWriter(t, e.name))
	r.WaitFor(e.t, e.head(), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	cp := r.Eng.Stats().Checkpoint
	e.publish(1000, 20)
	r = e.start(target.NewWriter(t, e.name))
	r.WaitFor(e.t, e.head(), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	if cp == 0 {
		t.Fatal("first run saved no checkpoint")
	}
	e.check(nil)
}

// errCrash simulates the process dying right after a write returned.
var errCrash = errors.New("simulated crash between write and checkpoint")

// crashingWriter lets `after` writes through and then "crashes": the write
// is applied, but the engine gets a permanent error instead of success, so
// it stops without recording the checkpoint of that batch itself.
type crashingWriter struct {
	sink.Writer
	after   int32
	writes  atomic.Int32
	crashed atomic.Bool
	from    atomic.Uint64 // first and last position of the crashed batch
	through atomic.Uint64
}

func (c *crashingWriter) WriteBatch(ctx context.Context, b *sink.Batch) error {
	if err := c.Writer.WriteBatch(ctx, b); err != nil {
		return err
	}
	if c.writes.Add(1) > c.after && !c.crashed.Swap(true) {
		if len(b.Events) > 0 {
			c.from.Store(b.Events[0].Position)
		}
		c.through.Store(b.Through)
		return sink.Permanent(errCrash)
	}
	return nil
}

type crashingCheckpointWriter struct{ *crashingWriter }

func (c crashingCheckpointWriter) LoadCheckpoint(ctx context.Context) (uint64, error) {
	return c.Writer.(sink.CheckpointWriter).LoadCheckpoint(ctx)
}

func testCrash(t *testing.T, target Target) {
	e := newEnv(t, target)
	e.publish(2000, 20)
	inner := target.NewWriter(t, e.name)
	cw := &crashingWriter{Writer: inner, after: 5}
	var w sink.Writer = cw
	if _, ok := inner.(sink.CheckpointWriter); ok {
		w = crashingCheckpointWriter{cw}
	}
	r := e.start(w)
	select {
	case <-r.Done():
		if err := r.Err(); !errors.Is(err, errCrash) {
			t.Fatalf("Run returned %v, want the simulated crash", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the simulated crash never happened")
	}
	_ = r.Stop(t)
	from, through := cw.from.Load(), cw.through.Load()
	if through == 0 {
		t.Fatal("the crashed batch was not recorded")
	}
	r = e.start(target.NewWriter(t, e.name))
	r.WaitFor(e.t, e.head(), 60*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	var dupOK func(uint64) bool
	if target.AtLeastOnce {
		dupOK = func(pos uint64) bool { return pos >= from && pos <= through }
	}
	e.check(dupOK)
}

func testReplay(t *testing.T, target Target) {
	e := newEnv(t, target)
	e.publish(1500, 15)
	w := target.NewWriter(t, e.name)
	r := e.start(w)
	r.WaitFor(e.t, e.head(), 30*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	before := target.State(t, e.name)
	CompareState(t, Fold(e.events), before)

	if _, ok := w.(sink.CheckpointWriter); ok {
		if target.ResetCheckpoint == nil {
			t.Fatal("a CheckpointWriter target must provide ResetCheckpoint")
		}
		target.ResetCheckpoint(t, e.name, 0)
	} else if err := e.store.Reset(context.Background(), e.name, 0); err != nil {
		t.Fatal(err)
	}
	r = e.start(target.NewWriter(t, e.name))
	r.WaitFor(e.t, e.head(), 60*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	// The second pass leaves the read model exactly as the first.
	CompareState(t, before, target.State(t, e.name))
}

func testOutage(t *testing.T, target Target) {
	e := newEnv(t, target)
	e.publish(1000, 20)
	r := e.start(target.NewWriter(t, e.name))
	r.WaitFor(e.t, e.head(), 30*time.Second)

	restore := target.Outage(t)
	e.publish(1000, 20) // appended while the target is down
	testenv.Eventually(t, 30*time.Second, func() bool { return r.Eng.Stats().Retries > 0 },
		"the sink never noticed the outage")
	restore()
	r.WaitFor(e.t, e.head(), 60*time.Second)
	if err := r.Stop(t); err != nil {
		t.Fatal(err)
	}
	e.check(nil)
}
