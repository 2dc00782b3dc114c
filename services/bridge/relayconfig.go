package main

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/outbox"
)

// SourceConfig is the `source:` section: a PostgreSQL event table or
// outbox that `bridge relay` (and `bridge serve`, when postgres_url is set)
// publishes to JetStream. See docs/relay.md.
type SourceConfig struct {
	// Name identifies the relay: its cursor is the key relay-<name> in the
	// NATS KV bucket jetsync-relay, and its dead letters go to dlq.relay-<name>.
	Name string `yaml:"name"`
	// PostgresURL is the database (JETSYNC_SOURCE_POSTGRES_URL); empty
	// turns the relay off in `bridge serve`.
	PostgresURL string `yaml:"postgres_url"`
	// Table is the table read, schema-qualified or not.
	Table string `yaml:"table"`
	// CreateTable creates Table with pkg/outbox's DDL when it is missing,
	// with its NOTIFY trigger on ListenChannel when that is set (a new
	// outbox; an existing table is never altered).
	CreateTable bool `yaml:"create_table"`
	// Columns maps the table's columns onto the event envelope.
	Columns SourceColumns `yaml:"columns"`
	// Category, when columns.category is empty, is every event's category:
	// a constant ("order") or a template of columns ("{aggregate_type}").
	Category string `yaml:"category"`
	// BatchSize is the most rows one query reads.
	BatchSize int `yaml:"batch_size"`
	// PollInterval is the wait between queries once caught up.
	PollInterval time.Duration `yaml:"poll_interval"`
	// ListenChannel, when set, is a channel LISTENed on: a NOTIFY on it
	// (e.g. from pkg/outbox.NotifyDDL's trigger) wakes the relay at once.
	ListenChannel string `yaml:"listen_channel"`
	// OnError says what a bad row does: stop (the default: the relay stops
	// naming the row and the column), skip (logged and counted), or
	// dead-letter (published to dlq.relay-<name> with the error).
	OnError string `yaml:"on_error"`
	// StatusListen, for `bridge relay`, is host:port serving GET /status
	// (JSON) and GET /metrics; empty: none. `bridge serve` exposes the
	// relay's metrics on its own /metrics and this status as well when set.
	StatusListen string `yaml:"status_listen"`
	// AckTimeout bounds the wait for one JetStream ack or one query.
	AckTimeout time.Duration `yaml:"ack_timeout"`
}

// SourceColumns names the columns read. An empty optional column is not read.
type SourceColumns struct {
	Position      string `yaml:"position"`       // bigint, unique, increasing: the row's id (required)
	TransactionID string `yaml:"transaction_id"` // xid8 DEFAULT pg_current_xact_id() (required)
	EventID       string `yaml:"event_id"`       // text/uuid (required)
	StreamID      string `yaml:"stream_id"`      // text (required)
	Category      string `yaml:"category"`       // text; or source.category
	Type          string `yaml:"type"`           // text (required)
	Data          string `yaml:"data"`           // json, jsonb or text holding JSON (required)
	Metadata      string `yaml:"metadata"`       // json, jsonb or text holding a JSON object (optional)
	Time          string `yaml:"time"`           // timestamptz (optional: the relay's clock)
	Version       string `yaml:"version"`        // bigint (optional: assigned like an HTTP append)
}

// Error policies of source.on_error.
const (
	onErrorStop       = "stop"
	onErrorSkip       = "skip"
	onErrorDeadLetter = "dead-letter"
)

// DefaultSourceConfig reads pkg/outbox's table.
func DefaultSourceConfig() SourceConfig {
	return SourceConfig{
		Name:  "outbox",
		Table: outbox.DefaultTable,
		Columns: SourceColumns{Position: "id", TransactionID: "transaction_id", EventID: "event_id", StreamID: "stream_id",
			Category: "category", Type: "type", Data: "data", Metadata: "metadata", Time: "created_at"},
		BatchSize:    2000,
		PollInterval: 50 * time.Millisecond,
		OnError:      onErrorStop,
		AckTimeout:   30 * time.Second,
	}
}

// Enabled says whether a source is configured.
func (c *SourceConfig) Enabled() bool { return c.PostgresURL != "" }

