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
// created by the sink from the declared columns. It runs twice: with row
// writes only (folded into multi-row statements), and with a raw SQL
// statement after each row write that counts the event's applications in
// a non-idempotent counter (n = n + 1), the suite's Applied log: a crash
// between write and checkpoint must not apply any event twice.
func TestConformance(t *testing.T) {
	srv := testenv.Postgres(t)
	t.Run("Rows", func(t *testing.T) { runConformance(t, srv, false) })
	t.Run("RowsAndRawSQLCounter", func(t *testing.T) { runConformance(t, srv, true) })
}

func runConformance(t *testing.T, srv *testenv.PostgresServer, counter bool) {
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
			if counter {
				applied := quote(name + "_applied")
				if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+applied+` (position bigint PRIMARY KEY, n bigint NOT NULL)`); err != nil {
					t.Fatal(err)
				}
				count := Action{SQL: `INSERT INTO ` + applied + ` AS a (position, n) VALUES (:pos, 1)
					ON CONFLICT (position) DO UPDATE SET n = a.n + 1`, Params: `{pos: .position}`}
				for typ, acts := range cfg.Mappings {
					cfg.Mappings[typ] = append(acts, count)
				}
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
	if counter {
		target.Applied = func(t *testing.T, name string) map[uint64]int {
			rows, err := conn.Query(ctx, `SELECT position, n FROM `+quote(name+"_applied"))
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			out := map[uint64]int{}
			for rows.Next() {
				var pos, n int64
				if err := rows.Scan(&pos, &n); err != nil {
					t.Fatal(err)
				}
				out[uint64(pos)] = int(n)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			return out
		}
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
