package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// pgStack is the bridge stack plus a PostgreSQL server of its own and
// sink-postgres.
type pgStack struct {
	*stack
	pg     *testenv.PostgresServer
	db     *pgxpool.Pool
	name   string // sink name (its jetsync_checkpoints row)
	config string
	sinkPG *proc
}

const pgSinkName = "orders-pg"

// pgCounterMapping is a raw SQL mapping that is not idempotent: one more
// per event of the stream, with no _position guard. Applied twice, it
// counts twice.
const pgCounterMapping = `
    - sql: "INSERT INTO counters (order_id, n) VALUES (:order_id, 1) ON CONFLICT (order_id) DO UPDATE SET n = counters.n + 1"
      params: '{order_id: .streamId}'`

// pgSinkYAML maps the workload to an orders table: placed upserts the row,
// updated and shipped patch some of its columns (inserting the row when
// missing), cancelled deletes it; withCounter adds pgCounterMapping to every
// event type.
func pgSinkYAML(natsURL, pgURL string, maxEvents, adminPort int, withCounter bool) string {
	counter := ""
	if withCounter {
		counter = pgCounterMapping
	}
	return strings.ReplaceAll(fmt.Sprintf(`name: %s
nats: {url: %q}
http: {listen: "127.0.0.1:%d"}
stream: EVENTS
filters: ["events.order.>"]
batch: {max_events: %d, max_bytes: 1MiB, max_interval: 20ms}
retry: {initial: 20ms, max: 500ms}
on_error: stop
shutdown_timeout: 5s
postgres: {url: %q}
tables:
  orders:
    columns: {order_id: text, status: text, total: numeric, version: bigint, carrier: text}
    primary_key: [order_id]
mappings:
  OrderPlaced:
    - {action: upsert, table: orders, key: {order_id: "{streamId}"}, project: '{status: "placed", total: .data.total}'}COUNTER
  OrderUpdated:
    - {action: patch, table: orders, key: {order_id: "{streamId}"}, project: '{total: .data.total, version: .data.version}'}COUNTER
  OrderShipped:
    - {action: patch, table: orders, key: {order_id: "{streamId}"}, project: '{status: .data.status, carrier: .data.carrier}'}COUNTER
  OrderCancelled:
    - {action: delete, table: orders, key: {order_id: "{streamId}"}}COUNTER
`, pgSinkName, natsURL, adminPort, maxEvents, pgURL), "COUNTER", counter)
}

