package search

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestReloadMappings runs the shared reload suite against a real
// Elasticsearch: variant a indexes document a-{position} with the
// projection {n, v: "a"}, variant b document b-{position} with {n, twice,
// v: "b"}; a replay with the other variant would show as a second document.
func TestReloadMappings(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	alias := uniqueName("reload")
	mappings := map[string]string{
		"a": fmt.Sprintf(`    - {action: index, index: %s, id: "a-{position}", project: '{n: .data.n, v: "a"}'}`, alias),
		"b": fmt.Sprintf(`    - {action: index, index: %s, id: "b-{position}", project: '{n: .data.n, twice: (.data.n * 2), v: "b"}'}`, alias),
	}
	own := func(indexMappings, placed string) string {
		return fmt.Sprintf("elasticsearch: {urls: [%q]}\nindices:\n  %s: {settings: {number_of_replicas: 0}%s}\nmappings:\n  %s:\n%s\n",
			url, alias, indexMappings, sinktest.ReloadType, placed)
	}
	sinktest.RunReload(t, sinktest.ReloadTarget{
		Config: func(variant string) string { return own("", mappings[variant]) },
		NewWriter: func(t *testing.T, path string) (sink.Config, sink.Writer) {
			cfg := DefaultConfig()
			if err := config.Load(path, "", &cfg); err != nil {
				t.Fatal(err)
			}
			w, err := NewWriter(cfg, testLog())
			if err != nil {
				t.Fatal(err)
			}
			return cfg.Config, w
		},
		Written: func(t *testing.T) []sinktest.Written {
			docs := readDocs(t, es, alias)
			out := make([]sinktest.Written, 0, len(docs))
			for id, d := range docs {
				v, _ := d.Source["v"].(string)
				if !strings.HasPrefix(id, v+"-") || fmt.Sprint(d.Pos) != strings.TrimPrefix(id, v+"-") {
					t.Errorf("document %s holds variant %q at position %d", id, v, d.Pos)
				}
				if _, twice := d.Source["twice"]; twice != (v == "b") {
					t.Errorf("document %s: %v does not match variant %s's projection", id, d.Source, v)
				}
				out = append(out, sinktest.Written{Position: d.Pos, Variant: v})
			}
			return out
		},
		Refused: []sinktest.RefusedConfig{
			{Name: "unknown key", Key: "mappings.Placed[0].projekt",
				Config: own("", fmt.Sprintf(`    - {action: index, index: %s, projekt: .data}`, alias))},
			{Name: "invalid jq", Key: "mappings.Placed[0].project",
				Config: own("", fmt.Sprintf(`    - {action: index, index: %s, project: '{n: .data.n'}`, alias))},
			{Name: "undeclared index", Key: "mappings.Placed[0].index",
				Config: own("", `    - {action: index, index: elsewhere}`)},
			{Name: "changed index mappings", Key: "indices." + alias + ".mappings",
				Config: own(", mappings: {properties: {n: {type: long}}}", mappings["b"])},
		},
	})
}
