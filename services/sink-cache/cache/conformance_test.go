package cache

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestConformance runs the shared sink suite against a real redis-server.
func TestConformance(t *testing.T) {
	srv := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()

	sinktest.Run(t, sinktest.Target{
		NewWriter: func(t *testing.T, name string) sink.Writer {
			cfg := DefaultConfig()
			cfg.Name = name
			cfg.Redis.Addr = srv.Addr()
			doc := "{sink}:doc:{streamId}"
			applied := Action{Op: OpAppend, Key: "{sink}:applied", Value: "{position}"}
			cfg.Mappings = map[string][]Action{
				sinktest.TypeCreated: {{Op: OpSet, Key: doc}, applied},
				sinktest.TypeUpdated: {{Op: OpSet, Key: doc}, applied},
				sinktest.TypeDeleted: {{Op: OpDel, Key: doc}, applied},
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			w, err := NewWriter(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			return w
		},
		State: func(t *testing.T, name string) map[string]string {
			out := map[string]string{}
			prefix := name + ":doc:"
			iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
			for iter.Next(ctx) {
				v, err := rdb.Get(ctx, iter.Val()).Result()
				if err != nil {
					t.Fatal(err)
				}
				out[strings.TrimPrefix(iter.Val(), prefix)] = v
			}
			if err := iter.Err(); err != nil {
				t.Fatal(err)
			}
			return out
		},
		Applied: func(t *testing.T, name string) map[uint64]int {
			log, err := rdb.LRange(ctx, name+":applied", 0, -1).Result()
			if err != nil {
				t.Fatal(err)
			}
			out := map[uint64]int{}
			var last uint64
			for _, s := range log {
				pos, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					t.Fatalf("applied log holds %q", s)
				}
				if pos <= last {
					t.Errorf("applied log out of order: %d after %d", pos, last)
				}
				last = pos
				out[pos]++
			}
			return out
		},
		ResetCheckpoint: func(t *testing.T, name string, pos uint64) {
			// The replay check compares documents only; the applied log is
			// an append-only history and is started afresh.
			if err := rdb.Del(ctx, name+":applied").Err(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.Set(ctx, "jetsync:checkpoint:"+name, pos, 0).Err(); err != nil {
				t.Fatal(err)
			}
		},
		Outage: func(t *testing.T) func() {
			srv.Stop()
			return srv.Start
		},
	})
}
