package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/outbox"
)

// The relay publishes the rows of a PostgreSQL table (an event table or a
// transactional outbox) as jetsync events. How it stays gap-free, in order
// and exactly once is in docs/relay.md; in short:
//
//   - Rows are read in (transaction_id, id) order, and only rows whose
//     transaction_id is below pg_snapshot_xmin(pg_current_snapshot()): every
//     transaction below that has ended, so no row can still appear behind the
//     cursor. A long write transaction holds the relay back (Status.Held),
//     it never makes it skip.
//   - The cursor (transaction_id, id) is saved in the NATS KV bucket
//     jetsync-relay with compare-and-set, only once JetStream acknowledged
//     every row up to it.
//   - Every message carries its row's cursor (Jetsync-Source-Cursor). After a
//     crash the relay reads again from the saved cursor and skips a row when
//     the last stored message of its subject is at or past the row's cursor:
//     exact at any distance, not only within the duplicate window. Nats-Msg-Id
//     (the event id) deduplicates as well.
//
// Streams a relay writes must be written by it alone (as for an import): it
// keeps their versions in memory.

// HeaderSourceCursor is the relay's cursor of the row a message was
// published from: <source name>@<transaction_id>:<id>.
const HeaderSourceCursor = "Jetsync-Source-Cursor"

// RelayBucket is the NATS KV bucket holding each relay's cursor.
const RelayBucket = "jetsync-relay"

// cursor is a row's place in relay order.
type cursor struct {
	tx uint64 // transaction_id
	id int64  // the position column
}

func (c cursor) String() string {
	return strconv.FormatUint(c.tx, 10) + ":" + strconv.FormatInt(c.id, 10)
}

func (c cursor) after(d cursor) bool { return c.tx > d.tx || c.tx == d.tx && c.id > d.id }

func parseCursor(s string) (cursor, error) {
	t, i, ok := strings.Cut(s, ":")
	tx, err1 := strconv.ParseUint(t, 10, 64)
	id, err2 := strconv.ParseInt(i, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return cursor{}, fmt.Errorf("%q is not a cursor (transaction_id:id)", s)
	}
	return cursor{tx, id}, nil
}

// RelayState is what a relay is doing.
type RelayState string

// Relay states.
const (
	RelayStarting RelayState = "starting"
	RelayRunning  RelayState = "running"  // relaying, or caught up and polling
	RelayRetrying RelayState = "retrying" // PostgreSQL or NATS failed; starting again from the saved cursor
	RelayStopped  RelayState = "stopped"  // a bad row, a version gap or a second relay stopped it: see Error
)

// RelayStatus is a snapshot of a relay, served as JSON by GET /status.
type RelayStatus struct {
	Source        string     `json:"source"`
	Table         string     `json:"table"`
	State         RelayState `json:"state"`
	Cursor        string     `json:"cursor"`         // transaction_id:id of the last row acknowledged and saved
	Published     uint64     `json:"published"`      // events stored by this process
	Present       uint64     `json:"present"`        // rows found already published (after a restart)
	Skipped       uint64     `json:"skipped"`        // bad rows skipped (on_error: skip)
	DeadLettered  uint64     `json:"dead_lettered"`  // bad rows sent to the DLQ (on_error: dead-letter)
	Restarts      uint64     `json:"restarts"`       // retries after a PostgreSQL or NATS failure
	HeldSeconds   float64    `json:"held_seconds"`   // how long committed rows have waited behind an open transaction
	HeldBy        string     `json:"held_by"`        // that transaction, as far as pg_stat_activity shows it
	LastPublished time.Time  `json:"last_published"` // when an event was last acknowledged
	Error         string     `json:"error,omitempty"`
}

// Relay publishes one source table to JetStream.
type Relay struct {
	cfg      SourceConfig
	js       jetstream.JetStream
	stream   string
	replicas int // the stream's, for the cursor bucket
	log      *slog.Logger
	query    string
	held     string // the held-back probe
	wake     chan struct{}

	mu       sync.Mutex
	st       RelayStatus
	heldFrom time.Time // since when rows have been held back; zero: none are

	heldXmin  uint64 // the snapshot xmin rows were last seen held behind
	heldBy    string // that transaction, described
	heldSince time.Time
	heldWarn  time.Time
}

