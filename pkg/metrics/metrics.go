// Package metrics exports a sink's measurements to Prometheus: the engine
// calls the Observer methods, and the gauges are read from the engine's and
// the monitor's snapshots when Prometheus scrapes.
package metrics

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetsync/jetsync/pkg/sink"
)

// Sink holds one sink's metrics, registered on its own registry.
type Sink struct {
	Registry *prometheus.Registry

	applied     prometheus.Counter
	batches     prometheus.Counter
	batchEvents prometheus.Histogram
	batchBytes  prometheus.Histogram
	flush       prometheus.Histogram
	delay       prometheus.Histogram
	retries     prometheus.Counter
	errors      *prometheus.CounterVec
	recreated   *prometheus.CounterVec
	labels      prometheus.Labels
}

var (
	_ sink.Observer         = (*Sink)(nil)
	_ sink.ConsumerObserver = (*Sink)(nil)
)

// Lag is what the monitor measures about the stream around the sink.
type Lag struct {
	Checkpoint uint64
	Head       uint64
	Events     uint64
	Seconds    float64
}

// NewSink registers a sink's metrics. lag and stoppedAt (the position the
// error policy holds the sink at, 0 when it is not stopped) are called at
// each scrape.
func NewSink(name string, lag func() Lag, stoppedAt func() uint64) *Sink {
	labels := prometheus.Labels{"sink": name}
	opts := func(n, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "jetsync", Subsystem: "sink", Name: n, Help: help, ConstLabels: labels}
	}
	hist := func(n, help string, buckets []float64) prometheus.Histogram {
		o := opts(n, help)
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: o.Namespace, Subsystem: o.Subsystem,
			Name: o.Name, Help: o.Help, ConstLabels: o.ConstLabels, Buckets: buckets})
	}
	m := &Sink{
		Registry:    prometheus.NewRegistry(),
		labels:      labels,
		applied:     prometheus.NewCounter(prometheus.CounterOpts(opts("events_applied_total", "Events written to the target."))),
		batches:     prometheus.NewCounter(prometheus.CounterOpts(opts("batches_total", "Batches written to the target."))),
		batchEvents: hist("batch_events", "Events per batch.", prometheus.ExponentialBuckets(1, 4, 8)),
		batchBytes:  hist("batch_bytes", "Bytes per batch.", prometheus.ExponentialBuckets(256, 4, 10)),
		flush:       hist("flush_seconds", "Time to write one batch and commit its checkpoint.", prometheus.ExponentialBuckets(0.0005, 2, 16)),
		delay:       hist("end_to_end_delay_seconds", "From an event's time to its being applied.", prometheus.ExponentialBuckets(0.001, 2, 20)),
		retries:     prometheus.NewCounter(prometheus.CounterOpts(opts("retries_total", "Failed attempts that are retried."))),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts(opts("errors_total",
			"Errors by kind: transient (retried), skipped, dead-lettered, parked (dead-lettered behind an earlier event of its stream, not attempted), stopped.")), []string{"kind"}),
		recreated: prometheus.NewCounterVec(prometheus.CounterOpts(opts("consumer_recreated_total",
			"Event consumers recreated from the checkpoint, by reason: stalled (the stream moved on, nothing arrived for stall_timeout), closed (the consumer gave up).")), []string{"reason"}),
	}
	gauge := func(n, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts(n, help)), f)
	}
	m.Registry.MustRegister(m.applied, m.batches, m.batchEvents, m.batchBytes, m.flush, m.delay, m.retries, m.errors, m.recreated,
		gauge("checkpoint_position", "Position of the last applied event.", func() float64 { return float64(lag().Checkpoint) }),
		gauge("stream_head_position", "Last position in the stream matching the sink's filters.", func() float64 { return float64(lag().Head) }),
		gauge("lag_events", "Positions between the checkpoint and the head.", func() float64 { return float64(lag().Events) }),
		gauge("lag_seconds", "Age of the oldest event not applied yet (0 when caught up).", func() float64 { return lag().Seconds }),
		gauge("stopped_position", "Position of the event the error policy stopped the sink at, waiting for an operator (jetsyncctl skip or resume); 0 while it is not stopped.",
			func() float64 { return float64(stoppedAt()) }),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
	)
	for _, k := range []string{"transient", "skipped", "dead-lettered", "parked", "stopped"} {
		m.errors.WithLabelValues(k) // export zeros from the start
	}
	for _, r := range []string{sink.RecreatedStalled, sink.RecreatedClosed} {
		m.recreated.WithLabelValues(r)
	}
	return m
}

// WatchParked exports the streams the error policy "park" holds and their
// events, read from parked at each scrape.
func (m *Sink) WatchParked(parked func() (streams, events int)) {
	labels := m.labels
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "jetsync", Subsystem: "sink", Name: "parked_streams", ConstLabels: labels,
			Help: "Streams parked by the error policy park: their events wait in the dead-letter store (jetsyncctl dlq retry or discard --stream)."},
			func() float64 { n, _ := parked(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "jetsync", Subsystem: "sink", Name: "parked_events", ConstLabels: labels,
			Help: "Events of parked streams in the dead-letter store."},
			func() float64 { _, n := parked(); return float64(n) }),
	)
}

// WatchHA exports whether this instance holds the sink's lease (hot
// standby) and how many times it took it.
func (m *Sink) WatchHA(active func() bool, takeovers func() uint64) {
	labels := m.labels
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "jetsync", Subsystem: "sink", Name: "active", ConstLabels: labels,
			Help: "1 while this instance holds the sink's lease and writes, 0 while it stands by."},
			func() float64 {
				if active() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "jetsync", Subsystem: "sink", Name: "takeovers_total", ConstLabels: labels,
			Help: "Times this instance took the sink's lease and became active (its first start included)."},
			func() float64 { return float64(takeovers()) }),
	)
}

// BatchWritten implements sink.Observer.
func (m *Sink) BatchWritten(b *sink.Batch, took time.Duration) {
	m.batches.Inc()
	m.applied.Add(float64(len(b.Events)))
	m.batchEvents.Observe(float64(len(b.Events)))
	m.batchBytes.Observe(float64(b.Bytes))
	m.flush.Observe(took.Seconds())
	now := time.Now()
	for i := range b.Events {
		if t := b.Events[i].Time; !t.IsZero() {
			m.delay.Observe(now.Sub(t).Seconds())
		}
	}
}

// Retried implements sink.Observer.
func (m *Sink) Retried(err error) {
	m.retries.Inc()
	if !errors.Is(err, sink.ErrPermanent) {
		m.errors.WithLabelValues("transient").Inc()
	}
}

// EventFailed implements sink.Observer.
func (m *Sink) EventFailed(kind string) { m.errors.WithLabelValues(kind).Inc() }

// ConsumerRecreated implements sink.ConsumerObserver.
func (m *Sink) ConsumerRecreated(reason string) { m.recreated.WithLabelValues(reason).Inc() }
