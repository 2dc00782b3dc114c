package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// appendResult is how an append request ended: the result label of
// jetsync_bridge_appends_total.
type appendResult uint8

const (
	resultOK           appendResult = iota // 200, events stored
	resultDuplicate                        // 200, a retry of a stored append
	resultConflict                         // 409: wrong expected version, duplicate id, kept changing
	resultBadRequest                       // 400
	resultTooLarge                         // 413: body or events too large
	resultUnavailable                      // 503: NATS unavailable, nothing stored
	resultError                            // 500: anything else
	resultUnauthorized                     // 401: no or unknown token
	resultForbidden                        // 403: the token lacks the scope
	resultLimited                          // 429: the token's rate or in-flight limit
	numResults
)

var resultNames = [numResults]string{"ok", "duplicate", "conflict", "bad_request", "too_large", "unavailable", "error", "unauthorized", "forbidden", "limited"}

// resultOf maps an append's HTTP status to its result.
func resultOf(status int, duplicate bool) appendResult {
	switch status {
	case http.StatusOK:
		if duplicate {
			return resultDuplicate
		}
		return resultOK
	case http.StatusConflict:
		return resultConflict
	case http.StatusBadRequest:
		return resultBadRequest
	case http.StatusRequestEntityTooLarge:
		return resultTooLarge
	case http.StatusServiceUnavailable:
		return resultUnavailable
	case http.StatusUnauthorized:
		return resultUnauthorized
	case http.StatusForbidden:
		return resultForbidden
	case http.StatusTooManyRequests:
		return resultLimited
	}
	return resultError
}

// Metrics holds the bridge's Prometheus metrics on its own registry, served
// at GET /metrics. Every label child is resolved when it is made, so
// counting an append allocates nothing.
type Metrics struct {
	Registry *prometheus.Registry

	appends      [numResults]prometheus.Counter
	appended     prometheus.Counter
	appendTime   prometheus.Histogram
	appendEvents prometheus.Histogram
	imported     prometheus.Counter
}

// NewMetrics makes and registers the bridge's metrics, with the Go runtime
// and process collectors.
func NewMetrics() *Metrics {
	opts := func(n, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "jetsync", Subsystem: "bridge", Name: n, Help: help}
	}
	hist := func(n, help string, buckets []float64) prometheus.Histogram {
		o := opts(n, help)
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: o.Namespace, Subsystem: o.Subsystem,
			Name: o.Name, Help: o.Help, Buckets: buckets})
	}
	appends := prometheus.NewCounterVec(prometheus.CounterOpts(opts("appends_total",
		"Append requests by result: ok, duplicate (a retry of a stored append), conflict (409), bad_request (400), too_large (413), unavailable (503), error (500), unauthorized (401), forbidden (403), limited (429).")),
		[]string{"result"})
	m := &Metrics{
		Registry:     prometheus.NewRegistry(),
		appended:     prometheus.NewCounter(prometheus.CounterOpts(opts("events_appended_total", "Events stored by appends (retries answered as duplicates not included)."))),
		appendTime:   hist("append_seconds", "Time to handle an append request, whatever its result.", prometheus.ExponentialBuckets(0.0005, 2, 16)),
		appendEvents: hist("append_events", "Events per stored append.", prometheus.ExponentialBuckets(1, 2, 11)),
		imported:     prometheus.NewCounter(prometheus.CounterOpts(opts("import_events_total", "Events stored by NDJSON imports run in this process."))),
	}
	for r := range numResults {
		m.appends[r] = appends.WithLabelValues(resultNames[r]) // also exports the zeros from the start
	}
	m.Registry.MustRegister(appends, m.appended, m.appendTime, m.appendEvents, m.imported,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// appendDone counts one append request that was answered with status;
// stored is the number of events it stored.
func (m *Metrics) appendDone(status int, duplicate bool, stored int, took time.Duration) {
	r := resultOf(status, duplicate)
	m.appends[r].Inc()
	m.appendTime.Observe(took.Seconds())
	if r == resultOK {
		m.appended.Add(float64(stored))
		m.appendEvents.Observe(float64(stored))
	}
}

// eventImported counts one event an import stored. m may be nil.
func (m *Metrics) eventImported() {
	if m != nil {
		m.imported.Inc()
	}
}

// WatchAppender exports app's counters: how often group commit shared a
// batch among appends, and how often a cached stream head was stale.
func (m *Metrics) WatchAppender(app *Appender) {
	counter := func(name, help string, get func(AppenderStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "jetsync", Subsystem: "bridge", Name: name, Help: help},
			func() float64 { return float64(get(app.Stats())) })
	}
	m.Registry.MustRegister(
		counter("group_commits_total", "Atomic batches published by group commit (one or more multi-event appends each).", func(s AppenderStats) uint64 { return s.Groups }),
		counter("grouped_appends_total", "Multi-event appends stored by group commit; divided by group_commits_total: appends per batch.", func(s AppenderStats) uint64 { return s.Grouped }),
		counter("group_commits_refused_total", "Groups the server refused whole (nothing stored) whose appends were then published one by one.", func(s AppenderStats) uint64 { return s.GroupsRefused }),
		counter("stale_heads_total", "Appends published on a cached stream head that another writer had moved (then read afresh and retried).", func(s AppenderStats) uint64 { return s.StaleHeads }),
	)
}
