package sink

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/envelope"
)

var (
	// ErrStopped is returned by Run when the error policy "stop" halted the
	// sink on a permanently failing event. The checkpoint stays just before it.
	// The error is a *StopError naming the event.
	ErrStopped = errors.New("sink stopped by error policy")

	// ErrNotStopped is returned by Skip and Resume when the sink is not
	// held stopped by its error policy (or is stopped at another position
	// than the operator named): nothing was changed.
	ErrNotStopped = errors.New("sink is not stopped by its error policy")

	// ErrNotParked is returned by RetryParked and DiscardParked for a
	// stream the sink does not park (or a sink whose error policy is not
	// "park"): nothing was changed.
	ErrNotParked = errors.New("stream is not parked")

	// ErrStillParked is returned by RetryParked when the target still
	// refuses one of the stream's parked events: the events before it are
	// applied, it and the rest stay parked.
	ErrStillParked = errors.New("stream stays parked")

	// ErrFenced means the target refused a write because a newer instance
	// of this sink (a higher lease epoch, pkg/lease) has fenced it: this
	// instance lost the lease and must not write any more (hot standby).
	ErrFenced = errors.New("fenced: a newer instance of this sink took over")

	// ErrPermanent marks an error that retrying cannot fix (bad credentials,
	// a missing index the sink may not create). Wrap it with Permanent.
	ErrPermanent = errors.New("permanent error")
)

// Permanent marks err as not worth retrying; the sink stops with it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrPermanent, err)
}

// EventFailure is one event of a batch that the target refuses for good
// (a mapping error, a document the target rejects).
type EventFailure struct {
	Index int   // index into Batch.Events
	Err   error // why, as the target or mapping said it
}

// BatchError reports the events of a batch that failed permanently. A writer
// returning it must not have committed the batch's checkpoint: the engine
// applies the error policy (drop them, or stop before the first one) and
// writes the rest again, so writes must be idempotent or all-or-nothing.
type BatchError struct {
	Failures []EventFailure
}

func (e *BatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d event(s) failed permanently", len(e.Failures))
	for i, f := range e.Failures {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Failures)-3)
			break
		}
		fmt.Fprintf(&b, "; #%d: %v", f.Index, f.Err)
	}
	return b.String()
}

// StopError is what the error policy "stop" halts a sink with: the event it
// stopped before, and why. errors.Is(err, ErrStopped) holds, and so does
// errors.Is(err, X) for the target's own reason X.
type StopError struct {
	Position uint64 // the event's position; the checkpoint stays before it
	Subject  string
	ID       string // from the message's headers; empty for a message without them
	Type     string
	Reason   error     // why the target (or the decoder) refused it
	Time     time.Time // when the sink stopped
	header   nats.Header
	data     []byte
}

// stopAt is the StopError of an event the target refused.
func stopAt(ev envelope.Event, reason error) *StopError {
	msg := ev.ToMsg()
	return &StopError{Position: ev.Position, Subject: msg.Subject, ID: ev.ID, Type: ev.Type, Reason: reason,
		Time: time.Now(), header: msg.Header, data: ev.Data}
}

// stopAtMalformed is the StopError of a message that is not a valid event.
func stopAtMalformed(dl DeadLetter) *StopError {
	return &StopError{Position: dl.Position, Subject: dl.Subject, ID: dl.Header.Get(envelope.HeaderID),
		Type: dl.Header.Get(envelope.HeaderType), Reason: dl.Err, Time: time.Now(), header: dl.Header, data: dl.Data}
}

func (e *StopError) Error() string {
	return fmt.Sprintf("%v: %s at position %d: %v", ErrStopped, e.Event(), e.Position, e.Reason)
}

// Event names the event for people: "event ID (type T)".
func (e *StopError) Event() string {
	id, typ := e.ID, e.Type
	if id == "" {
		id = "without id"
	}
	if typ == "" {
		typ = "unknown"
	}
	return fmt.Sprintf("event %s (type %s)", id, typ)
}

func (e *StopError) Unwrap() []error { return []error{ErrStopped, e.Reason} }

// letter is the event as a dead letter.
func (e *StopError) letter() DeadLetter {
	return DeadLetter{Subject: e.Subject, Position: e.Position, Header: e.header, Data: e.data,
		Err: fmt.Errorf("%s: %w", e.Event(), e.Reason)}
}
