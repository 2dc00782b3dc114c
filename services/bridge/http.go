package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// HeaderExpectedVersion is the header form of ?expectedVersion=N.
const HeaderExpectedVersion = "Jetsync-Expected-Version"

// API serves the HTTP append API.
type API struct {
	app     *Appender
	maxBody int64
	timeout time.Duration
	ready   func() bool
	met     *Metrics
	log     *slog.Logger
	auth    *Authenticator // nil: no authentication
	// maxDepth bounds the nesting of an event's data and metadata.
	maxDepth int
}

// NewAPI builds the handler. ready reports whether NATS is reachable; met
// counts the appends and is served at /metrics (nil: the API makes its own).
func NewAPI(app *Appender, maxBody int64, timeout time.Duration, ready func() bool, met *Metrics, log *slog.Logger) *API {
	if met == nil {
		met = NewMetrics()
	}
	return &API{app: app, maxBody: maxBody, timeout: timeout, ready: ready, met: met, log: log, maxDepth: DefaultMaxJSONDepth}
}

// Handler routes:
//
//	POST /streams/{category}/{id}/events  append
//	GET  /streams/{category}/{id}         version and last position
//	GET  /healthz                         the process is up
//	GET  /readyz                          NATS is connected
//	GET  /metrics                         Prometheus metrics
//	GET  /openapi.yaml, /openapi.json     the API contract (docs/openapi.yaml)
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /streams/{category}/{id}/events", a.append)
	mux.HandleFunc("/streams/{category}/{id}/events", methodNotAllowed("POST"))
	mux.HandleFunc("GET /streams/{category}/{id}", a.stream)
	mux.HandleFunc("/streams/{category}/{id}", methodNotAllowed("GET, HEAD"))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/healthz", methodNotAllowed("GET, HEAD"))
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "NATS is not connected"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("/readyz", methodNotAllowed("GET, HEAD"))
	metrics := promhttp.HandlerFor(a.met.Registry, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if a.auth != nil && a.auth.protectMetrics {
			var denied int
			if r, denied = a.auth.authorize(w, r, "admin", ""); denied != 0 {
				return
			}
		}
		metrics.ServeHTTP(w, r)
	})
	mux.HandleFunc("/metrics", methodNotAllowed("GET, HEAD"))
	mux.HandleFunc("GET /openapi.yaml", serveOpenAPIYAML)
	mux.HandleFunc("/openapi.yaml", methodNotAllowed("GET, HEAD"))
	mux.HandleFunc("GET /openapi.json", serveOpenAPIJSON)
	mux.HandleFunc("/openapi.json", methodNotAllowed("GET, HEAD"))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "no such endpoint: " + r.URL.Path + "; see POST /streams/{category}/{id}/events"})
	})
	return emptySegments(mux)
}

// emptySegments answers 400 for /streams paths with an empty category or
// stream id, which the mux would otherwise clean up and redirect.
func emptySegments(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := strings.CutPrefix(r.URL.EscapedPath(), "/streams/"); ok {
			parts := strings.Split(rest, "/")
			for i, name := range []string{"category", "streamId"} {
				if i < len(parts) && parts[i] == "" && (i > 0 || len(parts) > 1) {
					writeError(w, &envelope.FieldError{Field: name, Reason: "is required and must not be empty"}, nil)
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

func methodNotAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: r.Method + " is not allowed here; use " + allow})
	}
}

// WithAuth makes the API authenticate and authorize requests; nil turns
// authentication off.
func (a *API) WithAuth(auth *Authenticator) *API {
	a.auth = auth
	return a
}

// WithMaxDepth sets how deeply an event's data and metadata may nest
// (append.max_json_depth).
func (a *API) WithMaxDepth(n int) *API {
	a.maxDepth = n
	return a
}

