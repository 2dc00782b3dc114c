// Command jetbench measures jetsync end to end on this machine, in one run:
// the bridge's NDJSON import and batched HTTP appends against the raw
// JetStream publish rate; sink-cache's catch-up from position 0 against the
// two ceilings (raw ordered-consumer reads, raw pipelined target writes) and
// against a naive one-round-trip-per-event synchroniser, on loopback and
// with added round-trip latency to the target; a sweep of batch size and
// flush interval (throughput against append-to-visible delay); and live
// append-to-visible delay percentiles through the bridge; and, in a
// `bridge serve` of its own with its embedded NATS, the append API (single-
// and multi-event appends with expectedVersion, alone, concurrent and
// contended on one stream) against raw JetStream publishes doing the same
// work (-phases appends, see appends.go).
//
// For the Elasticsearch and Kinesis sinks (-sinks es,kinesis, on by
// default) it measures, in the catchup phase, the sink-es / sink-kinesis
// binary's catch-up over the first -other-n events against the raw read
// ceiling and the raw target (a `_bulk` loader; sequential PutRecords of
// 500), and in the live phase their append-to-visible delay, visible being
// their checkpoint in NATS KV covering the event.
//
// It starts its own servers: nats-server in this process (JetStream, file
// store in a temp dir), redis-server on a free port (persistence off), and
// for es and kinesis Elasticsearch 8 and kinesalite as the tests do
// (pkg/testenv; they need Java 17 + Maven and Node.js + npm, or ES_URL and
// KINESIS_ENDPOINT, and jetbench fails naming what is missing); it builds
// and runs the bridge and the sink binaries as processes.
//
//	go run ./bench/cmd/jetbench -n 1000000      # make bench
//	go run ./bench/cmd/jetbench -n 50000 -reps 1 # a quick check, a few minutes
//	go run ./bench/cmd/jetbench -sinks cache     # Redis only: no Java, no Node.js
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/testenv"
)

type bench struct {
	n, streams, payload, reps int
	maxEvents                 int
	maxBytes                  config.ByteSize
	interval                  time.Duration

	dir, bin, ndjson string
	sinks            []string // -sinks: cache, es, kinesis
	sinkBin          string
	sinkEnv          string
	ns               *server.Server
	natsURL          string
	replicas         int // of the streams the bridge provisions: 1, 3 in the cluster phase
	nc               *nats.Conn
	js               jetstream.JetStream
	redis            *redisServer
	rdb              *redis.Client
	watch            *watcher
	wl               *workload
	rd               *rendered
	out              io.Writer
	slow             atomic.Int64 // slow-consumer errors on the in-process engine's connection
	cleanup          []func()
}

func (b *bench) fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "jetbench: "+format+"\n", args...)
	for i := len(b.cleanup) - 1; i >= 0; i-- {
		b.cleanup[i]()
	}
	os.Exit(1)
}

func (b *bench) writeFile(path, body string) {
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		b.fatalf("%v", err)
	}
}

