package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/natsutil"
)

// ctl is one jetsyncctl invocation's connections.
type ctl struct {
	out, errOut io.Writer
	nc          *nats.Conn
	js          jetstream.JetStream
	stream      string
	control     *control.Store
}

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format+"\n\n%s", append([]any{errUsage}, append(args, usage)...)...)
}

// run parses the global flags, connects and dispatches.
func run(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := flag.NewFlagSet("jetsyncctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ncfg := natsFlags(fs)
	stream := fs.String("stream", natsutil.DefaultStream, "event stream")
	if err := fs.Parse(args); err != nil {
		return usageErr("%v", err)
	}
	var problems config.Problems
	ncfg.Validate("nats", &problems)
	if err := problems.Err(); err != nil {
		return usageErr("%v (flags -nats, -nats-creds, -nats-user, -nats-password, -nats-token, -nats-ca, -nats-cert, -nats-key or JETSYNC_NATS_*)", err)
	}
	args = fs.Args()
	if len(args) == 0 {
		return usageErr("a command is required")
	}
	known := map[string]bool{"status": true, "reset": true, "replay": true, "dlq": true, "reload": true,
		control.ActionSkip: true, control.ActionResume: true, control.ActionFailover: true}
	if !known[args[0]] {
		return usageErr("unknown command %q", args[0])
	}

	nc, err := nats.Connect(strings.Join(ncfg.URLs(), ","), append(ncfg.Options(), nats.Name("jetsyncctl"), nats.Timeout(3*time.Second))...)
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w (set -nats or JETSYNC_NATS_URL)", ncfg.URL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	store, err := control.Open(ctx, js)
	if err != nil {
		return err
	}
	c := &ctl{out: out, errOut: errOut, nc: nc, js: js, stream: *stream, control: store}
	switch args[0] {
	case "status":
		return c.status(ctx)
	case "reset":
		_, _, err := c.reset(ctx, args[1:], false)
		return err
	case "replay":
		return c.replay(ctx, args[1:])
	case control.ActionSkip, control.ActionResume:
		return c.stopAction(ctx, args[0], args[1:])
	case "reload":
		return c.reload(ctx, args[1:])
	case control.ActionFailover:
		return c.failover(ctx, args[1:])
	default:
		return c.dlq(ctx, args[1:])
	}
}

// natsFlags registers the NATS connection flags, each defaulting to the
// environment variable a service's nats.* key reads (JETSYNC_NATS_URL for
// nats.url, JETSYNC_NATS_TLS_CA for nats.tls.ca), so one environment serves
// the services and jetsyncctl alike.
func natsFlags(fs *flag.FlagSet) *natsutil.Config {
	c := &natsutil.Config{}
	env := func(name, def string) string {
		if v := os.Getenv("JETSYNC_NATS_" + name); v != "" {
			return v
		}
		return def
	}
	fs.StringVar(&c.URL, "nats", env("URL", "nats://127.0.0.1:4222"), "NATS URL; several servers of a cluster comma-separated")
	fs.StringVar(&c.Creds, "nats-creds", env("CREDS", ""), "NATS .creds file")
	fs.StringVar(&c.User, "nats-user", env("USER", ""), "NATS user")
	fs.StringVar(&c.Password, "nats-password", env("PASSWORD", ""), "NATS password (prefer JETSYNC_NATS_PASSWORD)")
	fs.StringVar(&c.Token, "nats-token", env("TOKEN", ""), "NATS token (prefer JETSYNC_NATS_TOKEN)")
	fs.StringVar(&c.TLS.CA, "nats-ca", env("TLS_CA", ""), "CA file that signed the NATS servers' certificates")
	fs.StringVar(&c.TLS.Cert, "nats-cert", env("TLS_CERT", ""), "client certificate file for NATS")
	fs.StringVar(&c.TLS.Key, "nats-key", env("TLS_KEY", ""), "client key file for NATS")
	return c
}

// splitArgs parses flags wherever they stand among the positional
// arguments (jetsyncctl reset cache --to-start and --to-start cache alike).
func splitArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// target is where a reset moves a sink.
type target struct {
	checkpoint uint64 // the new checkpoint: the sink applies what follows it
	describe   string
}

// resolveTarget turns --to-start / --to-seq / --to-time into a checkpoint,
// checked against the stream's head for the sink's filters.
func (c *ctl) resolveTarget(ctx context.Context, st control.Status, toStart bool, toSeq string, toTime string) (target, error) {
	n := 0
	for _, set := range []bool{toStart, toSeq != "", toTime != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return target{}, usageErr("give exactly one of --to-start, --to-seq N, --to-time RFC3339")
	}
	head, err := c.head(ctx, st.Filters)
	if err != nil {
		return target{}, err
	}
	switch {
	case toStart:
		return target{0, "the start of the stream"}, nil
	case toSeq != "":
		seq, err := strconv.ParseUint(toSeq, 10, 64)
		if err != nil || seq == 0 {
			return target{}, usageErr("--to-seq %q: must be a position >= 1 (the first event the sink applies again)", toSeq)
		}
		if seq > head {
			return target{}, fmt.Errorf("%w: --to-seq %d is beyond the stream head %d for %s; nothing changed",
				errUsage, seq, head, strings.Join(st.Filters, ","))
		}
		return target{seq - 1, fmt.Sprintf("position %d", seq)}, nil
	default:
		t, err := time.Parse(time.RFC3339Nano, toTime)
		if err != nil {
			return target{}, usageErr("--to-time %q: not an RFC 3339 time; write it like 2026-11-25T10:00:00Z", toTime)
		}
		seq, err := c.firstAtOrAfter(ctx, st.Filters, t)
		if err != nil {
			return target{}, err
		}
		if seq == 0 {
			return target{}, fmt.Errorf("%w: --to-time %s is after the last event of %s (head %d); nothing changed",
				errUsage, toTime, strings.Join(st.Filters, ","), head)
		}
		return target{seq - 1, fmt.Sprintf("%s (position %d)", t.Format(time.RFC3339), seq)}, nil
	}
}

// reset validates and leaves a reset request; it returns the target and
// the head at the time of the request.
func (c *ctl) reset(ctx context.Context, args []string, quiet bool) (control.Status, target, error) {
	fs := flag.NewFlagSet("reset", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	toStart := fs.Bool("to-start", false, "")
	toSeq := fs.String("to-seq", "", "")
	toTime := fs.String("to-time", "", "")
	fs.Duration("timeout", 30*time.Minute, "") // replay's; accepted here so both share flags
	pos, err := splitArgs(fs, args)
	if err != nil {
		return control.Status{}, target{}, usageErr("%v", err)
	}
	if len(pos) != 1 {
		return control.Status{}, target{}, usageErr("name one sink (see jetsyncctl status)")
	}
	st, err := c.control.Status(ctx, pos[0])
	if err != nil {
		if errors.Is(err, control.ErrUnknownSink) {
			return st, target{}, fmt.Errorf("%w: %v", errUsage, err)
		}
		return st, target{}, err
	}
	tgt, err := c.resolveTarget(ctx, st, *toStart, *toSeq, *toTime)
	if err != nil {
		return st, tgt, err
	}
	if err := c.control.RequestReset(ctx, st.Name, tgt.checkpoint); err != nil {
		return st, tgt, err
	}
	if !quiet {
		state := "it applies the reset now"
		if st.Stale(time.Now()) {
			state = "it is not running; it applies the reset when it starts"
		}
		fmt.Fprintf(c.out, "reset %s to %s (checkpoint %d): %s\n", st.Name, tgt.describe, tgt.checkpoint, state)
	}
	return st, tgt, nil
}

// head is the last position in the stream matching filters (0 if none).
func (c *ctl) head(ctx context.Context, filters []string) (uint64, error) {
	s, err := c.js.Stream(ctx, c.stream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", c.stream, err)
	}
	return natsutil.LastPosition(ctx, s, filters)
}

// firstAtOrAfter finds the first position at or after t matching filters
// (0 if none), from each message's stored time.
func (c *ctl) firstAtOrAfter(ctx context.Context, filters []string, t time.Time) (uint64, error) {
	cons, err := c.js.OrderedConsumer(ctx, c.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: filters, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &t})
	if err != nil {
		return 0, err
	}
	msgs, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		return 0, err
	}
	for m := range msgs.Messages() {
		md, err := m.Metadata()
		if err != nil {
			return 0, err
		}
		return md.Sequence.Stream, nil
	}
	return 0, nil
}

func (c *ctl) dlqQueue(ctx context.Context) (*deadletter.Queue, error) {
	return deadletter.Open(ctx, c.js)
}
