package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/services/sink-cache/cache"
)

const (
	sinkName = "bench"
	rawName  = "RAW" // the stream the raw publish ceiling writes to
)

var cpKey = "jetsync:checkpoint:" + sinkName

// rendered holds the payloads of the events, rendered once before anything
// is timed, so no measurement pays for generating its input.
type rendered struct {
	data, meta [][]byte
	dataBytes  []int64 // prefix sums of len(data): dataBytes[n] = bytes of the first n events
}

func (w *workload) render(n int) *rendered {
	r := &rendered{data: make([][]byte, n), meta: make([][]byte, n), dataBytes: make([]int64, n+1)}
	for i := range n {
		ev := w.event(i)
		r.data[i], r.meta[i] = ev.Data, ev.Metadata
		r.dataBytes[i+1] = r.dataBytes[i] + int64(len(ev.Data))
	}
	return r
}

// ev is event i with its pre-rendered payload.
func (b *bench) ev(i int) envelope.Event {
	sp := b.wl.specs[i]
	return envelope.Event{
		ID: "e-" + strconv.Itoa(i+1), StreamID: streamID(sp.stream), Category: "order", Type: typeNames[sp.typ],
		Version: uint64(sp.ver), Time: b.wl.base.Add(time.Duration(i) * time.Millisecond),
		Data: b.rd.data[i], Metadata: b.rd.meta[i],
	}
}

// result is one timed run.
type result struct {
	events  int
	elapsed time.Duration
	bytes   int64         // event data bytes moved
	cpu     time.Duration // CPU of the measured process, when it is its own
	rss     int64         // its peak RSS
	target  time.Duration // the target server's CPU during the run (redis-server, PostgreSQL), when known
	driver  time.Duration // this process's CPU (driver + in-process NATS server)
	batches float64       // average events per batch, when known
	slow    int           // slow-consumer reports of the sink process
	note    string
}

func (r result) rate() float64 { return float64(r.events) / r.elapsed.Seconds() }
func (r result) mbps() float64 { return float64(r.bytes) / r.elapsed.Seconds() / 1e6 }

// --- ingest ---------------------------------------------------------------

func (b *bench) deleteStreams(ctx context.Context) {
	for _, s := range []string{natsutil.DefaultStream, rawName} {
		if err := b.js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			b.fatalf("deleting stream %s: %v", s, err)
		}
	}
}

