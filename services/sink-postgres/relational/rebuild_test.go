package relational

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// rbEnv is a PostgreSQL and an in-process JetStream with the event stream.
type rbEnv struct {
	url  string
	pool *pgxpool.Pool
	js   jetstream.JetStream
}

func newRBEnv(t *testing.T) *rbEnv {
	t.Helper()
	srv := testenv.Postgres(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	_, js := testenv.NATS(t).Connect(t)
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	return &rbEnv{url: srv.URL, pool: pool, js: js}
}

func rbLog() *slog.Logger {
	out := io.Discard
	if testing.Verbose() {
		out = os.Stderr
	}
	return slog.New(slog.NewTextHandler(out, nil))
}

// rbConfig is sink name writing <prefix>_orders (upserts, patches, deletes)
// and <prefix>_events (one row per event: its row count only grows).
func rbConfig(url, name, prefix string) Config {
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.Postgres.URL = url
	cfg.Batch.MaxEvents = 200
	orders, evs := prefix+"_orders", prefix+"_events"
	cfg.Tables = map[string]Table{
		orders: {Columns: map[string]string{"order_id": "text", "total": "numeric", "status": "text", "note": "text"}, PrimaryKey: []string{"order_id"}},
		evs:    {Columns: map[string]string{"event_id": "text", "type": "text"}, PrimaryKey: []string{"event_id"}},
	}
	key := map[string]string{"order_id": "{streamId}"}
	seen := Action{Action: ActionUpsert, Table: evs, Key: map[string]string{"event_id": "{id}"}, Project: `{type: .type}`}
	cfg.Mappings = map[string][]Action{
		"Placed": {{Action: ActionUpsert, Table: orders, Key: key, Project: `{total: .data.total}`}, seen},
		"Paid":   {{Action: ActionPatch, Table: orders, Key: key, Project: `{status: "paid"}`}, seen},
		"Noted":  {{Action: ActionPatch, Table: orders, Key: key, Project: `{note: .data.note}`}, seen},
		"Gone":   {{Action: ActionDelete, Table: orders, Key: key}, seen},
	}
	return cfg
}

// rbEvents are n events over streams orders: rounds of Placed, Paid,
// Noted and (with deletes) Gone.
func rbEvents(prefix string, from, n, streams int, deletes bool) []envelope.Event {
	types := []string{"Placed", "Paid", "Noted", "Gone"}
	if !deletes {
		types[3] = "Placed"
	}
	out := make([]envelope.Event, 0, n)
	for i := from; i < from+n; i++ {
		typ := types[(i/streams)%4]
		data := "{}"
		switch typ {
		case "Placed":
			data = fmt.Sprintf(`{"total": %d}`, i)
		case "Noted":
			data = fmt.Sprintf(`{"note": "n%d"}`, i)
		}
		out = append(out, envelope.Event{ID: fmt.Sprintf("%s-%d", prefix, i), StreamID: fmt.Sprintf("o%03d", i%streams),
			Category: "order", Type: typ, Version: uint64(i + 1), Time: time.Now().UTC(), Data: json.RawMessage(data)})
	}
	return out
}

func (e *rbEnv) publish(t testing.TB, events []envelope.Event) {
	t.Helper()
	for i := range events {
		ack, err := e.js.PublishMsg(context.Background(), events[i].ToMsg())
		if err != nil {
			t.Errorf("publishing: %v", err)
			return
		}
		events[i].Position = ack.Sequence
	}
}

func (e *rbEnv) start(t *testing.T, cfg Config) *sinktest.Running {
	t.Helper()
	w, err := NewWriter(cfg, rbLog())
	if err != nil {
		t.Fatal(err)
	}
	eng, err := sink.New(cfg.Config, e.js, w, nil, rbLog())
	if err != nil {
		t.Fatal(err)
	}
	return sinktest.Start(t, eng)
}

// foldOrders is the orders table the events should leave, independently of
// the sink: order_id -> "total/status/note@position".
func foldOrders(events []envelope.Event) map[string]string {
	type row struct {
		total, status, note string
		pos                 uint64
	}
	rows := map[string]*row{}
	for _, ev := range events {
		var d struct {
			Total *int   `json:"total"`
			Note  string `json:"note"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		r := rows[ev.StreamID]
		switch ev.Type {
		case "Placed":
			r = &row{total: fmt.Sprint(*d.Total), status: "-", note: "-"}
			rows[ev.StreamID] = r
		case "Gone":
			delete(rows, ev.StreamID)
			continue
		default:
			if r == nil {
				r = &row{total: "-", status: "-", note: "-"}
				rows[ev.StreamID] = r
			}
			if ev.Type == "Paid" {
				r.status = "paid"
			} else {
				r.note = d.Note
			}
		}
		r.pos = ev.Position
	}
	out := map[string]string{}
	for k, r := range rows {
		out[k] = fmt.Sprintf("%s/%s/%s@%d", r.total, r.status, r.note, r.pos)
	}
	return out
}

func (e *rbEnv) orders(t testing.TB, table string) map[string]string {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT order_id, coalesce(total::text,'-')||'/'||coalesce(status,'-')||'/'||coalesce(note,'-')||'@'||_position FROM `+quote(table))
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var k, v string
		err := r.Scan(&k, &v)
		return [2]string{k, v}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, kv := range out {
		m[kv[0]] = kv[1]
	}
	return m
}

func (e *rbEnv) count(t testing.TB, table string) int64 {
	t.Helper()
	var n int64
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM `+quote(table)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *rbEnv) exists(t testing.TB, table string) bool {
	t.Helper()
	var ok bool
	if err := e.pool.QueryRow(context.Background(), `SELECT to_regclass($1) IS NOT NULL`, quote(table)).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func compareRows(t testing.TB, what string, want, got map[string]string) {
	t.Helper()
	if len(want) != len(got) {
		t.Errorf("%s: %d rows, want %d", what, len(got), len(want))
	}
	n := 0
	for k, w := range want {
		if got[k] != w && n < 5 {
			t.Errorf("%s: row %s = %q, want %q", what, k, got[k], w)
			n++
		}
	}
}

func headOf(events []envelope.Event) uint64 { return events[len(events)-1].Position }

// A rebuild while the live sink runs and events keep coming: readers of a
// table whose row count only grows never see it shrink (an empty or partial
// table) across the swap; afterwards the live names hold the rebuilt tables,
// equal to an independent fold of the log and to a fresh single pass; the
// old tables are kept under their dated names, complete through the swap;
// the live sink writes its next batches into the new tables by name.
func TestRebuildUnderLoad(t *testing.T) {
	e := newRBEnv(t)
	ctx := context.Background()
	cfg := rbConfig(e.url, "live", "rb")
	var mu sync.Mutex
	all := rbEvents("a", 0, 3000, 40, true)
	e.publish(t, all)
	live := e.start(t, cfg)
	live.WaitFor(t, headOf(all), 60*time.Second)

	// Load: events appended all along the rebuild (no deletes: the reader
	// below counts a table that only grows anyway).
	stopLoad, loadDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(loadDone)
		for i := 0; ; i += 20 {
			select {
			case <-stopLoad:
				return
			case <-time.After(10 * time.Millisecond):
			}
			batch := rbEvents("b", i, 20, 40, false)
			e.publish(t, batch)
			mu.Lock()
			all = append(all, batch...)
			mu.Unlock()
		}
	}()

	// Reader: the events table's row count, and which table answered.
	var reads, shrank, failed atomic.Int64
	var firstFailure atomic.Value
	oids := sync.Map{}
	stopRead, readDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(readDone)
		var prev int64
		for {
			select {
			case <-stopRead:
				return
			default:
			}
			var n, oid int64
			err := e.pool.QueryRow(ctx, `SELECT count(*), coalesce(min(tableoid::oid::bigint), 0) FROM rb_events`).Scan(&n, &oid)
			reads.Add(1)
			switch {
			case err != nil:
				failed.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())
			case n < prev || n == 0:
				shrank.Add(1)
				firstFailure.CompareAndSwap(nil, fmt.Sprintf("count went from %d to %d", prev, n))
			default:
				prev = n
				oids.Store(oid, true)
			}
		}
	}()

	oldOID := e.oid(t, "rb_events")
	res, err := Rebuild(ctx, cfg, e.js, rbLog(), RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // readers and the live sink on the new tables a moment
	close(stopLoad)
	<-loadDone
	close(stopRead)
	<-readDone
	t.Logf("rebuild through %d: %d events in %s, live sink waited %s; %d reads", res.Through, res.Events, res.Took.Round(time.Millisecond), res.Locked.Round(time.Millisecond), reads.Load())
	if n := failed.Load() + shrank.Load(); n > 0 {
		t.Errorf("%d of %d reads failed or saw fewer rows than before; first: %v", n, reads.Load(), firstFailure.Load())
	}
	newOID := e.oid(t, "rb_events")
	if _, ok := oids.Load(oldOID); !ok {
		t.Error("no read was answered by the old table")
	}
	if _, ok := oids.Load(newOID); !ok || newOID == oldOID {
		t.Error("no read was answered by the new table")
	}

	// The old tables: kept under the dated name, complete through the swap.
	mu.Lock()
	final := append([]envelope.Event{}, all...)
	mu.Unlock()
	var atSwap []envelope.Event
	for _, ev := range final {
		if ev.Position <= res.Through {
			atSwap = append(atSwap, ev)
		}
	}
	if len(final)-len(atSwap) < 10 || len(atSwap) <= 3000 {
		t.Errorf("%d events before the swap, %d after: not under load", len(atSwap), len(final)-len(atSwap))
	}
	if !strings.HasPrefix(res.Old["rb_orders"], "rb_orders__old_") || len(res.DropStatements()) != 2 {
		t.Errorf("old tables %v, drop statements %v", res.Old, res.DropStatements())
	}
	compareRows(t, "old orders table", foldOrders(atSwap), e.orders(t, res.Old["rb_orders"]))
	if n := e.count(t, res.Old["rb_events"]); n != int64(len(atSwap)) {
		t.Errorf("old events table has %d rows, want %d", n, len(atSwap))
	}
	if e.exists(t, "rb_orders__rebuild") || e.exists(t, "rb_events__rebuild") {
		t.Error("a shadow table is left")
	}
	if _, err := liveCheckpoint(ctx, e.pool, res.Sink); err == nil {
		t.Error("the rebuild's checkpoint row is left")
	}

	// The live sink goes on, into the new tables.
	more := rbEvents("c", 0, 100, 40, true)
	e.publish(t, more)
	final = append(final, more...)
	live.WaitFor(t, headOf(final), 60*time.Second)
	if err := live.Err(); err != nil {
		t.Fatalf("live sink: %v", err)
	}
	compareRows(t, "rebuilt orders table", foldOrders(final), e.orders(t, "rb_orders"))
	if n := e.count(t, "rb_events"); n != int64(len(final)) {
		t.Errorf("rebuilt events table has %d rows, want %d", n, len(final))
	}
	if n := e.count(t, res.Old["rb_events"]); n != int64(len(atSwap)) {
		t.Errorf("the old events table got writes after the swap: %d rows, want %d", n, len(atSwap))
	}

	// A fresh single pass over the same log ends in the same rows.
	fresh := rbConfig(e.url, "fresh", "fresh")
	fr := e.start(t, fresh)
	fr.WaitFor(t, headOf(final), 60*time.Second)
	compareRows(t, "rebuilt vs fresh pass", e.orders(t, "fresh_orders"), e.orders(t, "rb_orders"))
}

func (e *rbEnv) oid(t testing.TB, table string) int64 {
	t.Helper()
	var oid int64
	if err := e.pool.QueryRow(context.Background(), `SELECT $1::regclass::oid::bigint`, table).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	return oid
}

// A rebuild whose shadow table refuses an event (the rebuild's config
// declares note as integer; the log holds text) ends with an error naming
// the event; the live tables are untouched and the live sink goes on; the
// shadow tables are dropped, or kept with KeepFailed; no table is renamed;
// the rebuild's checkpoint row is gone.
func TestRebuildStopsAtRefusedEvent(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep-failed=%v", keep), func(t *testing.T) {
			e := newRBEnv(t)
			ctx := context.Background()
			cfg := rbConfig(e.url, "live", "rf")
			events := rbEvents("a", 0, 500, 20, true)
			e.publish(t, events)
			live := e.start(t, cfg)
			live.WaitFor(t, headOf(events), 60*time.Second)

			rcfg := rbConfig(e.url, "live", "rf")
			rcfg.Tables["rf_orders"].Columns["note"] = "integer"
			var bad envelope.Event // the first Noted event
			for _, ev := range events {
				if ev.Type == "Noted" {
					bad = ev
					break
				}
			}
			_, err := Rebuild(ctx, rcfg, e.js, rbLog(), RebuildOptions{KeepFailed: keep})
			t.Logf("rebuild: %v", err)
			if !errors.Is(err, ErrRebuild) || !errors.Is(err, sink.ErrStopped) || !errors.Is(err, ErrRefused) {
				t.Fatalf("got %v, want ErrRebuild, sink.ErrStopped and ErrRefused", err)
			}
			if !strings.Contains(err.Error(), bad.ID) || !strings.Contains(err.Error(), "the live tables are untouched") {
				t.Errorf("the error does not name the event %s or say the live tables are untouched: %v", bad.ID, err)
			}
			if got := e.exists(t, "rf_orders__rebuild"); got != keep {
				t.Errorf("shadow table exists: %v, want %v", got, keep)
			}
			var olds int
			if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename LIKE 'rf%\_\_old\_%'`).Scan(&olds); err != nil || olds != 0 {
				t.Errorf("%d renamed tables (%v), want none", olds, err)
			}
			if _, err := liveCheckpoint(ctx, e.pool, "live/rebuild"); err == nil {
				t.Error("the rebuild's checkpoint row is left")
			}
			compareRows(t, "live orders table", foldOrders(events), e.orders(t, "rf_orders"))

			more := rbEvents("b", 500, 50, 20, true)
			e.publish(t, more)
			all := append(events, more...)
			live.WaitFor(t, headOf(all), 60*time.Second)
			compareRows(t, "live orders table after", foldOrders(all), e.orders(t, "rf_orders"))

			// A rebuild after a kept failure starts afresh and goes through.
			res, err := Rebuild(ctx, cfg, e.js, rbLog(), RebuildOptions{})
			if err != nil {
				t.Fatal(err)
			}
			compareRows(t, "rebuilt", e.orders(t, res.Old["rf_orders"]), e.orders(t, "rf_orders"))
		})
	}
}