func (b *bench) flush(ctx context.Context) {
	if err := b.rdb.FlushAll(ctx).Err(); err != nil {
		b.fatalf("FLUSHALL: %v", err)
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == floorFrontArg {
		if err := serveFloorFront(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "jetbench floor-front:", err)
			os.Exit(1)
		}
		return
	}
	var b bench
	flag.IntVar(&b.n, "n", 1_000_000, "events preloaded into the stream for the catch-up")
	flag.IntVar(&b.streams, "streams", 10_000, "event streams (aggregates) the events are spread over")
	flag.IntVar(&b.payload, "payload", 250, "bytes of event data JSON")
	flag.IntVar(&b.reps, "reps", 3, "repetitions of each catch-up and ingest measure; medians are reported")
	sinks := flag.String("sinks", "cache,es,kinesis,postgres", "sinks to measure, comma-separated: cache (Redis), es (Elasticsearch 8: needs Java 17 and Maven, or ES_URL), kinesis (kinesalite: needs Node.js and npm, or KINESIS_ENDPOINT), postgres (PostgreSQL: needs Debian postgresql, or PG_URL)")
	otherN := flag.Int("other-n", 200_000, "events the es and kinesis catch-ups cover (at most -n): those targets are ~10x slower than Redis")
	otherRate := flag.Int("other-live-rate", 1000, "events/s appended in the es and kinesis live runs through the bridge; 0 skips them")
	pgN := flag.Int("pg-n", 0, "events the postgres catch-up covers (at most -n); 0: all of -n, the standard workload")
	naiveN := flag.Int("naive-n", 50_000, "events the naive synchroniser applies on loopback")
	latency := flag.Duration("latency", time.Millisecond, "round trip added to the target by a delay proxy (half each way); 0 skips")
	latNaiveN := flag.Int("latency-naive-n", 3_000, "events the naive synchroniser applies through the delay proxy")
	sweep := flag.Bool("sweep", true, "sweep batch size and flush interval")
	sweepTime := flag.Duration("sweep-time", 0, "catch-up time box per sweep point (default 2s, 1s when -n is below 500000)")
	sweepLive := flag.Duration("sweep-live", 0, "live run per sweep point (default 3s, 2s when -n is below 500000)")
	liveRates := flag.String("live-rate", "1000,5000", "events/s appended in the live runs through the bridge, comma-separated; 0 skips them")
	latEvents := flag.Int("latency-max-events", 5000, "also run the sink through the delay proxy with this batch.max_events (0 skips)")
	liveDur := flag.Duration("live-duration", 0, "length of each live run through the bridge (default 10s, 5s when -n is below 500000)")
	appendN := flag.Int("append-n", 100_000, "events appended through the bridge's HTTP API in batches; 0 skips")
	appendBatch := flag.Int("append-batch", 100, "events per HTTP append")
	appendClients := flag.Int("append-clients", 8, "concurrent HTTP append clients")
	appendsDur := flag.Duration("appends-duration", 0, "length of each row of the appends phase (default 5s, 3s when -n is below 500000)")
	memCheck := flag.Bool("mem", true, "run the sink again with 8MiB batches to show peak RSS follows batch.max_bytes, not n")
	flag.IntVar(&b.maxEvents, "max-events", 1000, "sink batch.max_events")
	maxBytes := flag.String("max-bytes", "1MiB", "sink batch.max_bytes")
	flag.DurationVar(&b.interval, "max-interval", 20*time.Millisecond, "sink batch.max_interval")
	profile := flag.String("profile", "", "write CPU and allocation profiles of the in-process engine catch-up to PREFIX.cpu.pprof, PREFIX.allocs.pprof")
	binDir := flag.String("bin", "", "directory with prebuilt bridge and sink-cache binaries (default: build them)")
	abBin := flag.String("ab", "", "A/B: also run this sink binary (or, with -ab-env, the same one) in each catch-up repetition, alternating")
	abEnv := flag.String("ab-env", "", "A/B: extra environment for the B sink")
	flag.StringVar(&b.sinkEnv, "sink-env", "", "extra environment for the sink process, e.g. GOGC=400")
	flag.StringVar(&b.sinkBin, "sink-bin", "", "run this binary in place of sink-cache (an A/B build; for a profile set JETSYNC_CPUPROFILE=FILE instead)")
	keep := flag.Bool("keep", false, "keep the temp dir (NATS store, configs, NDJSON)")
	outFile := flag.String("o", "", "also write the report to this file")
	relayRate := flag.Int("relay-live-rate", 500, "rows/s committed (one per transaction) in the relay phase's live runs; 0 skips them")
	phaseList := flag.String("phases", "ingest,catchup,latency,mem,sweep,live,append,appends,relay,cluster", "what to run, comma-separated; es and kinesis take part in catchup and live, the other phases are cache's, but appends, which measures the bridge alone; relay: bridge relay from a PostgreSQL outbox (needs Debian postgresql, or PG_URL); cluster puts import, catch-up, live delay and batched appends on a 3-node R3 cluster beside the single server (r3.go)")
	flag.Parse()

	selected, err := parseSinks(*sinks)
	if err != nil {
		fmt.Fprintf(os.Stderr, "jetbench: -sinks: %v\n", err)
		os.Exit(2)
	}
	cacheOn := slices.Contains(selected, "cache")
	b.sinks = selected
	if bs, err := config.ParseByteSize(*maxBytes); err != nil {
		fmt.Fprintf(os.Stderr, "jetbench: -max-bytes: %v\n", err)
		os.Exit(2)
	} else {
		b.maxBytes = bs
	}
	if b.n < 1000 || b.reps < 1 {
		fmt.Fprintln(os.Stderr, "jetbench: -n must be at least 1000 and -reps at least 1")
		os.Exit(2)
	}
	*naiveN, *latNaiveN, *otherN = min(*naiveN, b.n), min(*latNaiveN, b.n), min(*otherN, b.n)
	small := b.n < 500_000 // a quick check: shorter fixed-length phases
	for _, d := range []struct {
		p           *time.Duration
		full, quick time.Duration
	}{{liveDur, 10 * time.Second, 5 * time.Second}, {sweepTime, 2 * time.Second, time.Second}, {sweepLive, 3 * time.Second, 2 * time.Second}, {appendsDur, 5 * time.Second, 3 * time.Second}} {
		if *d.p <= 0 {
			*d.p = d.full
			if small {
				*d.p = d.quick
			}
		}
	}
	var rateList []int
	for _, r := range strings.Split(*liveRates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "jetbench: -live-rate: %q is not a rate\n", r)
			os.Exit(2)
		}
		if n > 0 {
			rateList = append(rateList, n)
		}
	}
	liveRate := new(int)
	if len(rateList) > 0 {
		*liveRate = slices.Max(rateList)
	}

	phases := map[string]bool{}
	for _, p := range strings.Split(*phaseList, ",") {
		phases[strings.TrimSpace(p)] = true
	}
	if !phases["ingest"] {
		b.reps = max(b.reps, 1)
	}
	if !cacheOn { // the other phases are cache's
		for _, p := range []string{"latency", "mem", "sweep", "cluster"} {
			phases[p] = false
		}
	}

	var report strings.Builder
	b.out = io.MultiWriter(os.Stdout, &report)
	ctx := context.Background()
	if b.dir, err = os.MkdirTemp("", "jetbench"); err != nil {
		b.fatalf("%v", err)
	}
	if !*keep {
		b.cleanup = append(b.cleanup, func() { os.RemoveAll(b.dir) })
	}
	b.bin = *binDir
	if b.bin == "" {
		root, err := testenv.RepoRoot()
		if err != nil {
			b.fatalf("%v", err)
		}
		b.bin = filepath.Join(b.dir, "bin")
		b.logf("building bridge and %s", strings.Join(sinkBinaries(selected), ", "))
		if err := buildBinaries(root, b.bin, sinkBinaries(selected)); err != nil {
			b.fatalf("building: %v", err)
		}
	}
	for _, name := range append([]string{"bridge"}, sinkBinaries(selected)...) {
		if _, err := os.Stat(filepath.Join(b.bin, name)); err != nil {
			b.fatalf("-bin %s: no %s binary there (go build -o DIR/ ./services/%s)", b.bin, name, name)
		}
	}
	if b.sinkBin == "" {
		b.sinkBin = filepath.Join(b.bin, "sink-cache")
	}
	if b.ns, b.natsURL, err = startNATS(filepath.Join(b.dir, "nats")); err != nil {
		b.fatalf("%v", err)
	}
	b.cleanup = append(b.cleanup, func() { b.ns.Shutdown(); b.ns.WaitForShutdown() })
	if b.redis, err = startRedis(b.dir); err != nil {
		b.fatalf("%v", err)
	}
	b.cleanup = append(b.cleanup, b.redis.stop)
	if b.nc, err = nats.Connect(b.natsURL, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrSlowConsumer) {
			b.slow.Add(1)
			return
		}
		fmt.Fprintf(os.Stderr, "nats: %v\n", err)
	})); err != nil {
		b.fatalf("%v", err)
	}
	b.js, _ = jetstream.New(b.nc)
	b.rdb = redis.NewClient(&redis.Options{Addr: b.redis.addr})
	if b.watch, err = newWatcher(ctx, b.rdb, cpKey); err != nil {
		b.fatalf("watching the checkpoint: %v", err)
	}

	// The es and kinesis sinks' servers start only when a phase of theirs
	// runs (so -sinks cache never needs Java or Node.js), and before
	// anything is measured: a server that cannot start fails the run at
	// once, not after the cache phases.
	others := map[string]*kvSink{}
	var pg *pgSink
	if phases["catchup"] || phases["live"] {
		for _, kind := range selected {
			if kind == "postgres" {
				pg = b.newPGSink(ctx)
			} else if kind != "cache" {
				others[kind] = b.newKVSink(ctx, kind, b.startTarget(ctx, kind))
			}
		}
	}

	b.logf("generating %d events over %d streams", b.n, b.streams)
	b.wl = newWorkload(b.n, b.streams, b.payload)
	b.rd = b.wl.render(b.n)
	b.ndjson = filepath.Join(b.dir, "events.ndjson")
	size, err := b.wl.writeNDJSON(b.ndjson, b.n)
	if err != nil {
		b.fatalf("%v", err)
	}
	bs := batchSettings{events: b.maxEvents, bytes: b.maxBytes, interval: b.interval, idle: true}

	b.header(size, bs)

	// Ingest: raw publish and import alternate; the last import is the
	// stream every catch-up reads.
	var rawPub, imp []result
	ingestReps := b.reps
	if !phases["ingest"] {
		ingestReps = 1 // the stream must be loaded anyway
	}
	for rep := range ingestReps {
		b.deleteStreams(ctx)
		if rep%2 == 0 {
			b.logf("rep %d: raw publish", rep+1)
			rawPub = append(rawPub, b.rawPublish(ctx, b.n))
			b.logf("rep %d: bridge import", rep+1)
			imp = append(imp, b.importNDJSON(b.n))
		} else {
			b.logf("rep %d: bridge import", rep+1)
			imp = append(imp, b.importNDJSON(b.n))
			b.logf("rep %d: raw publish", rep+1)
			rawPub = append(rawPub, b.rawPublish(ctx, b.n))
		}
	}
	if err := b.js.DeleteStream(ctx, rawName); err != nil {
		b.fatalf("%v", err)
	}

	// Catch-up on loopback.
	var read, target, both, sinkRes, eng, naive, abRes, simple []result
	for rep := range b.reps {
		if !cacheOn || !phases["catchup"] && !phases["mem"] && !phases["latency"] {
			break
		}
		b.logf("rep %d: raw read", rep+1)
		read = append(read, b.rawRead(ctx, b.n))
		b.logf("rep %d: raw target", rep+1)
		target = append(target, b.rawTarget(ctx, b.redis.addr, b.n, b.maxEvents))
		b.logf("rep %d: both ceilings at once", rep+1)
		both = append(both, b.bothCeilings(ctx, b.n))
		if *abBin != "" || *abEnv != "" {
			a, aEnv := b.sinkBin, b.sinkEnv
			bb := cmpOr(*abBin, a)
			runB := func() {
				b.sinkBin, b.sinkEnv = bb, *abEnv
				b.logf("rep %d: B sink catch-up (%s %s)", rep+1, *abEnv, bb)
				abRes = append(abRes, b.sinkCatchUp(ctx, b.cacheSink(b.redis.addr), b.n, bs))
				b.sinkBin, b.sinkEnv = a, aEnv
			}
			if rep%2 == 0 {
				runB()
			}
			b.logf("rep %d: sink-cache binary catch-up", rep+1)
			sinkRes = append(sinkRes, b.sinkCatchUp(ctx, b.cacheSink(b.redis.addr), b.n, bs))
			if rep%2 == 1 {
				runB()
			}
		} else {
			b.logf("rep %d: sink-cache binary catch-up", rep+1)
			sinkRes = append(sinkRes, b.sinkCatchUp(ctx, b.cacheSink(b.redis.addr), b.n, bs))
		}
		prof := ""
		if *profile != "" && rep == b.reps-1 {
			prof = *profile
		}
		b.logf("rep %d: in-process engine catch-up", rep+1)
		eng = append(eng, b.engineCatchUp(ctx, b.redis.addr, b.n, bs, time.Duration(b.n/1000+120)*time.Second, prof))
		b.logf("rep %d: simple batched synchroniser", rep+1)
		simple = append(simple, b.simpleBatched(ctx, b.redis.addr, b.n, b.maxEvents))
		b.logf("rep %d: naive synchroniser (%d events)", rep+1, *naiveN)
		naive = append(naive, b.naive(ctx, b.redis.addr, *naiveN))
	}
	if len(read) > 0 {
		b.catchUpTable("Catch-up on loopback", read, target, both, sinkRes, eng, naive, simple)
		if len(abRes) > 0 {
			fmt.Fprintf(b.out, "\nA/B: B = %s %s\n\n| | events/s | MB/s | notes |\n|---|---:|---:|---|\n", *abEnv, cmpOr(*abBin, b.sinkBin))
			b.row("A (sink under test)", sinkRes, fmt.Sprintf("CPU %s s, peak RSS %s MB", spread(sinkRes, cpuPer(func(r result) time.Duration { return r.cpu }), "%.2f"), spread(sinkRes, func(r result) float64 { return float64(r.rss) / 1e6 }, "%.0f")))
			b.row("B", abRes, fmt.Sprintf("CPU %s s, peak RSS %s MB", spread(abRes, cpuPer(func(r result) time.Duration { return r.cpu }), "%.2f"), spread(abRes, func(r result) float64 { return float64(r.rss) / 1e6 }, "%.0f")))
			fmt.Fprintf(b.out, "\nA / B = %.2f (per repetition: %s)\n", ratio(rates(sinkRes), rates(abRes)), perRep(rates(sinkRes), rates(abRes)))
		}
	}

	if phases["catchup"] {
		for _, kind := range selected {
			if s := others[kind]; s != nil {
				b.otherCatchUpTable(b.otherCatchUp(ctx, s, *otherN, bs))
			}
		}
		if pg != nil {
			n := b.n
			if *pgN > 0 {
				n = min(*pgN, b.n)
			}
			b.pgCatchUpTable(pg, b.pgCatchUp(ctx, pg, n, *naiveN, bs))
		}
	}

	if *latency > 0 && phases["latency"] {
		px, err := startProxy(b.redis.addr, *latency/2)
		if err != nil {
			b.fatalf("%v", err)
		}
		var lTarget, lSink, lNaive, lSimple, lBig []result
		bigBatch := bs
		bigBatch.events, bigBatch.bytes = *latEvents, max(b.maxBytes, 8<<20)
		for rep := range b.reps {
			b.logf("rep %d: +%s: raw target", rep+1, *latency)
			lTarget = append(lTarget, b.rawTarget(ctx, px.addr(), b.n, b.maxEvents))
			b.logf("rep %d: +%s: sink-cache binary catch-up", rep+1, *latency)
			lSink = append(lSink, b.sinkCatchUp(ctx, b.cacheSink(px.addr()), b.n, bs))
			if *latEvents > 0 {
				b.logf("rep %d: +%s: sink-cache binary catch-up, %s", rep+1, *latency, bigBatch)
				lBig = append(lBig, b.sinkCatchUp(ctx, b.cacheSink(px.addr()), b.n, bigBatch))
			}
			b.logf("rep %d: +%s: simple batched synchroniser", rep+1, *latency)
			lSimple = append(lSimple, b.simpleBatched(ctx, px.addr(), b.n, b.maxEvents))
			b.logf("rep %d: +%s: naive synchroniser (%d events)", rep+1, *latency, *latNaiveN)
			lNaive = append(lNaive, b.naive(ctx, px.addr(), *latNaiveN))
		}
		px.close()
		b.catchUpTable(fmt.Sprintf("Catch-up with %s added round trip to Redis (delay proxy, %s each way)", *latency, *latency/2), read, lTarget, nil, lSink, nil, lNaive, lSimple)
		if len(lBig) > 0 {
			fmt.Fprintf(b.out, "\nThe same sink with larger batches (%s), through the same proxy:\n\n| | events/s | MB/s | notes |\n|---|---:|---:|---|\n", bigBatch)
			b.row("sink-cache binary, larger batches", lBig, fmt.Sprintf("peak RSS %s MB, CPU %s s, avg batch %s",
				spread(lBig, func(r result) float64 { return float64(r.rss) / 1e6 }, "%.0f"), spread(lBig, cpuPer(func(r result) time.Duration { return r.cpu }), "%.1f"),
				spread(lBig, func(r result) float64 { return r.batches }, "%.0f")))
			ceil := minOf(rates(read), rates(lTarget))
			fmt.Fprintf(b.out, "\nefficiency with larger batches = **%.2f**, / naive = **%.0f×**\n", ratio(rates(lBig), ceil), ratio(rates(lBig), rates(lNaive)))
		}
	}

	if *memCheck && phases["mem"] {
		big := bs
		big.events, big.bytes = 100_000, 8<<20
		b.logf("memory: sink-cache with %s", big)
		var m []result
		for range min(b.reps, 2) {
			m = append(m, b.sinkCatchUp(ctx, b.cacheSink(b.redis.addr), b.n, big))
		}
		b.logf("memory: idle sink-cache")
		idle := b.idleRSS(ctx, bs)
		b.memoryTable(bs, big, sinkRes, m, idle)
	}

	if *sweep && phases["sweep"] {
		b.sweepTable(ctx, *sweepTime, *sweepLive, max(*liveRate, 1000))
	}

	if !phases["live"] || !cacheOn {
		*liveRate = 0
	}
	if !phases["live"] || len(others) == 0 && pg == nil {
		*otherRate = 0
	}
	if !phases["append"] {
		*appendN = 0
	}
	if *liveRate > 0 || *otherRate > 0 || *appendN > 0 {
		bp, url := b.startBridge()
		if *liveRate > 0 {
			var ls []latencies
			for _, r := range rateList {
				b.logf("live: %d events/s through the bridge for %s", r, *liveDur)
				ls = append(ls, b.sinkLive(ctx, b.cacheSink(b.redis.addr), url, bs, r, *liveDur))
			}
			b.liveTable("cache", rateList, *liveDur, bs, ls, cacheVisible)
		}
		for _, kind := range selected {
			if s := others[kind]; s != nil && *otherRate > 0 {
				b.logf("live: %s, %d events/s through the bridge for %s", s.name(), *otherRate, *liveDur)
				l := b.sinkLive(ctx, s, url, bs, *otherRate, *liveDur)
				b.liveTable(kind, []int{*otherRate}, *liveDur, bs, []latencies{l}, kvVisible(kind))
			}
		}
		if pg != nil && *otherRate > 0 {
			b.logf("live: sink-postgres, %d events/s through the bridge for %s", *otherRate, *liveDur)
			l := b.sinkLive(ctx, pg, url, bs, *otherRate, *liveDur)
			pg.stopPolling()
			b.liveTable("postgres", []int{*otherRate}, *liveDur, bs, []latencies{l}, pgVisible)
		}
		if *appendN > 0 {
			b.logf("batched HTTP appends: %d events, %d per append, %d clients", *appendN, *appendBatch, *appendClients)
			var ha []result
			for range b.reps {
				ha = append(ha, b.httpAppends(url, *appendN, *appendBatch, *appendClients))
			}
			b.ingestTable(rawPub, imp, ha, *appendBatch, *appendClients)
		}
		u, _ := bp.stop()
		_ = u
	} else if phases["ingest"] {
		b.ingestTable(rawPub, imp, nil, 0, 0)
	}
	if phases["appends"] {
		b.appendsPhase(ctx, *appendsDur)
	}
	if phases["relay"] {
		b.relayPhase(ctx, b.n, *relayRate, *liveDur)
	}
	if phases["cluster"] {
		clusterRate := 1000
		if len(rateList) > 0 {
			clusterRate = rateList[0] // the lowest: two more stores share the cores
		}
		b.clusterPhase(ctx, bs, clusterRate, *liveDur, max(*appendN, 10_000), *appendBatch, *appendClients)
	}

	b.watch.close()
	for i := len(b.cleanup) - 1; i >= 0; i-- {
		b.cleanup[i]()
	}
	if *outFile != "" {
		if err := os.WriteFile(*outFile, []byte(report.String()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

// idleRSS is the resident set of a sink-cache that is caught up and idle.
func (b *bench) idleRSS(ctx context.Context, bs batchSettings) int64 {
	b.startAtHead(ctx)
	p, admin := b.startSink(b.redis.addr, bs)
	if err := waitHTTP(admin+"/readyz", 30*time.Second, p); err != nil {
		b.fatalf("%v", err)
	}
	time.Sleep(2 * time.Second)
	u, _ := p.stop()
	return u.maxRSS
}

// slowNote mentions slow-consumer reports (the ordered consumer then
// starts over from the last position it delivered) when there were any.
func slowNote(rs []result) string {
	n := 0
	for _, r := range rs {
		n += r.slow
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(", %d slow-consumer reports", n)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func cpuInfo() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown"
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.Join(strings.Fields(line)[1:], " ")
}

func (b *bench) header(ndjsonSize int64, bs batchSettings) {
	w := b.out
	fmt.Fprintf(w, "# jetbench %s\n\n", time.Now().Format("2006-01-02 15:04"))
	fmt.Fprintf(w, "machine: %d CPUs (%s), GOMAXPROCS %d, %s RAM, %s/%s, %s\n", runtime.NumCPU(), cpuInfo(), runtime.GOMAXPROCS(0), memTotal(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Fprintf(w, "command: %s\n", strings.Join(os.Args, " "))
	fmt.Fprintf(w, "workload: %d events over %d streams, data %d B avg (%.1f MB), NDJSON %.1f MB; mix %d creates, %d updates (set), %d partial updates (merge), %d deletes\n",
		b.n, b.streams, b.rd.dataBytes[b.n]/int64(b.n), float64(b.rd.dataBytes[b.n])/1e6, float64(ndjsonSize)/1e6, b.wl.mix[0], b.wl.mix[1], b.wl.mix[2], b.wl.mix[3])
	fmt.Fprintf(w, "servers: nats-server (in this process, JetStream file store), redis-server (--save \"\" --appendonly no)%s; sink batches: %s\n", b.otherServers(), bs)
	fmt.Fprintf(w, "repetitions: %d; tables give the median and [min–max]; ratios are computed within each repetition, then the median is taken\n", b.reps)
	fmt.Fprintf(w, "MB/s counts event data bytes (the payload JSON). CPU = user+sys. driver = this process: the load driver plus the in-process NATS server.\n")
}

// otherServers names the es and kinesis sinks' servers, for the header.
func (b *bench) otherServers() string {
	s := ""
	if slices.Contains(b.sinks, "es") {
		s += ", Elasticsearch 8 (testenv/elasticsearch/es.sh, or ES_URL)"
	}
	if slices.Contains(b.sinks, "kinesis") {
		s += ", kinesalite (testenv/kinesalite, LevelDB store, or KINESIS_ENDPOINT)"
	}
	return s
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func rates(rs []result) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = r.rate()
	}
	return out
}

// spread is "median [min–max]" of a metric over repetitions.
func spread(rs []result, f func(result) float64, format string) string {
	if len(rs) == 0 {
		return "–"
	}
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	if len(xs) == 1 {
		return fmt.Sprintf(format, xs[0])
	}
	return fmt.Sprintf(format+" ["+format+"–"+format+"]", median(xs), slices.Min(xs), slices.Max(xs))
}

func rateOf(r result) float64 { return r.rate() }
func mbOf(r result) float64   { return r.mbps() }

func (b *bench) row(name string, rs []result, extra string) {
	fmt.Fprintf(b.out, "| %s | %s | %s | %s |\n", name, spread(rs, rateOf, "%.0f"), spread(rs, mbOf, "%.1f"), extra)
}

// ratio is the median over repetitions of num[i]/den[i].
func ratio(num, den []float64) float64 {
	k := min(len(num), len(den))
	xs := make([]float64, k)
	for i := range k {
		xs[i] = num[i] / den[i]
	}
	return median(xs)
}

func minOf(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = min(a[i], b[i])
	}
	return out
}

func cpuPer(f func(result) time.Duration) func(result) float64 {
	return func(r result) float64 { return f(r).Seconds() }
}

func (b *bench) catchUpTable(title string, read, target, both, sinkRes, eng, naive, simple []result) {
	w := b.out
	fmt.Fprintf(w, "\n## %s\n\n", title)
	fmt.Fprintln(w, "| | events/s | MB/s | notes |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	b.row("ceiling: raw ordered-consumer read (read and discard)", read, "driver CPU "+spread(read, cpuPer(func(r result) time.Duration { return r.driver }), "%.1fs"))
	b.row(fmt.Sprintf("ceiling: raw target, MULTI/EXEC of %d events back to back", b.maxEvents), target, "redis CPU "+spread(target, cpuPer(func(r result) time.Duration { return r.target }), "%.1fs"))
	if len(both) > 0 {
		b.row("both ceilings at once: the raw read and the raw target running side by side (n / the slower one's time)", both, "")
	}
	b.row("**sink-cache binary**, position 0 → head", sinkRes, fmt.Sprintf("peak RSS %s MB, CPU %s s, redis CPU %s s, driver CPU %s s, avg batch %s",
		spread(sinkRes, func(r result) float64 { return float64(r.rss) / 1e6 }, "%.0f"),
		spread(sinkRes, cpuPer(func(r result) time.Duration { return r.cpu }), "%.1f"),
		spread(sinkRes, cpuPer(func(r result) time.Duration { return r.target }), "%.1f"),
		spread(sinkRes, cpuPer(func(r result) time.Duration { return r.driver }), "%.1f"),
		spread(sinkRes, func(r result) float64 { return r.batches }, "%.0f"))+slowNote(sinkRes))
	if len(eng) > 0 {
		b.row("engine + cache.Writer in this process", eng, "avg batch "+spread(eng, func(r result) float64 { return r.batches }, "%.0f"))
	}
	b.row(fmt.Sprintf("simple batched: read %d, then write them (MULTI/EXEC), never both at once", b.maxEvents), simple, "")
	b.row(fmt.Sprintf("naive: 1 round trip per event (%d events)", naive[0].events), naive, "")
	ceil := minOf(rates(read), rates(target))
	fmt.Fprintf(w, "\nefficiency sink / min(ceilings) = **%.2f** (per repetition: %s)\n", ratio(rates(sinkRes), ceil), perRep(rates(sinkRes), ceil))
	if len(both) > 0 {
		fmt.Fprintf(w, "sink / both ceilings at once = %.2f (per repetition: %s): how close the sink comes to the two raw jobs sharing this machine\n", ratio(rates(sinkRes), rates(both)), perRep(rates(sinkRes), rates(both)))
	}
	fmt.Fprintf(w, "batched / naive = **%.1f×** (per repetition: %s)\n", ratio(rates(sinkRes), rates(naive)), perRep(rates(sinkRes), rates(naive)))
	fmt.Fprintf(w, "sink / simple batched = %.2f (per repetition: %s)\n", ratio(rates(sinkRes), rates(simple)), perRep(rates(sinkRes), rates(simple)))
	if len(eng) > 0 {
		fmt.Fprintf(w, "in-process engine / min(ceilings) = %.2f\n", ratio(rates(eng), ceil))
	}
}

func perRep(num, den []float64) string {
	var s []string
	for i := range min(len(num), len(den)) {
		s = append(s, fmt.Sprintf("%.2f", num[i]/den[i]))
	}
	return strings.Join(s, ", ")
}

func (b *bench) memoryTable(small, big batchSettings, smallRes, bigRes []result, idle int64) {
	w := b.out
	fmt.Fprintf(w, "\n## Peak RSS of sink-cache over a %d-event catch-up\n\n", b.n)
	fmt.Fprintln(w, "| batch settings | peak RSS MB | idle RSS MB | (peak − idle) / max_bytes | events/s |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	for _, x := range []struct {
		bs batchSettings
		rs []result
	}{{small, smallRes}, {big, bigRes}} {
		fmt.Fprintf(w, "| %s | %s | %.0f | %s | %s |\n", x.bs, spread(x.rs, func(r result) float64 { return float64(r.rss) / 1e6 }, "%.0f"), float64(idle)/1e6,
			spread(x.rs, func(r result) float64 { return float64(r.rss-idle) / float64(x.bs.bytes) }, "%.1f"), spread(x.rs, rateOf, "%.0f"))
	}
}

func (b *bench) sweepTable(ctx context.Context, box, live time.Duration, rate int) {
	w := b.out
	fmt.Fprintf(w, "\n## Sweep: batch size and flush interval (in-process engine + cache.Writer, loopback)\n\n")
	fmt.Fprintf(w, "catch-up: events/s from position 0, time-boxed to %s; live: %d events/s published straight to JetStream for %s, delay = publish → visible in Redis\n\n", box, rate, live)
	fmt.Fprintln(w, "| max_events | max_interval | flush_when_idle | catch-up events/s | avg batch | live p50 | live p99 | live max | live avg batch | slow-consumer resets |")
	fmt.Fprintln(w, "|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|")
	type pt struct {
		ev   int
		iv   time.Duration
		idle bool
	}
	var pts []pt
	for _, ev := range []int{1, 100, 1000, 5000} {
		for _, iv := range []time.Duration{2 * time.Millisecond, 20 * time.Millisecond, 100 * time.Millisecond} {
			if ev == 1 && iv != 20*time.Millisecond {
				continue // a batch of one never waits for the interval
			}
			pts = append(pts, pt{ev, iv, false})
		}
		pts = append(pts, pt{ev, 20 * time.Millisecond, true})
	}
	for _, p := range pts {
		bs := batchSettings{events: p.ev, bytes: max(b.maxBytes, 8<<20), interval: p.iv, idle: p.idle}
		if p.ev <= 1000 {
			bs.bytes = b.maxBytes
		}
		b.logf("sweep: %s", bs)
		slow0 := b.slow.Load()
		c := b.engineCatchUp(ctx, b.redis.addr, b.n, bs, box, "")
		l := b.engineLive(ctx, bs, rate, live)
		fmt.Fprintf(w, "| %d | %s | %t | %.0f | %.0f | %s | %s | %s | %.1f | %d |\n", p.ev, p.iv, p.idle, c.rate(), c.batches, ms(l.p50), ms(l.p99), ms(l.max), l.avgBatch, b.slow.Load()-slow0)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

// cacheVisible is what "visible" means in sink-cache's live table.
const cacheVisible = "append→visible runs from when each append was due (a client falling behind counts) to the keyspace notification of the checkpoint SET that covers the event; ack→visible from the bridge's answer to that notification: the sink's own share."

// kvVisible is what "visible" means in the live table of a sink whose
// checkpoint is in NATS KV.
func kvVisible(kind string) string {
	s := "append→visible runs from when each append was due (a client falling behind counts) to the moment the sink's checkpoint in NATS KV (bucket " +
		"jetsync-checkpoints, seen through a KV watch) covers the event's position; ack→visible from the bridge's answer to then: the sink's own share."
	if kind == "es" {
		s += " The documents are GET-able by id from then on; search visibility additionally waits for the index refresh (refresh_interval 1s)."
	}
	return s
}

func (b *bench) liveTable(sink string, rates []int, dur time.Duration, bs batchSettings, ls []latencies, visibleNote string) {
	w := b.out
	fmt.Fprintf(w, "\n## Live: single-event appends through the bridge (HTTP, 64 clients) for %s each, sink-%s binary (%s)\n\n", dur, sink, bs)
	fmt.Fprintln(w, "| sink | rate | appended | achieved events/s | append p50 | append p99 | **append→visible p50** | p90 | **p99** | max | ack→visible p50 | ack→visible p99 | avg batch |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for i, l := range ls {
		fmt.Fprintf(w, "| %s | %d/s | %d (%d seen) | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %.1f |\n", sink, rates[i], l.sent, l.seen, l.achieved,
			ms(l.appendP50), ms(l.appendP99), ms(l.p50), ms(l.p90), ms(l.p99), ms(l.max), ms(l.sinkP50), ms(l.sinkP99), l.avgBatch)
		if l.description != "" {
			fmt.Fprintln(w, "\n"+l.description)
		}
	}
	fmt.Fprintln(w, "\n"+visibleNote)
}

// parseSinks checks -sinks: each of cache, es, kinesis at most once, in
// the order given.
func parseSinks(list string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains([]string{"cache", "es", "kinesis", "postgres"}, s) {
			return nil, fmt.Errorf("%q is not a sink; the sinks are cache, es, kinesis, postgres", s)
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

// sinkBinaries are the binaries (and ./services dirs) of the sinks.
func sinkBinaries(sinks []string) []string {
	out := make([]string, len(sinks))
	for i, s := range sinks {
		out[i] = "sink-" + s
	}
	return out
}

func (b *bench) ingestTable(raw, imp, ha []result, batch, clients int) {
	w := b.out
	fmt.Fprintf(w, "\n## Bridge ingest (%d events)\n\n", b.n)
	fmt.Fprintln(w, "| | events/s | MB/s | notes |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	b.row("ceiling: raw JetStream async publish, 4096 pending", raw, "driver CPU "+spread(raw, cpuPer(func(r result) time.Duration { return r.driver }), "%.1fs"))
	b.row("`bridge import` NDJSON (process wall time)", imp, fmt.Sprintf("bridge CPU %s s, peak RSS %s MB",
		spread(imp, cpuPer(func(r result) time.Duration { return r.cpu }), "%.1f"), spread(imp, func(r result) float64 { return float64(r.rss) / 1e6 }, "%.0f")))
	if len(ha) > 0 {
		b.row(fmt.Sprintf("HTTP appends, %d events each, %d clients (%d events)", batch, clients, ha[0].events), ha, "")
	}
	fmt.Fprintf(w, "\nimport / raw publish = **%.2f** (per repetition: %s)\n", ratio(rates(imp), rates(raw)), perRep(rates(imp), rates(raw)))
	if len(ha) > 0 {
		fmt.Fprintf(w, "HTTP batched appends / raw publish (medians) = **%.2f**\n", median(rates(ha))/median(rates(raw)))
	}
}
