package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestReloadMappings runs the shared reload suite against a real
// redis-server: variant a sets a:{position} to the data, variant b sets
// b:{position} to a projection; both log "{position} {variant}".
func TestReloadMappings(t *testing.T) {
	srv := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	mappings := map[string]string{
		"a": `    - {op: set, key: "a:{position}"}
    - {op: append, key: log, value: "{position} a"}
`,
		"b": `    - {op: set, key: "b:{position}", project: '{n: .data.n, v: "b"}'}
    - {op: append, key: log, value: "{position} b"}
`,
	}
	own := func(redisKeys, placed string) string {
		return fmt.Sprintf("redis: {addr: %q%s}\nmappings:\n  %s:\n%s", srv.Addr(), redisKeys, sinktest.ReloadType, placed)
	}
	sinktest.RunReload(t, sinktest.ReloadTarget{
		Config: func(variant string) string { return own("", mappings[variant]) },
		NewWriter: func(t *testing.T, path string) (sink.Config, sink.Writer) {
			cfg := DefaultConfig()
			if err := config.Load(path, "", &cfg); err != nil {
				t.Fatal(err)
			}
			w, err := NewWriter(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			return cfg.Config, w
		},
		Written: func(t *testing.T) []sinktest.Written {
			log, err := rdb.LRange(ctx, "log", 0, -1).Result()
			if err != nil {
				t.Fatal(err)
			}
			out := make([]sinktest.Written, 0, len(log))
			for _, l := range log {
				p, v, _ := strings.Cut(l, " ")
				pos, _ := strconv.ParseUint(p, 10, 64)
				out = append(out, sinktest.Written{Position: pos, Variant: v})
				// The key template wrote the variant's key, and only it.
				other := map[string]string{"a": "b", "b": "a"}[v]
				got, err := rdb.Get(ctx, v+":"+p).Result()
				if err != nil || v == "b" && !strings.Contains(got, `"v":"b"`) || v == "a" && strings.Contains(got, `"v"`) {
					t.Errorf("%s:%s = %q, %v", v, p, got, err)
				}
				if n, _ := rdb.Exists(ctx, other+":"+p).Result(); n != 0 {
					t.Errorf("position %s written by both variants", p)
				}
			}
			return out
		},
		Refused: []sinktest.RefusedConfig{
			{Name: "unknown key", Key: "mappings.Placed[0].prject",
				Config: own("", `    - {op: set, key: "c:{position}", prject: .data}`+"\n")},
			{Name: "invalid jq", Key: "mappings.Placed[0].project",
				Config: own("", `    - {op: set, key: "c:{position}", project: '{n: .data.n'}`+"\n")},
			{Name: "unknown op", Key: "mappings.Placed[0].op",
				Config: own("", `    - {op: sett, key: "c:{position}"}`+"\n")},
			{Name: "changed redis db", Key: "redis.db",
				Config: own(", db: 1", mappings["b"])},
		},
	})
}

// TestReloadKeepsThePlanOfARetriedBatch: a batch that failed for now
// (Redis down) and is retried after a reload is written with the mappings
// it was first tried with; the next batch with the new ones.
func TestReloadKeepsThePlanOfARetriedBatch(t *testing.T) {
	r := startRedis(t)
	path := filepath.Join(t.TempDir(), "sink-cache.yaml")
	file := func(prefix string) {
		body := fmt.Sprintf("redis: {addr: %q}\nmappings:\n  Placed: [{op: set, key: \"%s:{position}\"}]\n", r.srv.Addr(), prefix)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	load := func(cfg config.Validator) error { return config.Load(path, "", cfg) }
	file("a")
	cfg := DefaultConfig()
	if err := load(&cfg); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(ctx) })
	batch := func(pos uint64) *sink.Batch {
		ev := envelope.Event{ID: fmt.Sprint("e", pos), StreamID: "s", Category: "c", Type: "Placed", Version: pos,
			Time: time.Now(), Position: pos, Data: json.RawMessage(`{}`)}
		return &sink.Batch{Events: []envelope.Event{ev}, Through: pos}
	}

	if err := w.WriteBatch(ctx, batch(1)); err != nil {
		t.Fatal(err)
	}
	r.srv.Stop()
	b2 := batch(2)
	var be *sink.BatchError
	if err := w.WriteBatch(ctx, b2); err == nil || errors.As(err, &be) || errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("WriteBatch with Redis down = %v; want an error to retry", err)
	}
	file("b")
	if changed, err := w.ReloadMappings(load); err != nil || !slices.Equal(changed, []string{"mappings.Placed"}) {
		t.Fatalf("ReloadMappings = %v, %v", changed, err)
	}
	r.srv.Start()
	testenv.Eventually(t, 10*time.Second, func() bool { return w.WriteBatch(ctx, b2) == nil }, "the retried batch was never written")
	if err := w.WriteBatch(ctx, batch(3)); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]bool{"a:1": true, "a:2": true, "b:2": false, "b:3": true, "a:3": false} {
		if got := r.exists(t, key); got != want {
			t.Errorf("%s exists: %v, want %v", key, got, want)
		}
	}
}
