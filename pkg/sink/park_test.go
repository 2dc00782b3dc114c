package sink_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// parkWriter refuses events of type "Poison" for good while refusing is
// on, writing nothing of such a batch (like Redis' MULTI/EXEC); it records
// what it applied per stream, and every position it was handed.
type parkWriter struct {
	mu       sync.Mutex
	refusing bool
	applied  map[string][]uint64 // by stream id, in the order applied
	seen     map[uint64]bool
}

func newParkWriter() *parkWriter {
	return &parkWriter{refusing: true, applied: map[string][]uint64{}, seen: map[uint64]bool{}}
}

func (p *parkWriter) Connect(context.Context) error { return nil }
func (p *parkWriter) Close(context.Context) error   { return nil }
func (p *parkWriter) WriteBatch(_ context.Context, b *sink.Batch) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var be sink.BatchError
	for i, ev := range b.Events {
		p.seen[ev.Position] = true
		if p.refusing && ev.Type == "Poison" {
			be.Failures = append(be.Failures, sink.EventFailure{Index: i, Err: errors.New("mapping: poison")})
		}
	}
	if len(be.Failures) > 0 {
		return &be
	}
	for _, ev := range b.Events {
		p.applied[ev.StreamID] = append(p.applied[ev.StreamID], ev.Position)
	}
	return nil
}

func (p *parkWriter) setRefusing(on bool) {
	p.mu.Lock()
	p.refusing = on
	p.mu.Unlock()
}

func (p *parkWriter) appliedTo(sid string) []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.applied[sid])
}

func (p *parkWriter) wasSeen(pos uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[pos]
}

// parkEnv is a NATS server with the event stream, the dead-letter queue
// and a checkpoint store, and the log of what was appended per stream.
type parkEnv struct {
	t     *testing.T
	js    jetstream.JetStream
	q     *deadletter.Queue
	store *checkpoint.KV
	log   map[string][]uint64 // positions appended, by stream id
}

