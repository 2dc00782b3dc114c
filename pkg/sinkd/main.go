package sinkd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Exit codes of every sink command.
const (
	ExitOK        = 0 // stopped cleanly
	ExitFailed    = 1 // could not start, or stopped on an error
	ExitBadConfig = 2 // the configuration is wrong: fix the file or variable named
)

// ConfigError prints a configuration (or writer construction) error for
// command and returns the exit code for it.
func ConfigError(command string, err error) int {
	fmt.Fprintf(os.Stderr, "%s: %v\n", command, err)
	if errors.Is(err, config.ErrInvalid) || !errors.Is(err, sink.ErrPermanent) {
		return ExitBadConfig
	}
	return ExitFailed
}

// Serve runs the sink as a service until SIGINT or SIGTERM and returns the
// command's exit code: the whole of a sink's main after its config is
// loaded and its writer built. SIGHUP reloads the mappings (with
// WithConfigFile; reload.go).
func Serve(cfg sink.Config, w sink.Writer, log *slog.Logger, opts ...Option) int {
	if os.Getenv("GOGC") == "" {
		// A sink's heap is small and bounded (batches, pull buffer); trading
		// ~20 MB of it for fewer collections cut its CPU by a fifth in the
		// benchmarks (BENCHMARKS.md). GOGC in the environment overrides.
		debug.SetGCPercent(400)
	}
	// A CPU profile of the process until it stops, for benchmarks
	// (BENCHMARKS.md, "Profile").
	if path := os.Getenv("JETSYNC_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	if path := os.Getenv("JETSYNC_MEMPROFILE"); path != "" { // what the process allocated, at exit
		runtime.MemProfileRate = 64 << 10
		defer func() {
			if f, err := os.Create(path); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // a reload, no longer the end of the process
	defer signal.Stop(hup)
	svc, err := New(ctx, cfg, w, log, append(opts, withReloadSignal(hup))...)
	if err != nil {
		log.Error("cannot start", "err", err)
		return ExitFailed
	}
	if err := svc.Run(ctx); err != nil {
		log.Error("sink failed", "err", err)
		return ExitFailed
	}
	return ExitOK
}

// Command parses a sink's command line into fs: a command word, one of
// cmds (the first is the default), before or after the flags (the image's
// ENTRYPOINT puts -config first, so `docker compose run SINK rebuild` puts
// the word last). ok is false after a bad line, usage printed: exit 2.
func Command(fs *flag.FlagSet, args []string, usage string, cmds ...string) (cmd string, ok bool) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if cmd == "" && fs.NArg() > 0 {
		cmd = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return "", false
		}
	}
	if cmd == "" {
		cmd = cmds[0]
	}
	if !slices.Contains(cmds, cmd) || fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "%s: unexpected %q\n%s\n", fs.Name(), strings.Join(append([]string{cmd}, fs.Args()...), " "), usage)
		return "", false
	}
	return cmd, true
}
