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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
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

	nc, err := natsutil.Connect(cfg.NATS.URL, "jetsync-sink-"+cfg.Name, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer drain(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	eng, err := sink.New(cfg.Config, js, w, nil, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := eng.Run(ctx); err != nil {
		log.Error("sink failed", "err", err)
		return 1
	}
	return 0
}

// drain closes the NATS connection gracefully, waiting at most 5s.
func drain(nc *nats.Conn) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		nc.Close()
	}
}

// redisLog sends go-redis's own messages (pool dial failures and the like)
// to the service's structured log.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}
