package relational

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
)

func load(t *testing.T, body string) error {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sink-postgres.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	return config.Load(path, "JETSYNC_TEST_NONE", &cfg)
}

func TestConfigValid(t *testing.T) {
	err := load(t, `
name: orders
postgres: {url: "postgres://u@127.0.0.1:5432/app"}
tables:
  orders: {columns: {order_id: text, total: "numeric(10,2)", lines: jsonb}, primary_key: [order_id]}
mappings:
  OrderPlaced: [{action: upsert, table: orders, key: {order_id: "{streamId}"}, project: '{total: .data.total, lines: .data.lines}'}]
  OrderPaid:   [{action: patch, table: orders, key: {order_id: "{streamId}"}, project: '{paid: true}'}]
  OrderDeleted: [{action: delete, table: orders, key: {order_id: "{streamId}"}}]
`)
	if err != nil {
		t.Fatal(err)
	}
}

// TestConfigErrorsNamedByKey checks that every problem is reported at
// once, each with its key.
func TestConfigErrorsNamedByKey(t *testing.T) {
	err := load(t, `
name: orders
postgres: {url: ""}
unknown_types: maybe
tables:
  Orders: {columns: {order_id: text, _position: bigint, total: "numeric; drop table x"}, primary_key: [id]}
mappings:
  A: [{action: merge, table: "bad name", key: {}, project: '{'}]
  B: [{action: delete, table: orders2, key: {"{x}": "{nope}"}, project: '.data'}]
  C: []
`)
	if err == nil {
		t.Fatal("want errors")
	}
	for _, key := range []string{
		"postgres.url", "unknown_types",
		"tables.Orders:", "tables.Orders.columns._position", "tables.Orders.columns.total", "tables.Orders.primary_key[0]",
		"mappings.A[0].action", "mappings.A[0].table", "mappings.A[0].key", "mappings.A[0].project",
		"mappings.B[0].key.{x}", "mappings.B[0].project", "mappings.C",
	} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
}

func TestConfigUnknownKeysRefused(t *testing.T) {
	err := load(t, `
postgres: {url: "postgres://x", sslmode: off}
mappings:
  A: [{action: upsert, table: t, key: {id: "{streamId}"}, columns: [a]}]
`)
	if err == nil {
		t.Fatal("want errors")
	}
	for _, key := range []string{"postgres.sslmode", "mappings.A[0].columns"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
}

func TestConfigKeyMustMatchDeclaredPrimaryKey(t *testing.T) {
	err := load(t, `
tables:
  t: {columns: {a: text, b: text}, primary_key: [a, b]}
mappings:
  A: [{action: upsert, table: t, key: {a: "{streamId}", c: "{id}"}}]
`)
	if err == nil || !strings.Contains(err.Error(), "mappings.A[0].key.c") {
		t.Fatalf("want mappings.A[0].key.c named, got %v", err)
	}
}
