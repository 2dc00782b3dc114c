package relational

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
)

const savepoint = "jetsync_event"

// isolate writes b again after PostgreSQL refused one of its statements,
// in a fresh transaction, one event at a time, each in a savepoint, to find
// the events it refuses. It then rolls back and returns them as a
// *sink.BatchError: the engine applies on_error and writes the batch again
// without them. When no single event is refused (the refusal came from
// the combination of folded rows), the transaction holds the whole batch,
// event by event, and is committed with the checkpoint.
func (w *Writer) isolate(ctx context.Context, pool *pgxpool.Pool, b *sink.Batch, ops []rowOp) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return classify(err, "beginning the transaction")
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := w.lockCheckpoint(ctx, tx); err != nil {
		return err
	}
	var failures []sink.EventFailure
	for start := 0; start < len(ops); {
		end := start + 1
		for end < len(ops) && ops[end].ev == ops[start].ev {
			end++
		}
		evOps := ops[start:end]
		start = end
		batch := &pgx.Batch{}
		batch.Queue("SAVEPOINT " + savepoint)
		for _, s := range plan(evOps, w.upsertCols) {
			sql, args := w.statementSQL(s)
			batch.Queue(sql, args...)
		}
		batch.Queue("RELEASE SAVEPOINT " + savepoint)
		err := tx.SendBatch(ctx, batch).Close()
		if err == nil {
			continue
		}
		ev := &b.Events[evOps[0].ev]
		if !refused(err) {
			return classify(err, fmt.Sprintf("writing event %s at position %d", ev.ID, ev.Position))
		}
		if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+savepoint); rerr != nil {
			return classify(rerr, "rolling back to the savepoint")
		}
		if _, rerr := tx.Exec(ctx, "RELEASE SAVEPOINT "+savepoint); rerr != nil {
			return classify(rerr, "releasing the savepoint")
		}
		reason := w.describeRefusal(ctx, pool, ev, evOps, err)
		w.log.Error("postgres refused an event", "position", ev.Position, "id", ev.ID, "type", ev.Type, "err", reason)
		failures = append(failures, sink.EventFailure{Index: evOps[0].ev, Err: reason})
	}
	if len(failures) > 0 {
		return &sink.BatchError{Failures: failures}
	}
	if !b.Redelivery {
		if _, err := tx.Exec(ctx, `UPDATE `+CheckpointTable+` SET position = $2, updated_at = now() WHERE sink = $1`, w.name, int64(b.Through)); err != nil {
			return classify(err, "updating the checkpoint")
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return classify(err, "committing")
	}
	if !b.Redelivery {
		w.last.Store(b.Through)
	}
	return nil
}

// describeRefusal is the per-event error for an event PostgreSQL refused:
// its id and position, the table and column, and PostgreSQL's message.
// PostgreSQL names the column of a NOT NULL violation, not that of a value
// its type refuses: the sink then finds it by casting each value alone,
// and for a unique violation it reads the index's columns.
func (w *Writer) describeRefusal(ctx context.Context, pool *pgxpool.Pool, ev *envelope.Event, evOps []rowOp, err error) error {
	var pe *pgconn.PgError
	errors.As(err, &pe)
	table, column, where := pe.TableName, pe.ColumnName, ""
	if pe.SchemaName != "" && table != "" && pe.SchemaName != "public" {
		table = pe.SchemaName + "." + table
	}
	if strings.HasPrefix(pe.Code, "22") && column == "" {
		table, column, where = w.findRefusedValue(ctx, pool, evOps)
	}
	if pe.Code == "23505" && pe.ConstraintName != "" && column == "" {
		var cols *string
		if qerr := pool.QueryRow(ctx, `SELECT string_agg(a.attname, ', ' ORDER BY a.attnum) FROM pg_class i
			JOIN pg_index x ON x.indexrelid = i.oid JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey)
			WHERE i.relname = $1`, pe.ConstraintName).Scan(&cols); qerr == nil && cols != nil {
			column = *cols
		}
	}
	if where == "" {
		for _, op := range evOps {
			if op.table == table || table == "" && op.op == opSQL {
				where = op.where
				break
			}
		}
		if where == "" && len(evOps) == 1 {
			where = evOps[0].where
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "event %s at position %d", ev.ID, ev.Position)
	if where != "" {
		fmt.Fprintf(&b, " (%s)", where)
	}
	if table == "" {
		table = "?"
	}
	if column == "" {
		column = "?"
	}
	fmt.Fprintf(&b, ": table %s, column %s: %s (SQLSTATE %s", table, column, pe.Message, pe.Code)
	if pe.Detail != "" {
		fmt.Fprintf(&b, "; %s", pe.Detail)
	}
	b.WriteString(")")
	return fmt.Errorf("%w: %s", ErrRefused, b.String())
}

// findRefusedValue casts each value of the event's row writes to its
// column's type, alone, and returns the first one PostgreSQL refuses.
func (w *Writer) findRefusedValue(ctx context.Context, pool *pgxpool.Pool, evOps []rowOp) (table, column, where string) {
	for _, op := range evOps {
		if op.op == opSQL {
			continue
		}
		types := w.cols[op.table]
		try := func(col string, v *string) bool {
			if v == nil || types[col] == "" {
				return false
			}
			var ok bool
			return pool.QueryRow(ctx, "SELECT $1::text::"+types[col]+" IS NOT NULL", *v).Scan(&ok) != nil
		}
		for i, c := range op.keyCols {
			if try(c, &op.key[i]) {
				return op.table, c, op.where
			}
		}
		for i := range op.cols {
			if c := &op.cols[i]; try(c.name, c.ptr()) {
				return op.table, c.name, op.where
			}
		}
	}
	for _, op := range evOps {
		if op.op == opSQL {
			return "", "", op.where // a parameter of the statement
		}
	}
	return "", "", ""
}
