package main

// The relay phase (-phases relay): `bridge relay` catching up on an outbox
// table of n rows (the workload's events) against its two ceilings, both
// measured in the same run: a raw JetStream async publish of the same
// messages from this process (no PostgreSQL), and a raw SELECT streaming
// the same rows (no NATS). Then the live delay from a row's COMMIT to its
// event stored in JetStream, with the poll interval alone and with LISTEN.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/outbox"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// relayBench holds the phase's PostgreSQL.
type relayBench struct {
	b   *bench
	url string
	db  *pgx.Conn
	run int // relay runs so far: each has its own source name (cursor)
}

func (b *bench) relayPhase(ctx context.Context, n, rate int, dur time.Duration) {
	b.logf("relay: starting PostgreSQL")
	dir, err := os.MkdirTemp("", "jetbench-relay-pg-")
	if err != nil {
		b.fatalf("%v", err)
	}
	b.cleanup = append(b.cleanup, func() { os.RemoveAll(dir) })
	srv, err := testenv.StartPostgres(dir)
	if err != nil {
		b.fatalf("-phases relay: PostgreSQL cannot start (leave relay out of -phases, or set PG_URL): %v", err)
	}
	b.cleanup = append(b.cleanup, srv.Stop)
	rb := &relayBench{b: b, url: srv.URL}
	if rb.db, err = pgx.Connect(ctx, srv.URL); err != nil {
		b.fatalf("relay: %v", err)
	}
	defer rb.db.Close(ctx)
	rb.exec(ctx, "DROP TABLE IF EXISTS outbox")
	rb.exec(ctx, outbox.DDL)

	b.logf("relay: loading %d rows into the outbox (1000 per transaction)", n)
	load := time.Now()
	for lo := 0; lo < n; lo += 1000 {
		hi := min(n, lo+1000)
		rows := make([][]any, 0, hi-lo)
		for i := lo; i < hi; i++ {
			ev := b.ev(i)
			rows = append(rows, []any{ev.ID, ev.Category, ev.StreamID, ev.Type, string(ev.Data), string(ev.Metadata), ev.Time})
		}
		if _, err := rb.db.CopyFrom(ctx, pgx.Identifier{"outbox"}, []string{"event_id", "category", "stream_id", "type", "data", "metadata", "created_at"}, pgx.CopyFromRows(rows)); err != nil {
			b.fatalf("relay: loading the outbox: %v", err)
		}
	}
	rb.exec(ctx, "VACUUM ANALYZE outbox")
	b.logf("relay: loaded in %s", time.Since(load).Round(time.Millisecond))

	var raw, sel, rel []result
	for rep := range b.reps {
		b.logf("rep %d: relay ceilings and bridge relay", rep+1)
		if rep%2 == 0 {
			raw = append(raw, rb.rawPublish(ctx, n))
			sel = append(sel, rb.rawSelect(ctx, n))
			rel = append(rel, rb.catchUp(ctx, n))
		} else {
			rel = append(rel, rb.catchUp(ctx, n))
			sel = append(sel, rb.rawSelect(ctx, n))
			raw = append(raw, rb.rawPublish(ctx, n))
		}
	}

	var live []relayLatency
	var modes []string
	if rate > 0 {
		for _, listen := range []bool{false, true} {
			mode := "poll 50ms"
			if listen {
				mode = "poll 50ms + LISTEN"
				rb.exec(ctx, outbox.NotifyDDL("outbox", "outbox"))
			}
			b.logf("relay live: %s, %d commits/s for %s", mode, rate, dur)
			live = append(live, rb.live(ctx, listen, rate, dur))
			modes = append(modes, mode)
		}
	}
	rb.table(n, raw, sel, rel, modes, live, rate, dur)
}

func (rb *relayBench) exec(ctx context.Context, sql string) {
	if _, err := rb.db.Exec(ctx, sql); err != nil {
		rb.b.fatalf("relay: %s: %v", sql, err)
	}
}

// freshStream deletes and creates the EVENTS stream.
func (rb *relayBench) freshStream(ctx context.Context) jetstream.Stream {
	_ = rb.b.js.DeleteStream(ctx, natsutil.DefaultStream)
	s, err := natsutil.EnsureStream(ctx, rb.b.js, natsutil.DefaultStreamConfig())
	if err != nil {
		rb.b.fatalf("relay: %v", err)
	}
	return s
}