// newPGStack starts NATS, the bridge, a PostgreSQL server with the legacy
// counters table (which raw SQL writes; the sink does not own it), and
// writes sink-postgres's config; startSinkPG starts the sink.
func newPGStack(t *testing.T, maxEvents int, withCounter bool) *pgStack {
	t.Helper()
	s := &pgStack{stack: newStack(t), pg: testenv.Postgres(t), name: pgSinkName}
	pc, err := pgxpool.ParseConfig(s.pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 2
	db, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	s.db = db
	if _, err := db.Exec(context.Background(), `CREATE TABLE counters (order_id text PRIMARY KEY, n bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	s.config = writeFile(t, "sink-postgres.yaml", pgSinkYAML(s.nats.URL(), s.pg.URL, maxEvents, testenv.FreePort(t), withCounter))
	return s
}

func (s *pgStack) startSinkPG() {
	if s.sinkPG == nil {
		s.sinkPG = startProc(s.t, "sink-postgres", "-config", s.config)
		return
	}
	s.sinkPG.start()
}

// checkpoint reads the sink's jetsync_checkpoints row (0 when absent or
// while PostgreSQL is down).
func (s *pgStack) checkpoint() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var pos int64
	if err := s.db.QueryRow(ctx, `SELECT position FROM jetsync_checkpoints WHERE sink = $1`, s.name).Scan(&pos); err != nil {
		return 0
	}
	return uint64(pos)
}

// newPGWorkload is perStream events for each of n streams: placed, updates
// (patch total and version), shipments (patch status and carrier), a
// cancellation every 30 and a re-placement after it, except in every fourth
// stream, where an update follows the cancellation (a patch that inserts
// the row). A lost, reordered or doubled event changes the final table.
func newPGWorkload(n, perStream int) *workload {
	w := &workload{events: map[string][]appendReq{}, positions: map[string][]uint64{}}
	for i := range n {
		sid := fmt.Sprintf("order-%03d", i)
		w.streams = append(w.streams, sid)
		for v := 1; v <= perStream; v++ {
			typ := "OrderUpdated"
			data := fmt.Sprintf(`{"total":%d.25,"version":%d}`, v*3+i, v)
			switch {
			case v == 1 || (v%30 == 1 && i%4 != 3):
				typ, data = "OrderPlaced", fmt.Sprintf(`{"total":%d.5,"customerId":"c-%d"}`, v+i, i)
			case v%30 == 0:
				typ, data = "OrderCancelled", `{"reason":"customer"}`
			case v%10 == 3:
				typ, data = "OrderShipped", fmt.Sprintf(`{"status":"shipped-%d","carrier":"c%d"}`, v, v%3)
			}
			w.events[sid] = append(w.events[sid], appendReq{ID: fmt.Sprintf("%s-%d", sid, v), Type: typ, Data: json.RawMessage(data)})
		}
	}
	return w
}

// appended is the number of events the bridge has stored so far.
func (w *workload) appended() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, ps := range w.positions {
		n += len(ps)
	}
	return n
}

// pgRow is a row of the orders table, as text, with its _position.
type pgRow struct {
	Status, Total, Version, Carrier string // "" for NULL
	Pos                             uint64
}

// pgFold folds the workload independently of the sink: the orders row of
// each stream (absent when deleted), with the position of its last event.
func (w *workload) pgFold() map[string]pgRow {
	rows := map[string]pgRow{}
	for _, sid := range w.streams {
		ps := append([]uint64(nil), w.positions[sid]...)
		sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
		var row *pgRow
		for k, ev := range w.events[sid] {
			var d map[string]json.RawMessage
			_ = json.Unmarshal(ev.Data, &d)
			str := func(f string) string { // the JSON number or string, as text
				var s string
				if json.Unmarshal(d[f], &s) == nil {
					return s
				}
				return string(d[f])
			}
			switch ev.Type {
			case "OrderPlaced":
				row = &pgRow{Status: "placed", Total: str("total")}
			case "OrderUpdated":
				if row == nil {
					row = &pgRow{}
				}
				row.Total, row.Version = str("total"), str("version")
			case "OrderShipped":
				if row == nil {
					row = &pgRow{}
				}
				row.Status, row.Carrier = str("status"), str("carrier")
			case "OrderCancelled":
				row = nil
			}
			if row != nil {
				row.Pos = ps[k]
			}
		}
		if row != nil {
			rows[sid] = *row
		}
	}
	return rows
}

// verifyOrders compares the orders table with the fold.
func (s *pgStack) verifyOrders(t *testing.T, w *workload) {
	t.Helper()
	ctx := context.Background()
	rs, err := s.db.Query(ctx, `SELECT order_id, coalesce(status, ''), coalesce(total::text, ''), coalesce(version::text, ''), coalesce(carrier, ''), _position FROM orders`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]pgRow{}
	for rs.Next() {
		var id string
		var r pgRow
		var pos int64
		if err := rs.Scan(&id, &r.Status, &r.Total, &r.Version, &r.Carrier, &pos); err != nil {
			t.Fatal(err)
		}
		r.Pos = uint64(pos)
		got[id] = r
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	want := w.pgFold()
	if len(want) == 0 {
		t.Fatal("test bug: the fold is empty")
	}
	bad := 0
	for _, sid := range w.streams {
		g, gok := got[sid]
		f, fok := want[sid]
		if gok != fok || g != f {
			t.Errorf("orders[%s] = %+v (present %v), want %+v (present %v)", sid, g, gok, f, fok)
			if bad++; bad > 10 {
				t.FailNow()
			}
		}
	}
	if len(got) != len(want) {
		t.Errorf("orders holds %d rows, the fold %d", len(got), len(want))
	}
}

// counters reads the counters table.
func (s *pgStack) counters(t *testing.T) map[string]int {
	t.Helper()
	rs, err := s.db.Query(context.Background(), `SELECT order_id, n FROM counters`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := map[string]int{}
	for rs.Next() {
		var id string
		var n int64
		if err := rs.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		out[id] = int(n)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPostgresSinkKilled: sink-postgres catches up with row mappings and a
// non-idempotent raw SQL counter while events are appended; it is
// SIGKILLed at random moments and restarted, and PostgreSQL is stopped and
// started again mid-run (with one more kill and restart while it is down).
// The orders table ends equal to an independent fold, every counter equals
// its stream's number of events (the batch's writes and its checkpoint
// commit in one transaction), and the checkpoint equals the head.
func TestPostgresSinkKilled(t *testing.T) {
	start := time.Now()
	s := newPGStack(t, 20, true)
	perStream := 100
	w := newPGWorkload(150*drillScale(), perStream)
	appendDone := make(chan error, 1)
	var appending atomic.Bool
	appending.Store(true)
	go func() {
		err := w.appendAll(s.stack, 10, 4)
		appending.Store(false)
		appendDone <- err
	}()
	// A backlog first, so the sink catches up while more is appended.
	testenv.Eventually(t, 30*time.Second, func() bool { return w.appended() >= 2000 }, "appends never got going")
	s.startSinkPG()

	kills, restarts, duringAppends := 10*drillScale(), 0, 0
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() > 0 }, "sink-postgres never applied anything")
	for k := 1; k <= kills; k++ {
		time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		before := s.checkpoint()
		s.sinkPG.kill()
		if appending.Load() {
			duringAppends++
		}
		t.Logf("kill %d at checkpoint %d (%d appended)", k, before, w.appended())
		if k == kills/2 {
			// The outage: PostgreSQL goes down with the sink dead, the sink
			// starts while it is down (and must wait for it), then it
			// comes back on the same data.
			s.pg.Stop()
			s.startSinkPG()
			time.Sleep(time.Second)
			s.pg.Start()
			restarts++
			t.Logf("PostgreSQL stopped and started again (sink started while it was down)")
			continue
		}
		s.startSinkPG()
	}
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head },
		"sink-postgres never caught up after %d kills (at %d of %d)", kills, s.checkpoint(), head)
	if cp := s.checkpoint(); cp != head {
		t.Fatalf("checkpoint %d, head %d", cp, head)
	}
	s.verifyOrders(t, w)
	counters := s.counters(t)
	lost, twice := 0, 0
	for _, sid := range w.streams {
		switch n := counters[sid]; {
		case n < perStream:
			lost += perStream - n
		case n > perStream:
			twice += n - perStream
		}
	}
	if lost != 0 || twice != 0 || len(counters) != len(w.streams) {
		t.Fatalf("raw SQL counters: %d events lost, %d applied twice over %d counters (want %d, each %d)", lost, twice, len(counters), len(w.streams), perStream)
	}
	if !strings.Contains(s.sinkPG.output(), "retrying") {
		t.Errorf("sink-postgres never logged a retry, so the PostgreSQL outage was not exercised:\n%s", s.sinkPG.output())
	}
	if code := s.sinkPG.stop(15 * time.Second); code != 0 {
		t.Fatalf("sink-postgres exited %d after SIGTERM", code)
	}
	t.Logf("drill postgres killed: %d events, %d SIGKILLs (%d while appending) and restarts, %d PostgreSQL restart, %d client retries, 0 lost, 0 applied twice (orders = fold, %d raw SQL counters exact, checkpoint = head %d) in %s",
		w.total(), kills, duringAppends, restarts, s.retries.Load(), len(counters), head, time.Since(start).Round(time.Millisecond))
}

// TestDrillPostgresLiveReset: `jetsyncctl reset orders-pg --to-start` on the
// running sink while events are appended. The rows are guarded by
// _position, so the orders table ends equal to the fold (one pass); the
// raw SQL counter is not, and the documented consequence is checked
// exactly: the events up to the checkpoint the reset found were applied
// twice, the others once.
func TestDrillPostgresLiveReset(t *testing.T) {
	start := time.Now()
	s := newPGStack(t, 200, true)
	s.startSinkPG()
	perStream := 100
	w := newPGWorkload(60*drillScale(), perStream)
	appendDone := make(chan error, 1)
	go func() { appendDone <- w.appendAll(s.stack, 5, 4) }()

	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() > 1500 }, "sink-postgres never got going")
	testenv.Eventually(t, 30*time.Second, func() bool {
		out, code := s.ctl("status")
		return code == 0 && strings.Contains(out, s.name)
	}, "sink-postgres never reported its status")
	out, code := s.ctl("reset", s.name, "--to-start")
	if code != 0 {
		t.Fatalf("reset: exit %d: %s", code, out)
	}
	t.Log(strings.TrimSpace(out))
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head },
		"sink-postgres never caught up after the reset (at %d of %d)", s.checkpoint(), head)
	s.verifyOrders(t, w)

	// Every event of the filter is an order event, so positions 1..head are
	// the workload and the sum of the counters is head + the number of
	// events applied again: those up to the checkpoint X the reset found.
	counters := s.counters(t)
	sum := 0
	for _, n := range counters {
		sum += n
	}
	x := uint64(sum - w.total())
	if sum <= w.total() || x > head {
		t.Fatalf("counters sum to %d over %d events: the reset did not replay anything (or replayed too much)", sum, w.total())
	}
	for _, sid := range w.streams {
		want := 0
		for _, p := range w.positions[sid] {
			want++
			if p <= x {
				want++
			}
		}
		if counters[sid] != want {
			t.Errorf("counters[%s] = %d, want %d (its events up to position %d twice, the rest once)", sid, counters[sid], want, x)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("drill postgres live reset: %d events, reset to the start at checkpoint %d under load, %d client retries: orders = fold (0 lost, 0 applied twice by _position); raw SQL counter: the %d events up to %d counted twice, as documented, the rest once; in %s",
		w.total(), x, s.retries.Load(), x, x, time.Since(start).Round(time.Millisecond))
}
