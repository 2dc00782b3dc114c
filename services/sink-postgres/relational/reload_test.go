package relational

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestReloadMappings runs the shared reload suite against a real
// PostgreSQL: variant a upserts row (position, "a") declaratively, variant
// b inserts row (position, "b") with raw SQL (a plain INSERT: a replay
// would fail on the primary key); a replay with the other variant would
// show as a second row.
func TestReloadMappings(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	mappings := map[string]string{
		"a": `    - {action: upsert, table: reload_rows, key: {pos: "{position}", v: a}, project: '{n: .data.n}'}`,
		"b": `    - {sql: "INSERT INTO reload_rows (pos, v, n, _position) VALUES (:pos, 'b', :n, :pos)", params: '{pos: .position, n: .data.n}'}`,
	}
	own := func(columns, placed string) string {
		return fmt.Sprintf("postgres: {url: %q}\ntables:\n  reload_rows: {columns: {pos: bigint, v: text, n: bigint%s}, primary_key: [pos, v]}\nmappings:\n  %s:\n%s\n",
			srv.URL, columns, sinktest.ReloadType, placed)
	}
	sinktest.RunReload(t, sinktest.ReloadTarget{
		Config: func(variant string) string { return own("", mappings[variant]) },
		NewWriter: func(t *testing.T, path string) (sink.Config, sink.Writer) {
			cfg := DefaultConfig()
			if err := config.Load(path, "", &cfg); err != nil {
				t.Fatal(err)
			}
			w, err := NewWriter(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			return cfg.Config, w
		},
		Written: func(t *testing.T) []sinktest.Written {
			rows, err := conn.Query(ctx, `SELECT pos, v, n, _position FROM reload_rows`)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var out []sinktest.Written
			for rows.Next() {
				var pos, n, p int64
				var v string
				if err := rows.Scan(&pos, &v, &n, &p); err != nil {
					t.Fatal(err)
				}
				if p != pos {
					t.Errorf("row %d/%s has _position %d", pos, v, p)
				}
				out = append(out, sinktest.Written{Position: uint64(pos), Variant: v})
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			return out
		},
		Refused: []sinktest.RefusedConfig{
			{Name: "unknown key", Key: "mappings.Placed[0].projekt",
				Config: own("", `    - {action: upsert, table: reload_rows, key: {pos: "{position}", v: a}, projekt: .data}`)},
			{Name: "invalid jq", Key: "mappings.Placed[0].params",
				Config: own("", `    - {sql: "SELECT :n", params: '{n: .data.n'}`)},
			{Name: "table not checked at start", Key: "mappings.Placed[0].table",
				Config: own("", `    - {action: upsert, table: elsewhere, key: {id: "{streamId}"}}`)},
			{Name: "sql postgres refuses", Key: "mappings.Placed[0].sql",
				Config: own("", `    - {sql: "INSERT INTO nowhere VALUES (:n)", params: '{n: .data.n}'}`)},
			{Name: "changed table", Key: "tables.reload_rows.columns.extra",
				Config: own(", extra: text", mappings["b"])},
		},
	})
}
