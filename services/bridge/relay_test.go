package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/outbox"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// One PostgreSQL server for the package's tests (each test its own table):
// initdb costs seconds.
var (
	pgOnce sync.Once
	pgSrv  *testenv.PostgresServer
	pgDir  string
	pgErr  error
)

func sharedPostgres(t testing.TB) *testenv.PostgresServer {
	t.Helper()
	pgOnce.Do(func() {
		if pgDir, pgErr = os.MkdirTemp("", "jetsync-bridge-pg-"); pgErr == nil {
			pgSrv, pgErr = testenv.StartPostgres(pgDir)
		}
	})
	if pgErr != nil {
		t.Fatalf("starting the test PostgreSQL: %v", pgErr)
	}
	return pgSrv
}

func stopSharedPostgres() {
	if pgSrv != nil {
		pgSrv.Stop()
	}
	if pgDir != "" {
		_ = os.RemoveAll(pgDir)
	}
}

// relayEnv is a NATS server with the event stream, a PostgreSQL table of
// the test's own, and a relay configuration for it.
type relayEnv struct {
	t      *testing.T
	ns     *testenv.NATSServer
	js     jetstream.JetStream
	stream jetstream.Stream
	pg     *testenv.PostgresServer
	db     *pgx.Conn
	cfg    SourceConfig
}

func newRelayEnv(t *testing.T, streamCfg natsutil.StreamConfig) *relayEnv {
	t.Helper()
	e := &relayEnv{t: t, ns: testenv.NATS(t), pg: sharedPostgres(t)}
	_, e.js = e.ns.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if e.stream, err = natsutil.EnsureStream(ctx, e.js, streamCfg); err != nil {
		t.Fatal(err)
	}
	e.db = e.connect()
	table := "t_" + strings.ToLower(strings.NewReplacer("/", "_", "-", "_").Replace(t.Name()))
	if len(table) > 50 {
		table = table[:50]
	}
	if _, err := e.db.Exec(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
		t.Fatal(err)
	}
	e.cfg = DefaultSourceConfig()
	e.cfg.Name = strings.ReplaceAll(table, "_", "-")
	e.cfg.PostgresURL = e.pg.URL
	e.cfg.Table = table
	e.cfg.AckTimeout = 10 * time.Second
	return e
}

func (e *relayEnv) connect() *pgx.Conn {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, e.pg.URL)
	if err != nil {
		e.t.Fatalf("connecting to PostgreSQL: %v", err)
	}
	e.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func (e *relayEnv) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// createTextTable creates the test's table by hand, its columns text: data
// and metadata may hold anything, valid or not.
func (e *relayEnv) createTextTable() {
	e.exec(`CREATE TABLE ` + e.cfg.Table + ` (id bigserial PRIMARY KEY, transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
		event_id text, category text, stream_id text, type text, data text, metadata text, created_at timestamptz DEFAULT now())`)
}

// createOutbox creates the test's table with pkg/outbox's DDL.
func (e *relayEnv) createOutbox() {
	e.t.Helper()
	if err := outbox.Create(context.Background(), e.db, e.cfg.Table); err != nil {
		e.t.Fatal(err)
	}
}

// start runs a relay of cfg until the test ends; its Run result arrives
// on the returned channel.
func (e *relayEnv) start(cfg SourceConfig) (*Relay, <-chan error) {
	e.t.Helper()
	if err := (&Config{Source: cfg}).Source.validateErr(); err != nil {
		e.t.Fatal(err)
	}
	r := NewRelay(cfg, e.js, natsutil.DefaultStreamConfig(), testLogger(e.t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		done <- r.Run(ctx)
		close(finished)
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(30 * time.Second):
			e.t.Error("relay did not stop within 30s")
		}
	})
	return r, done
}

// events reads every stored event of the stream in order.
func (e *relayEnv) events() []envelope.Event {
	e.t.Helper()
	return readAll(e.t, e.js)
}

func readAll(t testing.TB, js jetstream.JetStream) []envelope.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, natsutil.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []envelope.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		ev, err := envelope.FromMsg(m.Subject, m.Header, m.Data, m.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func (e *relayEnv) count() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := e.stream.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.Msgs
}

