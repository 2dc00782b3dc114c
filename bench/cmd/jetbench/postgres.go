package main

// sink-postgres: its binary's catch-up against the raw read ceiling, a raw
// loader doing the same row writes (no NATS), both ceilings at once and the
// naive synchroniser (one autocommit statement per event); and its live
// append-to-visible delay. Its checkpoint is a row of jetsync_checkpoints in
// the same database, written in the transaction of each batch, so the
// benchmark polls that row.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// pgSink is the sink-postgres binary writing order rows into a table of
// its own per run.
type pgSink struct {
	b     *bench
	url   string
	srv   *testenv.PostgresServer
	pool  *pgxpool.Pool
	names runNamer
	table string // the current run's
	cps   cpLog

	pollMu sync.Mutex
	poll   context.CancelFunc // stops the checkpoint poller of the run
}

const pgSinkName = sinkName + "-pg"

func (b *bench) newPGSink(ctx context.Context) *pgSink {
	b.logf("starting PostgreSQL")
	// Its own temp dir: as root the server runs as the postgres user, who
	// cannot enter the benchmark's (mode 0700) directory.
	dir, err := os.MkdirTemp("", "jetbench-pg-")
	if err != nil {
		b.fatalf("%v", err)
	}
	b.cleanup = append(b.cleanup, func() { os.RemoveAll(dir) })
	srv, err := testenv.StartPostgres(dir)
	if err != nil {
		b.fatalf("-sinks postgres: PostgreSQL cannot start (leave postgres out of -sinks, or set PG_URL): %v", err)
	}
	b.cleanup = append(b.cleanup, srv.Stop)
	pc, err := pgxpool.ParseConfig(srv.URL)
	if err != nil {
		b.fatalf("postgres: %v", err)
	}
	// The session setting sink-postgres's writer uses
	// (relational.SessionRandomPageCost), for the raw loader's statements
	// to be planned as the sink's are.
	pc.ConnConfig.RuntimeParams["random_page_cost"] = "1.1"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		b.fatalf("postgres: %v", err)
	}
	b.cleanup = append(b.cleanup, pool.Close)
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS jetsync_checkpoints (
		sink text PRIMARY KEY, position bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		b.fatalf("postgres: %v", err)
	}
	s := &pgSink{b: b, url: srv.URL, pool: pool, srv: srv}
	b.cleanup = append(b.cleanup, s.stopPolling)
	return s
}

func (s *pgSink) name() string        { return "sink-postgres" }
func (s *pgSink) checkpoints() *cpLog { return &s.cps }

// targetCPU is the local server's processes' CPU (0 with PG_URL's).
func (s *pgSink) targetCPU() time.Duration {
	cpu, _ := s.srv.CPU()
	return cpu
}

func (s *pgSink) describe() string {
	return "sink-postgres mappings: OrderPlaced and OrderUpdated upsert the order's row (customer_id, status, currency, total; key = streamId), " +
		"OrderShipped patches status and carrier, OrderCancelled deletes the row; every row carries _position. PostgreSQL 15 on loopback TCP, default fsync. " +
		"The raw loader folds each batch of max_events events per key as the sink does and sends the sink's statements in one pipeline, one transaction: one multi-row DELETE, " +
		"one multi-row upsert (INSERT … SELECT … FROM (SELECT unnest(…), …) ON CONFLICT DO UPDATE … WHERE newer), one multi-row patch and its checkpoint row, " +
		"in sessions with the sink's random_page_cost (1.1); no NATS. " +
		"The naive synchroniser reads with an ordered consumer and runs one autocommit statement per event."
}

