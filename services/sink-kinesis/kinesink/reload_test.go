package kinesink

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesistest"
)

// TestReloadMappings runs the shared reload suite against a real
// kinesalite: variant a puts records partitioned by a-{streamId} with the
// projection {v: "a", n}, variant b by b-{streamId} with {v: "b", n, type}.
// A record sent twice would show as a position read back twice.
func TestReloadMappings(t *testing.T) {
	srv := testenv.Kinesalite(t)
	kc := kinesistest.Client(srv.URL)
	stream := uniqueStream("reload")
	keys := map[string]string{
		"a": `partition_key: "a-{streamId}", project: '{v: "a", n: .data.n}'`,
		"b": `partition_key: "b-{streamId}", project: '{v: "b", n: .data.n, type}'`,
	}
	own := func(streamName, mapping string) string {
		return fmt.Sprintf("kinesis: {stream_name: %q, endpoint: %q, create_stream_if_missing: true, shard_count: 1, request_timeout: 10s, %s}\n",
			streamName, srv.URL, mapping)
	}
	sinktest.RunReload(t, sinktest.ReloadTarget{
		Config: func(variant string) string { return own(stream, keys[variant]) },
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
			recs := readBack(t, kc, stream)
			out := make([]sinktest.Written, 0, len(recs))
			for _, r := range recs {
				var rec struct {
					V    string `json:"v"`
					Type string `json:"type"`
				}
				if err := json.Unmarshal(r.Data, &rec); err != nil {
					t.Fatalf("record %s: %v", r.Data, err)
				}
				if !strings.HasPrefix(r.PartitionKey, rec.V+"-") || (rec.Type != "") != (rec.V == "b") {
					t.Errorf("record %s partitioned by %s does not match variant %q", r.Data, r.PartitionKey, rec.V)
				}
				out = append(out, sinktest.Written{Position: r.Position, Variant: rec.V})
			}
			return out
		},
		Refused: []sinktest.RefusedConfig{
			{Name: "unknown key", Key: "kinesis.projekt",
				Config: own(stream, `partition_key: "{streamId}", projekt: .data`)},
			{Name: "invalid jq", Key: "kinesis.project",
				Config: own(stream, `partition_key: "{streamId}", project: '{v: .data'`)},
			{Name: "bad partition key template", Key: "kinesis.partition_key",
				Config: own(stream, `partition_key: "{nope}"`)},
			{Name: "changed stream", Key: "kinesis.stream_name",
				Config: own(stream+"-2", keys["b"])},
		},
	})
}