// rawPublish publishes the n events as the relay would (same subjects and
// headers, versions, the source cursor header), asynchronously from this
// process: the NATS ceiling.
func (rb *relayBench) rawPublish(ctx context.Context, n int) result {
	b := rb.b
	rb.freshStream(ctx)
	nc, err := nats.Connect(b.natsURL)
	if err != nil {
		b.fatalf("%v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	cpu0 := selfCPU()
	start := time.Now()
	for i := range n {
		ev := b.ev(i)
		m := ev.ToMsg()
		m.Header["Jetsync-Source-Cursor"] = []string{"raw@1:" + strconv.Itoa(i+1)}
		if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
			b.fatalf("relay raw publish: %v", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.fatalf("relay raw publish: acks did not complete")
	}
	return result{events: n, elapsed: time.Since(start), bytes: b.rd.dataBytes[n], driver: selfCPU() - cpu0}
}

// rawSelect streams the n rows in relay order with the relay's columns:
// the PostgreSQL ceiling.
func (rb *relayBench) rawSelect(ctx context.Context, n int) result {
	start := time.Now()
	rows, err := rb.db.Query(ctx, `SELECT transaction_id::text, id, event_id, stream_id, category, type, data::text, metadata::text, created_at
		FROM outbox AS src ORDER BY src.transaction_id, src.id`)
	if err != nil {
		rb.b.fatalf("relay raw select: %v", err)
	}
	got := 0
	var tx, eid, sid, cat, typ, data, md string
	var id int64
	var at time.Time
	for rows.Next() {
		if err := rows.Scan(&tx, &id, &eid, &sid, &cat, &typ, &data, &md, &at); err != nil {
			rb.b.fatalf("relay raw select: %v", err)
		}
		got++
	}
	if rows.Err() != nil || got != n {
		rb.b.fatalf("relay raw select: %d rows, %v", got, rows.Err())
	}
	return result{events: n, elapsed: time.Since(start), bytes: rb.b.rd.dataBytes[n]}
}

// startRelay runs `bridge relay` on the outbox with a cursor of its own.
func (rb *relayBench) startRelay(listen bool) *proc {
	b := rb.b
	rb.run++
	cfg := filepath.Join(b.dir, "bridge-relay.yaml")
	channel := ""
	if listen {
		channel = "outbox"
	}
	b.writeFile(cfg, fmt.Sprintf("nats: {url: %q}\nsource: {name: bench-%d, postgres_url: %q, listen_channel: %q}\n", b.natsURL, rb.run, rb.url, channel))
	p, err := startProc(filepath.Join(b.bin, "bridge"), "relay", "-config", cfg)
	if err != nil {
		b.fatalf("%v", err)
	}
	return p
}

// catchUp times `bridge relay` from its start until the stream holds all n
// events.
func (rb *relayBench) catchUp(ctx context.Context, n int) result {
	b := rb.b
	s := rb.freshStream(ctx)
	cpu0 := selfCPU()
	p := rb.startRelay(false)
	start := time.Now()
	for {
		info, err := s.Info(ctx)
		if err == nil && info.State.Msgs >= uint64(n) {
			break
		}
		if p.exited() {
			b.fatalf("bridge relay exited: %s", p.out.String())
		}
		if time.Since(start) > 10*time.Minute {
			b.fatalf("bridge relay: not caught up after 10 minutes: %s", p.out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	u, _ := p.stop()
	if info, _ := s.Info(ctx); info == nil || info.State.Msgs != uint64(n) {
		b.fatalf("bridge relay stored %v events, want %d", info.State.Msgs, n)
	}
	return result{events: n, elapsed: elapsed, bytes: b.rd.dataBytes[n], cpu: u.cpu, rss: u.maxRSS, driver: selfCPU() - cpu0}
}

// relayLatency is the sorted delays of one live run.
type relayLatency struct {
	d []time.Duration
	n int
}

// live commits one row per transaction at rate for dur with a running
// relay and measures each row's delay from its Commit returning to the
// event's delivery by an ordered consumer on the stream (JetStream stores
// a message before it delivers it).
func (rb *relayBench) live(ctx context.Context, listen bool, rate int, dur time.Duration) relayLatency {
	b := rb.b
	s := rb.freshStream(ctx)
	_ = s
	// Start after the rows already there: a new cursor at the head.
	var tx string
	var id int64
	if err := rb.db.QueryRow(ctx, "SELECT src.transaction_id::text, src.id FROM outbox AS src ORDER BY src.transaction_id DESC, src.id DESC LIMIT 1").Scan(&tx, &id); err != nil {
		b.fatalf("relay live: %v", err)
	}
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "jetsync-relay"})
	if err != nil {
		b.fatalf("relay live: %v", err)
	}
	if _, err := kv.Put(ctx, "bench-"+strconv.Itoa(rb.run+1), []byte(tx+":"+strconv.FormatInt(id, 10))); err != nil {
		b.fatalf("relay live: %v", err)
	}
	p := rb.startRelay(listen)
	defer p.stop()

	// JetStream stores a message before it is delivered to an ordered
	// consumer: its receive time bounds the store time from above.
	var mu sync.Mutex
	committed := map[string]time.Time{}
	received := map[string]time.Time{}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		b.fatalf("relay live: %v", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		mu.Lock()
		received[m.Headers().Get("Nats-Msg-Id")] = now
		mu.Unlock()
	})
	if err != nil {
		b.fatalf("relay live: %v", err)
	}
	defer cc.Stop()
	time.Sleep(500 * time.Millisecond) // the relay connects and reaches the head

	conn, err := pgx.Connect(ctx, rb.url)
	if err != nil {
		b.fatalf("relay live: %v", err)
	}
	defer conn.Close(ctx)
	ob := outbox.Outbox{}
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	sent := 0
	for i := 0; time.Since(start) < dur; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		ev := b.ev(i % b.n)
		idStr := fmt.Sprintf("live-%d-%d", rb.run, i)
		t, err := conn.Begin(ctx)
		if err != nil {
			b.fatalf("relay live: %v", err)
		}
		if err := ob.Append(ctx, t, outbox.Event{ID: idStr, Category: "live", StreamID: ev.StreamID, Type: ev.Type, Data: ev.Data}); err != nil {
			b.fatalf("relay live: %v", err)
		}
		if err := t.Commit(ctx); err != nil {
			b.fatalf("relay live: %v", err)
		}
		mu.Lock()
		committed[idStr] = time.Now()
		mu.Unlock()
		sent++
	}
	deadline := time.Now().Add(30 * time.Second)
	var delays []time.Duration
	for {
		mu.Lock()
		delays = delays[:0]
		for id, c := range committed {
			if r, ok := received[id]; ok {
				// With LISTEN the event can arrive before Commit returned
				// here: then it was visible at once.
				delays = append(delays, max(0, r.Sub(c)))
			}
		}
		mu.Unlock()
		if len(delays) >= sent || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(delays) < sent {
		info, _ := s.Info(ctx)
		b.fatalf("relay live: %d of %d committed rows reached the consumer (the stream holds %d): %s", len(delays), sent, info.State.Msgs, p.out.String())
	}
	d := slices.Clone(delays)
	slices.Sort(d)
	return relayLatency{d: d, n: sent}
}

func (rb *relayBench) table(n int, raw, sel, rel []result, modes []string, live []relayLatency, rate int, dur time.Duration) {
	b := rb.b
	w := b.out
	fmt.Fprintf(w, "\n## Relay: `bridge relay` from a PostgreSQL outbox against its ceilings (%d rows)\n\n", n)
	fmt.Fprintf(w, "The outbox (pkg/outbox's table, PostgreSQL 15 on loopback, fsync off as in the tests' server) holds the workload's %d events, loaded 1000 per transaction. "+
		"bridge relay (source.batch_size 2000, a process of its own, from its start until the stream holds every event) against, in the same run: "+
		"a raw JetStream async publish of the same messages (same subjects, headers and source cursor header; 8192 in flight) from this process, the NATS ceiling; "+
		"a raw SELECT streaming the same rows and columns in relay order, the PostgreSQL ceiling. Ratios per repetition, median.\n\n", n)
	fmt.Fprintln(w, "| | events/s | MB/s | CPU | peak RSS | relay / raw |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	ratio := func(a, c []result) string {
		var rs []float64
		for i := range a {
			rs = append(rs, a[i].rate()/c[i].rate())
		}
		return fmt.Sprintf("%.2f", median(rs))
	}
	row := func(name string, rs []result, cpu bool, r string) {
		rates := make([]float64, len(rs))
		mbps := make([]float64, len(rs))
		var c time.Duration
		var rss int64
		for i, x := range rs {
			rates[i], mbps[i] = x.rate(), x.mbps()
			c = max(c, x.cpu)
			rss = max(rss, x.rss)
		}
		cs, rs2 := "", ""
		if cpu {
			cs = fmt.Sprintf("%.0f%% of a core", 100*c.Seconds()/rs[0].elapsed.Seconds())
			rs2 = fmt.Sprintf("%.0f MB", float64(rss)/1e6)
		}
		fmt.Fprintf(w, "| %s | %.0f [%.0f–%.0f] | %.1f | %s | %s | %s |\n", name, median(rates), slices.Min(rates), slices.Max(rates), median(mbps), cs, rs2, r)
	}
	row("raw JetStream async publish (NATS ceiling)", raw, false, "")
	row("raw SELECT of the rows (PostgreSQL ceiling)", sel, false, "")
	row("bridge relay catch-up", rel, true, fmt.Sprintf("%s of publish, %s of SELECT", ratio(rel, raw), ratio(rel, sel)))
	if len(live) == 0 {
		return
	}
	fmt.Fprintf(w, "\nLive: one row per transaction committed at %d/s for %s with pkg/outbox.Append; delay from Commit returning to the event's delivery by an ordered consumer on the stream (so it includes that delivery):\n\n", rate, dur)
	fmt.Fprintln(w, "| relay | events | p50 | p90 | p99 | max |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for i, l := range live {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s |\n", modes[i], l.n, relayMS(pct(l.d, 0.5)), relayMS(pct(l.d, 0.9)), relayMS(pct(l.d, 0.99)), relayMS(l.d[len(l.d)-1]))
	}
}

func relayMS(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
