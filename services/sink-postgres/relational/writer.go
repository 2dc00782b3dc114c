package relational

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetsync/jetsync/pkg/sink"
)

// Writer applies batches to PostgreSQL: one transaction per batch holding
// its row writes (multi-row statements, pipelined) and the update of the
// sink's jetsync_checkpoints row.
type Writer struct {
	name       string
	url        string
	tables     map[string]Table
	maps       map[string][]action
	unknownErr bool
	log        *slog.Logger

	// cfg and live are the running configuration and its compiled
	// mappings, replaced by ReloadMappings; maps and unknownErr above are
	// the ones at start.
	reloadMu sync.Mutex
	cfg      Config
	live     atomic.Pointer[mappingSet]

	mu   sync.Mutex
	pool *pgxpool.Pool
	// cols holds, per table the mappings write, its columns and their SQL
	// types (format_type), read at Connect.
	cols map[string]map[string]string
	// known is cols without _position, as sets: what a row may write.
	known map[string]map[string]bool

	// last is the checkpoint this process last read or wrote. Finding
	// another value in the checkpoint row means a second instance.
	last   atomic.Uint64
	loaded atomic.Bool

	// epoch is the lease tenure this writer writes under (fence.go), 0
	// when it runs without a lease.
	epoch atomic.Uint64
}

var (
	_ sink.Writer             = (*Writer)(nil)
	_ sink.CheckpointWriter   = (*Writer)(nil)
	_ sink.CheckpointResetter = (*Writer)(nil)
	_ sink.Pinger             = (*Writer)(nil)
	_ sink.Preparer           = (*Writer)(nil)
)

// SessionRandomPageCost is the writer's sessions' random_page_cost unless
// postgres.url sets one (see Connect).
const SessionRandomPageCost = "1.1"

// NewWriter validates cfg and compiles its mappings; it connects nothing.
func NewWriter(cfg Config, log *slog.Logger) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var p configProblems
	maps := compileMappings(cfg.Name, cfg.Mappings, cfg.Tables, &p.Problems)
	w := &Writer{name: cfg.Name, url: cfg.Postgres.URL, tables: cfg.Tables, maps: maps,
		unknownErr: cfg.UnknownTypes == UnknownError, log: log, cfg: cfg}
	w.live.Store(&mappingSet{maps: maps, unknownErr: w.unknownErr})
	return w, nil
}

// Connect opens the pool, creates jetsync_checkpoints and the declared
// tables that are missing, and reads the columns of every table the
// mappings write, checking that the key columns and _position exist.
func (w *Writer) Connect(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pool != nil {
		return nil
	}
	pc, err := pgxpool.ParseConfig(w.url)
	if err != nil {
		return sink.Permanent(fmt.Errorf("postgres.url: %w", err))
	}
	pc.MaxConns = 2
	// A transaction left idle this long belongs to a process that froze
	// or lost its network while holding the checkpoint row: PostgreSQL
	// ends it, so a new active instance's fence is not blocked behind it
	// (fence.go). The writer's own transactions are never idle between
	// statements for more than a round trip.
	if _, set := pc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"]; !set {
		pc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = idleInTransactionTimeout
	}
	// A batch's statements look up its rows by key in tables the sink
	// keeps hot. With PostgreSQL's default random_page_cost (4, a disk's
	// seek) the planner joins a batch's hundred deletes to a sequential
	// scan of the whole table, up to a table of some 100,000 rows: a
	// quarter of the server's time per batch at 10,000 rows (BENCHMARKS.md,
	// sink-postgres). 1.1 is the usual setting for data in memory or on
	// SSD; it is set for the writer's sessions only, unless postgres.url sets
	// it (?random_page_cost=4).
	if _, set := pc.ConnConfig.RuntimeParams["random_page_cost"]; !set {
		pc.ConnConfig.RuntimeParams["random_page_cost"] = SessionRandomPageCost
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return err
	}
	cols, err := w.prepareSchema(ctx, pool)
	if err != nil {
		pool.Close()
		return err
	}
	w.pool, w.cols, w.known = pool, cols, writable(cols)
	return nil
}

