package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/outbox"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestAppend: events appended in a transaction are there, in order, with a
// transaction id, when it commits; gone when it rolls back; an invalid event
// inserts nothing and names events[i] and its field.
func TestAppend(t *testing.T) {
	pg := testenv.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	if err := outbox.Create(ctx, db, outbox.DefaultTable); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Create(ctx, db, outbox.DefaultTable); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, outbox.NotifyDDL(outbox.DefaultTable, "outbox")); err != nil {
		t.Fatal(err)
	}
	ev := func(id string) outbox.Event {
		return outbox.Event{ID: id, Category: "order", StreamID: "o-1", Type: "OrderPlaced", Data: json.RawMessage(`{"n":1}`)}
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	withMeta := ev("e2")
	withMeta.Metadata = json.RawMessage(`{"correlationId":"c"}`)
	withMeta.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := outbox.Append(ctx, tx, ev("e1"), withMeta, ev("e3")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx, _ = db.Begin(ctx)
	if err := outbox.Append(ctx, tx, ev("rolled-back")); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	tx, _ = db.Begin(ctx)
	bad := ev("e5")
	bad.StreamID = "o.1"
	err = outbox.Append(ctx, tx, ev("e4"), bad)
	var fe *envelope.FieldError
	if !errors.As(err, &fe) || fe.Field != "events[1].streamId" {
		t.Fatalf("Append with a bad stream id: %v, want a FieldError naming events[1].streamId", err)
	}
	_ = tx.Rollback(ctx)

	rows, err := db.Query(ctx, "SELECT event_id, transaction_id::text, coalesce(metadata::text, ''), created_at FROM outbox ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		id, tx, md string
		at         time.Time
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.id, &x.tx, &x.md, &x.at)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].id != "e1" || got[1].id != "e2" || got[2].id != "e3" {
		t.Fatalf("rows %+v, want e1, e2, e3", got)
	}
	if got[0].tx == "" || got[0].tx != got[2].tx {
		t.Errorf("transaction ids %q, %q: one transaction, one id", got[0].tx, got[2].tx)
	}
	if got[1].md != `{"correlationId": "c"}` || !got[1].at.Equal(withMeta.Time) {
		t.Errorf("e2 metadata %q time %s", got[1].md, got[1].at)
	}
}