func (e *relayEnv) waitCount(n uint64) {
	e.t.Helper()
	testenv.Eventually(e.t, 30*time.Second, func() bool { return e.count() >= n }, "the stream to hold %d events (has %d)", n, e.count())
	if got := e.count(); got != n {
		e.t.Fatalf("the stream holds %d events, want %d", got, n)
	}
}

func ids(evs []envelope.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

// TestRelayOutOfOrderCommit: transaction A inserts first (smaller id) and
// commits last; B commits in between and the relay polls while A is open.
// A naive `id > last` reader loses A's row; the relay publishes both, in
// (transaction_id, id) order: A then B.
func TestRelayOutOfOrderCommit(t *testing.T) {
	e := newRelayEnv(t, natsutil.DefaultStreamConfig())
	e.createOutbox()
	ctx := context.Background()
	connA, connB := e.connect(), e.connect()

	ob := outbox.Outbox{Table: e.cfg.Table}
	txA, err := connA.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Append(ctx, txA, outboxEvent("A", "order-1")); err != nil {
		t.Fatal(err)
	}
	txB, err := connB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Append(ctx, txB, outboxEvent("B", "order-1")); err != nil {
		t.Fatal(err)
	}
	if err := txB.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// The naive reader, polling now, sees B only and moves past A's id.
	var idA, idB int64
	if err := e.db.QueryRow(ctx, "SELECT (SELECT id FROM "+e.cfg.Table+" WHERE event_id='B'), (SELECT max(id) FROM "+e.cfg.Table+")").Scan(&idB, &idB); err != nil {
		t.Fatal(err)
	}
	naive := naiveRead(t, e.db, e.cfg.Table, 0)
	if strings.Join(naive, ",") != "B" {
		t.Fatalf("naive reader saw %v while A is open, want [B]", naive)
	}
	naiveLast := idB

	// The relay polls in the middle: B is committed but held behind A.
	r, _ := e.start(e.cfg)
	testenv.Eventually(t, 30*time.Second, func() bool { return r.Status().HeldSeconds > 0 }, "the relay to report rows held back by A")
	if n := e.count(); n != 0 {
		t.Fatalf("the relay published %d events while A was open; B must wait behind A", n)
	}
	if s := r.Status(); !strings.Contains(s.HeldBy, "transaction") {
		t.Errorf("status held_by = %q, want the holding transaction", s.HeldBy)
	}

	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitCount(2)
	got := e.events()
	if strings.Join(ids(got), ",") != "A,B" || got[0].Version != 1 || got[1].Version != 2 {
		t.Fatalf("relay published %v (versions %d, %d), want A then B, versions 1 and 2", ids(got), got[0].Version, got[1].Version)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return r.Status().HeldSeconds == 0 }, "held_seconds back to 0")

	// The naive reader, polling after A's commit, never sees A: its id is
	// below the cursor.
	if err := e.db.QueryRow(ctx, "SELECT id FROM "+e.cfg.Table+" WHERE event_id='A'").Scan(&idA); err != nil {
		t.Fatal(err)
	}
	if idA >= naiveLast {
		t.Fatalf("A's id %d is not below B's %d: the test did not reproduce the late commit", idA, naiveLast)
	}
	if after := naiveRead(t, e.db, e.cfg.Table, naiveLast); len(after) != 0 {
		t.Fatalf("naive reader found %v after its cursor", after)
	}
	t.Logf("A id=%d committed after B id=%d: naive `id > last` reader lost A; the relay published A, B", idA, idB)
}

func naiveRead(t *testing.T, db *pgx.Conn, table string, after int64) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), "SELECT event_id FROM "+table+" WHERE id > $1 ORDER BY id", after)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func outboxEvent(id, stream string) outbox.Event {
	return outbox.Event{ID: id, Category: "order", StreamID: stream, Type: "OrderPlaced", Data: []byte(`{"id":"` + id + `"}`)}
}

