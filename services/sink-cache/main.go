// Command sink-cache keeps a Redis read model up to date from the jetsync
// event stream. Exit codes: 0 after a clean stop, 2 for a bad configuration,
// 1 for anything else.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

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
		fmt.Fprintf(os.Stderr, "sink-cache: %v\n", err)
		if errors.Is(err, config.ErrInvalid) {
			return 2
		}
		return 1
	}
	w, err := cache.NewWriter(cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sink-cache: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	svc, err := sinkd.New(ctx, cfg.Config, w, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := svc.Run(ctx); err != nil {
		log.Error("sink failed", "err", err)
		return 1
	}
	return 0
}

// redisLog sends go-redis's own messages (pool dial failures and the like)
// to the service's structured log.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}