func (a *API) append(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	r, denied := a.auth.authorize(w, r, "append", r.PathValue("category"))
	if denied != 0 {
		a.met.appendDone(denied, false, 0, time.Since(start))
		return
	}
	if g := grantFrom(r.Context()); g != nil {
		release, limited := g.limits.acquire(w, start)
		if limited != 0 {
			a.met.appendDone(limited, false, 0, time.Since(start))
			return
		}
		defer release()
	}
	status, res := a.doAppend(w, r)
	a.met.appendDone(status, res.Duplicate, len(res.Positions), time.Since(start))
}

// doAppend answers an append request and returns the status it answered with.
func (a *API) doAppend(w http.ResponseWriter, r *http.Request) (int, AppendResult) {
	req := AppendRequest{Category: r.PathValue("category"), StreamID: r.PathValue("id"), Principal: principalFrom(r.Context())}
	var err error
	if req.ExpectedVersion, err = expectedVersion(r); err != nil {
		return writeError(w, err, a.log), AppendResult{}
	}
	if req.Events, err = decodeEvents(http.MaxBytesReader(w, r.Body, a.maxBody), a.maxDepth); err != nil {
		return writeError(w, err, a.log), AppendResult{}
	}
	// The append finishes even if the client goes away: a batch cut off
	// half-sent is only abandoned by the server after a timeout.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), a.timeout)
	defer cancel()
	res, err := a.app.Append(ctx, req)
	if err != nil {
		return writeError(w, err, a.log), AppendResult{}
	}
	writeJSON(w, http.StatusOK, res)
	return http.StatusOK, res
}