// TestRelayResumesExactlyOnceBeyondDuplicateWindow: a relay that
// published rows but died before saving its cursor (the saved cursor is put
// back) starts again long after the duplicate window: every row is still
// stored once, in order, found by the cursor in each message's headers.
func TestRelayResumesExactlyOnceBeyondDuplicateWindow(t *testing.T) {
	sc := natsutil.DefaultStreamConfig()
	sc.DuplicateWindow = 200 * time.Millisecond
	e := newRelayEnv(t, sc)
	e.createOutbox()
	e.cfg.BatchSize = 7
	insert := func(from, to int) {
		for i := from; i < to; i++ {
			e.exec("INSERT INTO "+e.cfg.Table+" (event_id, category, stream_id, type, data) VALUES ($1, 'order', $2, 'T', '{}')",
				fmt.Sprintf("ev-%d", i), fmt.Sprintf("o-%d", i%3))
		}
	}
	insert(0, 30)
	ctx, cancel := context.WithCancel(context.Background())
	r := NewRelay(e.cfg, e.js, natsutil.DefaultStreamConfig(), testLogger(t))
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	e.waitCount(30)
	testenv.Eventually(t, 10*time.Second, func() bool { return r.Status().Published == 30 }, "published 30")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The crash: the cursor as it was before the relay published anything.
	kv, err := e.js.KeyValue(context.Background(), RelayBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), e.cfg.Name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * sc.DuplicateWindow) // past the window: Nats-Msg-Id no longer deduplicates
	insert(30, 40)
	r2, _ := e.start(e.cfg)
	e.waitCount(40)
	testenv.Eventually(t, 10*time.Second, func() bool { s := r2.Status(); return s.Published == 10 && s.Present == 30 }, "the second relay to publish 10 and find 30 present (status %+v)", r2.Status())
	checkStreams(t, e.events(), 40)
}

// checkStreams checks every event is there once and each stream's versions
// run 1, 2, 3, ... in id order.
func checkStreams(t *testing.T, evs []envelope.Event, want int) {
	t.Helper()
	seen := map[string]bool{}
	version := map[string]uint64{}
	for _, ev := range evs {
		if seen[ev.ID] {
			t.Fatalf("event %s stored twice", ev.ID)
		}
		seen[ev.ID] = true
		s := ev.Subject()
		if ev.Version != version[s]+1 {
			t.Fatalf("%s: event %s has version %d after %d", s, ev.ID, ev.Version, version[s])
		}
		version[s] = ev.Version
	}
	if len(seen) != want {
		t.Fatalf("%d events stored, want %d", len(seen), want)
	}
}

