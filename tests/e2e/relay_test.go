package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/outbox"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestDrillRelayKilled: 8 writers commit transactions of 1 to 6 events to
// an outbox (some rolled back, some held open for a second or two) while
// `bridge relay` is SIGKILLed 10 times (x JETSYNC_DRILL_SCALE) and
// PostgreSQL is restarted once. At the end JetStream holds exactly the
// committed rows, each once, every stream's events in commit order with
// versions 1, 2, 3, ...; no rolled-back row.
func TestDrillRelayKilled(t *testing.T) {
	ns := testenv.NATS(t)
	pg := testenv.Postgres(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := pgConnect(t, ctx, pg.URL)
	if err := outbox.Create(ctx, db, outbox.DefaultTable); err != nil {
		t.Fatal(err)
	}
	db.Close(ctx)

	cfg := writeFile(t, "relay.yaml", fmt.Sprintf(`nats: {url: %q}
source:
  name: drill
  postgres_url: %q
  batch_size: 50
  poll_interval: 20ms
  ack_timeout: 10s
`, ns.URL(), pg.URL))
	relay := startProc(t, "bridge", "relay", "-config", cfg)

	var (
		mu         sync.Mutex
		rolledBack = map[string]bool{}
		commits    atomic.Int64
		held       atomic.Int64
		writeErrs  atomic.Int64
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.Background())
				}
			}()
			n := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				if conn == nil {
					c, err := pgx.Connect(ctx, pg.URL)
					if err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					conn = c
				}
				k := 1 + rng.IntN(6)
				evs := make([]outbox.Event, k)
				for i := range evs {
					n++
					// Each writer owns its streams, so a stream's order is
					// its writer's commit order.
					evs[i] = outbox.Event{ID: fmt.Sprintf("w%d-%d", w, n), Category: "drill", StreamID: fmt.Sprintf("w%d-s%d", w, rng.IntN(4)),
						Type: "Happened", Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}
				}
				roll := rng.IntN(10) == 0
				hold := rng.IntN(25) == 0
				err := func() error {
					tx, err := conn.Begin(ctx)
					if err != nil {
						return err
					}
					defer tx.Rollback(context.Background())
					if err := outbox.Append(ctx, tx, evs...); err != nil {
						return err
					}
					if hold {
						held.Add(1)
						time.Sleep(time.Duration(1000+rng.IntN(1000)) * time.Millisecond)
					}
					if roll {
						if err := tx.Rollback(ctx); err != nil {
							return err
						}
						mu.Lock()
						for _, e := range evs {
							rolledBack[e.ID] = true
						}
						mu.Unlock()
						return nil
					}
					// A commit that fails may still have committed: the
					// table is the truth the check compares with.
					return tx.Commit(ctx)
				}()
				if err != nil {
					writeErrs.Add(1)
					conn.Close(context.Background())
					conn = nil
					continue
				}
				if !roll {
					commits.Add(1)
				}
				time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
			}
		}()
	}

	kills := 10 * drillScale()
	pgRestartAt := kills / 2
	for i := range kills {
		time.Sleep(time.Duration(200+rand.IntN(500)) * time.Millisecond)
		select {
		case <-relay.done:
			t.Fatalf("the relay exited by itself before kill %d:\n%s", i+1, relay.output())
		default:
		}
		relay.kill()
		if i == pgRestartAt {
			pg.Stop()
			time.Sleep(300 * time.Millisecond)
			relay.start() // it retries until PostgreSQL is back
			time.Sleep(500 * time.Millisecond)
			pg.Start()
			t.Logf("PostgreSQL restarted after kill %d", i+1)
			continue
		}
		relay.start()
	}
	close(stop)
	wg.Wait()

	// The truth: every committed row, in relay order.
	db = pgConnect(t, ctx, pg.URL)
	defer db.Close(ctx)
	rows, err := db.Query(ctx, "SELECT event_id, stream_id FROM outbox ORDER BY transaction_id, id")
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ id, stream string }
	table, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.id, &x.stream)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, js := ns.Connect(t)
	count := func() uint64 {
		s, err := js.Stream(ctx, "EVENTS")
		if err != nil {
			return 0
		}
		info, err := s.Info(ctx)
		if err != nil {
			return 0
		}
		return info.State.Msgs
	}
	deadline := time.Now().Add(120 * time.Second)
	for count() < uint64(len(table)) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := count(); n < uint64(len(table)) {
		var snap string
		_ = db.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&snap)
		got := map[string]bool{}
		for _, e := range readAllEvents(t, ns.URL()) {
			got[e.id] = true
		}
		rows, _ := db.Query(ctx, "SELECT transaction_id::text, id, event_id, stream_id FROM outbox ORDER BY transaction_id, id")
		var missing []string
		for rows.Next() {
			var tx, eid, sid string
			var id int64
			_ = rows.Scan(&tx, &id, &eid, &sid)
			if !got[eid] {
				missing = append(missing, fmt.Sprintf("%s:%d %s %s", tx, id, eid, sid))
			}
		}
		rows.Close()
		if len(missing) > 10 {
			missing = missing[:10]
		}
		kv, _ := js.KeyValue(ctx, "jetsync-relay")
		var cur string
		if kv != nil {
			if e, err := kv.Get(ctx, "drill"); err == nil {
				cur = string(e.Value())
			}
		}
		t.Fatalf("the relay published %d of %d committed rows; snapshot %s, saved cursor %s, first missing: %v", n, len(table), snap, cur, missing)
	}
	time.Sleep(500 * time.Millisecond) // anything more would be a duplicate: give it time to show
	stored := readAllEvents(t, ns.URL())

	if len(stored) != len(table) {
		t.Errorf("JetStream holds %d events, the table %d committed rows", len(stored), len(table))
	}
	want := map[string][]string{} // stream -> ids in commit order
	inTable := map[string]bool{}
	for _, r := range table {
		subject := "events.drill." + r.stream
		want[subject] = append(want[subject], r.id)
		inTable[r.id] = true
	}
	got := map[string][]string{}
	seen := map[string]bool{}
	for _, e := range stored {
		if seen[e.id] {
			t.Fatalf("event %s stored twice", e.id)
		}
		seen[e.id] = true
		if rolledBack[e.id] {
			t.Fatalf("event %s of a rolled-back transaction was published", e.id)
		}
		if !inTable[e.id] {
			t.Fatalf("event %s is not a committed row", e.id)
		}
		got[e.subject] = append(got[e.subject], e.id)
		if int(e.version) != len(got[e.subject]) {
			t.Fatalf("%s: event %s has version %d, want %d", e.subject, e.id, e.version, len(got[e.subject]))
		}
	}
	for subject, ids := range want {
		if strings.Join(got[subject], ",") != strings.Join(ids, ",") {
			t.Fatalf("%s: published %v, committed %v", subject, got[subject], ids)
		}
	}
	for id := range rolledBack {
		if inTable[id] {
			t.Fatalf("rolled-back event %s is in the table", id)
		}
	}
	t.Logf("drill relay killed: %d committed rows in %d transactions (%d held open 1-2s, %d rolled back rows, %d writer errors), %d SIGKILLs, 1 PostgreSQL restart: %d events in JetStream, 0 lost, 0 twice, per-stream order intact",
		len(table), commits.Load(), held.Load(), len(rolledBack), writeErrs.Load(), kills, len(stored))
}