func (a *API) stream(w http.ResponseWriter, r *http.Request) {
	r, denied := a.auth.authorize(w, r, "read", r.PathValue("category"))
	if denied != 0 {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	st, err := a.app.State(ctx, r.PathValue("category"), r.PathValue("id"))
	if err != nil {
		writeError(w, err, a.log)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// expectedVersion reads ?expectedVersion=N or the Jetsync-Expected-Version
// header; nil when neither is given.
func expectedVersion(r *http.Request) (*uint64, error) {
	var got *uint64
	parse := func(field, raw string) error {
		v, err := strconv.ParseUint(strings.TrimSpace(raw), 10, 64)
		if err != nil {
			return &envelope.FieldError{Field: field, Reason: fmt.Sprintf("%q is not a version; use a whole number >= 0 (0: the stream must not exist yet)", raw)}
		}
		if got != nil && *got != v {
			return &envelope.FieldError{Field: field, Reason: fmt.Sprintf("is %d but expectedVersion is %d; give one of them", v, *got)}
		}
		got = &v
		return nil
	}
	if q := r.URL.Query(); q.Has("expectedVersion") {
		if err := parse("expectedVersion", q.Get("expectedVersion")); err != nil {
			return nil, err
		}
	}
	if h := r.Header.Values(HeaderExpectedVersion); len(h) > 0 {
		if err := parse(HeaderExpectedVersion, h[0]); err != nil {
			return nil, err
		}
	}
	return got, nil
}

// decodeEvents reads the body: a JSON array of at most MaxAppendEvents
// valid UTF-8 events whose data and metadata nest at most maxDepth levels.
// It stops at the first event past the limit, so a huge array costs no more
// than the body's bytes already read.
func decodeEvents(body io.Reader, maxDepth int) ([]envelope.Event, error) {
	dec := json.NewDecoder(body)
	bodyErr := func(err error, reason string) error {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return mbe
		}
		if errors.Is(err, io.EOF) {
			return &envelope.FieldError{Field: "body", Reason: "is empty; send a JSON array of events"}
		}
		if err != nil {
			reason += ": " + err.Error()
		}
		return &envelope.FieldError{Field: "body", Reason: reason}
	}
	const notArray = "must be a JSON array of events"
	tok, err := dec.Token()
	if err != nil {
		return nil, bodyErr(err, notArray)
	}
	if tok == nil { // null: no events, as before
		return nil, &envelope.FieldError{Field: "events", Reason: "must hold at least one event"}
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, bodyErr(nil, notArray+", e.g. [{\"id\":\"...\",\"type\":\"...\",\"data\":{}}]")
	}
	var events []envelope.Event
	for i := 0; dec.More(); i++ {
		if i == MaxAppendEvents {
			return nil, &envelope.FieldError{Field: "events", Reason: fmt.Sprintf("holds more than %d events; one append takes at most %d (split it)", MaxAppendEvents, MaxAppendEvents)}
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, bodyErr(noEOF(err), notArray)
		}
		field := "events[" + strconv.Itoa(i) + "]"
		if !utf8.Valid(raw) {
			return nil, &envelope.FieldError{Field: field, Reason: "is not valid UTF-8; send JSON text encoded as UTF-8"}
		}
		// The event object is one level; its data and metadata the rest.
		if d := jsonDepth(raw, maxDepth+1); d > maxDepth+1 {
			return nil, &envelope.FieldError{Field: field,
				Reason: fmt.Sprintf("nests objects and arrays more than %d levels deep in its data or metadata (append.max_json_depth); flatten it", maxDepth)}
		}
		ev, err := decodeEvent(raw, field+".", appendFields)
		if err != nil {
			return nil, err
		}
		events = append(events, ev)
	}
	if _, err := dec.Token(); err != nil { // the closing ]
		return nil, bodyErr(noEOF(err), notArray)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return nil, mbe
		}
		return nil, &envelope.FieldError{Field: "body", Reason: "has data after the JSON array; send exactly one array"}
	}
	if len(events) == 0 {
		return nil, &envelope.FieldError{Field: "events", Reason: "must hold at least one event"}
	}
	return events, nil
}

// noEOF turns an end of input inside the array into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

// writeError maps an error to its status code and JSON body, and returns
// the status code.
func writeError(w http.ResponseWriter, err error, log *slog.Logger) int {
	var (
		mbe *http.MaxBytesError
		ve  *VersionError
		de  *DuplicateIDError
		fe  *envelope.FieldError
	)
	switch {
	case errors.As(err, &mbe):
		return writeJSON(w, http.StatusRequestEntityTooLarge, errorBody{Error: fmt.Sprintf("request body is larger than %d bytes (http.max_body_bytes); split the append", mbe.Limit), Field: "body"})
	case errors.As(err, &ve):
		return writeJSON(w, http.StatusConflict, struct {
			Error           string `json:"error"`
			ExpectedVersion uint64 `json:"expectedVersion"`
			CurrentVersion  uint64 `json:"currentVersion"`
		}{"wrong expected version", ve.Expected, ve.Current})
	case errors.As(err, &de):
		return writeJSON(w, http.StatusConflict, struct {
			errorBody
			ID       string `json:"id,omitempty"`
			Position uint64 `json:"position,omitempty"`
		}{errorBody{de.Error(), de.Field}, de.ID, de.Position})
	case errors.As(err, &fe):
		return writeJSON(w, http.StatusBadRequest, errorBody{Error: fe.Error(), Field: fe.Field})
	case errors.Is(err, ErrConflict):
		return writeJSON(w, http.StatusConflict, errorBody{Error: err.Error() + "; retry the append"})
	case errors.Is(err, ErrTooLarge):
		return writeJSON(w, http.StatusRequestEntityTooLarge, errorBody{Error: err.Error() + "; make the events smaller", Field: "events"})
	case errors.Is(err, ErrUnavailable):
		if log != nil {
			log.Warn("NATS unavailable", "err", err)
		}
		w.Header().Set("Retry-After", "1")
		return writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: err.Error() + "; retry with the same event ids"})
	default:
		if log != nil {
			log.Error("request failed", "err", err)
		}
		return writeJSON(w, http.StatusInternalServerError, errorBody{Error: err.Error()})
	}
}

// writeJSON answers with status and v as JSON, and returns status.
func writeJSON(w http.ResponseWriter, status int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
	return status
}
