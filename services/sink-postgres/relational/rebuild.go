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
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
)

// ErrRebuild is what every error of Rebuild wraps: the rebuild did not
// swap, and the live tables are as they were.
var ErrRebuild = errors.New("rebuild did not finish")

// Suffixes of the tables a rebuild creates and keeps.
const (
	ShadowSuffix = "__rebuild" // orders__rebuild: the table being built
	OldInfix     = "__old_"    // orders__old_20261201223605: the table swapped out
)

// RebuildOptions tunes Rebuild.
type RebuildOptions struct {
	// KeepFailed keeps the shadow tables of a rebuild that fails (for
	// inspection) instead of dropping them.
	KeepFailed bool
	// Poll is how often the catch-up is checked (default 100ms).
	Poll time.Duration
	// SwapWait is how long the swap may hold the live sink's checkpoint row
	// (the live sink's next batch waits) for the shadow tables to reach it
	// (default 10s). A swap that cannot finish in time is let go and tried
	// again, SwapAttempts times in all (default 5).
	SwapWait     time.Duration
	SwapAttempts int
	// LockTimeout bounds each lock the swap waits for: the checkpoint row,
	// and the tables (a long reader of a live table holds up its rename,
	// and the readers behind it). Default 5s.
	LockTimeout time.Duration
	// EngineOptions are passed to the rebuild's engine (dead letters).
	EngineOptions []sink.Option

	now func() time.Time // for tests
}

// RebuildResult says what a rebuild did.
type RebuildResult struct {
	Sink    string            // the rebuild's own sink name (its checkpoint row is deleted at the end)
	Tables  []string          // the live tables rebuilt
	Old     map[string]string // live name -> the dated name the previous table now has
	Through uint64            // the live checkpoint the new tables were complete up to at the swap
	Events  uint64            // events the rebuild applied
	Locked  time.Duration     // how long the live sink's checkpoint row was held by the swap
	Took    time.Duration
}

// DropStatements are the statements that drop the previous tables, for the
// operator to run once the new ones are checked.
func (r *RebuildResult) DropStatements() []string {
	out := make([]string, 0, len(r.Tables))
	for _, t := range r.Tables {
		out = append(out, "DROP TABLE "+quote(r.Old[t])+";")
	}
	return out
}

