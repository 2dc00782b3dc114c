// Command jetsyncctl operates jetsync sinks: status, reset, replay, skip and
// resume of a sink its error policy stopped, and dead letters. It talks only
// to NATS: sinks publish their status to, and pick reset requests up from,
// the control bucket; skip and resume are asked of the running sink
// (request/reply); dead letters live in the DLQ stream.
//
// Exit codes: 0 done, 1 failed, 2 bad usage or input, or an action that does
// not apply to the sink as it is (nothing was changed).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/jetsync/jetsync/pkg/control"
)

const usage = `jetsyncctl: operate jetsync sinks

  jetsyncctl [-nats URL] [-stream NAME] COMMAND ...

  status                          every sink: position, head, lag, rate, state, last error; for a
                                  stopped sink the event it stopped at, the error, what to do; the
                                  active instance of each sink (host, pid, lease epoch) and its standbys
  failover SINK                   the active instance hands the sink's lease to a standby and stands
                                  by itself (rolling upgrade); refused (exit 2) with no standby running
  reset  SINK --to-start | --to-seq N | --to-time RFC3339
                                  move the sink's checkpoint; a running (or stopped) sink catches
                                  up by itself, one that is down when it starts
                                  (--to-seq N: the sink applies N next)
  replay SINK (same flags) [--timeout 30m]
                                  reset, then follow with a progress bar until it has caught up
  skip   SINK [--position N]      a sink its error policy stopped (state stopped): skip the event it
                                  stopped at (stored as a dead letter, see dlq) and read on
  resume SINK [--position N]      a stopped sink: try that event again (after fixing the target)
                                  --position N: only if it is stopped at N. Skip and resume are
                                  refused (exit 2, nothing changed) for a sink that is not stopped,
                                  unknown or down
  reload SINK                     the running sink reads its config file again and applies a changed
                                  mappings section from its next batch on, keeping its place (same as
                                  kill -HUP); a file that does not load, or that changed other keys
                                  (they need a restart), is refused (exit 2) naming the keys, and the
                                  running mappings stay
  dlq list    SINK                the sink's dead letters in position order
  dlq show    SINK SEQ            one dead letter: headers, error, data
  dlq retry   SINK [SEQ ...]      re-apply dead letters through the running sink (all when no SEQ)
  dlq discard SINK SEQ ... | --all
  dlq retry   SINK --stream CATEGORY/ID
                                  a sink with on_error: park: re-apply the stream's parked events in
                                  order through the running sink; un-parks it when all went through
                                  (no argument: every parked stream)
  dlq discard SINK --stream CATEGORY/ID
                                  drop the stream's parked events and un-park it

  -nats defaults to $JETSYNC_NATS_URL or nats://127.0.0.1:4222 (a cluster: several URLs,
  comma-separated); -stream to EVENTS. Logging in to NATS: -nats-creds FILE, -nats-user and
  -nats-password, or -nats-token; TLS: -nats-ca FILE, -nats-cert FILE -nats-key FILE. Each defaults
  to the variable a service reads for the same key: JETSYNC_NATS_CREDS, JETSYNC_NATS_USER,
  JETSYNC_NATS_PASSWORD, JETSYNC_NATS_TOKEN, JETSYNC_NATS_TLS_CA, JETSYNC_NATS_TLS_CERT,
  JETSYNC_NATS_TLS_KEY.
`

// errUsage marks bad usage or input: exit code 2, nothing changed.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errUsage), errors.Is(err, control.ErrRefused):
		fmt.Fprintln(os.Stderr, "jetsyncctl:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "jetsyncctl:", err)
		os.Exit(1)
	}
}