// prepare starts a fresh table, sets the sink's checkpoint row to 0 (or the
// head) and polls it for this run.
func (s *pgSink) prepare(ctx context.Context, live bool) {
	s.stopPolling()
	if s.table != "" {
		s.exec(ctx, "DROP TABLE IF EXISTS "+s.table)
	}
	s.table = s.names.next("bench_orders_")
	from := uint64(0)
	if live {
		from = s.b.head(ctx)
	}
	s.exec(ctx, `INSERT INTO jetsync_checkpoints (sink, position) VALUES ($1, $2)
		ON CONFLICT (sink) DO UPDATE SET position = excluded.position`, pgSinkName, int64(from))
	s.cps.reset()
	pctx, cancel := context.WithCancel(context.Background())
	s.pollMu.Lock()
	s.poll = cancel
	s.pollMu.Unlock()
	// Live runs poll every millisecond: that is the resolution of the
	// append-to-visible delays. A catch-up of two seconds or more needs no
	// finer than 5 ms (0.25% of it), and each poll is a query, a round
	// trip and a wake-up of the server, on the machine the sink runs on.
	every := 5 * time.Millisecond
	if live {
		every = time.Millisecond
	}
	go s.pollCheckpoint(pctx, from, every)
}

func (s *pgSink) stopPolling() {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	if s.poll != nil {
		s.poll()
		s.poll = nil
	}
}

// pollCheckpoint reads the checkpoint row every interval and logs each
// new value: "visible" is when the committed row covers a position.
func (s *pgSink) pollCheckpoint(ctx context.Context, last uint64, every time.Duration) {
	gen := s.cps.generation()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return
	}
	defer conn.Release()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var pos int64
		if err := conn.QueryRow(ctx, `SELECT position FROM jetsync_checkpoints WHERE sink = $1`, pgSinkName).Scan(&pos); err != nil {
			continue
		}
		if uint64(pos) != last {
			last = uint64(pos)
			s.cps.record(gen, time.Now(), last)
		}
	}
}

func (s *pgSink) exec(ctx context.Context, sql string, args ...any) {
	if _, err := s.pool.Exec(ctx, sql, args...); err != nil {
		s.b.fatalf("postgres: %s: %v", sql, err)
	}
}

func (s *pgSink) start(bs batchSettings) (*proc, string) {
	b := s.b
	port := freePort()
	cfg := filepath.Join(b.dir, fmt.Sprintf("sink-postgres-%d.yaml", port))
	b.writeFile(cfg, fmt.Sprintf(`name: %s
nats: {url: %q}
stream: EVENTS
filters: [events.order.>]
batch: {max_events: %d, max_bytes: %d, max_interval: %s, flush_when_idle: %t}
on_error: stop
http: {listen: "127.0.0.1:%d"}
postgres: {url: %q}
tables:
  %[9]s:
    columns: {order_id: text, customer_id: text, status: text, currency: text, total: numeric, carrier: text}
    primary_key: [order_id]
mappings:
  OrderPlaced: [{action: upsert, table: %[9]s, key: {order_id: "{streamId}"}, project: '{customer_id: .data.customerId, status: .data.status, currency: .data.currency, total: .data.total}'}]
  OrderUpdated: [{action: upsert, table: %[9]s, key: {order_id: "{streamId}"}, project: '{customer_id: .data.customerId, status: .data.status, currency: .data.currency, total: .data.total}'}]
  OrderShipped: [{action: patch, table: %[9]s, key: {order_id: "{streamId}"}, project: '{status: "shipped", carrier: .data.carrier}'}]
  OrderCancelled: [{action: delete, table: %[9]s, key: {order_id: "{streamId}"}}]
`, pgSinkName, b.natsURL, bs.events, int64(bs.bytes), bs.interval, bs.idle, port, s.url, s.table))
	p, err := startProcEnv(filepath.Join(b.bin, s.name()), strings.Fields(b.sinkEnv), "-config", cfg)
	if err != nil {
		b.fatalf("%v", err)
	}
	return p, fmt.Sprintf("http://127.0.0.1:%d", port)
}

// pgRow is what the events of one key in a batch fold to.
type pgRow struct {
	op   uint8 // tPlaced (upsert), tShipped (patch) or tCancelled (delete)
	vals [6]*string
	pos  int64
}