func (w *Writer) prepareSchema(ctx context.Context, pool *pgxpool.Pool) (map[string]map[string]string, error) {
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+CheckpointTable+` (
		sink text PRIMARY KEY, position bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
		epoch bigint NOT NULL DEFAULT 0)`); err != nil {
		return nil, classify(err, "creating "+CheckpointTable)
	}
	// Tables made before fencing lack the epoch column (fence.go). ALTER
	// only then: it locks the whole table, even when IF NOT EXISTS finds
	// the column.
	var hasEpoch bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = 'epoch' AND NOT attisdropped)`,
		CheckpointTable).Scan(&hasEpoch); err != nil {
		return nil, classify(err, "reading the columns of "+CheckpointTable)
	}
	if !hasEpoch {
		if _, err := pool.Exec(ctx, `ALTER TABLE `+CheckpointTable+` ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0`); err != nil {
			return nil, classify(err, "adding the epoch column to "+CheckpointTable)
		}
	}
	for _, name := range sortedKeys(w.tables) {
		t := w.tables[name]
		var defs []string
		for _, c := range sortedKeys(t.Columns) {
			defs = append(defs, quote(c)+" "+t.Columns[c])
		}
		pk := make([]string, len(t.PrimaryKey))
		for i, c := range t.PrimaryKey {
			pk[i] = quote(c)
		}
		defs = append(defs, quote(PositionColumn)+" bigint NOT NULL", "PRIMARY KEY ("+strings.Join(pk, ", ")+")")
		if _, err := pool.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+quote(name)+" (\n\t"+strings.Join(defs, ",\n\t")+"\n)"); err != nil {
			return nil, classify(err, "creating table "+name)
		}
	}
	cols := map[string]map[string]string{}
	for _, acts := range w.mappings().maps {
		for _, a := range acts {
			if a.raw != nil || cols[a.table] != nil {
				continue
			}
			rows, err := pool.Query(ctx, `SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
				WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped`, quote(a.table))
			if err != nil {
				return nil, classify(err, "reading the columns of "+a.table)
			}
			m := map[string]string{}
			for rows.Next() {
				var n, t string
				if err := rows.Scan(&n, &t); err != nil {
					rows.Close()
					return nil, err
				}
				m[n] = t
			}
			if err := rows.Err(); err != nil {
				return nil, classify(err, "reading the columns of "+a.table)
			}
			if len(m) == 0 {
				return nil, sink.Permanent(fmt.Errorf("%w: table %s does not exist (%s writes it): create it, or declare it under tables.%s to have the sink create it",
					ErrSchema, a.table, a.where, a.table))
			}
			for _, c := range append(slices.Clone(a.keyCols), PositionColumn) {
				if _, ok := m[c]; !ok {
					return nil, sink.Permanent(fmt.Errorf("%w: table %s has no column %s (%s needs it): ALTER TABLE %s ADD COLUMN %s",
						ErrSchema, a.table, c, a.where, a.table, columnHint(c)))
				}
			}
			cols[a.table] = m
		}
	}
	if err := checkColumnTypes(ctx, pool, w.tables); err != nil {
		return nil, err
	}
	if err := checkRawSQL(ctx, pool, w.mappings().maps); err != nil {
		return nil, err
	}
	return cols, nil
}

func columnHint(c string) string {
	if c == PositionColumn {
		return c + " bigint NOT NULL DEFAULT 0"
	}
	return c + " <type>"
}

// Ping tells whether PostgreSQL answers.
func (w *Writer) Ping(ctx context.Context) error {
	pool := w.getPool()
	if pool == nil {
		return ErrNotConnected
	}
	return pool.Ping(ctx)
}

// Close closes the pool; safe to call twice.
func (w *Writer) Close(context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pool != nil {
		w.pool.Close()
		w.pool = nil
	}
	return nil
}

func (w *Writer) getPool() *pgxpool.Pool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pool
}

// LoadCheckpoint reads the sink's checkpoint row (creating it at 0).
func (w *Writer) LoadCheckpoint(ctx context.Context) (uint64, error) {
	pool := w.getPool()
	if pool == nil {
		return 0, ErrNotConnected
	}
	if _, err := pool.Exec(ctx, `INSERT INTO `+CheckpointTable+` (sink, position) VALUES ($1, 0) ON CONFLICT (sink) DO NOTHING`, w.name); err != nil {
		return 0, classify(err, "creating the checkpoint row")
	}
	var pos int64
	if err := pool.QueryRow(ctx, `SELECT position FROM `+CheckpointTable+` WHERE sink = $1`, w.name).Scan(&pos); err != nil {
		return 0, classify(err, "reading the checkpoint")
	}
	w.last.Store(uint64(pos))
	w.loaded.Store(true)
	return uint64(pos), nil
}

// ResetCheckpoint sets the checkpoint to pos (jetsyncctl reset/replay),
// checking, like a write, that no other instance moved it.
func (w *Writer) ResetCheckpoint(ctx context.Context, pos uint64) error {
	pool := w.getPool()
	if pool == nil {
		return ErrNotConnected
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := w.lockCheckpoint(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE `+CheckpointTable+` SET position = $2, updated_at = now() WHERE sink = $1`, w.name, int64(pos)); err != nil {
			return classify(err, "resetting the checkpoint")
		}
		w.last.Store(pos)
		return nil
	})
}

