// Package relational is jetsync's PostgreSQL read-model sink: it maps each
// event type to row writes (upsert, patch, delete) and commits every batch
// in one transaction together with the sink's row in jetsync_checkpoints.
package relational

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Actions a row mapping can do.
const (
	ActionUpsert = "upsert" // write the whole row: projected columns, the others NULL
	ActionPatch  = "patch"  // write only the projected columns (insert the row when missing)
	ActionDelete = "delete" // delete the row
)

var actions = []string{ActionUpsert, ActionPatch, ActionDelete}

// What to do with an event type that has no mapping.
const (
	UnknownIgnore = "ignore" // move the checkpoint past it
	UnknownError  = "error"  // a permanent per-event error: on_error decides
)

// PositionColumn is the column every declaratively written row carries: the
// position of the last event applied to it. An upsert or patch only wins
// when it is newer, so replaying events changes nothing.
const PositionColumn = "_position"

// CheckpointTable holds one row per sink: (sink, position).
const CheckpointTable = "jetsync_checkpoints"

// Config is sink-postgres's configuration file.
type Config struct {
	sink.Config `yaml:",inline"`

	Postgres PostgresConfig `yaml:"postgres"`
	// UnknownTypes is "ignore" or "error".
	UnknownTypes string `yaml:"unknown_types"`
	// Tables declares tables created at start when missing.
	Tables map[string]Table `yaml:"tables"`
	// Mappings lists, per event type, the row writes applied in order.
	Mappings map[string][]Action `yaml:"mappings"`
}

// PostgresConfig says which database holds the read model and checkpoint.
type PostgresConfig struct {
	// URL is a libpq/pgx connection string,
	// e.g. postgres://jetsync@127.0.0.1:5432/app?sslmode=disable.
	URL string `yaml:"url"`
}

// Table is a table the sink creates when missing: its columns and SQL
// types (the key columns among them) and its primary key. The _position
// column is added by the sink.
type Table struct {
	Columns    map[string]string `yaml:"columns"`
	PrimaryKey []string          `yaml:"primary_key"`
}

// Action is one row write for an event.
type Action struct {
	Action string `yaml:"action"`
	Table  string `yaml:"table"`
	// Key maps each key column (the table's primary key or a unique
	// index) to a template such as "{streamId}".
	Key map[string]string `yaml:"key"`
	// Project is a jq expression run on the envelope object
	// {id, streamId, category, type, version, time, position, data, metadata}
	// that yields the row's columns as an object; the data when empty.
	Project string `yaml:"project"`

	// SQL, instead of action/table/key/project, is a raw SQL statement
	// for an existing schema, with named parameters (:amount, :id), e.g.
	// "UPDATE accounts SET balance = balance + :amount WHERE id = :id".
	// It runs prepared, in event order, in the batch's transaction.
	SQL string `yaml:"sql"`
	// Params is a jq expression run on the envelope object that yields
	// the parameters as an object ({amount: .data.amount, id: .streamId});
	// the data when empty. Objects and arrays are passed as JSON text.
	Params string `yaml:"params"`
}

// DefaultConfig is the configuration before the file and the environment.
func DefaultConfig() Config {
	return Config{
		Config:       sink.DefaultConfig("postgres"),
		Postgres:     PostgresConfig{URL: "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"},
		UnknownTypes: UnknownIgnore,
	}
}

// ident is what the sink accepts as a table or column name: lower case, so
// that quoted and unquoted spellings in users' SQL mean the same; a table
// may be schema-qualified.
var (
	identRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
	tableRe = regexp.MustCompile(`^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$`)
	typeRe  = regexp.MustCompile(`^[a-z][a-z0-9_ ]*(\([0-9, ]+\))?(\[\])?$`)
)

// Validate reports every problem at once, each naming its YAML key.
func (c *Config) Validate() error {
	var p config.Problems
	c.Config.Validate(&p)
	if c.Postgres.URL == "" {
		p.Addf("postgres.url", "is required, e.g. postgres://jetsync@127.0.0.1:5432/app?sslmode=disable")
	}
	if c.UnknownTypes != UnknownIgnore && c.UnknownTypes != UnknownError {
		p.Addf("unknown_types", "must be %q or %q, got %q", UnknownIgnore, UnknownError, c.UnknownTypes)
	}
	validateTables(c.Tables, &p)
	compileMappings(c.Name, c.Mappings, c.Tables, &p)
	return p.Err()
}