// rowOf is the write event i makes, as the sink's mapping makes it.
func (s *pgSink) rowOf(i int) (string, pgRow) {
	ev := s.b.ev(i)
	var d map[string]any
	_ = json.Unmarshal(ev.Data, &d)
	str := func(v any) *string {
		if v == nil {
			return nil
		}
		x := fmt.Sprint(v)
		return &x
	}
	r := pgRow{pos: int64(i + 1)}
	switch t := s.b.wl.specs[i].typ; t {
	case tPlaced, tUpdated:
		r.op, r.vals = tPlaced, [6]*string{&ev.StreamID, str(d["customerId"]), str(d["status"]), str(d["currency"]), str(d["total"]), nil}
	case tShipped:
		shipped := "shipped"
		r.op, r.vals = tShipped, [6]*string{&ev.StreamID, nil, &shipped, nil, nil, str(d["carrier"])}
	default:
		r.op, r.vals = tCancelled, [6]*string{&ev.StreamID}
	}
	return ev.StreamID, r
}

// fold merges a key's next write into what the batch has for it: the
// sink's rules (a patch merges into an earlier upsert or patch, a patch
// after a delete becomes an upsert, an upsert or delete replaces).
func fold(prev pgRow, ok bool, next pgRow) pgRow {
	if !ok || next.op != tShipped {
		return next
	}
	switch prev.op {
	case tPlaced, tShipped:
		prev.vals[2], prev.vals[5], prev.pos = next.vals[2], next.vals[5], next.pos
		return prev
	}
	next.op = tPlaced
	return next
}

// rawTarget is the target ceiling: the first n events' row writes in
// transactions of batch events, each with its checkpoint row, back to back.
func (s *pgSink) rawTarget(ctx context.Context, n, batch int) result {
	table := s.names.next("bench_raw_")
	s.exec(ctx, `CREATE TABLE `+table+` (order_id text PRIMARY KEY, customer_id text, status text, currency text, total numeric, carrier text, _position bigint NOT NULL)`)
	defer s.exec(context.Background(), "DROP TABLE IF EXISTS "+table)
	s.exec(ctx, `INSERT INTO jetsync_checkpoints (sink, position) VALUES ('bench-raw', 0) ON CONFLICT (sink) DO UPDATE SET position = 0`)
	// The sink's statements, as relational.statementSQL renders them for
	// this table: the arrays unnested in the select list, cast to the
	// column types.
	upsert := `INSERT INTO ` + table + ` AS t (order_id, carrier, currency, customer_id, status, total, _position)
		SELECT u.a1::text, u.a2::text, u.a3::text, u.a4::text, u.a5::text, u.a6::numeric, u.a7
		FROM (SELECT unnest($1::text[]) AS a1, unnest($2::text[]) AS a2, unnest($3::text[]) AS a3, unnest($4::text[]) AS a4,
			unnest($5::text[]) AS a5, unnest($6::text[]) AS a6, unnest($7::bigint[]) AS a7) AS u
		ON CONFLICT (order_id) DO UPDATE SET carrier = excluded.carrier, currency = excluded.currency, customer_id = excluded.customer_id,
			status = excluded.status, total = excluded.total, _position = excluded._position WHERE t._position < excluded._position`
	patch := `INSERT INTO ` + table + ` AS t (order_id, carrier, status, _position)
		SELECT u.a1::text, u.a2::text, u.a3::text, u.a4
		FROM (SELECT unnest($1::text[]) AS a1, unnest($2::text[]) AS a2, unnest($3::text[]) AS a3, unnest($4::bigint[]) AS a4) AS u
		ON CONFLICT (order_id) DO UPDATE SET carrier = excluded.carrier, status = excluded.status, _position = excluded._position
			WHERE t._position < excluded._position`
	del := `DELETE FROM ` + table + ` AS t USING (SELECT unnest($1::text[]) AS a1, unnest($2::bigint[]) AS a2) AS u
		WHERE t.order_id = u.a1::text AND t._position <= u.a2`
	// The rows are made before the clock starts: the ceiling is the
	// server's, not this program's JSON decoding.
	batches := s.rawBatches(n, batch)
	cpu0, pg0 := selfCPU(), s.targetCPU()
	start := time.Now()
	for _, pb := range batches {
		// One pipeline, one implicit transaction, as the sink sends a batch.
		var bt pgx.Batch
		if len(pb.de) > 0 {
			bt.Queue(del, pb.de, pb.dePos)
		}
		if len(pb.upPos) > 0 { // the columns in the sink's (sorted) order
			bt.Queue(upsert, pb.up[0], pb.up[5], pb.up[3], pb.up[1], pb.up[2], pb.up[4], pb.upPos)
		}
		if len(pb.paPos) > 0 {
			bt.Queue(patch, pb.pa[0], pb.pa[2], pb.pa[1], pb.paPos)
		}
		bt.Queue(`UPDATE jetsync_checkpoints SET position = $1, updated_at = now() WHERE sink = 'bench-raw'`, pb.through)
		if err := s.pool.SendBatch(ctx, &bt).Close(); err != nil {
			s.b.fatalf("postgres raw loader: %v", err)
		}
	}
	return result{events: n, elapsed: time.Since(start), bytes: s.b.rd.dataBytes[n], driver: selfCPU() - cpu0, target: s.targetCPU() - pg0,
		note: fmt.Sprintf("multi-row writes of %d events per transaction with the checkpoint row", batch)}
}

