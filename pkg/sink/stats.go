package sink

import (
	"sync"
	"sync/atomic"
	"time"
)

// State is what a sink is doing right now.
type State string

const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StateRetrying State = "retrying"
	// StateStopped: the error policy "stop" holds the sink before an event
	// (Snapshot.Stopped) and waits for an operator (WithHoldOnStop).
	StateStopped State = "stopped"
	// StateExited: Run has returned.
	StateExited State = "exited"
)

// Snapshot is a consistent-enough copy of a sink's counters, read by metrics
// exporters and tests without the engine importing either.
type Snapshot struct {
	Name          string
	State         State
	Checkpoint    uint64 // position of the last applied event
	Applied       uint64 // events written to the target by this process
	Skipped       uint64 // events dropped by the error policy
	Batches       uint64
	Bytes         uint64
	Retries       uint64
	LastError     string
	LastFlushTime time.Duration
	// CheckpointKnown is false until the checkpoint was read from the
	// store that keeps it: Checkpoint is 0 then, not a position.
	CheckpointKnown bool
	// Stopped is the event the error policy holds the sink before: set in
	// StateStopped, and kept when Run exits while stopped.
	Stopped *StopError
	// ParkedStreams is how many streams the error policy "park" holds in
	// the dead-letter store, and ParkedEvents how many of their events.
	ParkedStreams, ParkedEvents int
	// ConsumerRecreated counts event consumers recreated from the
	// checkpoint after they stalled or closed (stall.go).
	ConsumerRecreated uint64
}

// stats is written by the engine's goroutines and read through Snapshot.
type stats struct {
	checkpoint, applied, skipped, batches, bytes, retries atomic.Uint64
	recreated                                             atomic.Uint64
	lastFlush                                             atomic.Int64
	checkpointKnown                                       atomic.Bool

	mu        sync.Mutex
	state     State
	lastError string
}

func (s *stats) setState(st State) {
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
}

func (s *stats) setError(err error) {
	s.mu.Lock()
	s.lastError = err.Error()
	s.mu.Unlock()
}

func (s *stats) snapshot(name string) Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Snapshot{
		Name:          name,
		State:         s.state,
		Checkpoint:    s.checkpoint.Load(),
		Applied:       s.applied.Load(),
		Skipped:       s.skipped.Load(),
		Batches:       s.batches.Load(),
		Bytes:         s.bytes.Load(),
		Retries:       s.retries.Load(),
		LastError:     s.lastError,
		LastFlushTime: time.Duration(s.lastFlush.Load()),

		CheckpointKnown:   s.checkpointKnown.Load(),
		ConsumerRecreated: s.recreated.Load(),
	}
}
