// Command sinkprof is services/sink-cache's main with CPU and allocation
// profiles: the same config loading, cache.Writer and sinkd service, so a
// profile of it is a profile of the sink-cache process. jetbench runs it in
// place of sink-cache with -sink-bin:
//
//	go build -o /tmp/sinkprof ./bench/cmd/sinkprof
//	SINKPROF=/tmp/sink go run ./bench/cmd/jetbench -phases catchup -sink-bin /tmp/sinkprof
//	go tool pprof -top /tmp/sink.cpu.pprof
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sinkd"
	"github.com/jetsync/jetsync/services/sink-cache/cache"
)

func main() { os.Exit(run()) }

func run() int {
	path := flag.String("config", "", "YAML config file")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg := cache.DefaultConfig()
	if err := config.Load(*path, "JETSYNC", &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	w, err := cache.NewWriter(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	prefix := os.Getenv("SINKPROF")
	if prefix == "" {
		prefix = "sink"
	}
	f, err := os.Create(prefix + ".cpu.pprof")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	_ = pprof.StartCPUProfile(f)
	defer func() {
		pprof.StopCPUProfile()
		if m, err := os.Create(prefix + ".allocs.pprof"); err == nil {
			_ = pprof.Lookup("allocs").WriteTo(m, 0)
			m.Close()
		}
	}()

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