// pgBatch is one transaction of the raw loader: its statements' arrays,
// typed as the sink sends them.
type pgBatch struct {
	up      [6][]*string // upserts: order_id, customer_id, status, currency, total, carrier
	upPos   []int64
	pa      [3][]*string // patches: order_id, status, carrier
	paPos   []int64
	de      []*string // deletes: order_id
	dePos   []int64
	through int64
}

// rawBatches folds the first n events per key in batches of batch, as the
// sink does, into the raw loader's statements.
func (s *pgSink) rawBatches(n, batch int) []pgBatch {
	var out []pgBatch
	for from := 0; from < n; from += batch {
		to := min(from+batch, n)
		rows, order := map[string]pgRow{}, []string{}
		for i := from; i < to; i++ {
			k, r := s.rowOf(i)
			prev, ok := rows[k]
			if !ok {
				order = append(order, k)
			}
			rows[k] = fold(prev, ok, r)
		}
		pb := pgBatch{through: int64(to)}
		for _, k := range order {
			r := rows[k]
			switch r.op {
			case tPlaced:
				for c, v := range r.vals {
					pb.up[c] = append(pb.up[c], v)
				}
				pb.upPos = append(pb.upPos, r.pos)
			case tShipped:
				pb.pa[0], pb.pa[1], pb.pa[2] = append(pb.pa[0], r.vals[0]), append(pb.pa[1], r.vals[2]), append(pb.pa[2], r.vals[5])
				pb.paPos = append(pb.paPos, r.pos)
			default:
				pb.de, pb.dePos = append(pb.de, r.vals[0]), append(pb.dePos, r.pos)
			}
		}
		out = append(out, pb)
	}
	return out
}

