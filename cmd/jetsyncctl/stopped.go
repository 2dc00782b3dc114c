package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/control"
)

// actionTimeout bounds a skip or resume: the sink answers within its own
// limits (30s to skip, 15s to see a resumed event through).
const actionTimeout = 45 * time.Second

// stopAction asks a running sink its error policy stopped to skip the
// event it stopped at, or to resume (try it again). It is refused, with
// exit code 2 and nothing changed, for an unknown sink, a sink that is down
// and a sink that is not stopped (at --position N, when given).
func (c *ctl) stopAction(ctx context.Context, act string, args []string) error {
	fs := flag.NewFlagSet(act, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	position := fs.Uint64("position", 0, "")
	pos, err := splitArgs(fs, args)
	if err != nil {
		return usageErr("%v", err)
	}
	if len(pos) != 1 {
		return usageErr("%s: name one sink (see jetsyncctl status)", act)
	}
	st, err := c.control.Status(ctx, pos[0])
	if errors.Is(err, control.ErrUnknownSink) {
		return fmt.Errorf("%w: %v; nothing changed", errUsage, err)
	}
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, actionTimeout)
	defer cancel()
	done, err := control.Ask(actx, c.nc, st.Name, act, control.ActionRequest{Position: *position})
	if errors.Is(err, control.ErrNotRunning) {
		next := "start it first"
		if st.Stopped != nil {
			next = fmt.Sprintf("it was stopped at position %d; started, it stops there again while the event is refused, then %s it", st.Stopped.Position, act)
		}
		return fmt.Errorf("%w: sink %s is down (not running; last status %s ago): %s needs it running, nothing changed; %s",
			control.ErrRefused, st.Name, time.Since(st.Updated).Round(time.Second), act, next)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(c.out, done)
	return nil
}

// resumeCheckpoint reads where a sink that is starting or down will resume
// from its checkpoint store (the NATS KV bucket it reported), and the reset
// request waiting for it, if any. ok is false when the target keeps the
// checkpoint: the last position the sink reported is the best known then.
func (c *ctl) resumeCheckpoint(ctx context.Context, st control.Status) (cp uint64, note string, ok bool) {
	if r, err := c.control.PendingReset(ctx, st.Name); err == nil && r != nil {
		return r.Position, "reset pending", true
	}
	if st.CheckpointBucket == "" {
		return 0, "", false
	}
	kv, err := c.js.KeyValue(ctx, st.CheckpointBucket)
	if err != nil {
		return 0, "", false
	}
	e, err := kv.Get(ctx, st.Name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, "", true
	}
	if err != nil {
		return 0, "", false
	}
	n, err := strconv.ParseUint(string(e.Value()), 10, 64)
	return n, "", err == nil
}