// lockCheckpoint locks the checkpoint row for the transaction and checks
// that it holds what this process last read or wrote.
func (w *Writer) lockCheckpoint(ctx context.Context, tx pgx.Tx) error {
	if !w.loaded.Load() {
		return ErrNotConnected // LoadCheckpoint first; the engine retries
	}
	var cp, epoch int64
	err := tx.QueryRow(ctx, `SELECT position, epoch FROM `+CheckpointTable+` WHERE sink = $1 FOR UPDATE`, w.name).Scan(&cp, &epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return sink.Permanent(fmt.Errorf("%w: the %s row of sink %q was deleted while it ran", ErrConcurrentWriter, CheckpointTable, w.name))
	}
	if err != nil {
		return classify(err, "reading the checkpoint")
	}
	if mine := w.epoch.Load(); mine != 0 && uint64(epoch) != mine {
		return w.fenced(uint64(epoch), mine)
	}
	if last := w.last.Load(); uint64(cp) != last {
		return &committedError{cp: uint64(cp), err: sink.Permanent(fmt.Errorf("%w: %s row %q holds %d, this process last wrote %d; stop the other instance",
			ErrConcurrentWriter, CheckpointTable, w.name, cp, last))}
	}
	return nil
}

// checkCheckpoint starts every batch: it locks the sink's checkpoint row
// until the batch commits (a second instance, or a new active's Fence,
// waits for it) and fails unless the row holds $2, what this process last
// read or wrote, and $3, its epoch (0: no lease). The failure must abort
// the batch's transaction, and plain SQL has no RAISE: dividing by zero
// does it (isCheckFailure), and checkpointMoved then says what the row held.
const checkCheckpoint = `SELECT 1 / (CASE WHEN (SELECT position = $2 AND ($3 = 0 OR epoch = $3) FROM ` + CheckpointTable +
	` WHERE sink = $1 FOR UPDATE) THEN 1 ELSE 0 END)`

// isCheckFailure tells checkCheckpoint's failure.
func isCheckFailure(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "22012" // division_by_zero
}

// checkpointMoved is the error for a checkpoint row that did not hold what
// this process last wrote or its epoch (see lockCheckpoint).
func (w *Writer) checkpointMoved(ctx context.Context, pool *pgxpool.Pool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return classify(err, "beginning the transaction")
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := w.lockCheckpoint(ctx, tx); err != nil {
		return err
	}
	// It holds the value again (a reset in between): the engine retries.
	return errors.New("the checkpoint row changed while the batch was sent; retrying")
}

// committedError is ErrConcurrentWriter with the position found, so that
// WriteBatch can tell its own batch committed (reply lost) from another
// instance.
type committedError struct {
	cp  uint64
	err error
}

func (e *committedError) Error() string { return e.err.Error() }
func (e *committedError) Unwrap() error { return e.err }

// prepared is a batch mapped to row operations and planned into
// statements, by Prepare or by WriteBatch itself.
type prepared struct {
	ms       *mappingSet // the mappings it was built with
	ops      []rowOp
	failures []sink.EventFailure
	queries  []pgQuery // the statements, rendered
}

// pgQuery is one statement of a batch, ready to send.
type pgQuery struct {
	sql  string
	args []any
}

// Prepare implements sink.Preparer: the engine maps and plans the next
// batch while this one is written.
func (w *Writer) Prepare(ctx context.Context, b *sink.Batch) any { return w.prepare(ctx, b) }