// naive reads with an ordered consumer and runs one autocommit statement
// per event: the round trip per event the product exists to avoid.
func (s *pgSink) naive(ctx context.Context, n int) result {
	table := s.names.next("bench_naive_")
	s.exec(ctx, `CREATE TABLE `+table+` (order_id text PRIMARY KEY, customer_id text, status text, currency text, total numeric, carrier text, _position bigint NOT NULL)`)
	defer s.exec(context.Background(), "DROP TABLE IF EXISTS "+table)
	nc, err := nats.Connect(s.b.natsURL)
	if err != nil {
		s.b.fatalf("%v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		s.b.fatalf("%v", err)
	}
	defer conn.Release()
	cpu0 := selfCPU()
	start := time.Now()
	cons, err := js.OrderedConsumer(ctx, natsutil.DefaultStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"events.order.>"}})
	if err != nil {
		s.b.fatalf("%v", err)
	}
	it, err := cons.Messages()
	if err != nil {
		s.b.fatalf("%v", err)
	}
	defer it.Stop()
	for range n {
		m, err := it.Next()
		if err != nil {
			s.b.fatalf("naive: %v", err)
		}
		md, _ := m.Metadata()
		ev, err := envelope.FromMsg(m.Subject(), m.Headers(), m.Data(), md.Sequence.Stream)
		if err != nil {
			s.b.fatalf("naive: %v", err)
		}
		var d map[string]any
		_ = json.Unmarshal(ev.Data, &d)
		pos := int64(ev.Position)
		switch ev.Type {
		case "OrderPlaced", "OrderUpdated":
			_, err = conn.Exec(ctx, `INSERT INTO `+table+` AS t (order_id, customer_id, status, currency, total, carrier, _position) VALUES ($1, $2, $3, $4, $5, NULL, $6)
				ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, status = excluded.status, currency = excluded.currency,
					total = excluded.total, carrier = NULL, _position = excluded._position WHERE t._position < excluded._position`,
				ev.StreamID, d["customerId"], d["status"], d["currency"], d["total"], pos)
		case "OrderShipped":
			_, err = conn.Exec(ctx, `INSERT INTO `+table+` AS t (order_id, status, carrier, _position) VALUES ($1, 'shipped', $2, $3)
				ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, carrier = excluded.carrier, _position = excluded._position
					WHERE t._position < excluded._position`, ev.StreamID, d["carrier"], pos)
		default:
			_, err = conn.Exec(ctx, `DELETE FROM `+table+` WHERE order_id = $1 AND _position < $2`, ev.StreamID, pos)
		}
		if err != nil {
			s.b.fatalf("naive: %v", err)
		}
	}
	return result{events: n, elapsed: time.Since(start), bytes: s.b.rd.dataBytes[n], driver: selfCPU() - cpu0}
}

// pgRuns is what the catch-up phase measured for sink-postgres.
type pgRuns struct {
	n                                  int
	read, target, both, sinkRes, naive []result
}

// pgCatchUp alternates, per repetition, the raw read ceiling, the raw
// loader, both at once, the sink binary's catch-up to n and the naive
// synchroniser over naiveN events.
func (b *bench) pgCatchUp(ctx context.Context, s *pgSink, n, naiveN int, bs batchSettings) pgRuns {
	r := pgRuns{n: n}
	b.logf("postgres: warm-up (raw loader, not measured)")
	s.rawTarget(ctx, min(n, 50_000), b.maxEvents)
	for rep := range b.reps {
		b.logf("rep %d: postgres: raw read (%d events)", rep+1, n)
		r.read = append(r.read, b.rawRead(ctx, n))
		b.logf("rep %d: postgres: raw loader", rep+1)
		r.target = append(r.target, s.rawTarget(ctx, n, b.maxEvents))
		b.logf("rep %d: postgres: both ceilings at once", rep+1)
		var rd result
		done := make(chan struct{})
		go func() { defer close(done); rd = b.rawRead(ctx, n) }()
		tg := s.rawTarget(ctx, n, b.maxEvents)
		<-done
		r.both = append(r.both, result{events: n, elapsed: max(rd.elapsed, tg.elapsed), bytes: b.rd.dataBytes[n]})
		b.logf("rep %d: sink-postgres binary catch-up", rep+1)
		r.sinkRes = append(r.sinkRes, b.sinkCatchUp(ctx, s, n, bs))
		b.logf("rep %d: postgres: naive synchroniser (%d events)", rep+1, naiveN)
		r.naive = append(r.naive, s.naive(ctx, naiveN))
	}
	s.stopPolling()
	return r
}