// rawPublish is the ceiling for ingest: the same messages (headers and
// all) published asynchronously, 4096 awaiting their ack (the import's
// default window), into a stream configured like EVENTS.
func (b *bench) rawPublish(ctx context.Context, n int) result {
	sc := natsutil.DefaultStreamConfig().JetStreamConfig()
	sc.Name, sc.Subjects = rawName, []string{"raw.>"}
	if _, err := b.js.CreateStream(ctx, sc); err != nil {
		b.fatalf("creating %s: %v", rawName, err)
	}
	nc, err := nats.Connect(b.natsURL)
	if err != nil {
		b.fatalf("%v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	cpu0, r0 := selfCPU(), b.redis.cpu()
	start := time.Now()
	for i := range n {
		ev := b.ev(i)
		m := ev.ToMsg()
		m.Subject = "raw.order." + ev.StreamID
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
			b.fatalf("raw publish: %v", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.fatalf("raw publish: acks did not complete")
	}
	res := result{events: n, elapsed: time.Since(start), bytes: b.rd.dataBytes[n], driver: selfCPU() - cpu0, target: b.redis.cpu() - r0}
	st, err := b.js.Stream(ctx, rawName)
	if err != nil || st.CachedInfo().State.Msgs != uint64(n) {
		b.fatalf("raw publish stored %v messages, want %d (%v)", st.CachedInfo().State.Msgs, n, err)
	}
	return res
}

// importNDJSON runs `bridge import` on the NDJSON file, as a user does.
func (b *bench) importNDJSON(n int) result {
	cfg := filepath.Join(b.dir, "bridge-import.yaml")
	b.writeFile(cfg, fmt.Sprintf("nats: {url: %q}\nstream: {name: EVENTS, replicas: %d}\n", b.natsURL, max(b.replicas, 1)))
	cpu0 := selfCPU()
	p, err := startProc(filepath.Join(b.bin, "bridge"), "import", "-config", cfg, "-progress=false", b.ndjson)
	if err != nil {
		b.fatalf("%v", err)
	}
	var hwm int64 // the import exits by itself: sample its peak RSS while it runs
	for tick := time.NewTicker(20 * time.Millisecond); !p.exited(); <-tick.C {
		hwm = max(hwm, procStatus(p.cmd.Process.Pid, "VmHWM:"))
	}
	u := p.usage()
	u.maxRSS = hwm
	if p.cmd.ProcessState.ExitCode() != 0 {
		b.fatalf("bridge import failed: %s", p.out.String())
	}
	out := strings.TrimSpace(p.out.String())
	if !strings.Contains(out, fmt.Sprintf("imported %d events", n)) {
		b.fatalf("bridge import: unexpected output %q", out)
	}
	return result{events: n, elapsed: u.wall, bytes: b.rd.dataBytes[n], cpu: u.cpu, rss: u.maxRSS, driver: selfCPU() - cpu0, note: out}
}

// --- ceilings -------------------------------------------------------------

// rawRead is the ordered-consumer read ceiling: every message of the
// stream read and discarded, with the pull settings the sink uses.
func (b *bench) rawRead(ctx context.Context, n int) result {
	nc, err := nats.Connect(b.natsURL)
	if err != nil {
		b.fatalf("%v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cpu0 := selfCPU()
	start := time.Now()
	cons, err := js.OrderedConsumer(ctx, natsutil.DefaultStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"events.order.>"}})
	if err != nil {
		b.fatalf("%v", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(b.maxEvents, int(b.maxBytes)))
	if err != nil {
		b.fatalf("%v", err)
	}
	defer it.Stop()
	for range n {
		if _, err := it.Next(); err != nil {
			b.fatalf("raw read: %v", err)
		}
	}
	return result{events: n, elapsed: time.Since(start), bytes: b.rd.dataBytes[n], driver: selfCPU() - cpu0}
}

// rawTarget is the target ceiling: the sink's exact Redis commands for the
// same events, in MULTI/EXEC batches of batch events (each with its
// checkpoint SET), written back to back by go-redis with no NATS in the
// way. A goroutine builds the next batches while one is written.
func (b *bench) rawTarget(ctx context.Context, addr string, n, batch int) result {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	b.flush(ctx)
	type cmds struct {
		args    [][]any
		through int
	}
	ch := make(chan cmds, 4)
	go func() {
		defer close(ch)
		for from := 0; from < n; from += batch {
			to := min(from+batch, n)
			c := cmds{through: to}
			for i := from; i < to; i++ {
				ev := b.ev(i)
				c.args = append(c.args, b.wl.commands(i, &ev)...)
			}
			ch <- c
		}
	}()
	cpu0, r0 := selfCPU(), b.redis.cpu()
	start := time.Now()
	for c := range ch {
		_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for _, a := range c.args {
				p.Do(ctx, a...)
			}
			p.Set(ctx, cpKey, c.through, 0)
			return nil
		})
		if err != nil {
			b.fatalf("raw target: %v", err)
		}
	}
	return result{events: n, elapsed: time.Since(start), bytes: b.rd.dataBytes[n], driver: selfCPU() - cpu0, target: b.redis.cpu() - r0}
}

// bothCeilings runs the two ceilings side by side, as a sink must do both
// jobs on the same machine. n / the slower one's time is what a sink doing
// no more work than the two raw jobs, perfectly overlapped, could reach
// here: on a machine whose cores both ceilings saturate alone, it is well
// below min(ceilings).
func (b *bench) bothCeilings(ctx context.Context, n int) result {
	var rd result
	done := make(chan struct{})
	go func() {
		defer close(done)
		rd = b.rawRead(ctx, n)
	}()
	tg := b.rawTarget(ctx, b.redis.addr, n, b.maxEvents)
	<-done
	return result{events: n, elapsed: max(rd.elapsed, tg.elapsed), bytes: b.rd.dataBytes[n]}
}

// --- sinks ----------------------------------------------------------------

type batchSettings struct {
	events   int
	bytes    config.ByteSize
	interval time.Duration
	idle     bool
}

func (s batchSettings) String() string {
	idle := ""
	if !s.idle {
		idle = ", flush_when_idle: false"
	}
	return fmt.Sprintf("max_events %d, max_bytes %s, max_interval %s%s", s.events, s.bytes, s.interval, idle)
}

// sinkConfigYAML is the sink-cache config file the benchmark runs.
func (b *bench) sinkConfigYAML(redisAddr string, bs batchSettings, port int) string {
	return fmt.Sprintf(`name: %s
nats: {url: %q}
stream: EVENTS
filters: [events.order.>]
batch: {max_events: %d, max_bytes: %d, max_interval: %s, flush_when_idle: %t}
on_error: stop
http: {listen: "127.0.0.1:%d"}
redis: {addr: %q}
%s`, sinkName, b.natsURL, bs.events, int64(bs.bytes), bs.interval, bs.idle, port, redisAddr, benchMappings)
}

// startSink runs the sink-cache binary; it is ready when /readyz says so.
func (b *bench) startSink(redisAddr string, bs batchSettings) (*proc, string) {
	port := freePort()
	cfg := filepath.Join(b.dir, fmt.Sprintf("sink-%d.yaml", port))
	b.writeFile(cfg, b.sinkConfigYAML(redisAddr, bs, port))
	var env []string
	if b.sinkEnv != "" {
		env = strings.Fields(b.sinkEnv)
	}
	p, err := startProcEnv(b.sinkBin, env, "-config", cfg)
	if err != nil {
		b.fatalf("%v", err)
	}
	return p, fmt.Sprintf("http://127.0.0.1:%d", port)
}

// sinkUnderTest is what running a sink binary needs to know of its target:
// how to give it a fresh target with its checkpoint at a position, how to
// start it, and where to see its checkpoint move. sink-cache keeps its
// checkpoint in Redis (cacheSink), sink-es and sink-kinesis in NATS KV
// (kvSink).
type sinkUnderTest interface {
	name() string // the binary's, for messages
	// prepare empties the target and sets the checkpoint to 0, or with
	// live to the stream's head (read after emptying it), so the next
	// start begins there; it resets checkpoints.
	prepare(ctx context.Context, live bool)
	start(bs batchSettings) (p *proc, admin string)
	checkpoints() *cpLog
	targetCPU() time.Duration // CPU of the target server so far, 0 when unknown
}

// cacheSink is the sink-cache binary writing to the Redis at addr (the
// server, or the delay proxy in front of it).
type cacheSink struct {
	b    *bench
	addr string
}

func (b *bench) cacheSink(addr string) cacheSink { return cacheSink{b, addr} }

func (c cacheSink) name() string { return "sink-cache" }

func (c cacheSink) prepare(ctx context.Context, live bool) {
	c.b.flush(ctx)
	if live {
		if err := c.b.rdb.Set(ctx, cpKey, c.b.head(ctx), 0).Err(); err != nil {
			c.b.fatalf("%v", err)
		}
	}
	c.b.watch.reset()
}

func (c cacheSink) start(bs batchSettings) (*proc, string) { return c.b.startSink(c.addr, bs) }
func (c cacheSink) checkpoints() *cpLog                    { return &c.b.watch.cpLog }
func (c cacheSink) targetCPU() time.Duration               { return c.b.redis.cpu() }

// sinkCatchUp times a sink binary from position 0 to position n: from the
// process start to the moment the checkpoint covering n is visible (for
// sink-cache, that is when the last batch is visible in Redis: they commit
// together). Its CPU comes from the kernel's rusage, its peak RSS from
// VmHWM (see proc.usage).
func (b *bench) sinkCatchUp(ctx context.Context, s sinkUnderTest, n int, bs batchSettings) result {
	s.prepare(ctx, false)
	cpu0, t0 := selfCPU(), s.targetCPU()
	p, admin := s.start(bs)
	at, err := s.checkpoints().waitFor(uint64(n), time.Duration(n/100+120)*time.Second, func() error {
		if p.exited() {
			return fmt.Errorf("%s exited: %s", s.name(), p.out.String())
		}
		return nil
	})
	if err != nil {
		p.stop()
		b.fatalf("%s catch-up: %v\n%s", s.name(), err, p.out.String())
	}
	res := result{events: n, elapsed: at.Sub(p.start), bytes: b.rd.dataBytes[n], target: s.targetCPU() - t0}
	res.batches = scrapeBatchSize(admin)
	u, _ := p.stop()
	res.cpu, res.rss, res.driver = u.cpu, u.maxRSS, selfCPU()-cpu0
	res.slow = p.out.slowConsumers()
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		b.fatalf("%s exited with %d (%s): %s", s.name(), code, p.cmd.ProcessState, p.out.String())
	}
	return res
}

var metricRE = regexp.MustCompile(`(?m)^jetsync_sink_(batches_total|events_applied_total)\{[^}]*\} (\S+)$`)

// scrapeBatchSize reads the average batch size from the sink's /metrics.
func scrapeBatchSize(admin string) float64 {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	vals := map[string]float64{}
	for _, m := range metricRE.FindAllSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		vals[string(m[1])] = v
	}
	if vals["batches_total"] == 0 {
		return 0
	}
	return vals["events_applied_total"] / vals["batches_total"]
}

