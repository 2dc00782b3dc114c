package control

import "errors"

var (
	// ErrUnknownSink means no sink of that name has ever reported.
	ErrUnknownSink = errors.New("unknown sink")
	// ErrBeyondHead means a reset asked for a position the stream has not reached.
	ErrBeyondHead = errors.New("position is beyond the stream head")
	// ErrNotRunning means no sink of that name answered an action: it is
	// down.
	ErrNotRunning = errors.New("sink is not running")
	// ErrRefused means an action does not apply to the sink as it is (skip
	// of a sink that is not stopped, say); nothing was changed.
	ErrRefused = errors.New("refused")
)
