package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/jetsync/jetsync/pkg/natsutil"
)

// relayCmd runs the `source:` relay alone, against the NATS server of a
// running `bridge serve` (nats.url, or the embedded server's fixed port).
func relayCmd(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, code, ok := configOnly("relay", args, stderr, "YAML config `file`; JETSYNC_* environment variables override it")
	if !ok {
		return code
	}
	if !cfg.Source.Enabled() {
		fmt.Fprintln(stderr, "bridge relay: source.postgres_url is empty; set it (or JETSYNC_SOURCE_POSTGRES_URL) to the database holding source.table")
		return exitUsage
	}
	if cfg.NATS.URL == "" && cfg.NATS.Embedded.Port <= 0 {
		fmt.Fprintln(stderr, "bridge relay: nats.url is empty and nats.embedded.port is not fixed; set nats.url (JETSYNC_NATS_URL) to the server `bridge serve` uses")
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	nc, err := natsutil.Connect(cfg.natsClient(), "jetsync-bridge-relay", log)
	if err != nil {
		fmt.Fprintf(stderr, "bridge relay: %v (is `bridge serve` running, or nats.url set?)\n", err)
		return exitFailed
	}
	defer natsutil.Drain(nc)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(relayWindow), jetstream.WithDefaultTimeout(cfg.Source.AckTimeout))
	if err != nil {
		fmt.Fprintf(stderr, "bridge relay: %v\n", err)
		return exitFailed
	}
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = natsutil.EnsureStream(ectx, js, cfg.Stream)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "bridge relay: %v\n", err)
		return exitFailed
	}
	if os.Getenv("GOGC") == "" {
		// As for the import: the relay's heap is a few batches of rows;
		// fewer collections leave more CPU to PostgreSQL and NATS on a small
		// machine. GOGC in the environment overrides.
		debug.SetGCPercent(400)
	}
	r := NewRelay(cfg.Source, js, cfg.Stream, log)
	met := NewMetrics()
	met.WatchRelay(r)
	if cfg.Source.StatusListen != "" {
		stop, err := serveRelayStatus(cfg.Source.StatusListen, r, met.Registry, log)
		if err != nil {
			fmt.Fprintf(stderr, "bridge relay: source.status_listen: %v\n", err)
			return exitFailed
		}
		defer stop()
	}
	if err := r.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "bridge relay: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// relayWindow is the most publishes awaiting their ack.
const relayWindow = 8192

// serveRelayStatus serves GET /status (the relay's RelayStatus as JSON)
// and GET /metrics on addr until stop.
func serveRelayStatus(addr string, r *Relay, reg *prometheus.Registry, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Status())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("relay status server stopped", "err", err)
		}
	}()
	log.Info("relay status serving", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// WatchRelay exports r's status as jetsync_relay_* metrics, labelled with
// its source name.
func (m *Metrics) WatchRelay(r *Relay) {
	labels := prometheus.Labels{"source": r.cfg.Name}
	counter := func(name, help string, get func(RelayStatus) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "jetsync", Subsystem: "relay", Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(get(r.Status())) })
	}
	gauge := func(name, help string, get func(RelayStatus) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "jetsync", Subsystem: "relay", Name: name, Help: help, ConstLabels: labels},
			func() float64 { return get(r.Status()) })
	}
	m.Registry.MustRegister(
		counter("events_published_total", "Events the relay stored in JetStream (acknowledged).", func(s RelayStatus) uint64 { return s.Published }),
		counter("rows_present_total", "Rows found already published when read again after a restart (not stored twice).", func(s RelayStatus) uint64 { return s.Present }),
		counter("rows_skipped_total", "Bad rows passed over (source.on_error: skip).", func(s RelayStatus) uint64 { return s.Skipped }),
		counter("rows_dead_lettered_total", "Bad rows sent to dlq.relay-<name> (source.on_error: dead-letter).", func(s RelayStatus) uint64 { return s.DeadLettered }),
		counter("restarts_total", "Times the relay started again from its saved cursor after a PostgreSQL or NATS failure.", func(s RelayStatus) uint64 { return s.Restarts }),
		gauge("held_seconds", "How long committed rows have waited behind a transaction still open (the relay never skips it; 0 when none waits).", func(s RelayStatus) float64 { return s.HeldSeconds }),
		gauge("up", "1 while the relay runs (relaying or caught up), 0 while it retries or after a bad row, a version gap or a second relay stopped it.", func(s RelayStatus) float64 {
			if s.State == RelayRunning {
				return 1
			}
			return 0
		}),
		gauge("last_published_timestamp_seconds", "Unix time of the last acknowledged event (0: none yet).", func(s RelayStatus) float64 {
			if s.LastPublished.IsZero() {
				return 0
			}
			return float64(s.LastPublished.UnixNano()) / 1e9
		}),
	)
}