// startEngine runs the sink engine with cache.Writer inside this process.
func (b *bench) startEngine(redisAddr string, bs batchSettings) *sink.Running {
	cfg := cache.DefaultConfig()
	if err := config.Decode([]byte(benchMappings), &cfg); err != nil {
		b.fatalf("%v", err)
	}
	cfg.Name, cfg.NATS.URL, cfg.Filters, cfg.Redis.Addr = sinkName, b.natsURL, []string{"events.order.>"}, redisAddr
	cfg.Batch = sink.BatchConfig{MaxEvents: bs.events, MaxBytes: bs.bytes, MaxInterval: bs.interval, FlushWhenIdle: bs.idle}
	cfg.HTTP.Listen = ""
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	w, err := cache.NewWriter(cfg, log)
	if err != nil {
		b.fatalf("%v", err)
	}
	eng, err := sink.New(cfg.Config, b.js, w, nil, log)
	if err != nil {
		b.fatalf("%v", err)
	}
	return eng.Start(context.Background())
}

// engineCatchUp times the in-process engine from 0 to position n (or for
// at most limit, then counts what it applied).
func (b *bench) engineCatchUp(ctx context.Context, redisAddr string, n int, bs batchSettings, limit time.Duration, profile string) result {
	b.flush(ctx)
	b.watch.reset()
	if profile != "" {
		f, err := os.Create(profile + ".cpu.pprof")
		if err != nil {
			b.fatalf("%v", err)
		}
		defer f.Close()
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	cpu0, r0 := selfCPU(), b.redis.cpu()
	start := time.Now()
	e := b.startEngine(redisAddr, bs)
	var errRun error
	at, err := b.watch.waitFor(uint64(n), limit, func() error {
		select {
		case <-e.Done():
			errRun = e.Err()
			return fmt.Errorf("engine stopped: %v", errRun)
		default:
			return nil
		}
	})
	res := result{events: n, elapsed: at.Sub(start), target: b.redis.cpu() - r0}
	if err != nil {
		if errRun != nil {
			b.fatalf("%v", err)
		}
		res.events, res.elapsed = int(b.watch.last.Load()), time.Since(start)
		res.note = "time-boxed"
	}
	st := e.Engine().Stats()
	if st.Batches > 0 {
		res.batches = float64(st.Applied) / float64(st.Batches)
	}
	if err := e.Stop(time.Minute); err != nil {
		b.fatalf("engine: %v", err)
	}
	res.driver = selfCPU() - cpu0
	res.bytes = b.rd.dataBytes[min(res.events, len(b.rd.dataBytes)-1)]
	if profile != "" {
		f, err := os.Create(profile + ".allocs.pprof")
		if err == nil {
			_ = pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
	return res
}

// naive is the synchroniser the article warns about: an ordered consumer
// and one Redis round trip per event (its commands and its checkpoint in
// one MULTI/EXEC), batch size 1.
func (b *bench) naive(ctx context.Context, addr string, n int) result {
	return b.readThenWrite(ctx, "naive", addr, n, 1)
}

// simpleBatched is the batched synchroniser without overlap: it reads a
// batch of events, then writes it in one MULTI/EXEC with its checkpoint,
// then reads the next: reading and writing never happen at once.
func (b *bench) simpleBatched(ctx context.Context, addr string, n, batch int) result {
	return b.readThenWrite(ctx, "simple batched", addr, n, batch)
}

// readThenWrite reads batch events, writes them and their checkpoint in one
// MULTI/EXEC, and only then reads on, until n events are applied.
func (b *bench) readThenWrite(ctx context.Context, name, addr string, n, batch int) result {
	b.flush(ctx)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	nc, err := nats.Connect(b.natsURL)
	if err != nil {
		b.fatalf("%v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cpu0, r0 := selfCPU(), b.redis.cpu()
	start := time.Now()
	cons, err := js.OrderedConsumer(ctx, natsutil.DefaultStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"events.order.>"}})
	if err != nil {
		b.fatalf("%v", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(b.maxEvents, int(b.maxBytes)))
	if err != nil {
		b.fatalf("%v", err)
	}
	defer it.Stop()
	cmds := make([][]any, 0, 2*batch)
	for done := 0; done < n; {
		cmds = cmds[:0]
		var last uint64
		for k := 0; k < batch && done < n; k, done = k+1, done+1 {
			m, err := it.Next()
			if err != nil {
				b.fatalf("%s: %v", name, err)
			}
			md, _ := m.Metadata()
			ev, err := envelope.FromMsg(m.Subject(), m.Headers(), m.Data(), md.Sequence.Stream)
			if err != nil {
				b.fatalf("%s: %v", name, err)
			}
			cmds = append(cmds, b.wl.commands(int(ev.Position-1), &ev)...)
			last = ev.Position
		}
		_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for _, a := range cmds {
				p.Do(ctx, a...)
			}
			p.Set(ctx, cpKey, last, 0)
			return nil
		})
		if err != nil {
			b.fatalf("%s: %v", name, err)
		}
	}
	return result{events: n, elapsed: time.Since(start), bytes: b.rd.dataBytes[n], driver: selfCPU() - cpu0, target: b.redis.cpu() - r0}
}

// --- live -----------------------------------------------------------------

// latencies summarises append-to-visible delays.
type latencies struct {
	sent, seen  int
	achieved    float64 // events/s actually appended
	p50, p90    time.Duration
	p99, max    time.Duration
	appendP50   time.Duration // the append call alone
	appendP99   time.Duration
	sinkP50     time.Duration // from the append's answer to visible: the sink's share
	sinkP99     time.Duration
	avgBatch    float64
	description string
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// liveSample is one appended event: when it was due to be sent (so a
// client falling behind counts against the delay), when its append
// returned, and its position.
type liveSample struct {
	due, acked time.Time
	pos        uint64
}

func summarise(samples []liveSample, w *cpLog, dur time.Duration) latencies {
	slices.SortFunc(samples, func(a, b liveSample) int { return int(a.pos) - int(b.pos) })
	pos := make([]uint64, len(samples))
	for i, s := range samples {
		pos[i] = s.pos
	}
	vis := w.visibleAt(pos)
	var d, a, k []time.Duration
	for i, s := range samples {
		a = append(a, s.acked.Sub(s.due))
		if !vis[i].IsZero() {
			d = append(d, max(vis[i].Sub(s.due), 0))
			k = append(k, max(vis[i].Sub(s.acked), 0))
		}
	}
	slices.Sort(d)
	slices.Sort(a)
	slices.Sort(k)
	l := latencies{sent: len(samples), seen: len(d), achieved: float64(len(samples)) / dur.Seconds(),
		p50: pct(d, .50), p90: pct(d, .90), p99: pct(d, .99), appendP50: pct(a, .5), appendP99: pct(a, .99), sinkP50: pct(k, .5), sinkP99: pct(k, .99)}
	if len(d) > 0 {
		l.max = d[len(d)-1]
	}
	return l
}

// pace calls send(k) for k = 0.. at rate per second for dur, from workers
// goroutines, and returns the due time of each k.
func pace(rate int, dur time.Duration, workers int, send func(k int, due time.Time)) {
	total := int(float64(rate) * dur.Seconds())
	type job struct {
		k   int
		due time.Time
	}
	jobs := make(chan job, total)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for j := range jobs {
				send(j.k, j.due)
			}
		})
	}
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	for k := range total {
		due := start.Add(time.Duration(k) * interval)
		if d := time.Until(due); d > 200*time.Microsecond {
			time.Sleep(d)
		}
		jobs <- job{k, due}
	}
	close(jobs)
	wg.Wait()
}