func pgConnect(t *testing.T, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	var c *pgx.Conn
	var err error
	for range 100 {
		if c, err = pgx.Connect(ctx, url); err == nil {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("connecting to PostgreSQL: %v", err)
	return nil
}

// TestRelayMakeUpConfigs: what `make up` runs for the relay, with its own
// config files (deploy/local/relay.yaml, deploy/local/sink-cache.yaml; only
// addresses overridden), and the README's one-line insert: the row shows up
// in Redis a moment later. The outbox table and its NOTIFY trigger are
// created by the relay (source.create_table).
func TestRelayMakeUpConfigs(t *testing.T) {
	s := newStack(t)
	pg := testenv.Postgres(t)
	t.Setenv("JETSYNC_NATS_URL", s.nats.URL())
	t.Setenv("JETSYNC_REDIS_ADDR", s.redis.Addr())
	t.Setenv("JETSYNC_HTTP_LISTEN", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
	status := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	t.Setenv("JETSYNC_SOURCE_POSTGRES_URL", pg.URL)
	t.Setenv("JETSYNC_SOURCE_STATUS_LISTEN", status)
	startProc(t, "sink-cache", "-config", "../../deploy/local/sink-cache.yaml")
	relay := startProc(t, "bridge", "relay", "-config", "../../deploy/local/relay.yaml")

	ctx := context.Background()
	db := pgConnect(t, ctx, pg.URL)
	defer db.Close(ctx)
	testenv.Eventually(t, 30*time.Second, func() bool {
		var ok bool
		return db.QueryRow(ctx, "SELECT to_regclass('outbox') IS NOT NULL").Scan(&ok) == nil && ok
	}, "the relay to create the outbox table:\n%s", relay.output())
	// The README's line (psql -c "..."), as psql receives it.
	const insert = `insert into outbox (event_id, category, stream_id, type, data) values (gen_random_uuid(), 'order', 'order-7', 'OrderPlaced', '{"total":7}')`
	if _, err := db.Exec(ctx, insert); err != nil {
		t.Fatal(err)
	}
	var got string
	testenv.Eventually(t, 30*time.Second, func() bool {
		got, _ = s.rdb.Get(ctx, "order:order-7").Result()
		return got != ""
	}, "order:order-7 in Redis:\n%s", relay.output())
	if got != `{"total": 7}` { // as jsonb writes it back
		t.Fatalf("order:order-7 = %q, want {\"total\": 7}", got)
	}
	code, body := get("http://" + status + "/status")
	if code != 200 || !strings.Contains(body, `"state":"running"`) || !strings.Contains(body, `"published":1`) {
		t.Fatalf("GET /status: %d %s", code, body)
	}
}
