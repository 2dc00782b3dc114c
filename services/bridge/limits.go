package main

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxJSONDepth is append.max_json_depth's default: how deeply an
// event's data or metadata may nest objects and arrays.
const DefaultMaxJSONDepth = 64

// limits bounds one token's appends: at once and per second.
type limits struct {
	name     string
	inflight chan struct{} // nil: no bound
	rate     *rate.Limiter // nil: no bound
}

func newLimits(t TokenConfig) *limits {
	if t.MaxInflight <= 0 && t.Rate <= 0 {
		return nil
	}
	l := &limits{name: t.Name}
	if t.MaxInflight > 0 {
		l.inflight = make(chan struct{}, t.MaxInflight)
	}
	if t.Rate > 0 {
		burst := t.Burst
		if burst <= 0 {
			burst = max(1, int(math.Ceil(t.Rate)))
		}
		l.rate = rate.NewLimiter(rate.Limit(t.Rate), burst)
	}
	return l
}

// acquire takes a place for one append, or answers 429 with Retry-After
// and returns that status. release must be called after a 0.
func (l *limits) acquire(w http.ResponseWriter, now time.Time) (release func(), status int) {
	if l == nil {
		return func() {}, 0
	}
	var res *rate.Reservation
	if l.rate != nil {
		res = l.rate.ReserveN(now, 1)
		if d := res.DelayFrom(now); d > 0 {
			res.CancelAt(now)
			return nil, tooMany(w, d, fmt.Sprintf("token %q is past its rate limit (auth.tokens[].rate %g/s); retry after %s", l.name, float64(l.rate.Limit()), d.Round(time.Millisecond)))
		}
	}
	if l.inflight != nil {
		select {
		case l.inflight <- struct{}{}:
		default:
			if res != nil {
				res.CancelAt(now)
			}
			return nil, tooMany(w, time.Second, fmt.Sprintf("token %q has %d appends in flight already (auth.tokens[].max_inflight); wait for one to finish", l.name, cap(l.inflight)))
		}
		return func() { <-l.inflight }, 0
	}
	return func() {}, 0
}

func tooMany(w http.ResponseWriter, after time.Duration, msg string) int {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(after.Seconds()))))
	return writeJSON(w, http.StatusTooManyRequests, errorBody{Error: msg})
}

// jsonDepth is how deeply valid JSON b nests objects and arrays (a scalar
// is 0, {} is 1), stopping once past limit.
func jsonDepth(b []byte, limit int) int {
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			if depth++; depth > deepest {
				if deepest = depth; deepest > limit {
					return deepest
				}
			}
		case '}', ']':
			depth--
		}
	}
	return deepest
}
