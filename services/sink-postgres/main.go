// Command sink-postgres keeps PostgreSQL read models up to date from the
// jetsync event stream: each event type maps to row writes (upsert, patch,
// delete) committed in one transaction per batch together with the sink's
// checkpoint row. It also rebuilds them without downtime:
//
//	sink-postgres -config sink-postgres.yaml           run the sink
//	sink-postgres rebuild -config sink-postgres.yaml   rebuild its tables from
//	                                                   position 0 into shadow
//	                                                   tables, then swap
//
// Exit codes: 0 after a clean stop (or a finished rebuild), 2 for a bad
// configuration or command line, 1 for anything else (a rebuild that cannot
// finish, e.g. at an event a new table refuses, exits 1 with the event
// named, the live tables untouched and the shadow tables dropped).
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

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sinkd"
	"github.com/jetsync/jetsync/services/sink-postgres/relational"
)

func main() { os.Exit(run(context.Background(), os.Args[1:])) }

const usage = `usage: sink-postgres [run] -config FILE
       sink-postgres rebuild -config FILE [-keep-failed] [-swap-wait D] [-timeout D]
(the command may also follow the flags: sink-postgres -config FILE rebuild, as
in docker compose run sink-postgres rebuild)`

func run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("sink-postgres", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprintln(os.Stderr, usage); fs.PrintDefaults() }
	path := fs.String("config", "", "YAML config file; JETSYNC_* environment variables override it (e.g. JETSYNC_POSTGRES_URL)")
	keepFailed := fs.Bool("keep-failed", false, "rebuild: if it fails, keep the shadow tables (for inspection) instead of dropping them")
	swapWait := fs.Duration("swap-wait", 10*time.Second, "rebuild: how long the swap may hold the live sink's checkpoint row for the shadow tables to reach it")
	timeout := fs.Duration("timeout", 0, "rebuild: give up after this long (0: no limit)")
	cmd, ok := sinkd.Command(fs, args, usage, "run", "rebuild")
	if !ok {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg := relational.DefaultConfig()
	if err := config.Load(*path, "JETSYNC", &cfg); err != nil {
		return sinkd.ConfigError("sink-postgres", err)
	}
	w, err := relational.NewWriter(cfg, log)
	if err != nil {
		return sinkd.ConfigError("sink-postgres", err)
	}
	if cmd == "rebuild" {
		ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if *timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, *timeout)
			defer cancel()
		}
		return rebuild(ctx, cfg, relational.RebuildOptions{KeepFailed: *keepFailed, SwapWait: *swapWait}, log)
	}
	return sinkd.Serve(cfg.Config, w, log, sinkd.WithConfigFile(*path, "JETSYNC"))
}

func rebuild(ctx context.Context, cfg relational.Config, ro relational.RebuildOptions, log *slog.Logger) int {
	js, opts, closeConn, err := sinkd.RebuildConn(ctx, cfg.Config, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer closeConn()
	ro.EngineOptions = append(ro.EngineOptions, opts...)
	res, err := relational.Rebuild(ctx, cfg, js, log, ro)
	if err != nil {
		log.Error("rebuild failed", "err", err)
		return 1
	}
	for _, t := range res.Tables {
		fmt.Printf("%s: rebuilt; the previous table is kept as %s\n", t, res.Old[t])
	}
	fmt.Printf("rebuilt through position %d: %d events in %s; the live sink waited at most %s\n",
		res.Through, res.Events, res.Took.Round(time.Millisecond), res.Locked.Round(time.Millisecond))
	fmt.Println("drop the previous tables once the new ones are checked:")
	for _, s := range res.DropStatements() {
		fmt.Println("  " + s)
	}
	return 0
}