var (
	identRe    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)
	tableRe    = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*$`)
	templateRe = regexp.MustCompile(`\{([^{}]*)\}`)
)

// validate adds the section's problems (only when it is enabled).
func (c *SourceConfig) validate(p *config.Problems) {
	if !c.Enabled() {
		return
	}
	if err := validateName(c.Name); err != "" {
		p.Addf("source.name", "%s", err)
	}
	if u, err := url.Parse(c.PostgresURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		p.Addf("source.postgres_url", "must be a postgres:// URL, e.g. postgres://user:pw@127.0.0.1:5432/app")
	}
	if !tableRe.MatchString(c.Table) {
		p.Addf("source.table", "%q is not a table name; write table or schema.table (letters, digits, _)", c.Table)
	}
	col := func(key, v string, required bool) {
		switch {
		case v == "" && required:
			p.Addf("source.columns."+key, "is required: the column holding the event's %s", strings.ReplaceAll(key, "_", " "))
		case v != "" && !identRe.MatchString(v):
			p.Addf("source.columns."+key, "%q is not a column name (letters, digits, _)", v)
		}
	}
	cc := c.Columns
	col("position", cc.Position, true)
	col("transaction_id", cc.TransactionID, true)
	col("event_id", cc.EventID, true)
	col("stream_id", cc.StreamID, true)
	col("category", cc.Category, false)
	col("type", cc.Type, true)
	col("data", cc.Data, true)
	col("metadata", cc.Metadata, false)
	col("time", cc.Time, false)
	col("version", cc.Version, false)
	switch {
	case cc.Category == "" && c.Category == "":
		p.Addf("source.category", "is empty and so is source.columns.category: name the category column, or give a constant (order) or a template ({aggregate_type})")
	case cc.Category != "" && c.Category != "":
		p.Addf("source.category", "is set and so is source.columns.category; keep one")
	case c.Category != "":
		if _, err := parseTemplate(c.Category); err != nil {
			p.Addf("source.category", "%v", err)
		}
	}
	if c.BatchSize < 1 || c.BatchSize > 100_000 {
		p.Addf("source.batch_size", "must be 1 to 100000, got %d; e.g. 2000", c.BatchSize)
	}
	if c.PollInterval < time.Millisecond {
		p.Addf("source.poll_interval", "must be at least 1ms, e.g. 50ms")
	}
	if c.AckTimeout <= 0 {
		p.Addf("source.ack_timeout", "must be positive, e.g. 30s")
	}
	switch c.OnError {
	case onErrorStop, onErrorSkip, onErrorDeadLetter:
	default:
		p.Addf("source.on_error", "%q is not a policy; use stop, skip or dead-letter", c.OnError)
	}
	if c.StatusListen != "" {
		if err := validateListen(c.StatusListen); err != "" {
			p.Addf("source.status_listen", "%s", err)
		}
	}
}

// validateName checks a relay name: it becomes a KV key and a subject token.
func validateName(s string) string {
	if s == "" || len(s) > 64 {
		return "must be 1 to 64 characters, e.g. outbox"
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Sprintf("%q may hold letters, digits, - and _ only", s)
		}
	}
	return ""
}

// templatePart is a literal, or a column when col is set.
type templatePart struct{ lit, col string }

// parseTemplate splits "{a}-x" into its columns and literals.
func parseTemplate(t string) ([]templatePart, error) {
	var parts []templatePart
	rest := t
	for {
		loc := templateRe.FindStringSubmatchIndex(rest)
		if loc == nil {
			if strings.ContainsAny(rest, "{}") {
				return nil, fmt.Errorf("%q has an unmatched { or }; write {column}", t)
			}
			if rest != "" {
				parts = append(parts, templatePart{lit: rest})
			}
			return parts, nil
		}
		if lit := rest[:loc[0]]; lit != "" {
			if strings.ContainsAny(lit, "{}") {
				return nil, fmt.Errorf("%q has an unmatched { or }; write {column}", t)
			}
			parts = append(parts, templatePart{lit: lit})
		}
		col := rest[loc[2]:loc[3]]
		if !identRe.MatchString(col) {
			return nil, fmt.Errorf("%q: {%s} is not a column name (letters, digits, _)", t, col)
		}
		parts = append(parts, templatePart{col: col})
		rest = rest[loc[1]:]
	}
}

// validateErr is validate on its own, for tests and callers building a
// SourceConfig in code.
func (c *SourceConfig) validateErr() error {
	var p config.Problems
	c.validate(&p)
	return p.Err()
}