// Rebuild builds every table the mappings write anew, from position 0,
// while the live sink keeps serving and writing:
//
//  1. shadow tables <table>__rebuild are created fresh from the declared
//     columns; a second engine, sink <name>/rebuild with its own
//     jetsync_checkpoints row, writes into them;
//  2. the rebuild is held at the live sink's checkpoint (never past it:
//     a batch that straddles it is written up to it) and follows it until
//     it is less than a batch behind;
//  3. the swap, in one transaction: lock the live sink's checkpoint row
//     (SELECT … FOR UPDATE: the live sink cannot commit a batch), let the
//     shadow tables reach exactly that checkpoint, rename every live table
//     to <table>__old_<YYYYMMDDhhmmss> and every shadow table to the live
//     name, delete the rebuild's checkpoint row, commit. The live sink's
//     next batch, waiting on the row, writes the new tables by name;
//     readers see the old tables, complete, until the commit and the new
//     ones, complete, after it.
//  4. the old tables are kept until the operator drops them
//     (RebuildResult.DropStatements).
//
// If it cannot finish (an event a shadow table refuses: the error then
// names it and wraps sink.ErrStopped; the live sink staying ahead through
// every swap attempt; ctx ending), the live tables are untouched, the
// shadow tables are dropped (kept with KeepFailed) and the error, which
// wraps ErrRebuild, says so.
func Rebuild(ctx context.Context, cfg Config, js jetstream.JetStream, log *slog.Logger, opts RebuildOptions) (_ *RebuildResult, err error) {
	start := time.Now()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if opts.Poll <= 0 {
		opts.Poll = 100 * time.Millisecond
	}
	if opts.SwapWait <= 0 {
		opts.SwapWait = 10 * time.Second
	}
	if opts.SwapAttempts <= 0 {
		opts.SwapAttempts = 5
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 5 * time.Second
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	tables, err := rebuildTables(&cfg)
	if err != nil {
		return nil, err
	}
	stamp := opts.now().UTC().Format("20060102150405")
	res := &RebuildResult{Sink: cfg.Name + "/rebuild", Tables: tables, Old: map[string]string{}}
	shadow := map[string]string{}
	for _, t := range tables {
		shadow[t] = suffixed(t, ShadowSuffix)
		res.Old[t] = suffixed(t, OldInfix+stamp)
		for _, n := range []string{shadow[t], res.Old[t]} {
			if !tableRe.MatchString(n) {
				return nil, fmt.Errorf("%w: table %s: the name %s would be longer than PostgreSQL's 63 bytes; use a shorter table name", ErrRebuild, t, n)
			}
		}
	}
	log = log.With("rebuild", res.Sink)

	pc, err := pgxpool.ParseConfig(cfg.Postgres.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: postgres.url: %w", ErrRebuild, err)
	}
	pc.MaxConns = 3
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	defer pool.Close()
	if _, err := liveCheckpoint(ctx, pool, cfg.Name); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	for _, t := range tables {
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, quote(t)).Scan(&ok); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
		}
		if !ok {
			return nil, fmt.Errorf("%w: the live table %s does not exist: start the sink once to create it", ErrRebuild, t)
		}
	}

	cleanup := &rebuildCleanup{pool: pool, sink: res.Sink, log: log, keepFailed: opts.KeepFailed,
		stopWait: cfg.ShutdownTimeout + 15*time.Second}
	for _, t := range tables {
		cleanup.shadows = append(cleanup.shadows, shadow[t])
	}
	defer func() { err = cleanup.run(ctx, err) }()
	// Fresh: a shadow table or checkpoint row left by an earlier rebuild
	// (-keep-failed, or a killed process) is not trusted.
	if err := cleanup.drop(ctx); err != nil {
		return nil, fmt.Errorf("%w: dropping what an earlier rebuild left: %w", ErrRebuild, err)
	}

	rcfg := cfg
	rcfg.Name = res.Sink
	rcfg.Tables = map[string]Table{}
	for name, t := range cfg.Tables {
		if n, ok := shadow[name]; ok {
			name = n
		}
		rcfg.Tables[name] = t
	}
	rcfg.Mappings = map[string][]Action{}
	for typ, acts := range cfg.Mappings {
		acts = slices.Clone(acts)
		for i := range acts {
			acts[i].Table = shadow[acts[i].Table]
		}
		rcfg.Mappings[typ] = acts
	}
	w, err := NewWriter(rcfg, log)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	gate := newGate(w)
	eng, err := sink.New(rcfg.Config, js, gate, nil, log, opts.EngineOptions...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	for _, t := range tables {
		log.Info("rebuilding", "table", t, "into", shadow[t])
	}
	run := eng.Start(ctx)
	cleanup.engine = run

	var stream jetstream.Stream // for the head, read when needed
	head := func() (uint64, error) {
		if stream == nil {
			s, err := js.Stream(ctx, cfg.Stream)
			if err != nil {
				return 0, fmt.Errorf("stream %s: %w", cfg.Stream, err)
			}
			stream = s
		}
		return natsutil.LastPosition(ctx, stream, cfg.Filters)
	}
	sw := &swapper{pool: pool, live: cfg.Name, sink: res.Sink, tables: tables, shadow: shadow, old: res.Old,
		gate: gate, run: run, head: head, log: log, opts: opts}
	for attempt := 1; ; attempt++ {
		// Follow the live checkpoint until less than a batch behind it.
		for {
			l, err := liveCheckpoint(ctx, pool, cfg.Name)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
			}
			gate.raise(l)
			if err := waitShadow(ctx, run, gate, l, head, opts.Poll, log); err != nil {
				return nil, err
			}
			l2, err := liveCheckpoint(ctx, pool, cfg.Name)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
			}
			if a := gate.applied(); l2 <= a || l2-a <= uint64(cfg.Batch.MaxEvents) {
				break
			}
			if h, err := head(); err == nil && h <= gate.applied() {
				break // the live checkpoint is past the last event of the filters
			}
		}
		done, err := sw.swap(ctx)
		if err != nil {
			return nil, err
		}
		if done {
			break
		}
		if attempt == opts.SwapAttempts {
			return nil, fmt.Errorf("%w: the swap did not go through in %d attempts (the live sink stayed ahead, or a lock was not granted in time); the last one: %s",
				ErrRebuild, attempt, sw.lastReason)
		}
		log.Info("swap let go, catching up again", "attempt", attempt, "reason", sw.lastReason)
	}
	cleanup.swapped = true
	res.Through, res.Locked = sw.through, sw.locked
	res.Events = gate.events.Load()
	if err := run.Stop(cleanup.stopWait); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("the rebuild's engine stopped with an error after the swap", "err", err)
	}
	for _, t := range tables {
		log.Info("swapped", "table", t, "old", res.Old[t], "through", res.Through)
	}
	res.Took = time.Since(start)
	return res, nil
}

