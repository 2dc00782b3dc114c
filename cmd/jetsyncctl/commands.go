package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/schollz/progressbar/v3"

	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/sinkd"
)

// status prints one table of every sink. A sink that stopped reporting is
// "down", and its head and lag are measured here instead; one that is down
// or starting shows the checkpoint it will resume from. Each sink stopped by
// its error policy gets a paragraph: the event, the error, what to do.
func (c *ctl) status(ctx context.Context) error {
	all, err := c.control.Statuses(ctx)
	if err != nil {
		return err
	}
	if len(all) == 0 {
		fmt.Fprintln(c.out, "no sink has reported yet")
		return nil
	}
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SINK\tSTATE\tPOSITION\tHEAD\tLAG\tLAG(s)\tRATE/s\tLAST ERROR")
	now := time.Now()
	var stopped, parked []control.Status
	for _, st := range all {
		down := st.Stale(now)
		var notes []string
		if down || st.State == "starting" {
			if cp, note, ok := c.resumeCheckpoint(ctx, st); ok {
				st.Checkpoint = cp
				if note != "" {
					notes = append(notes, note)
				}
			}
		}
		switch {
		case down:
			if head, err := c.head(ctx, st.Filters); err == nil {
				st.Head = head
			}
			if st.Stopped != nil {
				notes = append(notes, fmt.Sprintf("stopped at %d", st.Stopped.Position))
			}
			st.State = fmt.Sprintf("down (seen %s ago)", now.Sub(st.Updated).Round(time.Second))
			st.Rate = 0
		case st.State == "stopped" && st.Stopped != nil:
			stopped = append(stopped, st)
		}
		if st.ParkedStreams > 0 {
			notes = append(notes, fmt.Sprintf("%d parked", st.ParkedStreams))
			parked = append(parked, st)
		}
		if down || st.State == "starting" {
			st.LagEvents = 0
			if st.Head > st.Checkpoint {
				st.LagEvents = st.Head - st.Checkpoint
			}
		}
		if len(notes) > 0 {
			st.State += " [" + strings.Join(notes, "; ") + "]"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.1f\t%.0f\t%s\n", st.Name, st.State, st.Checkpoint, st.Head,
			st.LagEvents, st.LagSeconds, st.Rate, oneLine(st.LastError, 60))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := c.printInstances(ctx, c.out, all); err != nil {
		return err
	}
	for _, st := range stopped {
		printStopped(c.out, st)
	}
	for _, st := range parked {
		printParked(c.out, st)
	}
	return nil
}

// printStopped says where a sink stopped, why, and what the operator can do.
func printStopped(out io.Writer, st control.Status) {
	s := st.Stopped
	id, typ := s.ID, s.Type
	if id == "" {
		id = "(no id)"
	}
	if typ == "" {
		typ = "(unknown)"
	}
	fmt.Fprintf(out, "\n%s is stopped by its error policy (on_error: stop) since %s, at position %d (checkpoint %d):\n",
		st.Name, s.Since.Local().Format(time.DateTime), s.Position, st.Checkpoint)
	fmt.Fprintf(out, "  event:   %s, type %s, subject %s\n  error:   %s\n", id, typ, s.Subject, s.Error)
	fmt.Fprintf(out, "  then:    jetsyncctl resume %[1]s   (after fixing the target: tries the event again)\n"+
		"           jetsyncctl skip %[1]s     (dead-letters the event and reads on)\n"+
		"           jetsyncctl reset %[1]s --to-seq N\n", st.Name)
}

func oneLine(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

// replay resets the sink and follows it with a progress bar until it has
// applied everything up to the head it saw when the reset was made.
func (c *ctl) replay(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	timeout := fs.Duration("timeout", 30*time.Minute, "")
	fs.Bool("to-start", false, "")
	fs.String("to-seq", "", "")
	fs.String("to-time", "", "")
	if _, err := splitArgs(fs, args); err != nil {
		return usageErr("%v", err)
	}
	st, tgt, err := c.reset(ctx, args, false)
	if err != nil {
		return err
	}
	head, err := c.head(ctx, st.Filters)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	// The request is gone from the bucket once the sink applied it.
	for {
		r, err := c.control.PendingReset(ctx, st.Name)
		if err != nil {
			return err
		}
		if r == nil {
			break
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("sink %s has not applied the reset (is it running? see jetsyncctl status): %w", st.Name, err)
		}
	}
	total := int64(head - tgt.checkpoint)
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetDescription("replaying "+st.Name),
		progressbar.OptionSetWriter(c.errOut),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("events"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(c.errOut) }),
	)
	start := time.Now()
	for {
		now, err := c.control.Status(ctx, st.Name)
		if err != nil {
			return err
		}
		done := int64(0)
		if now.Checkpoint > tgt.checkpoint {
			done = int64(min(now.Checkpoint, head) - tgt.checkpoint)
		}
		_ = bar.Set64(done)
		if now.Checkpoint >= head && now.Updated.After(start) {
			_ = bar.Finish()
			fmt.Fprintf(c.out, "%s caught up: %d events replayed to position %d in %s\n", st.Name, total, head, time.Since(start).Round(time.Millisecond))
			return nil
		}
		if (now.State == "stopped" || now.State == "failed") && now.Updated.After(start) {
			return fmt.Errorf("sink %s %s while replaying: %s (jetsyncctl status says more)", st.Name, now.State, now.LastError)
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return fmt.Errorf("replay of %s not finished at position %d of %d: %w", st.Name, now.Checkpoint, head, err)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// dlq lists, shows, retries or discards a sink's dead letters.
func (c *ctl) dlq(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dlq", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	all := fs.Bool("all", false, "")
	stream := fs.String("stream", "", "")
	pos, err := splitArgs(fs, args)
	if err != nil {
		return usageErr("%v", err)
	}
	if len(pos) < 2 {
		return usageErr("dlq needs a subcommand (list, show, retry, discard) and a sink")
	}
	sub, sinkName, rest := pos[0], pos[1], pos[2:]
	if _, err := c.control.Status(ctx, sinkName); errors.Is(err, control.ErrUnknownSink) {
		return fmt.Errorf("%w: %v", errUsage, err)
	} else if err != nil {
		return err
	}
	seqs := make([]uint64, 0, len(rest))
	for _, r := range rest {
		q, err := strconv.ParseUint(r, 10, 64)
		if err != nil || q == 0 {
			return usageErr("%q is not a dead-letter number (the SEQ column of jetsyncctl dlq list)", r)
		}
		seqs = append(seqs, q)
	}
	if *stream != "" {
		return c.parkedAction(ctx, sub, sinkName, *stream, len(seqs) > 0 || *all)
	}
	q, err := c.dlqQueue(ctx)
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		letters, err := q.List(ctx, sinkName)
		if err != nil {
			return err
		}
		if len(letters) == 0 {
			fmt.Fprintf(c.out, "no dead letters for %s\n", sinkName)
			return nil
		}
		tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tPOSITION\tSUBJECT\tTYPE\tID\tWHEN\tERROR")
		for _, l := range letters {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\n", l.Seq, l.Position, l.Subject, l.Header.Get("Jetsync-Type"),
				l.Header.Get(nats.MsgIdHdr), l.Time.Format(time.RFC3339), oneLine(l.Error, 80))
		}
		return tw.Flush()
	case "show":
		if len(seqs) != 1 {
			return usageErr("dlq show takes one SEQ")
		}
		l, err := q.Get(ctx, sinkName, seqs[0])
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		keys := make([]string, 0, len(l.Header))
		for k := range l.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(c.out, "dead letter %d of sink %s\nposition: %d\nsubject:  %s\nerror:    %s\nwhen:     %s\nheaders:\n",
			l.Seq, sinkName, l.Position, l.Subject, l.Error, l.Time.Format(time.RFC3339Nano))
		for _, k := range keys {
			fmt.Fprintf(c.out, "  %s: %s\n", k, strings.Join(l.Header[k], ", "))
		}
		fmt.Fprintf(c.out, "data:\n  %s\n", l.Data)
		return nil
	case "retry":
		body, _ := json.Marshal(sinkd.RetryRequest{Seqs: seqs})
		msg, err := c.nc.RequestWithContext(ctx, sinkd.RetrySubject(sinkName), body)
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("sink %s is not running: start it, then retry", sinkName)
		}
		if err != nil {
			return err
		}
		var reply sinkd.RetryReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil {
			return fmt.Errorf("sink %s answered %q", sinkName, msg.Data)
		}
		switch {
		case reply.Refused != "":
			return fmt.Errorf("%w: %s", control.ErrRefused, reply.Refused)
		case reply.Error != "":
			return fmt.Errorf("retry failed, dead letters kept: %s", reply.Error)
		case reply.Done != "":
			fmt.Fprintln(c.out, reply.Done)
			return nil
		}
		fmt.Fprintf(c.out, "re-applied %d dead letter(s) of %s in position order\n", reply.Retried, sinkName)
		return nil
	case "discard":
		if *all == (len(seqs) > 0) {
			return usageErr("dlq discard takes SEQ ..., --all or --stream CATEGORY/ID")
		}
		if st, err := c.control.Status(ctx, sinkName); err == nil && st.ParkedStreams > 0 {
			return fmt.Errorf("%w: sink %s parks %d stream(s) (on_error: park): discard a parked stream with --stream CATEGORY/ID, which un-parks it (jetsyncctl status lists them); nothing discarded",
				control.ErrRefused, sinkName, st.ParkedStreams)
		}
		if *all {
			letters, err := q.List(ctx, sinkName)
			if err != nil {
				return err
			}
			for _, l := range letters {
				seqs = append(seqs, l.Seq)
			}
		} else {
			for _, s := range seqs { // check every one before deleting any
				if _, err := q.Get(ctx, sinkName, s); err != nil {
					return fmt.Errorf("%w: %v; nothing discarded", errUsage, err)
				}
			}
		}
		for _, s := range seqs {
			if err := q.Delete(ctx, s); err != nil {
				return err
			}
		}
		fmt.Fprintf(c.out, "discarded %d dead letter(s) of %s\n", len(seqs), sinkName)
		return nil
	default:
		return usageErr("unknown dlq subcommand %q", sub)
	}
}