func (b *bench) pgCatchUpTable(s *pgSink, r pgRuns) {
	w := b.out
	fmt.Fprintf(w, "\n## Catch-up on loopback: sink-postgres (%d of the %d events)\n\n%s\n\n", r.n, b.n, s.describe())
	fmt.Fprintln(w, "| | events/s | MB/s | notes |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	b.row(fmt.Sprintf("ceiling: raw ordered-consumer read of %d events", r.n), r.read, "")
	b.row("ceiling: raw loader, "+r.target[0].note, r.target, "driver CPU "+spread(r.target, cpuPer(func(r result) time.Duration { return r.driver }), "%.1fs")+
		", PostgreSQL CPU "+spread(r.target, cpuPer(func(r result) time.Duration { return r.target }), "%.1fs"))
	b.row("both ceilings at once (read and loader side by side)", r.both, "")
	b.row(fmt.Sprintf("**sink-postgres binary**, position 0 → %d", r.n), r.sinkRes, fmt.Sprintf("peak RSS %s MB, CPU %s s, driver CPU %s s, PostgreSQL CPU %s s, avg batch %s",
		spread(r.sinkRes, func(r result) float64 { return float64(r.rss) / 1e6 }, "%.0f"),
		spread(r.sinkRes, cpuPer(func(r result) time.Duration { return r.cpu }), "%.1f"),
		spread(r.sinkRes, cpuPer(func(r result) time.Duration { return r.driver }), "%.1f"),
		spread(r.sinkRes, cpuPer(func(r result) time.Duration { return r.target }), "%.1f"),
		spread(r.sinkRes, func(r result) float64 { return r.batches }, "%.0f")))
	b.row(fmt.Sprintf("naive synchroniser (%d events, one autocommit statement each)", r.naive[0].events), r.naive, "")
	ceil := minOf(rates(r.read), rates(r.target))
	fmt.Fprintf(w, "\nsink / min(ceilings) = **%.2f** (per repetition: %s)\n", ratio(rates(r.sinkRes), ceil), perRep(rates(r.sinkRes), ceil))
	fmt.Fprintf(w, "sink / both ceilings at once = **%.2f** (per repetition: %s); target ≥ 0.8\n", ratio(rates(r.sinkRes), rates(r.both)), perRep(rates(r.sinkRes), rates(r.both)))
	fmt.Fprintf(w, "sink / naive = **%.1f×** (per repetition: %s); target ≥ 10×\n", ratio(rates(r.sinkRes), rates(r.naive)), perRep(rates(r.sinkRes), rates(r.naive)))
	// Where the machine's CPU goes, per event: what bounds the sink when
	// everything shares two cores.
	us := func(rs []result, f func(result) time.Duration) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = f(r).Seconds() * 1e6 / float64(r.events)
		}
		return median(xs)
	}
	cpu := func(r result) time.Duration { return r.cpu }
	drv := func(r result) time.Duration { return r.driver }
	pgc := func(r result) time.Duration { return r.target }
	if pg := us(r.sinkRes, pgc); pg > 0 {
		total := us(r.sinkRes, cpu) + pg + us(r.sinkRes, drv)
		fmt.Fprintf(w, "\nCPU per event (medians): the sink's run %.1f µs (sink process %.1f, PostgreSQL %.1f, this process: NATS server and checkpoint polls %.1f), "+
			"%.2f cores busy at its median rate; the raw loader's run %.1f µs (PostgreSQL %.1f, loader %.1f).\n",
			total, us(r.sinkRes, cpu), pg, us(r.sinkRes, drv), total*median(rates(r.sinkRes))/1e6,
			us(r.target, pgc)+us(r.target, drv), us(r.target, pgc), us(r.target, drv))
	}
	fmt.Fprintln(w, "\nThe sink's time runs from its process start to its jetsync_checkpoints row (polled every 5 ms) reaching the last event. "+
		"One raw-loader run warms the server up first, unmeasured.")
}

// pgVisible is what "visible" means in sink-postgres's live table.
const pgVisible = "append→visible runs from when each append was due (a client falling behind counts) to the moment the sink's row in jetsync_checkpoints " +
	"(committed in the same transaction as the rows, polled every millisecond) covers the event's position; ack→visible from the bridge's answer to then."