// rebuildTables lists the tables the mappings write; each must be declared
// under tables: (the shadow table is created from the declaration).
func rebuildTables(cfg *Config) ([]string, error) {
	seen := map[string]bool{}
	for _, typ := range sortedKeys(cfg.Mappings) {
		for i, a := range cfg.Mappings[typ] {
			if a.SQL != "" {
				// Its statement names live tables: replayed from position 0
				// it would write them again, and non-idempotent SQL
				// (n = n + 1) would apply twice.
				return nil, fmt.Errorf("%w: mappings.%s[%d] is raw SQL, which a rebuild cannot redirect to shadow tables (replaying it would apply it to the live tables again); rebuild with a config of row mappings only, or rebuild the raw SQL's tables yourself",
					ErrRebuild, typ, i)
			}
			if _, ok := cfg.Tables[a.Table]; !ok {
				return nil, fmt.Errorf("%w: mappings.%s[%d] writes table %s, which is not declared under tables:; a rebuild creates its tables from their declarations",
					ErrRebuild, typ, i, a.Table)
			}
			seen[a.Table] = true
		}
	}
	return sortedKeys(seen), nil
}

// suffixed appends suffix to the table part of a (schema-qualified) name.
func suffixed(table, suffix string) string { return table + suffix }

// unqualified is the table part of a (schema-qualified) name.
func unqualified(table string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		return table[i+1:]
	}
	return table
}

func liveCheckpoint(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, name string) (uint64, error) {
	var pos int64
	err := q.QueryRow(ctx, `SELECT position FROM `+CheckpointTable+` WHERE sink = $1`, name).Scan(&pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("sink %q has no row in %s: start it first", name, CheckpointTable)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		return 0, fmt.Errorf("there is no %s table: start the sink %q first", CheckpointTable, name)
	}
	if err != nil {
		return 0, fmt.Errorf("reading the live checkpoint: %w", err)
	}
	return uint64(pos), nil
}

// gate is the rebuild's writer, held at a ceiling: the live sink's
// checkpoint. A batch through the ceiling is written; one past it is
// written up to it (its events up to the ceiling, the checkpoint at the
// ceiling) and then waits for the ceiling to rise, so the shadow tables can
// be brought to exactly the live checkpoint.
type gate struct {
	*Writer
	events atomic.Uint64 // events written

	mu      sync.Mutex
	ceiling uint64
	changed chan struct{} // closed when the ceiling rises
}

var _ sink.CheckpointWriter = (*gate)(nil)

func newGate(w *Writer) *gate { return &gate{Writer: w, changed: make(chan struct{})} }

// raise lets the rebuild write up to c.
func (g *gate) raise(c uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c > g.ceiling {
		g.ceiling = c
		close(g.changed)
		g.changed = make(chan struct{})
	}
}

func (g *gate) get() (uint64, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ceiling, g.changed
}

// applied is the rebuild's checkpoint as last committed.
func (g *gate) applied() uint64 { return g.last.Load() }

