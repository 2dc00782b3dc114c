// Command sink-es keeps Elasticsearch read models up to date from the jetsync
// event stream, and rebuilds them without downtime:
//
//	sink-es -config sink-es.yaml           run the sink
//	sink-es rebuild -config sink-es.yaml   rebuild its indices from position 0
//	                                       behind their aliases, then swap
//
// Exit codes: 0 after a clean stop (or a finished rebuild), 2 for a bad
// configuration or command line, 1 for anything else (a rebuild that cannot
// finish, e.g. at an event the new index refuses, exits 1 with the event
// named, its aliases and old indices as they were).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sinkd"
	"github.com/jetsync/jetsync/services/sink-es/search"
)

func main() { os.Exit(run(os.Args[1:])) }

const usage = `usage: sink-es [run] -config FILE
       sink-es rebuild -config FILE [-keep-old] [-keep-failed]
(the command may also follow the flags: sink-es -config FILE rebuild, as in
docker compose run sink-es rebuild)`

func run(args []string) int {
	fs := flag.NewFlagSet("sink-es", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprintln(os.Stderr, usage); fs.PrintDefaults() }
	path := fs.String("config", "", "YAML config file; JETSYNC_* environment variables override it (e.g. JETSYNC_ELASTICSEARCH_PASSWORD)")
	keepOld := fs.Bool("keep-old", false, "rebuild: keep the old indices (read-only) instead of deleting them; overrides rebuild.keep_old")
	keepFailed := fs.Bool("keep-failed", false, "rebuild: if it fails before the swap, keep the unfinished new indices (for inspection) instead of deleting them")
	cmd, ok := sinkd.Command(fs, args, usage, "run", "rebuild")
	if !ok {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cfg := search.DefaultConfig()
	if err := config.Load(*path, "JETSYNC", &cfg); err != nil {
		return sinkd.ConfigError("sink-es", err)
	}
	w, err := search.NewWriter(cfg, log)
	if err != nil {
		return sinkd.ConfigError("sink-es", err)
	}

	if cmd == "rebuild" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		ro := search.RebuildOptions{KeepFailed: *keepFailed}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "keep-old" {
				ro.KeepOld = keepOld
			}
		})
		return rebuild(ctx, cfg, ro, log)
	}
	return sinkd.Serve(cfg.Config, w, log, sinkd.WithConfigFile(*path, "JETSYNC"))
}

func rebuild(ctx context.Context, cfg search.Config, ro search.RebuildOptions, log *slog.Logger) int {
	js, opts, closeConn, err := sinkd.RebuildConn(ctx, cfg.Config, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer closeConn()
	ro.EngineOptions = append(ro.EngineOptions, opts...)
	store, err := checkpoint.OpenKV(ctx, js, cfg.Checkpoint.Bucket, cfg.Checkpoint.Replicas)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	res, err := search.Rebuild(ctx, cfg, js, store, log, ro)
	if err != nil {
		log.Error("rebuild failed", "err", err)
		return 1
	}
	for alias, idx := range res.New {
		fmt.Printf("%s: %s -> %s\n", alias, res.Old[alias], idx)
	}
	fmt.Printf("rebuilt through position %d: %d events in %s; old indices refused writes for %s\n",
		res.Through, res.Events, res.Took.Round(time.Millisecond), res.Blocked.Round(time.Millisecond))
	return 0
}