// NewRelay makes a relay of cfg (validated) into the JetStream stream
// (its name and replicas: the cursor bucket gets as many).
func NewRelay(cfg SourceConfig, js jetstream.JetStream, stream natsutil.StreamConfig, log *slog.Logger) *Relay {
	if log == nil {
		log = slog.Default()
	}
	r := &Relay{cfg: cfg, js: js, stream: stream.Name, replicas: stream.Replicas, log: log.With("source", cfg.Name), wake: make(chan struct{}, 1)}
	r.query, r.held = buildRelayQueries(cfg)
	r.st = RelayStatus{Source: cfg.Name, Table: cfg.Table, State: RelayStarting}
	return r
}

// Status is a snapshot of the relay.
func (r *Relay) Status() RelayStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.st
	if !r.heldFrom.IsZero() {
		st.HeldSeconds = time.Since(r.heldFrom).Seconds()
	}
	return st
}

func (r *Relay) update(f func(*RelayStatus)) {
	r.mu.Lock()
	f(&r.st)
	r.mu.Unlock()
}

// Poke makes a caught-up relay query at once (what a NOTIFY does).
func (r *Relay) Poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// buildRelayQueries is the batch query and the held-back probe.
func buildRelayQueries(c SourceConfig) (query, held string) {
	q := func(col string) string { return "src." + pgx.Identifier{col}.Sanitize() }
	opt := func(col, typ string) string {
		if col == "" {
			return "NULL::" + typ
		}
		return q(col) + "::" + typ
	}
	category := q(c.Columns.Category) + "::text"
	if c.Columns.Category == "" {
		parts, _ := parseTemplate(c.Category) // validated
		var args []string
		for _, p := range parts {
			if p.col != "" {
				args = append(args, q(p.col)+"::text")
			} else {
				args = append(args, "'"+strings.ReplaceAll(p.lit, "'", "''")+"'::text")
			}
		}
		// NULL when a column of the template is NULL (concat would make it "").
		category = "(" + strings.Join(args, " || ") + ")"
		if len(args) == 0 {
			category = "''::text"
		}
	}
	cols := []string{
		q(c.Columns.TransactionID) + "::text", q(c.Columns.Position) + "::bigint", q(c.Columns.EventID) + "::text", q(c.Columns.StreamID) + "::text", category,
		q(c.Columns.Type) + "::text", q(c.Columns.Data) + "::text", opt(c.Columns.Metadata, "text"),
		opt(c.Columns.Time, "timestamptz"), opt(c.Columns.Version, "bigint"),
	}
	// Columns are qualified with the alias src: a bare ORDER BY
	// transaction_id would name the output column transaction_id::text and
	// sort as text, putting xid 1000 before 767 (TestDrillRelayKilled
	// caught it; TestRelayOrderPastTextOrder keeps it caught).
	tx, pos := q(c.Columns.TransactionID), q(c.Columns.Position)
	table := pgx.Identifier(strings.Split(c.Table, ".")).Sanitize()
	query = "SELECT " + strings.Join(cols, ", ") +
		" FROM " + table + " AS src" +
		" WHERE (" + tx + ", " + pos + ") > ($1::text::xid8, $2::bigint)" +
		" AND " + tx + " < pg_snapshot_xmin(pg_current_snapshot())" +
		" ORDER BY " + tx + ", " + pos + " LIMIT $3"
	held = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, EXISTS (SELECT 1 FROM " + table + " AS src" +
		" WHERE " + tx + " >= pg_snapshot_xmin(pg_current_snapshot()))"
	return query, held
}

// Run relays until ctx ends (then it returns nil) or something only a
// person can fix stops it: a bad row (on_error: stop), a version gap or
// rewind, a second relay of the same name, a table or column that does not
// exist. A failure of PostgreSQL or NATS is logged and retried, with
// backoff, from the saved cursor.
func (r *Relay) Run(ctx context.Context) error {
	if r.cfg.ListenChannel != "" {
		lctx, stop := context.WithCancel(ctx)
		defer stop()
		go r.listen(lctx)
	}
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := r.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if permanent(err) {
			r.update(func(s *RelayStatus) { s.State, s.Error = RelayStopped, err.Error() })
			r.log.Error("relay stopped", "err", err)
			return err
		}
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		r.update(func(s *RelayStatus) { s.State, s.Error = RelayRetrying, err.Error(); s.Restarts++ })
		r.log.Warn("relay failed; starting again from the saved cursor", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// permanent reports whether err needs a person: retrying would fail the same way.
func permanent(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "42P01", "42703", "42804", "42883", "42501", "3F000": // no table, no column, wrong type, no operator, no privilege, no schema
			return true
		}
	}
	return errors.Is(err, ErrBadRow) || errors.Is(err, ErrVersionGap) || errors.Is(err, ErrRelayConflict) || errors.Is(err, ErrNotJetsync)
}

// relayBatch is one query's rows, and the stored state of the subjects
// that first appear in it.
type relayBatch struct {
	raw   []rawRow // as read; decoded into rows by the look-up stage
	rows  []sourceRow
	found map[string]*subjState
}

// rawRow is a row as scanned.
type rawRow struct {
	at                           cursor
	eid, sid, cat, typ, data, md *string
	ts                           *time.Time
	ver                          *int64
}

// sourceRow is one row, decoded and checked.
type sourceRow struct {
	at  cursor
	ev  envelope.Event // Version set only when the table has versions
	bad *RowError      // why the row cannot be published, or nil
	raw map[string]any // the row's columns, kept for a dead letter only
}

// subjState is what the relay knows of one subject: its version and the
// cursor of its last published row.
type subjState struct {
	version uint64
	at      cursor
}

// relayPub is an event awaiting its ack, or (f nil) a batch's end whose
// cursor the collector saves once everything before it is acknowledged.
type relayPub struct {
	f   jetstream.PubAckFuture
	row cursor
	id  string
	sub string
}

// runOnce connects, loads the cursor and relays until something fails.
func (r *Relay) runOnce(ctx context.Context) (err error) {
	r.update(func(s *RelayStatus) { s.State = RelayStarting })
	cctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
	conn, err := pgx.Connect(cctx, r.cfg.PostgresURL)
	cancel()
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer conn.Close(context.Background())
	if r.cfg.CreateTable {
		if err := r.createTable(ctx, conn); err != nil {
			return err
		}
	}
	cur, err := r.openCursor(ctx)
	if err != nil {
		return err
	}
	stream, err := r.js.Stream(ctx, r.stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", r.stream, classify(err))
	}
	if r.cfg.OnError == onErrorDeadLetter {
		if _, err := deadletter.Open(ctx, r.js); err != nil {
			return err
		}
	}
	r.update(func(s *RelayStatus) { s.State, s.Error, s.Cursor = RelayRunning, "", cur.at.String() })
	r.log.Info("relay running", "table", r.cfg.Table, "cursor", cur.at.String(), "stream", r.stream)

	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	read := make(chan relayBatch, 2)
	readErr := make(chan error, 1)
	go func() {
		err := r.read(ctx, conn, cur.at, read)
		close(read)
		readErr <- err
	}()
	// Looking up the streams a batch brings up waits on the server: a stage
	// of its own, so the publisher does not wait for it.
	batches := make(chan relayBatch, 2)
	lookErr := make(chan error, 1)
	go func() {
		err := r.lookUpStage(ctx, stream, read, batches)
		close(batches)
		for range read { // let the reader see the cancel and end
		}
		lookErr <- err
	}()
	pending := make(chan relayPub, 4*r.cfg.BatchSize)
	collected := make(chan error, 1)
	go func() { collected <- r.collect(ctx, stop, stream, cur, pending) }()

	pubErr := r.publish(ctx, batches, pending)
	close(pending)
	ackErr := <-collected
	stop(errors.New("relay stopping"))
	for range batches { // let the stages see the cancel and end
	}
	lerr := <-lookErr
	rerr := <-readErr
	switch {
	case ackErr != nil:
		return ackErr
	case pubErr != nil:
		return pubErr
	case rerr != nil && !errors.Is(rerr, context.Canceled):
		return rerr
	case lerr != nil && !errors.Is(lerr, context.Canceled):
		return lerr
	}
	return ctx.Err()
}

// createTable creates the outbox table, and with a listen channel its
// NOTIFY trigger, when the table is missing; an existing table is left as
// it is.
func (r *Relay) createTable(ctx context.Context, conn *pgx.Conn) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", r.cfg.Table).Scan(&exists); err != nil {
		return fmt.Errorf("source.create_table: %w", err)
	}
	if exists {
		return nil
	}
	ddl := outbox.DDLFor(r.cfg.Table)
	if r.cfg.ListenChannel != "" {
		ddl += "\n" + outbox.NotifyDDL(r.cfg.Table, r.cfg.ListenChannel)
	}
	if _, err := conn.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("source.create_table: creating %s: %w", r.cfg.Table, err)
	}
	r.log.Info("outbox table created (source.create_table)", "table", r.cfg.Table, "notify_channel", r.cfg.ListenChannel)
	return nil
}

