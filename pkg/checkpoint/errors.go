package checkpoint

import "errors"

var (
	// ErrConflict means the stored checkpoint changed since this process
	// loaded it: a second instance of the same sink is running, or someone
	// reset it. The sink must stop rather than overwrite it.
	ErrConflict = errors.New("checkpoint changed by someone else (a second instance of this sink, or a reset)")

	// ErrBackwards means a Save tried to move the checkpoint back. Only an
	// explicit Reset may do that.
	ErrBackwards = errors.New("checkpoint may only move forward")
)