func newParkEnv(t *testing.T) *parkEnv {
	srv := testenv.NATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	q, err := deadletter.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	store, err := checkpoint.NewKV(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	return &parkEnv{t: t, js: js, q: q, store: store, log: map[string][]uint64{}}
}

// append publishes one event of stream order/sid and returns its position.
func (p *parkEnv) append(sid, typ string) uint64 {
	p.t.Helper()
	ev := envelope.Event{ID: fmt.Sprintf("%s-%d", sid, len(p.log[sid])+1), StreamID: sid, Category: "order", Type: typ,
		Version: uint64(len(p.log[sid]) + 1), Time: time.Now(), Data: json.RawMessage(`{}`)}
	ack, err := p.js.PublishMsg(context.Background(), ev.ToMsg())
	if err != nil {
		p.t.Fatal(err)
	}
	p.log[sid] = append(p.log[sid], ack.Sequence)
	return ack.Sequence
}

// appendRaw publishes a message that is not a jetsync event on order/sid.
func (p *parkEnv) appendRaw(sid string) uint64 {
	p.t.Helper()
	ack, err := p.js.PublishMsg(context.Background(), &nats.Msg{Subject: envelope.StreamSubject("order", sid), Data: []byte("no headers"), Header: nats.Header{}})
	if err != nil {
		p.t.Fatal(err)
	}
	return ack.Sequence
}

// start runs an engine with on_error park over w.
func (p *parkEnv) start(w sink.Writer) *sinktest.Running {
	p.t.Helper()
	cfg := sink.DefaultConfig("parking")
	cfg.OnError = sink.OnErrorPark
	cfg.Batch.MaxEvents = 8 // a refused event and later ones of its stream share a batch
	cfg.Batch.FlushWhenIdle = false
	cfg.Batch.MaxInterval = 30 * time.Millisecond
	cfg.Retry.Initial, cfg.Retry.Max = 10*time.Millisecond, 50*time.Millisecond
	eng, err := sink.New(cfg, p.js, w, p.store, slog.New(slog.NewTextHandler(io.Discard, nil)), sink.WithDeadLetters(p.q))
	if err != nil {
		p.t.Fatal(err)
	}
	return sinktest.Start(p.t, eng)
}

// letters returns the dead letters of stream sid: positions and the
// position each parked one is parked behind.
func (p *parkEnv) letters(sid string) (pos, behind []uint64) {
	p.t.Helper()
	all, err := p.q.List(context.Background(), "parking")
	if err != nil {
		p.t.Fatal(err)
	}
	for _, l := range all {
		if l.Subject == envelope.StreamSubject("order", sid) {
			pos, behind = append(pos, l.Position), append(behind, l.ParkedBehind)
		}
	}
	return pos, behind
}

func (p *parkEnv) head() uint64 {
	var last uint64
	for _, ps := range p.log {
		last = max(last, ps[len(ps)-1])
	}
	return last
}

// TestParkInterleaved: a refused event of s1 parks s1: its later events go
// to the dead-letter store without being written (not even handed to the
// writer once the stream is parked), while s2 and s3 are applied in order.
// A retry the target still refuses keeps it parked; a restart and a reset
// keep it parked (rebuilt from the dead-letter store, stored once); after
// the fix a retry applies every parked event in order and un-parks it, so
// s1's applied events equal its log; discard drops and un-parks.
func TestParkInterleaved(t *testing.T) {
	p := newParkEnv(t)
	var bad uint64
	for i := range 24 {
		sid := fmt.Sprintf("s%d", i%3+1)
		if sid == "s1" && len(p.log["s1"]) == 1 {
			bad = p.append(sid, "Poison")
			continue
		}
		p.append(sid, "Ok")
	}
	w := newParkWriter()
	run := p.start(w)
	run.WaitFor(t, p.head(), 20*time.Second)
	ctx := context.Background()

	parkedAfter := func(sid string, from uint64) []uint64 {
		var out []uint64
		for _, pos := range p.log[sid] {
			if pos >= from {
				out = append(out, pos)
			}
		}
		return out
	}
	checkParked := func(events int) {
		t.Helper()
		if got := w.appliedTo("s1"); !slices.Equal(got, p.log["s1"][:1]) {
			t.Fatalf("s1 applied %v, want only %v: nothing after the refused event %d", got, p.log["s1"][:1], bad)
		}
		for _, sid := range []string{"s2", "s3"} {
			if got := w.appliedTo(sid); !slices.Equal(got, p.log[sid]) {
				t.Fatalf("%s applied %v, want its whole log %v in order", sid, got, p.log[sid])
			}
		}
		pos, behind := p.letters("s1")
		if want := parkedAfter("s1", bad); !slices.Equal(pos, want) {
			t.Fatalf("s1 dead letters at %v, want %v", pos, want)
		}
		for i, b := range behind {
			if want := map[bool]uint64{true: 0, false: bad}[i == 0]; b != want {
				t.Fatalf("dead letter at %d parked behind %d, want %d", pos[i], b, want)
			}
		}
		parked := run.Eng.Parked()
		if len(parked) != 1 || parked[0].Subject != "events.order.s1" || parked[0].Position != bad || parked[0].Events != events ||
			!strings.Contains(parked[0].Reason, "poison") {
			t.Fatalf("parked %+v, want s1 behind %d with %d events", parked, bad, events)
		}
		if s := run.Eng.Stats(); s.ParkedStreams != 1 || s.ParkedEvents != events {
			t.Fatalf("stats: %d parked streams, %d events", s.ParkedStreams, s.ParkedEvents)
		}
	}
	checkParked(len(parkedAfter("s1", bad)))
	for _, pos := range parkedAfter("s1", bad) {
		// The batch holding the refused event was handed over whole once;
		// no later batch handed over an event of the parked stream.
		if pos > bad+8 && w.wasSeen(pos) {
			t.Fatalf("parked event %d was attempted", pos)
		}
	}

	// Retry while still refused: nothing applied, still parked.
	n, err := run.Eng.RetryParked(ctx, "events.order.s1")
	if !errors.Is(err, sink.ErrStillParked) || n != 0 || !strings.Contains(err.Error(), fmt.Sprintf("at position %d", bad)) {
		t.Fatalf("RetryParked while refused = %d, %v", n, err)
	}
	checkParked(len(parkedAfter("s1", bad)))
	if _, err := run.Eng.RetryParked(ctx, "events.order.s2"); !errors.Is(err, sink.ErrNotParked) {
		t.Fatalf("RetryParked of a stream that is not parked = %v, want ErrNotParked", err)
	}
	if _, err := run.Eng.DiscardParked(ctx, "events.order"); !errors.Is(err, sink.ErrNotParked) {
		t.Fatalf("DiscardParked of a non-stream subject = %v, want ErrNotParked", err)
	}

	// Restart: parked again from the dead-letter store; a new event of s1
	// is parked, one of s2 applied.
	if err := run.Stop(t); err != nil {
		t.Fatal(err)
	}
	run = p.start(w)
	p.append("s1", "Ok")
	p.append("s2", "Ok")
	run.WaitFor(t, p.head(), 20*time.Second)
	checkParked(len(parkedAfter("s1", bad)))

	// Reset to the start: what came before the hole is applied again, the
	// rest parked again, stored once.
	replayed := func() bool {
		return len(w.appliedTo("s3")) == 2*len(p.log["s3"]) && run.Eng.Stats().Checkpoint == p.head()
	}
	if err := run.Eng.Reset(ctx, 0); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, replayed, "no replay after the reset")
	if got := w.appliedTo("s1"); !slices.Equal(got, []uint64{p.log["s1"][0], p.log["s1"][0]}) {
		t.Fatalf("s1 applied %v after the reset, want %d twice", got, p.log["s1"][0])
	}
	if pos, _ := p.letters("s1"); !slices.Equal(pos, parkedAfter("s1", bad)) {
		t.Fatalf("s1 dead letters after the reset at %v, want each of %v once", pos, parkedAfter("s1", bad))
	}
	w.mu.Lock()
	w.applied = map[string][]uint64{} // the replay: start the fold again
	w.mu.Unlock()
	if err := run.Eng.Reset(ctx, 0); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		return len(w.appliedTo("s3")) == len(p.log["s3"]) && run.Eng.Stats().Checkpoint == p.head()
	}, "no replay after the second reset")

	// Fixed: the retry applies every parked event in order and un-parks.
	w.setRefusing(false)
	n, err = run.Eng.RetryParked(ctx, "events.order.s1")
	if err != nil || n != len(parkedAfter("s1", bad)) {
		t.Fatalf("RetryParked after the fix = %d, %v; want %d", n, err, len(parkedAfter("s1", bad)))
	}
	p.append("s1", "Ok")
	run.WaitFor(t, p.head(), 20*time.Second)
	for _, sid := range []string{"s1", "s2", "s3"} {
		if got := w.appliedTo(sid); !slices.Equal(got, p.log[sid]) {
			t.Fatalf("%s applied %v, want its whole log %v in order", sid, got, p.log[sid])
		}
	}
	if pos, _ := p.letters("s1"); len(pos) != 0 || len(run.Eng.Parked()) != 0 {
		t.Fatalf("after the retry: dead letters %v, parked %+v", pos, run.Eng.Parked())
	}
	if _, err := run.Eng.RetryParked(ctx, "events.order.s1"); !errors.Is(err, sink.ErrNotParked) {
		t.Fatalf("RetryParked of an un-parked stream = %v", err)
	}

	// Discard: drops the parked events and un-parks; later events apply.
	w.setRefusing(true)
	bad2 := p.append("s2", "Poison")
	p.append("s2", "Ok")
	p.append("s3", "Ok")
	run.WaitFor(t, p.head(), 20*time.Second)
	if pos, _ := p.letters("s2"); len(pos) != 2 || pos[0] != bad2 {
		t.Fatalf("s2 dead letters %v, want 2 from %d", pos, bad2)
	}
	n, err = run.Eng.DiscardParked(ctx, "events.order.s2")
	if err != nil || n != 2 {
		t.Fatalf("DiscardParked = %d, %v", n, err)
	}
	after := p.append("s2", "Ok")
	run.WaitFor(t, p.head(), 20*time.Second)
	if got := w.appliedTo("s2"); got[len(got)-1] != after || slices.Contains(got, bad2) {
		t.Fatalf("s2 applied %v after the discard, want %d last and not %d", got, after, bad2)
	}
	if pos, _ := p.letters("s2"); len(pos) != 0 || len(run.Eng.Parked()) != 0 {
		t.Fatalf("after the discard: dead letters %v, parked %+v", pos, run.Eng.Parked())
	}
	if _, err := run.Eng.DiscardParked(ctx, "events.order.s2"); !errors.Is(err, sink.ErrNotParked) {
		t.Fatalf("DiscardParked of an un-parked stream = %v", err)
	}
}

