package sink

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrStopped is returned by Run when the error policy "stop" halted the
	// sink on a permanently failing event. The checkpoint stays just before it.
	ErrStopped = errors.New("sink stopped by error policy")

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
