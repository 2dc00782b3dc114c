package main

import (
	"errors"
	"fmt"
)

// Bad input is reported as *envelope.FieldError (errors.Is envelope.ErrInvalid):
// HTTP 400, or a failed import line. The errors below are everything else.
var (
	// ErrWrongExpectedVersion means the stream is not at the version the
	// client expected; the returned *VersionError holds both versions.
	ErrWrongExpectedVersion = errors.New("wrong expected version")

	// ErrDuplicateID means an event id of the append is already stored and
	// the append is not a retry of the one that stored it.
	ErrDuplicateID = errors.New("duplicate event id")

	// ErrConflict means other writers kept appending to the stream between
	// reading its version and committing, until the append timed out.
	ErrConflict = errors.New("stream kept changing under the append")

	// ErrUnavailable means NATS could not be reached or did not answer in
	// time. For an append the outcome is then unknown only if the batch was
	// sent; a retry with the same event ids is always safe.
	ErrUnavailable = errors.New("NATS unavailable")

	// ErrTooLarge means one event or the whole batch exceeds what NATS takes.
	ErrTooLarge = errors.New("too large for NATS")

	// ErrNotJetsync means a stored message on an event subject lacks the
	// jetsync headers (it was not written by jetsync); the stream's version
	// cannot be known.
	ErrNotJetsync = errors.New("stored message is not a jetsync event")

	// ErrVersionGap means an imported event's version is not the next one of
	// its stream.
	ErrVersionGap = errors.New("version gap")
)

// VersionError is an append's expected version against the stream's.
type VersionError struct {
	Expected uint64
	Current  uint64
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("wrong expected version: expected %d, stream is at %d", e.Expected, e.Current)
}

func (e *VersionError) Unwrap() error { return ErrWrongExpectedVersion }

// DuplicateIDError names an event id that is already stored.
type DuplicateIDError struct {
	Field    string // "events[3].id", or "events" when the duplicate is not known
	ID       string // the id, when known
	Position uint64 // where it is stored, when known (0 otherwise)
	Reason   string
}

func (e *DuplicateIDError) Error() string { return e.Field + ": " + e.Reason }

func (e *DuplicateIDError) Unwrap() error { return ErrDuplicateID }

// Relay errors. Each stops the relay until a person acts.
var (
	// ErrBadRow means a source row cannot be published; the *RowError
	// names the row and the column.
	ErrBadRow = errors.New("bad source row")

	// ErrRelayConflict means the relay's saved cursor changed under it
	// (another relay of the same source.name) or cannot be read.
	ErrRelayConflict = errors.New("relay cursor conflict")
)

// RowError names a source row (by its position column) and the column
// that makes it unpublishable.
type RowError struct {
	Table  string
	Key    string // the position column, e.g. id
	Row    int64
	Column string
	Reason string
}

func (e *RowError) Error() string {
	return fmt.Sprintf("%s row %s=%d: column %s: %s (fix the row, or set source.on_error: skip or dead-letter)", e.Table, e.Key, e.Row, e.Column, e.Reason)
}

func (e *RowError) Unwrap() error { return ErrBadRow }
