package main

// The Elasticsearch and Kinesis sinks: their binaries' catch-up against
// the raw target (a bulk loader, sequential PutRecords) and the raw read
// ceiling, and their live append-to-visible delay. Both keep their
// checkpoint in NATS KV, so a kvSink watches it there.

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// target is the server a KV-checkpointed sink writes to, as the benchmark
// drives it: a fresh index or stream per run, the sink's config for it,
// and the raw ceiling for the same writes.
type target interface {
	// fresh drops the last run's index/stream and names a new one.
	fresh(ctx context.Context)
	// configYAML is the target's part of the sink config (its section,
	// indices and mappings).
	configYAML() string
	env() []string
	// raw writes the first n events' documents/records straight to the
	// server, in requests of batch events, and times it.
	raw(ctx context.Context, n, batch int) result
	// describe says what the sink writes, for the table.
	describe() string
}

// kvSink is a sink binary (sink-es, sink-kinesis) whose checkpoint is the
// key of its name in the NATS KV bucket jetsync-checkpoints.
type kvSink struct {
	b    *bench
	kind string // es | kinesis: the sink is bin/sink-<kind>
	tgt  target
	kv   jetstream.KeyValue
	cps  cpLog
	// minRev is the revision prepare put; older updates (a stopped sink's
	// last saves still on their way) are not this run's.
	minRev atomic.Uint64
}

func (s *kvSink) name() string             { return "sink-" + s.kind }
func (s *kvSink) key() string              { return sinkName + "-" + s.kind }
func (s *kvSink) checkpoints() *cpLog      { return &s.cps }
func (s *kvSink) targetCPU() time.Duration { return 0 } // the servers are not ours to measure

// newKVSink opens the checkpoint bucket (as the sink does) and watches the
// sink's key for the rest of the run.
func (b *bench) newKVSink(ctx context.Context, kind string, tgt target) *kvSink {
	if _, err := checkpoint.NewKV(ctx, b.js, checkpoint.DefaultBucket); err != nil {
		b.fatalf("%v", err)
	}
	kv, err := b.js.KeyValue(ctx, checkpoint.DefaultBucket)
	if err != nil {
		b.fatalf("%v", err)
	}
	s := &kvSink{b: b, kind: kind, tgt: tgt, kv: kv}
	w, err := kv.Watch(ctx, s.key(), jetstream.UpdatesOnly())
	if err != nil {
		b.fatalf("watching the checkpoint of %s: %v", s.key(), err)
	}
	b.cleanup = append(b.cleanup, func() { _ = w.Stop() })
	go s.record(w)
	return s
}

// record logs every checkpoint put of this run as it arrives.
func (s *kvSink) record(w jetstream.KeyWatcher) {
	for e := range w.Updates() {
		at := time.Now()
		gen := s.cps.generation() // before minRev: see prepare
		if e == nil || e.Operation() != jetstream.KeyValuePut || e.Revision() < s.minRev.Load() {
			continue
		}
		if cp, err := strconv.ParseUint(string(e.Value()), 10, 64); err == nil {
			s.cps.record(gen, at, cp)
		}
	}
}

// prepare sets the checkpoint, then raises minRev, then resets the log:
// an update that record read the generation of before the reset is
// dropped as of the old generation, one after it is checked against the
// new minRev, so a stopped sink's late saves never count for this run.
func (s *kvSink) prepare(ctx context.Context, live bool) {
	s.tgt.fresh(ctx)
	from := uint64(0)
	if live {
		from = s.b.head(ctx)
	}
	rev, err := s.kv.Put(ctx, s.key(), []byte(strconv.FormatUint(from, 10)))
	if err != nil {
		s.b.fatalf("setting the checkpoint of %s: %v", s.key(), err)
	}
	s.minRev.Store(rev)
	s.cps.reset()
}

func (s *kvSink) start(bs batchSettings) (*proc, string) {
	b := s.b
	port := freePort()
	cfg := filepath.Join(b.dir, fmt.Sprintf("sink-%s-%d.yaml", s.kind, port))
	b.writeFile(cfg, fmt.Sprintf(`name: %s
nats: {url: %q}
stream: EVENTS
filters: [events.order.>]
batch: {max_events: %d, max_bytes: %d, max_interval: %s, flush_when_idle: %t}
on_error: stop
checkpoint: {bucket: %s}
http: {listen: "127.0.0.1:%d"}
%s`, s.key(), b.natsURL, bs.events, int64(bs.bytes), bs.interval, bs.idle, checkpoint.DefaultBucket, port, s.tgt.configYAML()))
	p, err := startProcEnv(filepath.Join(b.bin, s.name()), s.tgt.env(), "-config", cfg)
	if err != nil {
		b.fatalf("%v", err)
	}
	return p, fmt.Sprintf("http://127.0.0.1:%d", port)
}