// A rebuild whose swap cannot get the live sink's checkpoint row (held
// here by a transaction standing in for a stuck live sink) gives up after
// its attempts with an error saying why, live tables untouched.
func TestRebuildGivesUpWhenLiveRowHeld(t *testing.T) {
	e := newRBEnv(t)
	ctx := context.Background()
	cfg := rbConfig(e.url, "live", "rh")
	events := rbEvents("a", 0, 200, 20, true)
	e.publish(t, events)
	live := e.start(t, cfg)
	live.WaitFor(t, headOf(events), 60*time.Second)
	if err := live.Stop(t); err != nil {
		t.Fatal(err)
	}
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM jetsync_checkpoints WHERE sink = 'live' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	_, err = Rebuild(ctx, cfg, e.js, rbLog(), RebuildOptions{SwapAttempts: 2, LockTimeout: 200 * time.Millisecond})
	t.Logf("rebuild: %v", err)
	if !errors.Is(err, ErrRebuild) || !strings.Contains(err.Error(), "stayed ahead") || !strings.Contains(err.Error(), "untouched") {
		t.Fatalf("got %v", err)
	}
	if e.exists(t, "rh_orders__rebuild") {
		t.Error("the shadow table is left")
	}
	compareRows(t, "live orders table", foldOrders(events), e.orders(t, "rh_orders"))
}

// A config with raw SQL cannot be rebuilt: its statements name the live
// tables, so a replay would apply them to those again.
func TestRebuildRefusesRawSQL(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Tables = map[string]Table{"orders": {Columns: map[string]string{"order_id": "text"}, PrimaryKey: []string{"order_id"}}}
	cfg.Mappings = map[string][]Action{"Placed": {
		{Action: ActionUpsert, Table: "orders", Key: map[string]string{"order_id": "{streamId}"}, Project: `{}`},
		{SQL: "UPDATE counters SET n = n + 1 WHERE id = :id", Params: `{id: .streamId}`},
	}}
	_, err := rebuildTables(&cfg)
	if !errors.Is(err, ErrRebuild) || !strings.Contains(err.Error(), "mappings.Placed[1] is raw SQL") {
		t.Fatalf("rebuildTables = %v, want ErrRebuild naming mappings.Placed[1]", err)
	}
}