func (g *gate) WriteBatch(ctx context.Context, b *sink.Batch) error {
	if b.Redelivery {
		return g.Writer.WriteBatch(ctx, b)
	}
	for {
		c, changed := g.get()
		if b.Through <= c {
			return g.write(ctx, b, b.Through)
		}
		if c > g.applied() {
			if err := g.write(ctx, b, c); err != nil {
				return err
			}
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// write applies b's events after the rebuild's checkpoint and up to
// through, with the checkpoint at through. A batch PostgreSQL refuses is
// written again one event at a time, so that the refused event is named
// (a *sink.BatchError, on_error decides).
func (g *gate) write(ctx context.Context, b *sink.Batch, through uint64) error {
	from := g.applied()
	if through <= from {
		return nil // written by an earlier, partial attempt
	}
	lo, hi := 0, len(b.Events)
	for lo < hi && b.Events[lo].Position <= from {
		lo++
	}
	for hi > lo && b.Events[hi-1].Position > through {
		hi--
	}
	err := g.Writer.WriteBatch(ctx, &sink.Batch{Events: b.Events[lo:hi], Through: through})
	if errors.Is(err, ErrRefused) && hi > lo {
		for i := lo; i < hi; i++ {
			ev := &b.Events[i]
			if ev.Position <= g.applied() {
				continue
			}
			err := g.Writer.WriteBatch(ctx, &sink.Batch{Events: b.Events[i : i+1], Through: ev.Position})
			if errors.Is(err, ErrRefused) {
				return &sink.BatchError{Failures: []sink.EventFailure{{Index: i, Err: err}}}
			}
			if err != nil {
				return shift(err, i)
			}
			g.events.Add(1)
		}
		return g.Writer.WriteBatch(ctx, &sink.Batch{Through: through})
	}
	if err != nil {
		return shift(err, lo)
	}
	g.events.Add(uint64(hi - lo))
	return nil
}

// shift maps a BatchError of a part of a batch starting at index lo to the
// whole batch.
func shift(err error, lo int) error {
	var be *sink.BatchError
	if lo == 0 || !errors.As(err, &be) {
		return err
	}
	out := &sink.BatchError{Failures: make([]sink.EventFailure, len(be.Failures))}
	for i, f := range be.Failures {
		out.Failures[i] = sink.EventFailure{Index: f.Index + lo, Err: f.Err}
	}
	return out
}

// swapper does the swap.
type swapper struct {
	pool        *pgxpool.Pool
	live, sink  string
	tables      []string
	shadow, old map[string]string
	gate        *gate
	run         *sink.Running
	head        func() (uint64, error)
	log         *slog.Logger
	opts        RebuildOptions
	through     uint64
	locked      time.Duration
	lastReason  string
}

// swap tries once. It returns false, nil when the attempt was let go and
// may be tried again (the shadow did not reach the live checkpoint in
// time, a lock was not granted in time); the transaction is then rolled
// back and the live sink goes on.
func (s *swapper) swap(ctx context.Context) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("%w: beginning the swap: %w", ErrRebuild, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", s.opts.LockTimeout.Milliseconds())); err != nil {
		return false, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	letGo := func(err error, doing string) (bool, error) {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available
			s.lastReason = doing + ": " + pe.Message
			return false, nil
		}
		return false, fmt.Errorf("%w: %s: %w", ErrRebuild, doing, err)
	}
	var lf int64
	err = tx.QueryRow(ctx, `SELECT position FROM `+CheckpointTable+` WHERE sink = $1 FOR UPDATE`, s.live).Scan(&lf)
	if err != nil {
		return letGo(err, "locking the live checkpoint row")
	}
	lockedAt := time.Now()
	live := uint64(lf)
	if a := s.gate.applied(); a > live {
		return false, fmt.Errorf("%w: the live sink's checkpoint moved back to %d, behind the rebuild's %d (a reset?); run the rebuild again", ErrRebuild, live, a)
	}
	s.gate.raise(live)
	wctx, cancel := context.WithTimeout(ctx, s.opts.SwapWait)
	err = waitShadow(wctx, s.run, s.gate, live, s.head, 5*time.Millisecond, s.log)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, sink.ErrStopped) {
			s.lastReason = fmt.Sprintf("the shadow tables were at %d, the live checkpoint at %d after %s", s.gate.applied(), live, s.opts.SwapWait)
			return false, nil
		}
		return false, err
	}
	// The gate holds the rebuild at live from now on: nothing writes the
	// shadow tables any more.
	var rp int64
	if err := tx.QueryRow(ctx, `SELECT position FROM `+CheckpointTable+` WHERE sink = $1`, s.sink).Scan(&rp); err != nil {
		return false, fmt.Errorf("%w: reading the rebuild's checkpoint: %w", ErrRebuild, err)
	}
	if uint64(rp) > live {
		return false, fmt.Errorf("%w: the rebuild's checkpoint row holds %d, past the live %d", ErrRebuild, rp, live)
	}
	for _, t := range s.tables {
		if _, err := tx.Exec(ctx, "ALTER TABLE "+quote(t)+" RENAME TO "+quote(unqualified(s.old[t]))); err != nil {
			return letGo(err, "renaming "+t+" to "+s.old[t])
		}
		if _, err := tx.Exec(ctx, "ALTER TABLE "+quote(s.shadow[t])+" RENAME TO "+quote(unqualified(t))); err != nil {
			return letGo(err, "renaming "+s.shadow[t]+" to "+t)
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM `+CheckpointTable+` WHERE sink = $1`, s.sink); err != nil {
		return false, fmt.Errorf("%w: deleting the rebuild's checkpoint row: %w", ErrRebuild, err)
	}
	if err := tx.Commit(ctx); err != nil {
		// Unknown whether it went through: say what to check.
		return false, fmt.Errorf("%w: committing the swap (check whether %s exists: if so, the swap went through): %w",
			ErrRebuild, s.old[s.tables[0]], err)
	}
	s.through, s.locked = live, time.Since(lockedAt)
	return true, nil
}

// waitShadow polls until the shadow tables hold everything up to pos: the
// rebuild's checkpoint is at pos, or past the last event of the sink's
// filters (nothing more to write before pos).
func waitShadow(ctx context.Context, run *sink.Running, g *gate, pos uint64, head func() (uint64, error), every time.Duration, log *slog.Logger) error {
	t := time.NewTicker(every)
	defer t.Stop()
	lastLog, lastHead := time.Now(), time.Now()
	for {
		a := g.applied()
		if a >= pos {
			return nil
		}
		if time.Since(lastHead) >= time.Second {
			lastHead = time.Now()
			if h, err := head(); err == nil && h <= a {
				return nil
			}
		}
		st := run.Engine().Stats()
		if time.Since(lastLog) >= 2*time.Second {
			log.Info("rebuild progress", "checkpoint", a, "live_checkpoint", pos, "state", st.State, "last_error", st.LastError)
			lastLog = time.Now()
		}
		var halted <-chan time.Time
		if st.State == sink.StateStopped {
			// Run is returning, or (an engine that holds at a stop for an
			// operator) will not: a rebuild cannot go on either way.
			halted = time.After(time.Second)
		}
		select {
		case <-run.Done():
			err := run.Err()
			if err == nil {
				err = errors.New("stopped")
			}
			return fmt.Errorf("%w: the rebuild's sink stopped at %d before reaching %d: %w", ErrRebuild, g.applied(), pos, err)
		case <-halted:
			return fmt.Errorf("%w: the rebuild's sink stopped at %d before reaching %d: %w: %s", ErrRebuild, g.applied(), pos, sink.ErrStopped, run.Engine().Stats().LastError)
		case <-ctx.Done():
			return fmt.Errorf("%w: at %d of %d: %w", ErrRebuild, g.applied(), pos, ctx.Err())
		case <-t.C:
		}
	}
}

// rebuildCleanup stops the rebuild's engine and deletes its checkpoint row;
// for a rebuild that did not swap, it also drops (or keeps) the shadow
// tables, and says so in the error.
type rebuildCleanup struct {
	pool       *pgxpool.Pool
	sink       string
	log        *slog.Logger
	keepFailed bool
	stopWait   time.Duration
	shadows    []string

	engine  *sink.Running // nil until started
	swapped bool
}

// drop drops the shadow tables and the rebuild's checkpoint row.
func (c *rebuildCleanup) drop(ctx context.Context) error {
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		for _, s := range c.shadows {
			if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+quote(s)); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+CheckpointTable+` WHERE sink = $1`, c.sink); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "42P01" {
				return nil
			}
			return err
		}
		return nil
	})
}

// run returns failure (nil after a rebuild that went through) with what it
// did about it.
func (c *rebuildCleanup) run(parent context.Context, failure error) error {
	if c.swapped || failure == nil {
		return failure
	}
	if c.engine != nil {
		if err := c.engine.Stop(c.stopWait); err != nil && !errors.Is(failure, err) && !errors.Is(err, context.Canceled) {
			c.log.Warn("the rebuild's engine stopped with an error", "err", err)
		}
	}
	if len(c.shadows) == 0 {
		return failure
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), 30*time.Second)
	defer cancel()
	names := strings.Join(c.shadows, ", ")
	var done string
	if c.keepFailed {
		var drops []string
		for _, s := range c.shadows {
			drops = append(drops, "DROP TABLE "+quote(s)+";")
		}
		done = fmt.Sprintf("the live tables are untouched; the shadow tables %s are kept (-keep-failed); drop them when done: %s", names, strings.Join(drops, " "))
		if _, err := c.pool.Exec(ctx, `DELETE FROM `+CheckpointTable+` WHERE sink = $1`, c.sink); err != nil {
			c.log.Warn("could not delete the rebuild's checkpoint row", "sink", c.sink, "err", err)
		}
	} else if err := c.drop(ctx); err != nil {
		done = fmt.Sprintf("the live tables are untouched; could not drop the shadow tables %s: drop them by hand; %v", names, err)
	} else {
		done = fmt.Sprintf("the live tables are untouched; the shadow tables %s are dropped (-keep-failed keeps them)", names)
	}
	return fmt.Errorf("%w; %s", failure, done)
}
