package kinesink

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
	if err := config.Load("../sink-kinesis.example.yaml", "", &cfg); err != nil {
		t.Fatalf("example config: %v", err)
	}
	if cfg.Kinesis.StreamName != "jetsync-events" || cfg.Kinesis.PartitionKey != DefaultPartitionKey ||
		cfg.Kinesis.MaxRecordsPerCall != MaxRecordsPerCall || cfg.Kinesis.MaxBytesPerCall != MaxBytesPerCall {
		t.Fatalf("unexpected example config: %+v", cfg.Kinesis)
	}
	if _, err := NewWriter(cfg, nil); err != nil {
		t.Fatalf("NewWriter on the example config: %v", err)
	}
}

func TestConfigEnvOverride(t *testing.T) {
	t.Setenv("JETSYNC_KINESIS_STREAM_NAME", "orders")
	t.Setenv("JETSYNC_KINESIS_ENDPOINT", "http://127.0.0.1:4567")
	t.Setenv("JETSYNC_KINESIS_CREATE_STREAM_IF_MISSING", "true")
	t.Setenv("JETSYNC_KINESIS_SHARD_COUNT", "4")
	cfg := DefaultConfig()
	if err := config.Load("", "JETSYNC", &cfg); err != nil {
		t.Fatal(err)
	}
	k := cfg.Kinesis
	if k.StreamName != "orders" || k.Endpoint != "http://127.0.0.1:4567" || !k.CreateStreamIfMissing || k.ShardCount != 4 {
		t.Fatalf("env not applied: %+v", k)
	}
}

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
	const ok = "kinesis: {stream_name: s}\n"
	if err := loadYAML(t, ok); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		name, body string
		keys       []string // every one must be reported
	}{
		{"no stream", "name: k\n", []string{"kinesis.stream_name: is required"}},
		{"bad stream name", "kinesis: {stream_name: \"a b\"}\n", []string{"kinesis.stream_name"}},
		{"unknown key", "kinesis: {stream_name: s, shards: 2}\n", []string{"kinesis.shards: unknown key"}},
		{"partition key placeholder", "kinesis: {stream_name: s, partition_key: \"{stream}\"}\n", []string{"kinesis.partition_key: unknown placeholder {stream}"}},
		{"partition key unbalanced", "kinesis: {stream_name: s, partition_key: \"{streamId\"}\n", []string{"kinesis.partition_key: unbalanced '{'"}},
		{"partition key empty", "kinesis: {stream_name: s, partition_key: \"\"}\n", []string{"kinesis.partition_key: is required"}},
		{"bad project", "kinesis: {stream_name: s, project: '.data | {'}\n", []string{"kinesis.project: "}},
		{"limits", "kinesis: {stream_name: s, max_records_per_call: 501, max_bytes_per_call: 6MiB, shard_count: 0, request_timeout: 1ms}\n",
			[]string{"kinesis.max_records_per_call: must be between 1 and 500", "kinesis.max_bytes_per_call: must be between 1MiB", "kinesis.shard_count", "kinesis.request_timeout"}},
		{"endpoint", "kinesis: {stream_name: s, endpoint: \"127.0.0.1:4567\"}\n", []string{"kinesis.endpoint: must be an http(s) URL"}},
		{"many at once", "on_error: retry\nkinesis: {partition_key: \"{x}\", project: 'if'}\n",
			[]string{"on_error", "kinesis.stream_name", "kinesis.partition_key", "kinesis.project"}},
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

func TestBadTemplateFailsNewWriter(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Kinesis.StreamName = "s"
	cfg.Kinesis.PartitionKey = "{category}-{streamid}"
	_, err := NewWriter(cfg, nil)
	var ke *config.KeyError
	if !errors.As(err, &ke) || ke.Key != "kinesis.partition_key" {
		t.Fatalf("got %v, want a KeyError for kinesis.partition_key", err)
	}
}
