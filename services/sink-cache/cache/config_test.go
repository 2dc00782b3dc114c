package cache

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg := DefaultConfig()
	if err := config.Load("../sink-cache.example.yaml", "", &cfg); err != nil {
		t.Fatalf("example config: %v", err)
	}
	if len(cfg.Mappings["OrderPlaced"]) != 3 || cfg.Redis.CheckpointKey != DefaultCheckpointKey || cfg.UnknownTypes != UnknownIgnore {
		t.Fatalf("unexpected example config: %+v", cfg)
	}
	if _, err := NewWriter(cfg, nil); err != nil {
		t.Fatalf("NewWriter on the example config: %v", err)
	}
}

func TestConfigEnvOverride(t *testing.T) {
	t.Setenv("JETSYNC_REDIS_PASSWORD", "s3cret")
	t.Setenv("JETSYNC_REDIS_DB", "3")
	cfg := DefaultConfig()
	cfg.Mappings = map[string][]Action{"X": {{Op: OpDel, Key: "x:{streamId}"}}}
	if err := config.Load("", "JETSYNC", &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Redis.Password != "s3cret" || cfg.Redis.DB != 3 {
		t.Fatalf("env not applied: %+v", cfg.Redis)
	}
}

// loadYAML loads a config file body over the defaults.
func loadYAML(t *testing.T, body string) error {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	return config.Load(path, "", &cfg)
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	const ok = "mappings:\n  A:\n    - {op: set, key: \"a:{streamId}\"}\n"
	if err := loadYAML(t, ok); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		name, body string
		keys       []string // every one must be reported
	}{
		{"unknown top-level key", ok + "redis_addr: x\n", []string{"redis_addr: unknown key"}},
		{"unknown action key", "mappings:\n  A:\n    - {op: set, key: k, tll: 1h}\n", []string{"mappings.A[0].tll: unknown key"}},
		{"bad op", "mappings:\n  A:\n    - {op: set, key: k}\n    - {op: upsert, key: k}\n",
			[]string{"mappings.A[1].op: must be one of set, hset, merge, del, incr, append"}},
		{"bad ttl", "mappings:\n  A:\n    - {op: set, key: k, ttl: 1day}\n", []string{"mappings.A[0].ttl: \"1day\" is not a duration"}},
		{"ttl on del", "mappings:\n  A:\n    - {op: del, key: k, ttl: 1h}\n", []string{"mappings.A[0].ttl: is not allowed with op del"}},
		{"bad template", "mappings:\n  A:\n    - {op: set, key: \"a:{stream}\"}\n", []string{"mappings.A[0].key: unknown placeholder {stream}"}},
		{"unbalanced template", "mappings:\n  A:\n    - {op: append, key: \"a\", value: \"{position\"}\n", []string{"mappings.A[0].value: unbalanced '{'"}},
		{"bad project", "mappings:\n  OrderPlaced:\n    - {op: set, key: k, project: '.data | {'}\n", []string{"mappings.OrderPlaced[0].project: "}},
		{"project on incr", "mappings:\n  A:\n    - {op: incr, key: k, field: f, project: .data}\n", []string{"mappings.A[0].project: is not allowed with op incr"}},
		{"incr without field", "mappings:\n  A:\n    - {op: incr, key: k}\n", []string{"mappings.A[0].field: is required"}},
		{"field on set", "mappings:\n  A:\n    - {op: set, key: k, field: f}\n", []string{"mappings.A[0].field: is only allowed with op incr"}},
		{"value on set", "mappings:\n  A:\n    - {op: set, key: k, value: v}\n", []string{"mappings.A[0].value: is only allowed with op append"}},
		{"missing key", "mappings:\n  A:\n    - {op: set}\n", []string{"mappings.A[0].key: is required"}},
		{"empty action list", "mappings:\n  A: []\n", []string{"mappings.A: needs at least one action"}},
		{"no mappings", "name: cache\n", []string{"mappings: needs at least one event type"}},
		{"redis and policy", ok + "redis: {addr: nohost, db: -1, checkpoint_key: \"cp:{streamId}\"}\nunknown_types: fail\non_error: retry\n",
			[]string{"redis.addr: must be host:port", "redis.db: must not be negative", "redis.checkpoint_key: unknown placeholder {streamId}", "unknown_types: must be", "on_error: must be"}},
		{"negative ttl", "mappings:\n  A:\n    - {op: set, key: k, ttl: -1s}\n", []string{"mappings.A[0].ttl: must be at least 1ms"}},
		{"many at once", "mappings:\n  A:\n    - {op: nope, key: \"{x}\", ttl: 1h, field: f}\n  B:\n    - {op: set, key: k, project: 'if'}\n",
			[]string{"mappings.A[0].op", "mappings.A[0].key", "mappings.A[0].field", "mappings.B[0].project"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := loadYAML(t, tc.body)
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("got %v, want an error wrapping config.ErrInvalid", err)
			}
			for _, k := range tc.keys {
				if !strings.Contains(err.Error(), k) {
					t.Errorf("error does not report %q:\n%v", k, err)
				}
			}
		})
	}
}

func TestBadProjectionFailsNewWriter(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Mappings = map[string][]Action{"OrderPlaced": {{Op: OpSet, Key: "k"}, {Op: OpSet, Key: "k", Project: ".data | foo(1)"}}}
	_, err := NewWriter(cfg, nil)
	var ke *config.KeyError
	if !errors.As(err, &ke) || ke.Key != "mappings.OrderPlaced[1].project" {
		t.Fatalf("got %v, want a KeyError for mappings.OrderPlaced[1].project", err)
	}
}