func validateTables(tables map[string]Table, p *config.Problems) {
	for _, name := range sortedKeys(tables) {
		t, key := tables[name], "tables."+name
		if !tableRe.MatchString(name) {
			p.Addf(key, "a table name must be lower-case letters, digits and _ (optionally schema.table)")
		}
		if len(t.Columns) == 0 {
			p.Addf(key+".columns", "needs at least one column, e.g. {order_id: text, total: numeric}")
		}
		for _, col := range sortedKeys(t.Columns) {
			if !identRe.MatchString(col) || col == PositionColumn {
				p.Addf(key+".columns."+col, "a column name must be lower-case letters, digits and _, and not %s (the sink adds it)", PositionColumn)
			}
			if !typeRe.MatchString(strings.ToLower(t.Columns[col])) {
				p.Addf(key+".columns."+col, "%q is not a SQL type name such as text, bigint, numeric(10,2), jsonb, timestamptz", t.Columns[col])
			}
		}
		if len(t.PrimaryKey) == 0 {
			p.Addf(key+".primary_key", "is required: the key columns, e.g. [order_id]")
		}
		for i, col := range t.PrimaryKey {
			if _, ok := t.Columns[col]; !ok {
				p.Addf(fmt.Sprintf("%s.primary_key[%d]", key, i), "%q is not one of the table's columns", col)
			}
		}
	}
}

// compileMappings turns the mappings into actions ready to run, reporting
// every problem to p. The result is only usable when p stayed empty.
func compileMappings(sinkName string, m map[string][]Action, tables map[string]Table, p *config.Problems) map[string][]action {
	if len(m) == 0 {
		p.Addf("mappings", "needs at least one event type, e.g. OrderPlaced: [{action: upsert, table: orders, key: {order_id: \"{streamId}\"}}]")
		return nil
	}
	out := make(map[string][]action, len(m))
	for _, typ := range sortedKeys(m) {
		if typ == "" || strings.ContainsAny(typ, "\r\n") {
			p.Addf("mappings."+typ, "an event type must be one non-empty line")
		}
		list := m[typ]
		if len(list) == 0 {
			p.Addf("mappings."+typ, "needs at least one action, e.g. [{action: delete, table: orders, key: {order_id: \"{streamId}\"}}]")
			continue
		}
		acts := make([]action, 0, len(list))
		for i, a := range list {
			acts = append(acts, compileAction(sinkName, fmt.Sprintf("mappings.%s[%d]", typ, i), a, tables, p))
		}
		out[typ] = acts
	}
	return out
}

func compileAction(sinkName, key string, a Action, tables map[string]Table, p *config.Problems) action {
	act := action{where: key, op: a.Action, table: a.Table}
	if a.SQL != "" {
		compileRaw(key, a, &act, p)
		return act
	}
	if a.Params != "" {
		p.Addf(key+".params", "is only allowed with sql; a row write takes its columns from project")
	}
	if !slices.Contains(actions, a.Action) {
		p.Addf(key+".action", "must be one of %s (or give sql instead), got %q", strings.Join(actions, ", "), a.Action)
	}
	if !tableRe.MatchString(a.Table) {
		p.Addf(key+".table", "is required: a lower-case table name (optionally schema.table), got %q", a.Table)
	}
	if len(a.Key) == 0 {
		p.Addf(key+".key", "is required: the key columns and their templates, e.g. {order_id: \"{streamId}\"}")
	}
	declared, isDeclared := tables[a.Table]
	for _, col := range sortedKeys(a.Key) {
		if !identRe.MatchString(col) || col == PositionColumn {
			p.Addf(key+".key."+col, "a column name must be lower-case letters, digits and _, and not %s", PositionColumn)
			continue
		}
		if isDeclared && !slices.Contains(declared.PrimaryKey, col) {
			p.Addf(key+".key."+col, "is not in tables.%s.primary_key %v", a.Table, declared.PrimaryKey)
		}
		t, err := mapping.CompileTemplate(a.Key[col], sinkName, true)
		if err != nil {
			p.Addf(key+".key."+col, "%v", err)
			continue
		}
		act.keyCols = append(act.keyCols, col)
		act.keyTmpl = append(act.keyTmpl, t)
	}
	if isDeclared && len(a.Key) > 0 && len(a.Key) != len(declared.PrimaryKey) {
		p.Addf(key+".key", "must name every column of tables.%s.primary_key %v", a.Table, declared.PrimaryKey)
	}
	if a.Project != "" {
		if a.Action == ActionDelete {
			p.Addf(key+".project", "is not allowed with action delete: it writes no columns")
		} else if code, err := mapping.CompileProjection(a.Project); err != nil {
			p.Addf(key+".project", "%v", err)
		} else {
			act.project = code
		}
	}
	return act
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// configProblems collects problems when compiling an already validated
// config.
type configProblems struct{ config.Problems }
