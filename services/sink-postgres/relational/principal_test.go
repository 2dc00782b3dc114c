package relational

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// The principal the bridge stores with an event (the Jetsync-Principal
// header) reaches a row through the envelope's metadata, as in every sink.
func TestPrincipalInRow(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.Name = "principal"
	cfg.Postgres.URL = srv.URL
	cfg.Tables = map[string]Table{"audit": {Columns: map[string]string{"order_id": "text", "by": "text"}, PrimaryKey: []string{"order_id"}}}
	cfg.Mappings = map[string][]Action{"Placed": {{Action: ActionUpsert, Table: "audit", Key: map[string]string{"order_id": "{streamId}"}, Project: `{by: .metadata.principal}`}}}
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	if _, err := w.LoadCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// The event as stored by the bridge, read back the way the engine does.
	stored := envelope.Event{ID: "e1", Category: "order", StreamID: "o-1", Type: "Placed", Version: 1, Data: json.RawMessage(`{}`), Principal: "orders-service"}
	msg := stored.ToMsg()
	if msg.Header.Get(envelope.HeaderPrincipal) != "orders-service" {
		t.Fatalf("the stored message has no %s header: %v", envelope.HeaderPrincipal, msg.Header)
	}
	ev, err := envelope.FromMsg(msg.Subject, msg.Header, msg.Data, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteBatch(ctx, &sink.Batch{Events: []envelope.Event{ev}, Through: 1}); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var by string
	if err := conn.QueryRow(ctx, `SELECT by FROM audit WHERE order_id = 'o-1'`).Scan(&by); err != nil || by != "orders-service" {
		t.Fatalf("audit.by = %q (%v), want orders-service", by, err)
	}
}
