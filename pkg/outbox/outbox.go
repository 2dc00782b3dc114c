// Package outbox appends jetsync events to a transactional outbox table in
// PostgreSQL inside the caller's own pgx transaction, so a service commits
// its state change and the events describing it atomically; `bridge relay`
// then publishes the committed rows to JetStream, gap-free and in order.
//
// The table's transaction_id column (xid8, the inserting transaction's id)
// is what makes the relay gap-free: it reads rows in (transaction_id, id)
// order and only below the oldest transaction still running, so a
// transaction that took its ids early and commits late is never skipped.
package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// DefaultTable is the table Append writes and `bridge relay` reads unless
// configured otherwise.
const DefaultTable = "outbox"

// DDL is the outbox table, for a table named DefaultTable; DDLFor names
// another. The (transaction_id, id) index is the relay's read path.
var DDL = DDLFor(DefaultTable)

// DDLFor is the outbox table's DDL for table (optionally schema-qualified,
// e.g. app.outbox), quoted as an identifier. It is idempotent.
func DDLFor(table string) string {
	t := quoteTable(table)
	idx := pgx.Identifier{strings.ReplaceAll(table, ".", "_") + "_relay"}.Sanitize()
	return `CREATE TABLE IF NOT EXISTS ` + t + ` (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
  event_id       text        NOT NULL,
  category       text        NOT NULL,
  stream_id      text        NOT NULL,
  type           text        NOT NULL,
  data           jsonb       NOT NULL,
  metadata       jsonb,
  created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ` + idx + ` ON ` + t + ` (transaction_id, id);`
}

// NotifyDDL is an optional trigger that sends a NOTIFY on channel when a
// transaction that inserted into table commits (one per statement), so a
// relay with source.listen_channel set wakes at once instead of at its next
// poll. PostgreSQL serialises the commits of notifying transactions, so
// leave it out where commits per second matter more than latency.
func NotifyDDL(table, channel string) string {
	t := quoteTable(table)
	fn := pgx.Identifier{strings.ReplaceAll(table, ".", "_") + "_notify"}.Sanitize()
	return `CREATE OR REPLACE FUNCTION ` + fn + `() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify(` + quoteLiteral(channel) + `, ''); RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER ` + fn + ` AFTER INSERT ON ` + t + `
  FOR EACH STATEMENT EXECUTE FUNCTION ` + fn + `();`
}

// Execer runs SQL: a *pgx.Conn, a pgx.Tx or a *pgxpool.Pool.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Create creates the outbox table (and its index) when missing.
func Create(ctx context.Context, db Execer, table string) error {
	if _, err := db.Exec(ctx, DDLFor(table)); err != nil {
		return fmt.Errorf("creating outbox table %s: %w", table, err)
	}
	return nil
}

// Event is one event to append. Its version is assigned by the relay when
// it publishes, like an HTTP append's.
type Event struct {
	ID       string          // unique per event, e.g. a UUID: the relay's deduplication key
	Category string          // subject token, e.g. "order"
	StreamID string          // subject token, e.g. "order-42"
	Type     string          // e.g. "OrderPlaced"
	Data     json.RawMessage // the payload, JSON
	Metadata json.RawMessage // optional JSON object
	Time     time.Time       // when it happened; zero: the transaction's start
}

// Outbox appends to one table.
type Outbox struct {
	Table string // default DefaultTable
}

// Append appends events to the DefaultTable outbox within tx.
func Append(ctx context.Context, tx pgx.Tx, events ...Event) error {
	return Outbox{}.Append(ctx, tx, events...)
}

// Append checks every event as the bridge would (id, category and stream id
// usable as subject tokens, type, JSON data and metadata) and inserts them
// within tx in their order, in one statement. Nothing is inserted when one
// is invalid: the error is an *envelope.FieldError naming events[i] and the
// field. The events become visible to the relay when tx commits, and are
// gone if it rolls back.
func (o Outbox) Append(ctx context.Context, tx pgx.Tx, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	n := len(events)
	ids, cats, streams, types, data := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	meta := make([]*string, n)
	times := make([]*time.Time, n)
	for i, e := range events {
		ev := envelope.Event{ID: e.ID, Category: e.Category, StreamID: e.StreamID, Type: e.Type, Data: e.Data, Metadata: e.Metadata}
		if err := ev.ValidateNew(fmt.Sprintf("events[%d].", i)); err != nil {
			return err
		}
		ids[i], cats[i], streams[i], types[i], data[i] = e.ID, e.Category, e.StreamID, e.Type, string(e.Data)
		if len(e.Metadata) > 0 && string(e.Metadata) != "null" {
			s := string(e.Metadata)
			meta[i] = &s
		}
		if !e.Time.IsZero() {
			t := e.Time
			times[i] = &t
		}
	}
	table := o.Table
	if table == "" {
		table = DefaultTable
	}
	// unnest keeps the array order, and identity values are taken in the
	// order rows are inserted: the relay publishes them in this order.
	_, err := tx.Exec(ctx, `INSERT INTO `+quoteTable(table)+` (event_id, category, stream_id, type, data, metadata, created_at)
SELECT e, c, s, t, d::jsonb, m::jsonb, coalesce(ts, now())
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) WITH ORDINALITY AS u(e, c, s, t, d, m, ts, i)
ORDER BY i`, ids, cats, streams, types, data, meta, times)
	if err != nil {
		return fmt.Errorf("appending %d events to outbox %s: %w", n, table, err)
	}
	return nil
}

// quoteTable quotes a table name, schema.table allowed.
func quoteTable(table string) string {
	return pgx.Identifier(strings.Split(table, ".")).Sanitize()
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
