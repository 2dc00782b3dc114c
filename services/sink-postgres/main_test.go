package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
	"github.com/jetsync/jetsync/services/sink-postgres/relational"
)

const configYAML = `name: live
nats:
  url: %s
postgres:
  url: %s
tables:
  m_orders:
    columns: {order_id: text, note: %s}
    primary_key: [order_id]
mappings:
  Noted:
    - {action: upsert, table: m_orders, key: {order_id: "{streamId}"}, project: "{note: .data.note}"}
`

// sink-postgres rebuild exits 1 when a shadow table refuses an event (the
// live table untouched, the shadow dropped), 0 when it goes through (the old
// table kept under its dated name), and 2 for a bad command line.
func TestRebuildCommand(t *testing.T) {
	pg := testenv.Postgres(t)
	n := testenv.NATS(t)
	_, js := n.Connect(t)
	ctx := context.Background()
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	var head uint64
	for i := range 50 {
		ev := envelope.Event{ID: fmt.Sprint("e", i), StreamID: fmt.Sprint("o", i%5), Category: "order", Type: "Noted",
			Version: uint64(i + 1), Time: time.Now().UTC(), Data: json.RawMessage(fmt.Sprintf(`{"note": "n%d"}`, i))}
		ack, err := js.PublishMsg(ctx, ev.ToMsg())
		if err != nil {
			t.Fatal(err)
		}
		head = ack.Sequence
	}
	dir := t.TempDir()
	write := func(name, noteType string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, fmt.Appendf(nil, configYAML, n.URL(), pg.URL, noteType), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, bad := write("good.yaml", "text"), write("bad.yaml", "integer")

	cfg := relational.DefaultConfig()
	cfg.Name, cfg.NATS.URL, cfg.Postgres.URL = "live", n.URL(), pg.URL
	cfg.Tables = map[string]relational.Table{"m_orders": {Columns: map[string]string{"order_id": "text", "note": "text"}, PrimaryKey: []string{"order_id"}}}
	cfg.Mappings = map[string][]relational.Action{"Noted": {{Action: relational.ActionUpsert, Table: "m_orders", Key: map[string]string{"order_id": "{streamId}"}, Project: "{note: .data.note}"}}}
	w, err := relational.NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := sink.New(cfg.Config, js, w, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	sinktest.Start(t, eng).WaitFor(t, head, 30*time.Second)

	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tables := func() string {
		var s string
		if err := conn.QueryRow(ctx, `SELECT string_agg(tablename, ' ' ORDER BY tablename) FROM pg_tables WHERE tablename LIKE 'm\_orders%'`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}

	if code := run(ctx, []string{"rebuild", "-config", bad}); code != 1 {
		t.Errorf("rebuild with a refused event: exit %d, want 1", code)
	}
	if got := tables(); got != "m_orders" {
		t.Errorf("after the failed rebuild, tables %q, want only m_orders", got)
	}
	if code := run(ctx, []string{"-config", good, "rebuild"}); code != 0 {
		t.Errorf("rebuild: exit %d, want 0", code)
	}
	if got := tables(); len(got) != len("m_orders m_orders__old_20060102150405") {
		t.Errorf("after the rebuild, tables %q, want m_orders and m_orders__old_<time>", got)
	}
	if code := run(ctx, []string{"rebuild", "-config", good, "extra"}); code != 2 {
		t.Errorf("extra argument: exit %d, want 2", code)
	}
}