func (w *Writer) prepare(ctx context.Context, b *sink.Batch) *prepared {
	ms := w.mappings()
	p := &prepared{ms: ms}
	if p.ops, p.failures = buildOps(ctx, b, ms.maps, ms.unknownErr, w.columns); len(p.failures) == 0 {
		for _, s := range plan(p.ops, w.upsertCols) {
			sql, args := w.statementSQL(s)
			p.queries = append(p.queries, pgQuery{sql, args})
		}
	}
	return p
}

// WriteBatch applies b in one transaction with the checkpoint update.
func (w *Writer) WriteBatch(ctx context.Context, b *sink.Batch) error {
	pool := w.getPool()
	if pool == nil {
		return ErrNotConnected
	}
	p, ok := b.Prepared.(*prepared)
	if !ok || p.ms != w.mappings() || len(p.failures) > 0 {
		p = w.prepare(ctx, b) // failures again too: Prepare's ctx may have ended
	}
	if len(p.failures) > 0 {
		return &sink.BatchError{Failures: p.failures}
	}
	ops := p.ops
	if !b.Redelivery && b.Through < w.last.Load() {
		return sink.Permanent(fmt.Errorf("checkpoint would move back from %d to %d", w.last.Load(), b.Through))
	}
	if !w.loaded.Load() {
		return ErrNotConnected // LoadCheckpoint first; the engine retries
	}
	// One round trip: the check, the rows and the checkpoint are sent
	// together and run in the implicit transaction of one pipeline (one
	// Sync), which commits when all succeeded and rolls back at the first
	// error. BEGIN, the check and COMMIT as round trips of their own were
	// a fifth of a batch's time (BENCHMARKS.md, sink-postgres).
	batch := &pgx.Batch{}
	batch.Queue(checkCheckpoint, w.name, int64(w.last.Load()), int64(w.epoch.Load()))
	for _, q := range p.queries {
		batch.Queue(q.sql, q.args...)
	}
	if !b.Redelivery {
		batch.Queue(`UPDATE `+CheckpointTable+` SET position = $2, updated_at = now() WHERE sink = $1`, w.name, int64(b.Through))
	}
	br := pool.SendBatch(ctx, batch)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		if !isCheckFailure(err) {
			return classify(err, "reading the checkpoint")
		}
		err := w.checkpointMoved(ctx, pool)
		var cw *committedError
		if !b.Redelivery && errors.As(err, &cw) && cw.cp == b.Through && b.Through > w.last.Load() {
			// The previous attempt committed but its reply was lost (a
			// connection cut during the commit): the batch is applied.
			w.last.Store(b.Through)
			return nil
		}
		return err
	}
	if err := br.Close(); err != nil {
		if refused(err) { // find the events PostgreSQL refuses, one at a time
			return w.isolate(ctx, pool, b, ops)
		}
		return classify(err, fmt.Sprintf("writing the batch of positions %d..%d", firstPos(b), b.Through))
	}
	if !b.Redelivery {
		w.last.Store(b.Through)
	}
	return nil
}

func firstPos(b *sink.Batch) uint64 {
	if len(b.Events) == 0 {
		return b.Through
	}
	return b.Events[0].Position
}

// columns lists a table's writable columns (nil before Connect).
func (w *Writer) columns(table string) map[string]bool { return w.known[table] }

// writable is each table's columns but _position.
func writable(cols map[string]map[string]string) map[string]map[string]bool {
	out := make(map[string]map[string]bool, len(cols))
	for table, m := range cols {
		out[table] = make(map[string]bool, len(m))
		for c := range m {
			if c != PositionColumn {
				out[table][c] = true
			}
		}
	}
	return out
}

// upsertCols lists a table's columns an upsert writes: all but the key and
// _position.
func (w *Writer) upsertCols(table string, keyCols []string) []string {
	var out []string
	for _, c := range sortedKeys(w.cols[table]) {
		if c != PositionColumn && !slices.Contains(keyCols, c) {
			out = append(out, c)
		}
	}
	return out
}

