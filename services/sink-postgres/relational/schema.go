package relational

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetsync/jetsync/pkg/sink"
)

// Type families whose members hold each other's values, in order of
// width: a declared type fits an existing column of its family at least as
// wide (integer into bigint, varchar into text), not the other way round.
var typeFamilies = [][]string{
	{"smallint", "integer", "bigint", "numeric"},
	{"real", "double precision"},
	{"character", "character varying", "text"},
	{"json", "jsonb"},
	{"timestamp without time zone", "timestamp with time zone"},
}

// compatibleType tells whether a column of SQL type existing (base type,
// as format_type names it) takes the values of declared.
func compatibleType(declared, existing string) bool {
	if declared == existing {
		return true
	}
	for _, f := range typeFamilies {
		d, e := slices.Index(f, declared), slices.Index(f, existing)
		if d >= 0 && e >= 0 {
			return e >= d
		}
	}
	return false
}

// checkColumnTypes checks, for every declared table that existed before
// the sink started, that each declared column exists with a compatible
// type, and stops the sink otherwise with the fix (ALTER TABLE ...).
// A table the sink just created passes trivially.
func checkColumnTypes(ctx context.Context, pool *pgxpool.Pool, tables map[string]Table) error {
	for _, name := range sortedKeys(tables) {
		existing := map[string]string{}
		rows, err := pool.Query(ctx, `SELECT attname, format_type(atttypid, NULL) FROM pg_attribute
			WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped`, quote(name))
		if err != nil {
			return classify(err, "reading the columns of "+name)
		}
		for rows.Next() {
			var c, t string
			if err := rows.Scan(&c, &t); err != nil {
				rows.Close()
				return classify(err, "reading the columns of "+name)
			}
			existing[c] = t
		}
		if err := rows.Err(); err != nil {
			return classify(err, "reading the columns of "+name)
		}
		t := tables[name]
		for _, col := range sortedKeys(t.Columns) {
			declared := t.Columns[col]
			var base *string
			if err := pool.QueryRow(ctx, `SELECT format_type(to_regtype($1), NULL)`, declared).Scan(&base); err != nil {
				return classify(err, "reading type "+declared)
			}
			if base == nil {
				return sink.Permanent(fmt.Errorf("%w: tables.%s.columns.%s: PostgreSQL knows no type %q", ErrSchema, name, col, declared))
			}
			have, ok := existing[col]
			switch {
			case !ok:
				return sink.Permanent(fmt.Errorf("%w: table %s has no column %s (declared %s under tables.%s): ALTER TABLE %s ADD COLUMN %s %s",
					ErrSchema, name, col, declared, name, name, col, declared))
			case !compatibleType(*base, have):
				return sink.Permanent(fmt.Errorf("%w: table %s column %s is %s, declared %s (tables.%s.columns.%s): ALTER TABLE %s ALTER COLUMN %s TYPE %s USING %s::%s, or declare the column as %s",
					ErrSchema, name, col, have, declared, name, col, name, col, declared, col, declared, have))
			}
		}
	}
	return nil
}