// TestRelayBadRows: each kind of bad row stops the relay naming the row and
// the column, with nothing after it published; skip passes over it and
// dead-letter keeps it in the DLQ.
func TestRelayBadRows(t *testing.T) {
	for _, tc := range []struct {
		name, column string
		set          string // SQL fragment making row 2 bad
	}{
		{"data not JSON", "data", "data = '{not json'"},
		{"missing event id", "event_id", "event_id = NULL"},
		{"missing type", "type", "type = ''"},
		{"stream id not a token", "stream_id", "stream_id = 'a.b'"},
		{"category not a token", "category", "category = 'or der'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRelayEnv(t, natsutil.DefaultStreamConfig())
			e.createTextTable()
			for i := 1; i <= 4; i++ {
				e.exec("INSERT INTO "+e.cfg.Table+" (event_id, category, stream_id, type, data) VALUES ($1, 'order', 'o-1', 'T', '{}')", fmt.Sprintf("ev-%d", i))
			}
			e.exec("UPDATE " + e.cfg.Table + " SET " + tc.set + " WHERE id = 2")

			_, done := e.start(e.cfg)
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the relay did not stop at the bad row")
			}
			var re *RowError
			if !errors.As(err, &re) || re.Row != 2 || re.Column != tc.column || !errors.Is(err, ErrBadRow) {
				t.Fatalf("relay stopped with %v, want a RowError naming row 2 and column %s", err, tc.column)
			}
			if !strings.Contains(err.Error(), "row id=2: column "+tc.column) {
				t.Errorf("error %q does not name the row and column", err)
			}
			if got := ids(e.events()); strings.Join(got, ",") != "ev-1" {
				t.Fatalf("published %v before stopping, want only ev-1 (nothing after the bad row)", got)
			}
			// The cursor covers row 1 only: fixing the row and starting again
			// publishes the rest in order.
			e.exec("UPDATE " + e.cfg.Table + " SET event_id = 'ev-2', type = 'T', data = '{}', stream_id = 'o-1', category = 'order' WHERE id = 2")
			r, _ := e.start(e.cfg)
			e.waitCount(4)
			if got := ids(e.events()); strings.Join(got, ",") != "ev-1,ev-2,ev-3,ev-4" {
				t.Fatalf("after the fix published %v", got)
			}
			_ = r
		})
	}

	t.Run("skip", func(t *testing.T) {
		e := newRelayEnv(t, natsutil.DefaultStreamConfig())
		e.createTextTable()
		for i := 1; i <= 4; i++ {
			e.exec("INSERT INTO "+e.cfg.Table+" (event_id, category, stream_id, type, data) VALUES ($1, 'order', 'o-1', 'T', $2)", fmt.Sprintf("ev-%d", i), map[bool]string{true: "nope", false: "{}"}[i == 2])
		}
		e.cfg.OnError = onErrorSkip
		r, _ := e.start(e.cfg)
		e.waitCount(3)
		testenv.Eventually(t, 10*time.Second, func() bool { return r.Status().Skipped == 1 }, "one row skipped")
		got := e.events()
		if strings.Join(ids(got), ",") != "ev-1,ev-3,ev-4" || got[2].Version != 3 {
			t.Fatalf("published %v, want ev-1, ev-3, ev-4 with versions 1..3", ids(got))
		}
	})

	t.Run("dead-letter", func(t *testing.T) {
		e := newRelayEnv(t, natsutil.DefaultStreamConfig())
		e.createTextTable()
		for i := 1; i <= 3; i++ {
			e.exec("INSERT INTO "+e.cfg.Table+" (event_id, category, stream_id, type, data) VALUES ($1, 'order', $2, 'T', '{}')", fmt.Sprintf("ev-%d", i), map[bool]string{true: "o.1", false: "o-1"}[i == 2])
		}
		e.cfg.OnError = onErrorDeadLetter
		r, _ := e.start(e.cfg)
		e.waitCount(2)
		testenv.Eventually(t, 10*time.Second, func() bool { return r.Status().DeadLettered == 1 }, "one row dead-lettered")
		ctx := context.Background()
		dlq, err := e.js.Stream(ctx, deadletter.Stream)
		if err != nil {
			t.Fatal(err)
		}
		m, err := dlq.GetLastMsgForSubject(ctx, deadletter.Subject("relay-"+e.cfg.Name))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(m.Header.Get(deadletter.HeaderError), "column stream_id") || !strings.Contains(string(m.Data), `"o.1"`) || m.Header.Get(deadletter.HeaderPosition) != "2" {
			t.Fatalf("dead letter %s %v does not hold row 2 and its error", m.Data, m.Header)
		}
	})
}

// TestRelayTableVersions: with a version column, versions are the table's,
// checked gap-free per stream; a gap or a rewind stops the relay naming the
// stream and both versions.
func TestRelayTableVersions(t *testing.T) {
	for _, tc := range []struct {
		name     string
		versions []int
		want     string // error text; "" for none
	}{
		{"in order", []int{1, 2, 3}, ""},
		{"gap", []int{1, 2, 4}, "stream order/o-1 is at version 2 and the row has version 4, a gap"},
		{"rewind", []int{1, 2, 2}, "stream order/o-1 is at version 2 and the row has version 2, a rewind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRelayEnv(t, natsutil.DefaultStreamConfig())
			e.exec(`CREATE TABLE ` + e.cfg.Table + ` (seq bigserial PRIMARY KEY, xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
				id uuid NOT NULL DEFAULT gen_random_uuid(), aggregate text, kind text, body jsonb, at timestamptz DEFAULT now(), v int)`)
			for _, v := range tc.versions {
				e.exec("INSERT INTO "+e.cfg.Table+" (aggregate, kind, body, v) VALUES ('o-1', 'T', '{}', $1)", v)
			}
			e.cfg.Columns = SourceColumns{Position: "seq", TransactionID: "xid", EventID: "id", StreamID: "aggregate", Type: "kind", Data: "body", Time: "at", Version: "v"}
			e.cfg.Category = "order"
			r, done := e.start(e.cfg)
			if tc.want == "" {
				e.waitCount(3)
				got := e.events()
				if got[2].Version != 3 {
					t.Fatalf("versions %d %d %d", got[0].Version, got[1].Version, got[2].Version)
				}
				return
			}
			select {
			case err := <-done:
				if !errors.Is(err, ErrVersionGap) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "row seq=3") {
					t.Fatalf("relay stopped with %v, want %q", err, tc.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the relay did not stop")
			}
			if n := e.count(); n != 2 {
				t.Fatalf("%d events published, want the 2 before the bad version", n)
			}
			if s := r.Status(); s.State != RelayStopped || s.Cursor != "" && !strings.HasSuffix(s.Cursor, ":2") {
				t.Fatalf("status %+v, want stopped with the cursor at row 2", s)
			}
		})
	}
}

