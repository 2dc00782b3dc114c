package sinkd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
)

// A sink whose error policy is "park" parks a stream behind an event the
// target refuses (sink/park.go). The operator retries a parked stream
// (RetryRequest.Stream, through the dead-letter retry subject) or discards
// it (DiscardSubject); both run in the engine's write loop, so they apply
// only to a running sink. Its status, and /metrics, list the parked
// streams.

// parkedTimeout bounds a retry or discard of parked streams: the target
// may need retries, and each event is written on its own.
const parkedTimeout = 60 * time.Second

// DiscardSubject is where jetsyncctl asks a running sink to drop a parked
// stream's events and un-park it (request/reply).
func DiscardSubject(sinkName string) string { return "jetsync.ctl." + sinkName + ".dlq.discard" }

// DiscardRequest names the parked stream to discard (category/streamId).
type DiscardRequest struct {
	Stream string `json:"stream"`
}

// DiscardReply says what a discard did; Refused, that it does not apply
// (nothing changed).
type DiscardReply struct {
	Discarded int    `json:"discarded"`
	Done      string `json:"done,omitempty"`
	Refused   string `json:"refused,omitempty"`
	Error     string `json:"error,omitempty"`
}

// StreamSubject turns CATEGORY/ID, as operators name a stream, into its
// subject.
func StreamSubject(stream string) (string, error) {
	cat, id, ok := strings.Cut(stream, "/")
	if !ok || envelope.ValidateToken("category", cat) != nil || envelope.ValidateToken("stream id", id) != nil {
		return "", fmt.Errorf("stream %q: name it CATEGORY/ID, e.g. order/order-7 (as in jetsyncctl status)", stream)
	}
	return envelope.StreamSubject(cat, id), nil
}

// streamName is a subject's CATEGORY/ID.
func streamName(subject string) string {
	rest := strings.TrimPrefix(subject, envelope.SubjectPrefix+".")
	cat, id, _ := strings.Cut(rest, ".")
	return cat + "/" + id
}

// parkedCount is what the parked gauges show.
func (s *Service) parkedCount() (streams, events int) {
	snap := s.eng.Stats()
	return snap.ParkedStreams, snap.ParkedEvents
}

// parkedStatus is the parked streams as the control bucket shows them.
func (s *Service) parkedStatus() ([]control.Parked, int, int) {
	parked := s.eng.Parked()
	var out []control.Parked
	events := 0
	for i, p := range parked {
		events += p.Events
		if i < control.MaxParkedInStatus {
			out = append(out, control.Parked{Stream: streamName(p.Subject), Position: p.Position, Events: p.Events, Error: p.Reason, Since: p.Since})
		}
	}
	return out, len(parked), events
}

// retryParked re-applies a parked stream (req.Stream), or every parked
// stream (no stream, no sequences) in turn.
func (s *Service) retryParked(ctx context.Context, req RetryRequest) RetryReply {
	name := s.cfg.Name
	if !s.eng.Parks() {
		return RetryReply{Refused: fmt.Sprintf("sink %s does not park streams (on_error: %s): --stream applies to on_error: park; retry its dead letters by SEQ (jetsyncctl dlq list %s); nothing changed",
			name, s.cfg.OnError, name)}
	}
	if len(req.Seqs) > 0 {
		return RetryReply{Refused: fmt.Sprintf("sink %s parks streams (on_error: park): a parked event is retried with the rest of its stream, in order: jetsyncctl dlq retry %s --stream CATEGORY/ID (or no argument: every parked stream); nothing changed",
			name, name)}
	}
	ctx, cancel := context.WithTimeout(ctx, parkedTimeout)
	defer cancel()
	defer s.publishStatus(context.WithoutCancel(ctx), nil)
	if req.Stream != "" {
		subject, err := StreamSubject(req.Stream)
		if err != nil {
			return RetryReply{Refused: err.Error() + "; nothing changed"}
		}
		n, err := s.eng.RetryParked(ctx, subject)
		switch {
		case errors.Is(err, sink.ErrNotParked):
			return RetryReply{Refused: fmt.Sprintf("%v (jetsyncctl status lists the parked streams); nothing changed", err)}
		case err != nil:
			return RetryReply{Retried: n, Error: fmt.Sprintf("%s stays parked: %v; %d parked event(s) re-applied before it", req.Stream, err, n)}
		}
		return RetryReply{Retried: n, Done: fmt.Sprintf("re-applied %d parked event(s) of %s in position order; %s is un-parked and %s applies its events again",
			n, req.Stream, req.Stream, name)}
	}
	parked := s.eng.Parked()
	if len(parked) == 0 {
		return RetryReply{Done: fmt.Sprintf("sink %s parks no stream: nothing to retry", name)}
	}
	total, unparked := 0, 0
	var still []string
	for _, p := range parked {
		n, err := s.eng.RetryParked(ctx, p.Subject)
		total += n
		switch {
		case err == nil:
			unparked++
		case errors.Is(err, sink.ErrNotParked): // un-parked meanwhile
		default:
			still = append(still, fmt.Sprintf("%s: %v", streamName(p.Subject), err))
		}
	}
	if len(still) > 0 {
		return RetryReply{Retried: total, Error: fmt.Sprintf("re-applied %d parked event(s), un-parked %d stream(s); %d stay parked: %s",
			total, unparked, len(still), strings.Join(still, "; "))}
	}
	return RetryReply{Retried: total, Done: fmt.Sprintf("re-applied %d parked event(s) of %d stream(s) in position order; all un-parked", total, unparked)}
}

// handleDiscard drops a parked stream's events and un-parks it.
func (s *Service) handleDiscard(ctx context.Context, m *nats.Msg) {
	b, _ := json.Marshal(s.discardParked(ctx, m.Data))
	_ = m.Respond(b)
}

func (s *Service) discardParked(ctx context.Context, body []byte) DiscardReply {
	var req DiscardRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return DiscardReply{Error: "malformed discard request: " + err.Error()}
	}
	if !s.eng.Parks() {
		return DiscardReply{Refused: fmt.Sprintf("sink %s does not park streams (on_error: %s): discard its dead letters by SEQ or --all; nothing changed", s.cfg.Name, s.cfg.OnError)}
	}
	subject, err := StreamSubject(req.Stream)
	if err != nil {
		return DiscardReply{Refused: err.Error() + "; nothing changed"}
	}
	ctx, cancel := context.WithTimeout(ctx, parkedTimeout)
	defer cancel()
	defer s.publishStatus(context.WithoutCancel(ctx), nil)
	n, err := s.eng.DiscardParked(ctx, subject)
	switch {
	case errors.Is(err, sink.ErrNotParked):
		return DiscardReply{Refused: fmt.Sprintf("%v (jetsyncctl status lists the parked streams); nothing changed", err)}
	case err != nil:
		return DiscardReply{Discarded: n, Error: err.Error()}
	}
	return DiscardReply{Discarded: n, Done: fmt.Sprintf("discarded %d parked event(s) of %s from %s; %s is un-parked: %s applies its later events on top of what is missing",
		n, req.Stream, deadletter.Subject(s.cfg.Name), req.Stream, s.cfg.Name)}
}
