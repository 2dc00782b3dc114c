package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/outbox"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestServeRunsTheRelay: `bridge serve` with a source: section relays
// beside the API; a NOTIFY wakes it (the poll interval is an hour), an open
// transaction shows in jetsync_relay_held_seconds and GET /status, and its
// committed rows follow once it ends.
func TestServeRunsTheRelay(t *testing.T) {
	pg := sharedPostgres(t)
	ctx := context.Background()
	db, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	const table = "serve_outbox"
	if _, err := db.Exec(ctx, "DROP TABLE IF EXISTS "+table+"; "+outbox.DDLFor(table)+outbox.NotifyDDL(table, "serve_outbox")); err != nil {
		t.Fatal(err)
	}
	cfg := embeddedConfig(t, t.TempDir())
	cfg.Source.PostgresURL = pg.URL
	cfg.Source.Name = "serve"
	cfg.Source.Table = table
	cfg.Source.PollInterval = time.Hour
	cfg.Source.ListenChannel = "serve_outbox"
	cfg.Source.StatusListen = "127.0.0.1:" + itoa(testenv.FreePort(t))
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	url := "http://" + b.Addr()
	ob := outbox.Outbox{Table: table}
	appendCommit := func(id string) {
		tx, err := db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ob.Append(ctx, tx, outboxEvent(id, "o-1")); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	nc, js := connectEmbedded(t, b)
	_ = nc
	count := func() int { return len(readAll(t, js)) }
	testenv.Eventually(t, 30*time.Second, func() bool { return b.Relay().Status().State == RelayRunning }, "the relay to run")

	appendCommit("n1")
	testenv.Eventually(t, 10*time.Second, func() bool { return count() == 1 }, "the NOTIFY to wake the relay (poll interval 1h)")

	// An open transaction holds a later commit back.
	hold, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close(ctx)
	htx, err := hold.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Append(ctx, htx, outboxEvent("held", "o-2")); err != nil {
		t.Fatal(err)
	}
	appendCommit("n2")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return sample(t, scrape(t, url), "jetsync_relay_held_seconds", "source", "serve") >= 1
	}, "jetsync_relay_held_seconds to pass 1s")
	var st RelayStatus
	res, err := http.Get("http://" + cfg.Source.StatusListen + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if st.State != RelayRunning || st.HeldSeconds < 1 || !strings.Contains(st.HeldBy, "pid") || st.Published != 1 {
		t.Fatalf("GET /status %+v: want running, held for 1s+ by a transaction named with its pid, 1 published", st)
	}
	if count() != 1 {
		t.Fatal("n2 was published while an older transaction was open")
	}
	if err := htx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return count() == 3 }, "held and n2 after the commit")
	evs := readAll(t, js)
	if strings.Join(ids(evs), ",") != "n1,held,n2" {
		t.Fatalf("published %v, want n1, held, n2", ids(evs))
	}
	mfs := scrape(t, url)
	if v := sample(t, mfs, "jetsync_relay_events_published_total", "source", "serve"); v != 3 {
		t.Errorf("jetsync_relay_events_published_total = %v, want 3", v)
	}
	if v := sample(t, mfs, "jetsync_relay_up", "source", "serve"); v != 1 {
		t.Errorf("jetsync_relay_up = %v", v)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// connectEmbedded connects to a bridge's embedded NATS server.
func connectEmbedded(t *testing.T, b *Bridge) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(b.ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}