// TestRelayCategoryTemplate: the category from a template of columns.
func TestRelayCategoryTemplate(t *testing.T) {
	e := newRelayEnv(t, natsutil.DefaultStreamConfig())
	e.exec(`CREATE TABLE ` + e.cfg.Table + ` (id bigserial PRIMARY KEY, transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
		event_id text, agg_type text, stream_id text, type text, data jsonb, created_at timestamptz DEFAULT now())`)
	e.exec("INSERT INTO " + e.cfg.Table + " (event_id, agg_type, stream_id, type, data) VALUES ('e1', 'order', 'o-1', 'T', '{}'), ('e2', 'user', 'u-1', 'T', '{}')")
	e.cfg.Columns.Category, e.cfg.Columns.Metadata = "", ""
	e.cfg.Category = "shop-{agg_type}"
	e.start(e.cfg)
	e.waitCount(2)
	got := e.events()
	if got[0].Subject() != "events.shop-order.o-1" || got[1].Subject() != "events.shop-user.u-1" {
		t.Fatalf("subjects %s, %s", got[0].Subject(), got[1].Subject())
	}
}

// TestRelaySecondInstanceConflicts: two relays of one name cannot both
// advance the cursor; one stops with ErrRelayConflict.
func TestRelaySecondInstanceConflicts(t *testing.T) {
	e := newRelayEnv(t, natsutil.DefaultStreamConfig())
	e.createOutbox()
	e.cfg.BatchSize = 1
	for i := range 50 {
		e.exec("INSERT INTO "+e.cfg.Table+" (event_id, category, stream_id, type, data) VALUES ($1, 'order', 'o-1', 'T', '{}')", fmt.Sprintf("ev-%d", i))
	}
	_, d1 := e.start(e.cfg)
	_, d2 := e.start(e.cfg)
	select {
	case err := <-d1:
		if !errors.Is(err, ErrRelayConflict) {
			t.Fatalf("first relay: %v", err)
		}
	case err := <-d2:
		if !errors.Is(err, ErrRelayConflict) {
			t.Fatalf("second relay: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("neither relay saw the other")
	}
}

// TestRelayOrderPastTextOrder: transaction ids are ordered as numbers, not
// as the text the relay reads them as (999 before 1000, with batches of one
// row so the cursor crosses the boundary).
func TestRelayOrderPastTextOrder(t *testing.T) {
	e := newRelayEnv(t, natsutil.DefaultStreamConfig())
	e.createOutbox()
	for { // transaction ids past 1001, so these are all committed history
		var x int64
		if err := e.db.QueryRow(context.Background(), "SELECT pg_current_xact_id()::text::bigint").Scan(&x); err != nil {
			t.Fatal(err)
		}
		if x > 1010 {
			break
		}
	}
	for i, tx := range []string{"99", "999", "1000", "1001", "1002"} {
		e.exec("INSERT INTO "+e.cfg.Table+" (transaction_id, event_id, category, stream_id, type, data) VALUES ($1::text::xid8, $2, 'order', 'o-1', 'T', '{}')",
			tx, fmt.Sprintf("ev-%d", i))
	}
	e.cfg.BatchSize = 1
	e.start(e.cfg)
	e.waitCount(5)
	if got := strings.Join(ids(e.events()), ","); got != "ev-0,ev-1,ev-2,ev-3,ev-4" {
		t.Fatalf("published %s, want ev-0..ev-4 in transaction id order", got)
	}
}
