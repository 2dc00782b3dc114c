package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/httpauth"
	"github.com/jetsync/jetsync/pkg/natsutil"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // a runtime failure, or a bad import line
	exitUsage  = 2 // bad flags or configuration: fix the command or the file
)

const usage = `usage:
  bridge [serve] [-config FILE]          run the HTTP append API (the default)
  bridge import [-config FILE] FILE|-    import NDJSON events from FILE or stdin
  bridge relay [-config FILE]            publish the rows of a PostgreSQL event table or outbox
                                         (source: section) to the stream; serve runs it too
                                         when source.postgres_url is set
  bridge nats [-config FILE]             run only the NATS server of nats.embedded (with
                                         nats.embedded.cluster: one node of a JetStream cluster)
  bridge token-hash [-new]               print the SHA-256 of a token read from stdin for
                                         auth.tokens[].sha256; -new makes a random token

Every config key can be overridden by an environment variable:
JETSYNC_NATS_URL for nats.url, JETSYNC_HTTP_LISTEN for http.listen, ...
`

// run is the program behind main; it returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serveCmd(ctx, args, stderr)
	case "import":
		return importCmd(ctx, args, stdin, stdout, stderr)
	case "relay":
		return relayCmd(ctx, args, stderr)
	case "nats":
		return natsCmd(ctx, args, stderr)
	case "token-hash":
		return tokenHashCmd(args, stdin, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "bridge: unknown command %q\n%s", cmd, usage)
	return exitUsage
}

// configOnly parses the arguments of a command whose only flag is -config
// (help describes it) and loads that config. When ok is false the command
// exits with code, the problem written to stderr.
func configOnly(name string, args []string, stderr io.Writer, help string) (cfg Config, code int, ok bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", help)
	if err := fs.Parse(args); err != nil {
		return cfg, exitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bridge %s: unexpected argument %q\n%s", name, fs.Arg(0), usage)
		return cfg, exitUsage, false
	}
	cfg, err := LoadConfig(*cfgPath)
	if err != nil {
		return cfg, configFailed(stderr, err), false
	}
	return cfg, 0, true
}

