package relational

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func TestCompatibleType(t *testing.T) {
	for _, c := range []struct {
		declared, existing string
		ok                 bool
	}{
		{"integer", "integer", true}, {"integer", "bigint", true}, {"bigint", "integer", false},
		{"integer", "numeric", true}, {"character varying", "text", true}, {"text", "character varying", false},
		{"json", "jsonb", true}, {"text", "integer", false}, {"numeric", "text", false},
	} {
		if got := compatibleType(c.declared, c.existing); got != c.ok {
			t.Errorf("%s into %s: %v, want %v", c.declared, c.existing, got, c.ok)
		}
	}
}

// TestExistingTableColumnTypes: a declared table that exists is checked
// at start: an incompatible column type or a missing column stops the
// sink, naming table, column, both types and the fix; compatible ones
// (alias spellings, a wider existing type) pass.
func TestExistingTableColumnTypes(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE legacy (id text PRIMARY KEY, total text, n bigint, at timestamptz, _position bigint NOT NULL DEFAULT 0)`); err != nil {
		t.Fatal(err)
	}
	connect := func(cols map[string]string) error {
		cfg := DefaultConfig()
		cfg.Name = "types"
		cfg.Postgres.URL = srv.URL
		cfg.Tables = map[string]Table{"legacy": {Columns: cols, PrimaryKey: []string{"id"}}}
		cfg.Mappings = map[string][]Action{"X": {{Action: ActionUpsert, Table: "legacy", Key: map[string]string{"id": "{streamId}"}}}}
		w, err := NewWriter(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close(ctx)
		return w.Connect(ctx)
	}
	if err := connect(map[string]string{"id": "varchar(20)", "total": "text", "n": "int4", "at": "timestamptz"}); err != nil {
		t.Fatalf("compatible columns refused: %v", err)
	}
	err = connect(map[string]string{"id": "text", "total": "numeric(10,2)"})
	if !errors.Is(err, ErrSchema) || !errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("got %v, want a permanent ErrSchema", err)
	}
	for _, s := range []string{"table legacy column total is text, declared numeric(10,2)", "ALTER TABLE legacy ALTER COLUMN total TYPE numeric(10,2) USING total::numeric(10,2)"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%v does not say %q", err, s)
		}
	}
	err = connect(map[string]string{"id": "text", "paid": "boolean"})
	if !errors.Is(err, ErrSchema) || !strings.Contains(err.Error(), "ALTER TABLE legacy ADD COLUMN paid boolean") {
		t.Fatalf("got %v, want the ADD COLUMN fix", err)
	}
}
