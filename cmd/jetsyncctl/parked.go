package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/sinkd"
)

// parkedTimeout bounds a retry or discard of a parked stream: the sink
// answers within its own limit (60s).
const parkedTimeout = 75 * time.Second

// parkedAction asks a running sink to retry (dlq retry --stream) or discard
// (dlq discard --stream) the events it parks for one stream. It is refused,
// exit code 2 and nothing changed, for a malformed stream, a sink that does
// not park streams, a stream it does not park, and a sink that is down.
func (c *ctl) parkedAction(ctx context.Context, sub, sinkName, stream string, more bool) error {
	if sub != "retry" && sub != "discard" {
		return usageErr("--stream goes with dlq retry and dlq discard")
	}
	if more {
		return usageErr("dlq %s --stream CATEGORY/ID takes no SEQ and no --all", sub)
	}
	if _, err := sinkd.StreamSubject(stream); err != nil {
		return usageErr("%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, parkedTimeout)
	defer cancel()
	var subject string
	var body []byte
	if sub == "retry" {
		subject, body = sinkd.RetrySubject(sinkName), mustJSON(sinkd.RetryRequest{Stream: stream})
	} else {
		subject, body = sinkd.DiscardSubject(sinkName), mustJSON(sinkd.DiscardRequest{Stream: stream})
	}
	msg, err := c.nc.RequestWithContext(ctx, subject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w: sink %s is not running: %s of a parked stream needs it running (it reads its parked streams from the dead-letter store when it starts); nothing changed",
			control.ErrRefused, sinkName, sub)
	}
	if err != nil {
		return err
	}
	var reply struct {
		Done    string `json:"done"`
		Refused string `json:"refused"`
		Error   string `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return fmt.Errorf("sink %s answered %q", sinkName, msg.Data)
	}
	switch {
	case reply.Refused != "":
		return fmt.Errorf("%w: %s", control.ErrRefused, reply.Refused)
	case reply.Error != "":
		return fmt.Errorf("%s --stream %s of %s: %s", sub, stream, sinkName, reply.Error)
	}
	fmt.Fprintln(c.out, reply.Done)
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// printParked lists the streams a sink parks and what the operator can do.
func printParked(out io.Writer, st control.Status) {
	fmt.Fprintf(out, "\n%s parks %d stream(s) (on_error: park), %d event(s) in dlq.%s; their later events wait there, not applied:\n",
		st.Name, st.ParkedStreams, st.ParkedEvents, st.Name)
	for _, p := range st.Parked {
		fmt.Fprintf(out, "  %s behind position %d (%d event(s), since %s): %s\n", p.Stream, p.Position, p.Events,
			p.Since.Local().Format(time.DateTime), oneLine(p.Error, 240))
	}
	if n := st.ParkedStreams - len(st.Parked); n > 0 {
		fmt.Fprintf(out, "  and %d more (jetsyncctl dlq list %s)\n", n, st.Name)
	}
	fmt.Fprintf(out, "  then:    jetsyncctl dlq retry %[1]s --stream CATEGORY/ID     (after fixing the target: re-applies them in order, un-parks)\n"+
		"           jetsyncctl dlq discard %[1]s --stream CATEGORY/ID   (drops them, un-parks)\n", st.Name)
}
