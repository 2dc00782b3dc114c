package main

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// r3Side is one column of the R3 table: the single server or the cluster.
type r3Side struct {
	imports, catchUps, appends []result
	live                       latencies
}

// clusterPhase (-phases cluster) measures the same things on the single
// server and on a 3-node cluster in this process with R3 streams, in one
// run: `bridge import` of the workload, sink-cache's catch-up from 0, live
// single-event appends through the bridge with their append→visible
// delay, and batched HTTP appends. Every node of the cluster shares this
// machine's cores: on a small machine the difference is the cost of
// replication (each append is acknowledged once two of three stores have
// it), not a speed-up.
func (b *bench) clusterPhase(ctx context.Context, bs batchSettings, rate int, dur time.Duration, appendN, appendBatch, appendClients int) {
	var single, r3 r3Side
	b.logf("cluster: single server")
	b.r3Measure(ctx, &single, bs, rate, dur, appendN, appendBatch, appendClients)

	b.logf("cluster: starting a 3-node cluster")
	c, err := startCluster(filepath.Join(b.dir, "cluster"))
	if err != nil {
		b.fatalf("%v", err)
	}
	nc, err := nats.Connect(c.urls(), nats.Name("jetbench R3"))
	if err != nil {
		b.fatalf("%v", err)
	}
	saved := [...]any{b.natsURL, b.nc, b.js}
	b.natsURL, b.nc, b.replicas = c.urls(), nc, 3
	b.js, _ = jetstream.New(nc)
	b.logf("cluster: 3 nodes, R3")
	b.r3Measure(ctx, &r3, bs, rate, dur, appendN, appendBatch, appendClients)
	b.natsURL, b.nc, b.js, b.replicas = saved[0].(string), saved[1].(*nats.Conn), saved[2].(jetstream.JetStream), 1
	nc.Close()
	c.stop()
	b.r3Table(single, r3, bs, rate, dur, appendBatch, appendClients)
}

// r3Measure runs one column: the import (which also loads the stream),
// the catch-ups, the live run and the batched appends.
func (b *bench) r3Measure(ctx context.Context, s *r3Side, bs batchSettings, rate int, dur time.Duration, appendN, appendBatch, appendClients int) {
	for rep := range b.reps {
		b.deleteStreams(ctx)
		b.logf("rep %d: bridge import", rep+1)
		s.imports = append(s.imports, b.importNDJSON(b.n))
		b.logf("rep %d: sink-cache binary catch-up", rep+1)
		s.catchUps = append(s.catchUps, b.sinkCatchUp(ctx, b.cacheSink(b.redis.addr), b.n, bs))
	}
	bp, url := b.startBridge()
	defer bp.stop()
	b.logf("live: %d events/s through the bridge for %s", rate, dur)
	s.live = b.sinkLive(ctx, b.cacheSink(b.redis.addr), url, bs, rate, dur)
	for rep := range b.reps {
		b.logf("rep %d: batched HTTP appends", rep+1)
		s.appends = append(s.appends, b.httpAppends(url, appendN, appendBatch, appendClients))
	}
}

func (b *bench) r3Table(single, r3 r3Side, bs batchSettings, rate int, dur time.Duration, appendBatch, appendClients int) {
	w := b.out
	fmt.Fprintf(w, "\n## A 3-node JetStream cluster (R3) beside the single server, same run\n\n")
	fmt.Fprintf(w, "Three nats-server nodes in this process, routed on loopback, each with its own file store; EVENTS, the DLQ stream and the KV buckets R3. sink-cache (%s) is given every node's URL. The nodes share this machine's %s: this shows what replication costs (an append is acknowledged once two of three stores hold it; every message crosses the routes twice more), not a speed-up.\n\n", bs, cpuCount())
	fmt.Fprintln(w, "| | single server (R1) | 3-node cluster (R3) | R3 / R1 |")
	fmt.Fprintln(w, "|---|---:|---:|---:|")
	row := func(name string, a, c []result) {
		fmt.Fprintf(w, "| %s, events/s | %s | %s | %.2f |\n", name, spread(a, result.rate, "%.0f"), spread(c, result.rate, "%.0f"), ratio(rates(c), rates(a)))
	}
	row(fmt.Sprintf("`bridge import` of %d events", b.n), single.imports, r3.imports)
	row(fmt.Sprintf("sink-cache catch-up from 0 over %d events", b.n), single.catchUps, r3.catchUps)
	row(fmt.Sprintf("bridge batched HTTP appends (%d events per append, %d clients)", appendBatch, appendClients), single.appends, r3.appends)
	lat := func(name string, f func(latencies) time.Duration) {
		a, c := f(single.live), f(r3.live)
		fmt.Fprintf(w, "| %s | %s | %s | %.2f |\n", name, ms(a), ms(c), float64(c)/float64(max(a, 1)))
	}
	lat(fmt.Sprintf("live append→visible p50 (%d events/s, single-event HTTP appends, %s)", rate, dur), func(l latencies) time.Duration { return l.p50 })
	lat("live append→visible p99", func(l latencies) time.Duration { return l.p99 })
	lat("live append (HTTP answer) p50", func(l latencies) time.Duration { return l.appendP50 })
	lat("live append (HTTP answer) p99", func(l latencies) time.Duration { return l.appendP99 })
	fmt.Fprintf(w, "\nlive runs: single server %d appended (%d seen applied), cluster %d (%d seen)%s%s\n",
		single.live.sent, single.live.seen, r3.live.sent, r3.live.seen, note(single.live.description), note(r3.live.description))
}

func cpuCount() string { return fmt.Sprintf("%d CPUs", runtime.NumCPU()) }

func note(s string) string {
	if s == "" {
		return ""
	}
	return "; " + s
}
