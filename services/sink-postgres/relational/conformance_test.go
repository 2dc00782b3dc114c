package relational

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestConformance runs the shared sink suite against a real PostgreSQL
// (started by testenv, or PG_URL's). Each sink name gets its own table,
// created by the sink from the declared columns.
func TestConformance(t *testing.T) {
	srv := testenv.Postgres(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })

	target := sinktest.Target{
		NewWriter: func(t *testing.T, name string) sink.Writer {
			cfg := DefaultConfig()
			cfg.Name = name
			cfg.Postgres.URL = srv.URL
			table := name + "_docs"
			cfg.Tables = map[string]Table{table: {
				Columns:    map[string]string{"id": "text", "stream": "text", "version": "bigint", "pad": "text"},
				PrimaryKey: []string{"id"},
			}}
			key := map[string]string{"id": "{streamId}"}
			cfg.Mappings = map[string][]Action{
				sinktest.TypeCreated: {{Action: ActionUpsert, Table: table, Key: key}},
				sinktest.TypeUpdated: {{Action: ActionUpsert, Table: table, Key: key}},
				sinktest.TypeDeleted: {{Action: ActionDelete, Table: table, Key: key}},
			}
			w, err := NewWriter(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			return w
		},
		State: func(t *testing.T, name string) map[string]string {
			rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT id, stream, version, pad FROM %s`, quote(name+"_docs")))
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			out := map[string]string{}
			for rows.Next() {
				var id, stream, pad string
				var version int64
				if err := rows.Scan(&id, &stream, &version, &pad); err != nil {
					t.Fatal(err)
				}
				out[id] = fmt.Sprintf(`{"stream":%q,"version":%d,"pad":%q}`, stream, version, pad)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			return out
		},
		ResetCheckpoint: func(t *testing.T, name string, pos uint64) {
			if _, err := conn.Exec(ctx, `UPDATE jetsync_checkpoints SET position = $2 WHERE sink = $1`, name, int64(pos)); err != nil {
				t.Fatal(err)
			}
		},
	}
	if !srv.External {
		target.Outage = func(t *testing.T) func() {
			srv.Stop()
			return func() {
				srv.Start()
				// the test's own connection died with the server
				c, err := pgx.Connect(ctx, srv.URL)
				if err != nil {
					t.Fatal(err)
				}
				old := conn
				conn = c
				old.Close(context.Background())
			}
		}
	}
	sinktest.Run(t, target)
}
