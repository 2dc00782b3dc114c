package config

import (
	"errors"
	"fmt"
)

// ErrInvalid is wrapped by every configuration error, so a service can tell
// a bad config (exit code 2, fix the file) from a runtime failure.
var ErrInvalid = errors.New("invalid configuration")

// KeyError names a configuration key (dotted YAML path, e.g. "batch.max_bytes")
// and says what is wrong with it and how to fix it.
type KeyError struct {
	Key    string
	Reason string
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Reason }
func (e *KeyError) Unwrap() error { return ErrInvalid }

// Problems collects every problem of a config so Validate can report them all
// at once instead of one per run.
type Problems struct{ errs []error }

// Addf records a problem with key.
func (p *Problems) Addf(key, format string, args ...any) {
	p.errs = append(p.errs, &KeyError{Key: key, Reason: fmt.Sprintf(format, args...)})
}

// Add records an error as it is (it may already be a KeyError or a join).
func (p *Problems) Add(err error) {
	if err != nil {
		p.errs = append(p.errs, err)
	}
}

// Err joins the problems, or returns nil when there are none.
func (p *Problems) Err() error { return errors.Join(p.errs...) }

// ErrNeedsRestart means a configuration reloaded while the service runs
// changed keys that only take effect when it starts (connections, the
// stream it reads, batching, ...). The reload is refused; the error names
// the keys.
var ErrNeedsRestart = errors.New("keys that need a restart changed")
