// Command jetsyncctl operates jetsync sinks: status, reset, replay and dead
// letters. It talks only to NATS: sinks publish their status to, and pick
// reset requests up from, the control bucket; dead letters live in the DLQ
// stream.
//
// Exit codes: 0 done, 1 failed, 2 bad usage or input (nothing was changed).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const usage = `jetsyncctl: operate jetsync sinks

  jetsyncctl [-nats URL] [-stream NAME] COMMAND ...

  status                          every sink: position, head, lag, rate, state, last error
  reset  SINK --to-start | --to-seq N | --to-time RFC3339
                                  move the sink's checkpoint; a running sink catches up by itself
                                  (--to-seq N: the sink applies N next)
  replay SINK (same flags) [--timeout 30m]
                                  reset, then follow with a progress bar until it has caught up
  reload SINK                     the running sink reads its config file again and applies a changed
                                  mappings section from its next batch on, keeping its place (same as
                                  kill -HUP); a file that does not load, or that changed other keys
                                  (they need a restart), is refused (exit 2) naming the keys, and the
                                  running mappings stay
  dlq list    SINK                the sink's dead letters in position order
  dlq show    SINK SEQ            one dead letter: headers, error, data
  dlq retry   SINK [SEQ ...]      re-apply dead letters through the running sink (all when no SEQ)
  dlq discard SINK SEQ ... | --all

  -nats defaults to $JETSYNC_NATS_URL or nats://127.0.0.1:4222; -stream to EVENTS.
`

// errUsage marks bad usage or input: exit code 2, nothing changed.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "jetsyncctl:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "jetsyncctl:", err)
		os.Exit(1)
	}
}