// startTarget starts the server of a sink kind: Elasticsearch 8 or
// kinesalite, the way the tests do; it fails the run, naming what is
// missing, when it cannot.
func (b *bench) startTarget(ctx context.Context, kind string) target {
	dir := filepath.Join(b.dir, kind)
	start := map[string]func(string) (string, func(), error){"es": testenv.StartElasticsearch, "kinesis": testenv.StartKinesalite}[kind]
	b.logf("starting the %s server", kind)
	url, stop, err := start(dir)
	if err != nil {
		b.fatalf("-sinks %s: its server cannot start (leave %s out of -sinks to run without it): %v", kind, kind, err)
	}
	b.cleanup = append(b.cleanup, stop)
	if kind == "es" {
		return &esTarget{b: b, url: url}
	}
	return newKinesisTarget(b, url)
}

// otherRuns is what the catch-up phase measured for one KV sink.
type otherRuns struct {
	s                     *kvSink
	n                     int
	read, target, sinkRes []result
}

// otherCatchUp alternates, per repetition, the raw read ceiling and the
// raw target for n events with the sink binary's catch-up to n.
func (b *bench) otherCatchUp(ctx context.Context, s *kvSink, n int, bs batchSettings) otherRuns {
	r := otherRuns{s: s, n: n}
	// A server that has just started is slow until its JIT has warmed up
	// (Elasticsearch): one raw load first, not measured.
	b.logf("%s: warm-up (raw target, not measured)", s.kind)
	s.tgt.raw(ctx, n, b.maxEvents)
	for rep := range b.reps {
		b.logf("rep %d: %s: raw read (%d events)", rep+1, s.kind, n)
		r.read = append(r.read, b.rawRead(ctx, n))
		b.logf("rep %d: %s: raw target", rep+1, s.kind)
		r.target = append(r.target, s.tgt.raw(ctx, n, b.maxEvents))
		b.logf("rep %d: %s binary catch-up", rep+1, s.name())
		r.sinkRes = append(r.sinkRes, b.sinkCatchUp(ctx, s, n, bs))
	}
	return r
}

func (b *bench) otherCatchUpTable(r otherRuns) {
	w := b.out
	fmt.Fprintf(w, "\n## Catch-up on loopback: %s (%d of the %d events)\n\n", r.s.name(), r.n, b.n)
	fmt.Fprintf(w, "%s\n\n", r.s.tgt.describe())
	fmt.Fprintln(w, "| | events/s | MB/s | notes |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	b.row(fmt.Sprintf("ceiling: raw ordered-consumer read of %d events (measured, read and discard)", r.n), r.read, "driver CPU "+spread(r.read, cpuPer(func(r result) time.Duration { return r.driver }), "%.1fs"))
	b.row("ceiling: raw target, "+r.target[0].note, r.target, "")
	b.row(fmt.Sprintf("**%s binary**, position 0 → %d", r.s.name(), r.n), r.sinkRes, fmt.Sprintf("peak RSS %s MB, CPU %s s, driver CPU %s s, avg batch %s",
		spread(r.sinkRes, func(r result) float64 { return float64(r.rss) / 1e6 }, "%.0f"),
		spread(r.sinkRes, cpuPer(func(r result) time.Duration { return r.cpu }), "%.1f"),
		spread(r.sinkRes, cpuPer(func(r result) time.Duration { return r.driver }), "%.1f"),
		spread(r.sinkRes, func(r result) float64 { return r.batches }, "%.0f"))+slowNote(r.sinkRes))
	ceil := minOf(rates(r.read), rates(r.target))
	fmt.Fprintf(w, "\nefficiency sink / min(ceilings) = **%.2f** (per repetition: %s)\n", ratio(rates(r.sinkRes), ceil), perRep(rates(r.sinkRes), ceil))
	fmt.Fprintf(w, "sink / raw target = **%.2f** (per repetition: %s)\n", ratio(rates(r.sinkRes), rates(r.target)), perRep(rates(r.sinkRes), rates(r.target)))
	fmt.Fprintln(w, "\nThe sink's time runs from its process start to its checkpoint in NATS KV reaching the last event; it then reads on (the stream holds more) until stopped. "+
		"Before the repetitions, one raw target run warms the server up, unmeasured. The read ceiling is measured for these events, not scaled from the full stream's.")
}