// statementSQL renders one multi-row statement: every column is sent as a
// text[] and cast to the column's type, rows unnested in step.
func (w *Writer) statementSQL(s stmt) (string, []any) {
	if s.op == opSQL {
		return s.raw.text, s.args
	}
	types := w.cols[s.table]
	n := len(s.rows)
	var args []any
	var sel, names []string
	addCol := func(name string, vals textArray) {
		args = append(args, vals)
		i := len(args)
		sel = append(sel, fmt.Sprintf("u.a%d::%s", i, types[name]))
		names = append(names, quote(name))
	}
	for k, c := range s.keyCols {
		vals := make(textArray, n)
		for r := range s.rows {
			vals[r] = &s.rows[r].key[k]
		}
		addCol(c, vals)
	}
	for j, c := range s.cols {
		vals := make(textArray, n)
		for r := range s.rows {
			vals[r] = s.vals[r*len(s.cols)+j]
		}
		addCol(c, vals)
	}
	pos := make([]int64, n)
	for r := range s.rows {
		pos[r] = int64(s.rows[r].pos)
	}
	args = append(args, pos)
	// The arrays are unnested in the select list (a ProjectSet, rows
	// streamed in step), not by unnest(a, b, …) in FROM, which stores
	// every row in a tuplestore first: 7% of the server's time per event
	// (BENCHMARKS.md, sink-postgres).
	var unn []string
	for i := range args {
		typ := "text[]"
		if i == len(args)-1 {
			typ = "bigint[]"
		}
		unn = append(unn, fmt.Sprintf("unnest($%d::%s) AS a%d", i+1, typ, i+1))
	}
	posArg := fmt.Sprintf("u.a%d", len(args))
	from := "(SELECT " + strings.Join(unn, ", ") + ") AS u"
	table := quote(s.table)

	if s.op == ActionDelete {
		var where []string
		for k, c := range s.keyCols {
			where = append(where, fmt.Sprintf("t.%s = %s", quote(c), sel[k]))
		}
		return "DELETE FROM " + table + " AS t USING " + from + " WHERE " + strings.Join(where, " AND ") +
			" AND t." + quote(PositionColumn) + " <= " + posArg, args
	}
	var set []string
	for _, c := range s.cols {
		set = append(set, quote(c)+" = excluded."+quote(c))
	}
	set = append(set, quote(PositionColumn)+" = excluded."+quote(PositionColumn))
	keyNames := names[:len(s.keyCols)]
	return "INSERT INTO " + table + " AS t (" + strings.Join(names, ", ") + ", " + quote(PositionColumn) + ")" +
		" SELECT " + strings.Join(sel, ", ") + ", " + posArg + " FROM " + from +
		" ON CONFLICT (" + strings.Join(keyNames, ", ") + ") DO UPDATE SET " + strings.Join(set, ", ") +
		" WHERE t." + quote(PositionColumn) + " < excluded." + quote(PositionColumn), args
}

// quote quotes a (possibly schema-qualified) identifier.
func quote(name string) string {
	return pgx.Identifier(strings.Split(name, ".")).Sanitize()
}

// classify wraps a PostgreSQL error: data and constraint errors (SQLSTATE
// classes 22, 23; WriteBatch isolates them per event first), and undefined
// or wrongly typed objects (42) are permanent; anything else (a lost
// connection, a restart 57P01, 40001 serialization failures, 40P01
// deadlocks, 57014 statement timeouts) is retried by the engine with the
// checkpoint held.
func classify(err error, doing string) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "22", "23", "42":
			return sink.Permanent(fmt.Errorf("%w: %s: %s (SQLSTATE %s, table %s, column %s)",
				ErrRefused, doing, pe.Message, pe.Code, pe.TableName, pe.ColumnName))
		case "28":
			return sink.Permanent(fmt.Errorf("%s: %w", doing, err))
		}
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// textArray is a text[] parameter. pgx encodes a []*string by reflection,
// element by element (7% of the sink's CPU); this it encodes through
// pgtype's ArrayGetter and TextValuer, without reflecting on each value.
type textArray []*string

var _ pgtype.ArrayGetter = textArray(nil)

func (a textArray) Dimensions() []pgtype.ArrayDimension {
	return []pgtype.ArrayDimension{{Length: int32(len(a)), LowerBound: 1}}
}

// Index is element i: a nil *textValue for NULL.
func (a textArray) Index(i int) any { return (*textValue)(a[i]) }

func (a textArray) IndexType() any { return (*textValue)(nil) }

// textValue is one non-NULL element of a textArray.
type textValue string

func (t *textValue) TextValue() (pgtype.Text, error) {
	return pgtype.Text{String: string(*t), Valid: true}, nil
}
