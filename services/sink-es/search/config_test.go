package search

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
)

const validYAML = `
name: orders-es
filters: [events.order.>]
elasticsearch: {urls: [http://127.0.0.1:9200]}
indices:
  orders: {settings: {number_of_shards: 1}, mappings: {properties: {total: {type: double}}}}
mappings:
  OrderPlaced:
    - {action: index, index: orders}
`

func load(t *testing.T, yaml string) (Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sink-es.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	return cfg, config.Load(path, "", &cfg)
}

func TestValidConfig(t *testing.T) {
	cfg, err := load(t, validYAML)
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Mappings["OrderPlaced"][0]; a.ID != "" || a.Index != "orders" {
		t.Errorf("action %+v", a)
	}
	if cfg.Elasticsearch.PositionField != DefaultPositionField || cfg.Elasticsearch.Refresh != "false" {
		t.Errorf("defaults lost: %+v", cfg.Elasticsearch)
	}
}

// Every bad config fails at start, naming its key.
func TestBadConfigNamesTheKey(t *testing.T) {
	for _, tc := range []struct{ name, yaml, key string }{
		{"unknown action", strings.Replace(validYAML, "action: index", "action: upsert", 1), "mappings.OrderPlaced[0].action"},
		{"bad expression", strings.Replace(validYAML, "index: orders}", "index: orders, project: '{total: .data.total'}", 1), "mappings.OrderPlaced[0].project"},
		{"expression with an unknown function", strings.Replace(validYAML, "index: orders}", "index: orders, project: 'nosuch(.data)'}", 1), "mappings.OrderPlaced[0].project"},
		{"index not declared", strings.Replace(validYAML, "index: orders}", "index: invoices}", 1), "mappings.OrderPlaced[0].index"},
		{"no indices", strings.Replace(validYAML, "  orders: {settings: {number_of_shards: 1}, mappings: {properties: {total: {type: double}}}}", "", 1), "indices"},
		{"settings not a mapping", strings.Replace(validYAML, "settings: {number_of_shards: 1}", "settings: one", 1), "indices.orders.settings"},
		{"settings with mappings inside", strings.Replace(validYAML, "settings: {number_of_shards: 1}", "settings: {mappings: {}}", 1), "indices.orders.settings.mappings"},
		{"unknown index key", strings.Replace(validYAML, "settings:", "setings:", 1), "indices.orders.setings"},
		{"upper-case index", strings.Replace(strings.Replace(validYAML, "index: orders}", "index: Orders}", 1), "  orders:", "  Orders:", 1), "indices.Orders"},
		{"script without source", strings.Replace(validYAML, "action: index", "action: script", 1), "mappings.OrderPlaced[0].script"},
		{"project on delete", strings.Replace(validYAML, "action: index, index: orders}", "action: delete, index: orders, project: .data}", 1), "mappings.OrderPlaced[0].project"},
		{"constant id", strings.Replace(validYAML, "index: orders}", "index: orders, id: all}", 1), "mappings.OrderPlaced[0].id"},
		{"bad id template", strings.Replace(validYAML, "index: orders}", "index: orders, id: \"{stream}\"}", 1), "mappings.OrderPlaced[0].id"},
		{"bad url", strings.Replace(validYAML, "http://127.0.0.1:9200", "127.0.0.1:9200", 1), "elasticsearch.urls[0]"},
		{"bad refresh", strings.Replace(validYAML, "elasticsearch: {", "elasticsearch: {refresh: sometimes, ", 1), "elasticsearch.refresh"},
		{"metadata position field", strings.Replace(validYAML, "elasticsearch: {", "elasticsearch: {position_field: _id, ", 1), "elasticsearch.position_field"},
		{"tiny requests", strings.Replace(validYAML, "elasticsearch: {", "elasticsearch: {max_request_bytes: 1kB, ", 1), "elasticsearch.max_request_bytes"},
		{"unknown key", validYAML + "rebuild: {keep: true}\n", "rebuild.keep"},
		{"no mappings", strings.Split(validYAML, "mappings:\n  OrderPlaced")[0], "mappings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, tc.yaml)
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("err = %v, want config.ErrInvalid", err)
			}
			var ke *config.KeyError
			found := false
			for _, e := range flatten(err) {
				if errors.As(e, &ke) && ke.Key == tc.key {
					found = true
				}
			}
			if !found {
				t.Fatalf("no error names %s:\n%v", tc.key, err)
			}
		})
	}
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// The example and the deployment configs are valid.
func TestShippedConfigsLoad(t *testing.T) {
	for _, path := range []string{"../sink-es.example.yaml", "../../../deploy/local/sink-es.yaml", "../../../deploy/config/sink-es.yaml"} {
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			cfg := DefaultConfig()
			if err := config.Load(path, "", &cfg); err != nil {
				t.Fatal(err)
			}
			if _, err := NewWriter(cfg, nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}
