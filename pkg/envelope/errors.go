package envelope

import "errors"

// ErrInvalid is wrapped by every validation error of this package, so callers
// can tell "the input is wrong" (HTTP 400, a permanent sink error) from
// anything else with errors.Is.
var ErrInvalid = errors.New("invalid event")

// FieldError names the offending field and says how to fix it.
type FieldError struct {
	Field  string // JSON name of the field, e.g. "streamId" or "events[2].type"
	Reason string // what is wrong and what to do about it
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Unwrap lets errors.Is(err, ErrInvalid) match every FieldError.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func fieldErr(field, reason string) error { return &FieldError{Field: field, Reason: reason} }