// liveEvent is an OrderUpdated event for a random existing stream.
func (b *bench) liveEvent(r *rand.Rand, id string) envelope.Event {
	i := r.IntN(len(b.rd.data))
	ev := b.ev(i)
	ev.ID, ev.Type, ev.Version, ev.Time = id, "OrderUpdated", 0, time.Time{}
	return ev
}

// head is the stream's last sequence.
func (b *bench) head(ctx context.Context) uint64 {
	st, err := b.js.Stream(ctx, natsutil.DefaultStream)
	if err != nil {
		b.fatalf("%v", err)
	}
	return st.CachedInfo().State.LastSeq
}

// startAtHead makes the next sink-cache (binary or engine) start live:
// its checkpoint is the head.
func (b *bench) startAtHead(ctx context.Context) {
	b.cacheSink(b.redis.addr).prepare(ctx, true)
}

// engineLive runs the in-process engine live while events are published
// straight to JetStream at rate; the delay is publish to visible in Redis.
func (b *bench) engineLive(ctx context.Context, bs batchSettings, rate int, dur time.Duration) latencies {
	b.startAtHead(ctx)
	e := b.startEngine(b.redis.addr, bs)
	time.Sleep(200 * time.Millisecond) // consumer started
	nc, err := nats.Connect(b.natsURL)
	if err != nil {
		b.fatalf("%v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var mu sync.Mutex
	var samples []liveSample
	var pending sync.WaitGroup
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var rmu sync.Mutex
	run := time.Now().UnixNano()
	pace(rate, dur, 1, func(k int, due time.Time) {
		rmu.Lock()
		ev := b.liveEvent(r, fmt.Sprintf("l%d-%d", run, k))
		rmu.Unlock()
		ev.Version = 1 // not checked on this path; the sink does not read it
		ev.Time = due
		f, err := js.PublishMsgAsync(ev.ToMsg(), jetstream.WithStallWait(30*time.Second))
		if err != nil {
			b.fatalf("live publish: %v", err)
		}
		pending.Go(func() {
			select {
			case ack := <-f.Ok():
				mu.Lock()
				samples = append(samples, liveSample{due: due, acked: time.Now(), pos: ack.Sequence})
				mu.Unlock()
			case err := <-f.Err():
				b.fatalf("live publish: %v", err)
			}
		})
	})
	pending.Wait()
	_, _ = b.watch.waitFor(b.head(ctx), 30*time.Second, nil)
	l := summarise(samples, &b.watch.cpLog, dur)
	st := e.Engine().Stats()
	if st.Batches > 0 {
		l.avgBatch = float64(st.Applied) / float64(st.Batches)
	}
	if err := e.Stop(time.Minute); err != nil {
		b.fatalf("engine: %v", err)
	}
	return l
}

// bridgeProc runs `bridge serve` against the benchmark's NATS.
func (b *bench) startBridge() (*proc, string) {
	port := freePort()
	cfg := filepath.Join(b.dir, "bridge-serve.yaml")
	b.writeFile(cfg, fmt.Sprintf("nats: {url: %q}\nstream: {name: EVENTS, replicas: %d}\nhttp: {listen: \"127.0.0.1:%d\", max_body_bytes: 4MiB}\n", b.natsURL, max(b.replicas, 1), port))
	p, err := startProc(filepath.Join(b.bin, "bridge"), "serve", "-config", cfg)
	if err != nil {
		b.fatalf("%v", err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitHTTP(url+"/readyz", 30*time.Second, p); err != nil {
		b.fatalf("%v", err)
	}
	return p, url
}

func httpClient(conns int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns}}
}

type appendReply struct {
	Positions []uint64 `json:"positions"`
}

func (b *bench) post(c *http.Client, url, category, stream string, evs []envelope.Event) ([]uint64, error) {
	var body bytes.Buffer
	body.WriteByte('[')
	for i, ev := range evs {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"id":%q,"type":%q,"data":%s,"metadata":%s}`, ev.ID, ev.Type, ev.Data, ev.Metadata)
	}
	body.WriteByte(']')
	resp, err := c.Post(url+"/streams/"+category+"/"+stream+"/events", "application/json", &body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("append: %s: %s", resp.Status, raw)
	}
	var r appendReply
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, err
	}
	return r.Positions, nil
}

// sinkLive runs a sink binary live, from the head, while single-event
// appends go through the bridge's HTTP API at rate; the delay is from when
// an append was due to when the sink's checkpoint covers its event.
func (b *bench) sinkLive(ctx context.Context, s sinkUnderTest, bridgeURL string, bs batchSettings, rate int, dur time.Duration) latencies {
	s.prepare(ctx, true)
	p, admin := s.start(bs)
	if err := waitHTTP(admin+"/readyz", 30*time.Second, p); err != nil {
		b.fatalf("%v", err)
	}
	c := httpClient(64)
	var mu sync.Mutex
	var samples []liveSample
	var failed atomic.Int64
	run := time.Now().UnixNano()
	pace(rate, dur, 64, func(k int, due time.Time) {
		r := rand.New(rand.NewPCG(uint64(k), uint64(run)))
		ev := b.liveEvent(r, fmt.Sprintf("h%d-%d", run, k))
		pos, err := b.post(c, bridgeURL, ev.Category, ev.StreamID, []envelope.Event{ev})
		if err != nil {
			if failed.Add(1) == 1 {
				fmt.Fprintf(os.Stderr, "live append failed: %v\n", err)
			}
			return
		}
		mu.Lock()
		samples = append(samples, liveSample{due: due, acked: time.Now(), pos: pos[0]})
		mu.Unlock()
	})
	cps := s.checkpoints()
	_, _ = cps.waitFor(b.head(ctx), 30*time.Second, nil)
	l := summarise(samples, cps, dur)
	l.avgBatch = scrapeBatchSize(admin)
	if n := failed.Load(); n > 0 {
		l.description = fmt.Sprintf("%d appends failed", n)
	}
	p.stop()
	return l
}

// httpAppends measures batched appends through the bridge: clients
// goroutines each appending batches of batch events to their own streams.
func (b *bench) httpAppends(bridgeURL string, n, batch, clients int) result {
	c := httpClient(clients)
	var next atomic.Int64
	run := time.Now().UnixNano()
	start := time.Now()
	var wg sync.WaitGroup
	for cl := range clients {
		wg.Go(func() {
			for k := 0; ; k++ {
				from := int(next.Add(int64(batch))) - batch
				if from >= n {
					return
				}
				to := min(from+batch, n)
				evs := make([]envelope.Event, 0, to-from)
				for i := from; i < to; i++ {
					ev := b.ev(i % len(b.rd.data))
					ev.ID = fmt.Sprintf("a%d-%d", run, i)
					evs = append(evs, ev)
				}
				stream := fmt.Sprintf("h-%d-%d", cl, k%64)
				if _, err := b.post(c, bridgeURL, "bulk", stream, evs); err != nil {
					b.fatalf("batched append: %v", err)
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	return result{events: n, elapsed: el, bytes: b.rd.dataBytes[min(n, len(b.rd.data))]}
}
