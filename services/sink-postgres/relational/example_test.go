package relational

import (
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
)

// The example config loads and is valid as shipped.
func TestExampleConfigLoads(t *testing.T) {
	cfg := DefaultConfig()
	if err := config.Load("../sink-postgres.example.yaml", "", &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "orders-pg" || len(cfg.Mappings) != 3 || len(cfg.Tables["orders"].Columns) != 4 {
		t.Fatalf("example config read as %+v", cfg)
	}
}
