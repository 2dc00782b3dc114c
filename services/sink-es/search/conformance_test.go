package search

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestConformance runs the shared sink suite against a real Elasticsearch
// node of its own (the outage stops and starts it). Replays are idempotent
// (external versions), so the target is not at-least-once: the crash test
// demands that nothing is applied twice, which the documents' _version
// (equal to the position, checked by State) shows.
func TestConformance(t *testing.T) {
	node := testenv.NewElasticsearch(t)
	es := newES(t, node.URL)
	sinktest.Run(t, sinktest.Target{
		NewWriter: func(t *testing.T, name string) sink.Writer {
			cfg := DefaultConfig()
			cfg.Name = name
			cfg.Elasticsearch.URLs = []string{node.URL}
			alias := "conf-" + strings.ToLower(name)
			cfg.Indices = map[string]IndexConfig{alias: {Settings: map[string]any{"number_of_replicas": 0}}}
			cfg.Mappings = map[string][]Action{
				sinktest.TypeCreated: {{Action: ActionIndex, Index: alias}},
				sinktest.TypeUpdated: {{Action: ActionIndex, Index: alias}},
				sinktest.TypeDeleted: {{Action: ActionDelete, Index: alias}},
			}
			w, err := NewWriter(cfg, testLog())
			if err != nil {
				t.Fatal(err)
			}
			return w
		},
		State: func(t *testing.T, name string) map[string]string {
			index := "conf-" + strings.ToLower(name)
			for id, d := range readDocs(t, es, index) {
				if uint64(d.Version) != d.Pos || d.Pos == 0 {
					t.Errorf("%s: _version %d, position %d: they must be equal", id, d.Version, d.Pos)
				}
			}
			// The data as stored: the source without the position field.
			out := map[string]string{}
			for id, raw := range readSources(t, es, index) {
				out[id] = string(withoutMember(t, raw, DefaultPositionField))
			}
			return out
		},
		AtLeastOnce: false,
		Outage: func(t *testing.T) func() {
			node.Stop()
			return node.Start
		},
	})
}

// readSources returns every document's _source as Elasticsearch stored it.
func readSources(t *testing.T, es *elasticsearch.Client, index string) map[string]json.RawMessage {
	t.Helper()
	esCall(t, es, esapi.IndicesRefreshRequest{Index: []string{index}}, nil)
	var out struct {
		Hits struct {
			Hits []struct {
				ID     string          `json:"_id"`
				Source json.RawMessage `json:"_source"`
			} `json:"hits"`
		} `json:"hits"`
	}
	esCall(t, es, esapi.SearchRequest{Index: []string{index}, Size: esapi.IntPtr(10000)}, &out)
	m := make(map[string]json.RawMessage, len(out.Hits.Hits))
	for _, h := range out.Hits.Hits {
		m[h.ID] = h.Source
	}
	return m
}

// withoutMember removes the top-level member key from a JSON object,
// keeping everything else byte for byte.
func withoutMember(t *testing.T, raw []byte, key string) []byte {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", raw)
	}
	for dec.More() {
		start := dec.InputOffset()
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		if k != key {
			continue
		}
		end := dec.InputOffset()
		rest := bytes.TrimLeft(raw[end:], " ")
		if len(rest) > 0 && rest[0] == ',' {
			return append(append([]byte{}, raw[:start]...), bytes.TrimLeft(rest[1:], " ")...)
		}
		head := bytes.TrimRight(raw[:start], " ")
		head = bytes.TrimSuffix(head, []byte(","))
		return append(append([]byte{}, head...), rest...)
	}
	return raw
}