// TestParkMalformed: a message that is not an event parks its stream as
// well; its retry says it cannot be applied, discard un-parks.
func TestParkMalformed(t *testing.T) {
	p := newParkEnv(t)
	p.append("s1", "Ok")
	bad := p.appendRaw("s1")
	p.append("s2", "Ok")
	later := p.append("s1", "Ok")
	w := newParkWriter()
	run := p.start(w)
	run.WaitFor(t, later, 20*time.Second)
	if got := w.appliedTo("s1"); !slices.Equal(got, p.log["s1"][:1]) {
		t.Fatalf("s1 applied %v, want only %d", got, p.log["s1"][0])
	}
	if pos, behind := p.letters("s1"); !slices.Equal(pos, []uint64{bad, later}) || !slices.Equal(behind, []uint64{0, bad}) {
		t.Fatalf("s1 dead letters %v behind %v", pos, behind)
	}
	ctx := context.Background()
	if _, err := run.Eng.RetryParked(ctx, "events.order.s1"); !errors.Is(err, sink.ErrStillParked) || !strings.Contains(err.Error(), "not a valid event") {
		t.Fatalf("RetryParked of a malformed message = %v", err)
	}
	if n, err := run.Eng.DiscardParked(ctx, "events.order.s1"); err != nil || n != 2 {
		t.Fatalf("DiscardParked = %d, %v", n, err)
	}
	next := p.append("s1", "Ok")
	run.WaitFor(t, next, 20*time.Second)
	if got := w.appliedTo("s1"); !slices.Equal(got, []uint64{p.log["s1"][0], next}) {
		t.Fatalf("s1 applied %v", got)
	}
}

// TestParkNeedsStore: park without a dead-letter store is refused.
func TestParkNeedsStore(t *testing.T) {
	p := newParkEnv(t)
	cfg := sink.DefaultConfig("parking")
	cfg.OnError = sink.OnErrorPark
	if _, err := sink.New(cfg, p.js, newParkWriter(), p.store, nil); err == nil {
		t.Fatal("New accepted on_error park without a dead-letter store")
	}
	if _, err := newParkWriterEngine(p, sink.OnErrorDeadLetter).RetryParked(context.Background(), "events.order.s1"); !errors.Is(err, sink.ErrNotParked) {
		t.Fatalf("RetryParked under dead-letter = %v, want ErrNotParked", err)
	}
}

func newParkWriterEngine(p *parkEnv, onError string) *sink.Engine {
	cfg := sink.DefaultConfig("parking")
	cfg.OnError = onError
	eng, err := sink.New(cfg, p.js, newParkWriter(), p.store, nil, sink.WithDeadLetters(p.q))
	if err != nil {
		p.t.Fatal(err)
	}
	return eng
}
