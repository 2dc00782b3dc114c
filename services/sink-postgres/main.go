// Command sink-postgres keeps PostgreSQL read models up to date from the
// jetsync event stream: each event type maps to row writes (upsert, patch,
// delete) committed in one transaction per batch together with the sink's
// checkpoint row.
//
//	sink-postgres -config sink-postgres.yaml
//
// Exit codes: 0 after a clean stop, 2 for a bad configuration or command
// line, 1 for anything else.
package main

import (
	"flag"
	"log/slog"
	"os"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sinkd"
	"github.com/jetsync/jetsync/services/sink-postgres/relational"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("sink-postgres", flag.ContinueOnError)
	path := fs.String("config", "", "YAML config file; JETSYNC_* environment variables override it (e.g. JETSYNC_POSTGRES_URL)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		fs.Usage()
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
	return sinkd.Serve(cfg.Config, w, log, sinkd.WithConfigFile(*path, "JETSYNC"))
}