func serveCmd(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, code, ok := configOnly("serve", args, stderr, "YAML config `file`; JETSYNC_* environment variables override it")
	if !ok {
		return code
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	b, err := New(ctx, cfg, log)
	if err != nil {
		log.Error("bridge failed to start", "err", err)
		return exitFailed
	}
	if err := b.Run(ctx); err != nil {
		log.Error("bridge stopped with an error", "err", err)
		return exitFailed
	}
	return exitOK
}

func configFailed(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "bridge: configuration:\n  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
	if errors.Is(err, config.ErrInvalid) {
		return exitUsage
	}
	return exitFailed
}

func importCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("import", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "YAML config `file`; JETSYNC_* environment variables override it")
	window := fs.Int("window", 4096, "publishes awaiting their ack at most")
	progress := fs.Bool("progress", isTerminal(stderr), "show a progress bar on stderr")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "bridge import: give exactly one FILE, or - for stdin\n%s", usage)
		return exitUsage
	}
	if *window < 1 {
		fmt.Fprintln(stderr, "bridge import: -window must be at least 1")
		return exitUsage
	}
	cfg, err := LoadConfig(*cfgPath)
	if err != nil {
		return configFailed(stderr, err)
	}
	if cfg.NATS.URL == "" && cfg.NATS.Embedded.Port <= 0 {
		fmt.Fprintln(stderr, "bridge import: nats.url is empty and nats.embedded.port is not fixed; set nats.url (JETSYNC_NATS_URL) to the server `bridge serve` uses")
		return exitUsage
	}

	in, total, closeIn, err := openInput(fs.Arg(0), stdin)
	if err != nil {
		fmt.Fprintf(stderr, "bridge import: %v\n", err)
		return exitFailed
	}
	defer closeIn()

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nc, err := natsutil.Connect(cfg.natsClient(), "jetsync-bridge-import", log)
	if err != nil {
		fmt.Fprintf(stderr, "bridge import: %v (is `bridge serve` running, or nats.url set?)\n", err)
		return exitFailed
	}
	defer natsutil.Drain(nc)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(*window), jetstream.WithDefaultTimeout(cfg.Append.Timeout))
	if err != nil {
		fmt.Fprintf(stderr, "bridge import: %v\n", err)
		return exitFailed
	}
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = natsutil.EnsureStream(ectx, js, cfg.Stream)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "bridge import: %v\n", err)
		return exitFailed
	}

	opts := ImportOptions{Stream: cfg.Stream.Name, Window: *window}
	var bar *progressbar.ProgressBar
	if *progress {
		bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription("importing"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("events"),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		opts.Progress = func(lines int64) { _ = bar.Set64(lines) }
	}
	if os.Getenv("GOGC") == "" {
		// The import's heap is small (a window of events in flight); fewer
		// collections leave more CPU to the NATS server on a small machine.
		// GOGC in the environment overrides.
		debug.SetGCPercent(400)
	}
	res, err := Import(ctx, js, in, opts)
	if bar != nil {
		if err == nil {
			_ = bar.Finish()
		} else {
			_ = bar.Exit()
		}
	}
	fmt.Fprintln(stdout, summary(res))
	if err != nil {
		fmt.Fprintf(stderr, "bridge import: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// summary is the one line an import ends with.
func summary(r ImportResult) string {
	secs := r.Elapsed.Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(r.Published+r.Present()) / secs
	}
	return fmt.Sprintf("imported %d events (%d already present) in %.2fs, %.0f events/s", r.Published, r.Present(), secs, rate)
}

// openInput opens FILE or stdin ("-"). total is the number of lines of a
// regular file, for the progress bar, and -1 when unknown.
func openInput(name string, stdin io.Reader) (r io.Reader, total int64, closeFn func(), err error) {
	if name == "-" {
		return bufio.NewReaderSize(stdin, 1<<20), -1, func() {}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, nil, err
	}
	total = -1
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		if total, err = countLines(f); err != nil {
			f.Close()
			return nil, 0, nil, fmt.Errorf("reading %s: %w", name, err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			f.Close()
			return nil, 0, nil, fmt.Errorf("reading %s: %w", name, err)
		}
	}
	return f, total, func() { f.Close() }, nil
}

// countLines counts lines, a last line without a newline included.
func countLines(r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	var last byte = '\n'
	for {
		k, err := r.Read(buf)
		if k > 0 {
			n += int64(bytes.Count(buf[:k], []byte{'\n'}))
			last = buf[k-1]
		}
		if errors.Is(err, io.EOF) {
			if last != '\n' {
				n++
			}
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// tokenHashCmd prints the hash of the token on stdin (its first line), or
// with -new makes a random token and prints it with its hash.
func tokenHashCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("token-hash", flag.ContinueOnError)
	fs.SetOutput(stderr)
	gen := fs.Bool("new", false, "make a random token and print it (token: ...) with its hash (sha256: ...)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bridge token-hash: takes the token on stdin, no arguments\n%s", usage)
		return exitUsage
	}
	if *gen {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			fmt.Fprintf(stderr, "bridge token-hash: %v\n", err)
			return exitFailed
		}
		tok := "jst_" + base64.RawURLEncoding.EncodeToString(b[:])
		fmt.Fprintf(stdout, "token: %s\nsha256: %s\n", tok, httpauth.HashToken(tok))
		return exitOK
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 64<<10)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(stderr, "bridge token-hash: reading stdin: %v\n", err)
		return exitFailed
	}
	tok := strings.TrimRight(line, "\r\n")
	if tok == "" {
		fmt.Fprintln(stderr, "bridge token-hash: stdin is empty; pipe the token in, e.g. echo \"$TOKEN\" | bridge token-hash")
		return exitUsage
	}
	fmt.Fprintln(stdout, httpauth.HashToken(tok))
	return exitOK
}
