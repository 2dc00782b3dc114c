// Command sink-cache keeps a Redis read model up to date from the jetsync
// event stream. Exit codes: 0 after a clean stop, 2 for a bad configuration,
// 1 for anything else.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sinkd"
	"github.com/jetsync/jetsync/services/sink-cache/cache"
)

func main() { os.Exit(run()) }

func run() int {
	path := flag.String("config", "", "YAML config file; JETSYNC_* environment variables override it (e.g. JETSYNC_REDIS_PASSWORD)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	redis.SetLogger(redisLog{log.With("component", "go-redis")})

	cfg := cache.DefaultConfig()
	if err := config.Load(*path, "JETSYNC", &cfg); err != nil {
		return sinkd.ConfigError("sink-cache", err)
	}
	w, err := cache.NewWriter(cfg, log)
	if err != nil {
		return sinkd.ConfigError("sink-cache", err)
	}

	return sinkd.Serve(cfg.Config, w, log, sinkd.WithConfigFile(*path, "JETSYNC"))
}

// redisLog sends go-redis's own messages (pool dial failures and the like)
// to the service's structured log.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}