// relayCursor is the saved cursor and its KV revision.
type relayCursor struct {
	kv  jetstream.KeyValue
	key string
	rev uint64
	at  cursor
}

func (r *Relay) openCursor(ctx context.Context) (*relayCursor, error) {
	kv, err := natsutil.ProvisionKV(ctx, r.js, jetstream.KeyValueConfig{Bucket: RelayBucket,
		Description: "jetsync relay cursors: transaction_id:id of the last source row published", History: 5, Storage: jetstream.FileStorage,
		Replicas: max(r.replicas, 1)}, "stream.replicas")
	if err != nil {
		return nil, fmt.Errorf("opening KV bucket %s: %w", RelayBucket, classify(err))
	}
	c := &relayCursor{kv: kv, key: r.cfg.Name}
	e, err := kv.Get(ctx, c.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return c, nil
	case err != nil:
		return nil, fmt.Errorf("loading the cursor of %s: %w", c.key, classify(err))
	}
	if c.at, err = parseCursor(string(e.Value())); err != nil {
		return nil, fmt.Errorf("%w: the cursor in KV %s/%s: %v; delete the key to relay the table from the start", ErrRelayConflict, RelayBucket, c.key, err)
	}
	c.rev = e.Revision()
	return c, nil
}

// save stores at with compare-and-set: a second relay of the same name
// fails here instead of both publishing.
func (c *relayCursor) save(ctx context.Context, at cursor) error {
	val := []byte(at.String())
	var rev uint64
	var err error
	if c.rev == 0 {
		rev, err = c.kv.Create(ctx, c.key, val)
	} else {
		rev, err = c.kv.Update(ctx, c.key, val, c.rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || isAPIError(err, jetstream.JSErrCodeStreamWrongLastSequence) {
		return fmt.Errorf("%w: the cursor %s/%s changed under this relay: another relay with source.name %q runs; stop one", ErrRelayConflict, RelayBucket, c.key, c.key)
	}
	if err != nil {
		return fmt.Errorf("saving the cursor %s: %w", at, classify(err))
	}
	c.rev, c.at = rev, at
	return nil
}

// read queries batch after batch from the cursor; caught up, it probes
// whether rows are held back, then waits for the poll interval or a poke.
func (r *Relay) read(ctx context.Context, conn *pgx.Conn, from cursor, out chan<- relayBatch) error {
	at := from
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		rows, err := r.fetch(ctx, conn, at)
		if err != nil {
			return err
		}
		if len(rows) > 0 {
			at = rows[len(rows)-1].at
			select {
			case out <- relayBatch{raw: rows}:
			case <-ctx.Done():
				return ctx.Err()
			}
			if len(rows) == r.cfg.BatchSize {
				continue
			}
		}
		if err := r.probeHeld(ctx, conn); err != nil {
			return err
		}
		timer.Reset(r.cfg.PollInterval)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// fetch reads the next rows after at (decoded by the look-up stage, so
// the next query runs meanwhile).
func (r *Relay) fetch(ctx context.Context, conn *pgx.Conn, at cursor) ([]rawRow, error) {
	qctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
	defer cancel()
	rows, err := conn.Query(qctx, r.query, strconv.FormatUint(at.tx, 10), at.id, r.cfg.BatchSize)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", r.cfg.Table, err)
	}
	defer rows.Close()
	out := make([]rawRow, 0, r.cfg.BatchSize)
	var txs string
	var id int64
	for rows.Next() {
		var w rawRow
		if err := rows.Scan(&txs, &id, &w.eid, &w.sid, &w.cat, &w.typ, &w.data, &w.md, &w.ts, &w.ver); err != nil {
			return nil, fmt.Errorf("reading %s: %w", r.cfg.Table, err)
		}
		tx, err := strconv.ParseUint(txs, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %s is %q, not an xid8", r.cfg.Table, r.cfg.Columns.TransactionID, txs)
		}
		w.at = cursor{tx, id}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", r.cfg.Table, err)
	}
	return out, nil
}

// decode builds a row's event and checks it as an import line is checked,
// naming the column of a bad field.
func (r *Relay) decode(w rawRow) sourceRow {
	at, eid, sid, cat, typ, data, md, ts, ver := w.at, w.eid, w.sid, w.cat, w.typ, w.data, w.md, w.ts, w.ver
	s := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	row := sourceRow{at: at, ev: envelope.Event{ID: s(eid), StreamID: s(sid), Category: s(cat), Type: s(typ)}}
	if data != nil {
		row.ev.Data = []byte(*data)
	}
	if md != nil {
		row.ev.Metadata = []byte(*md)
	}
	bad := func(column, reason string) sourceRow {
		row.bad = &RowError{Table: r.cfg.Table, Key: r.cfg.Columns.Position, Row: at.id, Column: column, Reason: reason}
		row.raw = map[string]any{r.cfg.Columns.Position: at.id, r.cfg.Columns.TransactionID: at.tx,
			r.cfg.Columns.EventID: eid, r.cfg.Columns.StreamID: sid, "category": cat, r.cfg.Columns.Type: typ, r.cfg.Columns.Data: data}
		return row
	}
	if err := row.ev.ValidateNew(""); err != nil {
		var fe *envelope.FieldError
		if errors.As(err, &fe) {
			return bad(r.column(fe.Field), fe.Reason)
		}
		return bad("?", err.Error())
	}
	switch {
	case r.cfg.Columns.Time == "":
		row.ev.Time = time.Now()
	case ts == nil:
		return bad(r.cfg.Columns.Time, "is NULL: the time the event happened is required")
	default:
		row.ev.Time = *ts
	}
	if r.cfg.Columns.Version != "" {
		if ver == nil || *ver < 1 {
			return bad(r.cfg.Columns.Version, "must be the event's version in its stream, 1 or more")
		}
		row.ev.Version = uint64(*ver)
	}
	return row
}

// column is the column behind an envelope field.
func (r *Relay) column(field string) string {
	c := r.cfg.Columns
	switch field {
	case "id":
		return c.EventID
	case "streamId":
		return c.StreamID
	case "category":
		if c.Category == "" {
			return "source.category template " + strconv.Quote(r.cfg.Category)
		}
		return c.Category
	case "type":
		return c.Type
	case "data":
		return c.Data
	case "metadata":
		return c.Metadata
	}
	return field
}

// probeHeld notes whether committed rows wait behind an open transaction,
// and since when the horizon has stood still.
func (r *Relay) probeHeld(ctx context.Context, conn *pgx.Conn) error {
	qctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
	defer cancel()
	var xs string
	var held bool
	if err := conn.QueryRow(qctx, r.held).Scan(&xs, &held); err != nil {
		return fmt.Errorf("probing %s: %w", r.cfg.Table, err)
	}
	xmin, _ := strconv.ParseUint(xs, 10, 64)
	now := time.Now()
	if !held {
		r.heldXmin = 0
		r.mu.Lock()
		r.heldFrom, r.st.HeldBy = time.Time{}, ""
		r.mu.Unlock()
		return nil
	}
	if xmin != r.heldXmin {
		r.heldXmin, r.heldSince, r.heldBy = xmin, now, r.holder(qctx, conn, xs)
	}
	heldFor := now.Sub(r.heldSince)
	by := r.heldBy
	if heldFor >= 10*time.Second && now.Sub(r.heldWarn) >= time.Minute {
		r.heldWarn = now
		r.log.Warn("relay held back: committed rows wait behind an open transaction (the relay never skips it); end it or wait",
			"held", heldFor.Round(time.Second).String(), "by", by)
	}
	r.mu.Lock()
	r.heldFrom, r.st.HeldBy = r.heldSince, by
	r.mu.Unlock()
	return nil
}

// holder names the transaction xid (the snapshot's xmin) as far as this
// role may see it in pg_stat_activity (pg_read_all_stats shows all).
func (r *Relay) holder(ctx context.Context, conn *pgx.Conn, xid string) string {
	var pid *int32
	var db, state, query *string
	var since *time.Time
	err := conn.QueryRow(ctx, `SELECT pid, datname, state, left(query, 120), xact_start
FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND backend_xid::text = ($1::numeric % 4294967296)::text`, xid).Scan(&pid, &db, &state, &query, &since)
	if err != nil || pid == nil {
		return "transaction " + xid
	}
	started := "?"
	if since != nil {
		started = since.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("transaction %s: pid %d, database %s, %s since %s, last query %q", xid, *pid, deref(db), deref(state), started, deref(query))
}

func deref(p *string) string {
	if p == nil {
		return "?"
	}
	return *p
}

// publish publishes the batches' rows in order and ends each batch with a
// mark for the collector. It returns at the first row that stops the relay
// (after marking the row before it) or when ctx ends.
func (r *Relay) publish(ctx context.Context, batches <-chan relayBatch, pending chan<- relayPub) error {
	subjects := map[string]*subjState{}
	send := func(p relayPub) error {
		select {
		case pending <- p:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	for b := range batches {
		for sub, st := range b.found {
			subjects[sub] = st
		}
		var last cursor
		marked := true
		for _, row := range b.rows {
			if row.bad != nil {
				switch r.cfg.OnError {
				case onErrorSkip:
					r.log.Warn("bad row skipped (on_error: skip)", "err", row.bad)
					r.update(func(s *RelayStatus) { s.Skipped++ })
				case onErrorDeadLetter:
					if err := r.deadLetter(ctx, row); err != nil {
						return err
					}
				default:
					if !marked {
						if err := send(relayPub{row: last}); err != nil {
							return err
						}
					}
					return row.bad
				}
				last, marked = row.at, false
				continue
			}
			sub := row.ev.Subject()
			st := subjects[sub]
			if !row.at.after(st.at) {
				r.update(func(s *RelayStatus) { s.Present++ }) // published before a restart
				last, marked = row.at, false
				continue
			}
			if r.cfg.Columns.Version != "" {
				if row.ev.Version != st.version+1 {
					if !marked {
						if err := send(relayPub{row: last}); err != nil {
							return err
						}
					}
					what := "a gap"
					if row.ev.Version <= st.version {
						what = "a rewind"
					}
					return fmt.Errorf("%w: %s row %s=%d: stream %s/%s is at version %d and the row has version %d, %s; the next row of the stream must have version %d",
						ErrVersionGap, r.cfg.Table, r.cfg.Columns.Position, row.at.id, row.ev.Category, row.ev.StreamID, st.version, row.ev.Version, what, st.version+1)
				}
			} else {
				row.ev.Version = st.version + 1
			}
			msg := row.ev.ToMsg()
			msg.Header[HeaderSourceCursor] = []string{r.cfg.Name + "@" + row.at.String()}
			f, err := r.js.PublishMsgAsync(msg, jetstream.WithStallWait(r.cfg.AckTimeout))
			if err != nil {
				return fmt.Errorf("%s row %s=%d: publishing event %q: %w", r.cfg.Table, r.cfg.Columns.Position, row.at.id, row.ev.ID, classify(err))
			}
			st.version, st.at = row.ev.Version, row.at
			if err := send(relayPub{f: f, row: row.at, id: row.ev.ID, sub: sub}); err != nil {
				return err
			}
			last, marked = row.at, false
		}
		if !marked {
			if err := send(relayPub{row: last}); err != nil {
				return err
			}
		}
	}
	return context.Cause(ctx)
}

// lookUpStage decodes and checks the batches' rows and passes them on,
// each with the stored state of the
// subjects that first appear in it. A subject is looked up before the
// publisher publishes any row of it: its first rows are in this batch.
func (r *Relay) lookUpStage(ctx context.Context, stream jetstream.Stream, in <-chan relayBatch, out chan<- relayBatch) error {
	seen := map[string]bool{}
	for b := range in {
		b.rows = make([]sourceRow, len(b.raw))
		for i, w := range b.raw {
			b.rows[i] = r.decode(w)
		}
		b.raw = nil
		found, err := r.lookUp(ctx, stream, b.rows, seen)
		if err != nil {
			return err
		}
		b.found = found
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// lookUp reads the last stored message of every subject of rows not seen
// yet: its version, and its row cursor when this relay published it.
func (r *Relay) lookUp(ctx context.Context, stream jetstream.Stream, rows []sourceRow, seen map[string]bool) (map[string]*subjState, error) {
	var missing []string
	subjects := map[string]*subjState{}
	for _, row := range rows {
		if row.bad != nil {
			continue
		}
		s := row.ev.Subject()
		if !seen[s] {
			seen[s] = true
			subjects[s] = &subjState{}
			missing = append(missing, s)
		}
	}
	prefix := r.cfg.Name + "@"
	for len(missing) > 0 {
		n := min(len(missing), chunkLines)
		lctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
		err := lastMsgs(lctx, r.js, stream, missing[:n], func(subject string, seq uint64, h nats.Header) error {
			v, err := storedVersion(subject, seq, h)
			if err != nil {
				return err
			}
			st := subjects[subject]
			st.version = v
			if c, ok := strings.CutPrefix(h.Get(HeaderSourceCursor), prefix); ok {
				if st.at, err = parseCursor(c); err != nil {
					return fmt.Errorf("%w: %s at position %d: %s %v", ErrNotJetsync, subject, seq, HeaderSourceCursor, err)
				}
			}
			return nil
		})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("reading the versions of %d streams: %w", n, err)
		}
		missing = missing[n:]
	}
	return subjects, nil
}

// deadLetter publishes a bad row to dlq.relay-<name> and waits for its ack.
func (r *Relay) deadLetter(ctx context.Context, row sourceRow) error {
	body, err := json.Marshal(row.raw)
	if err != nil {
		return err
	}
	h := nats.Header{}
	h.Set(deadletter.HeaderSink, "relay-"+r.cfg.Name)
	h.Set(deadletter.HeaderError, row.bad.Error())
	h.Set(deadletter.HeaderTime, time.Now().UTC().Format(time.RFC3339Nano))
	h.Set(deadletter.HeaderPosition, strconv.FormatInt(row.at.id, 10))
	h.Set(deadletter.HeaderSubject, r.cfg.Table)
	h.Set(nats.MsgIdHdr, "relay-"+r.cfg.Name+"-"+row.at.String())
	dctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
	defer cancel()
	if _, err := r.js.PublishMsg(dctx, &nats.Msg{Subject: deadletter.Subject("relay-" + r.cfg.Name), Header: h, Data: body}); err != nil {
		return fmt.Errorf("dead-lettering %s row %d: %w", r.cfg.Table, row.at.id, classify(err))
	}
	r.log.Warn("bad row dead-lettered (on_error: dead-letter)", "err", row.bad, "subject", deadletter.Subject("relay-"+r.cfg.Name))
	r.update(func(s *RelayStatus) { s.DeadLettered++ })
	return nil
}

// collect waits for the acks in order and saves the cursor at each batch
// mark once everything before it is acknowledged. At the first failure it
// cancels the run and saves nothing more.
func (r *Relay) collect(ctx context.Context, stop context.CancelCauseFunc, stream jetstream.Stream, cur *relayCursor, pending <-chan relayPub) error {
	var failed error
	fail := func(err error) {
		if failed == nil {
			failed = err
			stop(err)
		}
	}
	timer := time.NewTimer(r.cfg.AckTimeout)
	defer timer.Stop()
	var published uint64
	for p := range pending {
		if failed != nil {
			continue
		}
		if p.f == nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.AckTimeout)
			err := cur.save(sctx, p.row)
			cancel()
			if err != nil {
				fail(err)
				continue
			}
			n := published
			published = 0
			r.update(func(s *RelayStatus) {
				s.Cursor = p.row.String()
				s.Published += n
				if n > 0 {
					s.LastPublished = time.Now()
				}
			})
			continue
		}
		timer.Reset(r.cfg.AckTimeout)
		select {
		case ack := <-p.f.Ok():
			if ack.Duplicate {
				if err := r.checkDuplicate(ctx, stream, p, ack.Sequence); err != nil {
					fail(err)
				}
				continue
			}
			published++
		case err := <-p.f.Err():
			fail(fmt.Errorf("%s row %s=%d: publishing event %q: %w", r.cfg.Table, r.cfg.Columns.Position, p.row.id, p.id, classify(err)))
		case <-timer.C:
			fail(fmt.Errorf("%w: no ack within %s", ErrUnavailable, r.cfg.AckTimeout))
		case <-ctx.Done():
			fail(context.Cause(ctx))
		}
	}
	return failed
}

// checkDuplicate accepts a deduplicated event if the message stored under
// its id is this row's (published before a restart); another message means
// the event id is used twice and this row was not stored.
func (r *Relay) checkDuplicate(ctx context.Context, stream jetstream.Stream, p relayPub, seq uint64) error {
	gctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
	defer cancel()
	m, err := stream.GetMsg(gctx, seq)
	if err != nil {
		return fmt.Errorf("checking the stored event with the same id at position %d: %w", seq, classify(err))
	}
	if m.Subject == p.sub && m.Header.Get(HeaderSourceCursor) == r.cfg.Name+"@"+p.row.String() {
		r.update(func(s *RelayStatus) { s.Present++ })
		return nil
	}
	return &RowError{Table: r.cfg.Table, Key: r.cfg.Columns.Position, Row: p.row.id, Column: r.cfg.Columns.EventID,
		Reason: fmt.Sprintf("%q is already the id of another event (position %d, %s), so this row was not stored; event ids must be unique", p.id, seq, m.Subject)}
}

// listen wakes the relay on every NOTIFY on the listen channel, connecting
// again after a failure; on every (re)connect it wakes it once, for what
// was committed while it was not listening.
func (r *Relay) listen(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("LISTEN connection failed; polling meanwhile", "channel", r.cfg.ListenChannel, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (r *Relay) listenOnce(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
	conn, err := pgx.Connect(cctx, r.cfg.PostgresURL)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{r.cfg.ListenChannel}.Sanitize()); err != nil {
		return err
	}
	r.Poke()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		r.Poke()
	}
}
