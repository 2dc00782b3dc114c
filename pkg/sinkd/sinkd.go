// Package sinkd runs a sink as a service: it connects to NATS, opens the
// checkpoint, control and dead-letter stores, runs the engine, serves the
// admin HTTP endpoints (/metrics, /healthz, /readyz, /wait), publishes the
// sink's status for jetsyncctl, and applies reset and dead-letter retry
// requests while the sink runs. A sink its error policy stops stays up,
// stopped, for the operator's skip or resume (stopped.go; actions.go
// answers them). A sink's main.go is then: load the config, build the
// Writer, call Run.
package sinkd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/lease"
	"github.com/jetsync/jetsync/pkg/metrics"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
)

// RetrySubject is where jetsyncctl asks a running sink to re-apply its dead
// letters (request/reply).
func RetrySubject(sinkName string) string { return "jetsync.ctl." + sinkName + ".dlq.retry" }

// RetryRequest lists the dead letters (DLQ sequences) to re-apply; empty
// means all of the sink's. Stream (category/streamId) re-applies the
// events a parking sink holds for that stream instead (parked.go).
type RetryRequest struct {
	Seqs   []uint64 `json:"seqs,omitempty"`
	Stream string   `json:"stream,omitempty"`
}

// RetryReply says what a retry did; Refused, that it does not apply
// (nothing changed).
type RetryReply struct {
	Retried int    `json:"retried"`
	Done    string `json:"done,omitempty"`
	Refused string `json:"refused,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Service is one running sink with everything around it.
type Service struct {
	cfg   sink.Config
	log   *slog.Logger
	nc    *nats.Conn
	js    jetstream.JetStream
	eng   *sink.Engine
	w     sink.Writer
	ctl   *control.Store
	dlq   *deadletter.Queue
	met   *metrics.Sink
	http  *http.Server
	addr  string      // the admin server's address once listening
	guard *adminGuard // admin_auth.go; nil without the admin server

	// cpBucket is the KV bucket of the checkpoint, "" when the target keeps
	// it; lastCheckpoint is the checkpoint this sink last reported, shown
	// until the engine has read its own from the target.
	cpBucket       string
	lastCheckpoint uint64
	reloading      reloading // reload.go
	ha             ha        // standby.go

	mu     sync.Mutex
	lag    metrics.Lag
	status control.Status
	stream jetstream.Stream // looked up once: each lookup is a request to the server
}

// New connects and opens everything the sink needs; Run runs it.
func New(ctx context.Context, cfg sink.Config, w sink.Writer, log *slog.Logger, opts ...Option) (*Service, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Service{cfg: cfg, w: w, log: log.With("sink", cfg.Name)}
	for _, o := range opts {
		o(s)
	}
	nc, err := natsutil.Connect(cfg.NATS, "jetsync-sink-"+cfg.Name, s.log, nats.RetryOnFailedConnect(true))
	if err != nil {
		return nil, err
	}
	s.nc = nc
	if s.js, err = jetstream.New(nc); err != nil {
		nc.Close()
		return nil, err
	}
	// JetStream may not be reachable yet (NATS starting); wait for it.
	var store *checkpoint.KV
	for attempt := 0; ; attempt++ {
		store, err = checkpoint.OpenKV(ctx, s.js, cfg.Checkpoint.Bucket, cfg.Checkpoint.Replicas)
		if err == nil {
			if s.ctl, err = control.Open(ctx, s.js); err == nil {
				if s.dlq, err = deadletter.Open(ctx, s.js); err == nil {
					s.ha.store, err = lease.Open(ctx, s.js, cfg.HA.Bucket)
				}
			}
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			nc.Close()
			return nil, ctx.Err()
		}
		s.log.Warn("waiting for JetStream", "err", err)
		select {
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)):
		case <-ctx.Done():
		}
	}
	if _, ok := w.(sink.CheckpointWriter); !ok {
		s.cpBucket = cfg.Checkpoint.Bucket
	}
	if prev, err := s.ctl.Status(ctx, cfg.Name); err == nil {
		s.lastCheckpoint = prev.Checkpoint
	}
	s.met = metrics.NewSink(cfg.Name, s.lagSnapshot, s.stoppedAt)
	s.ha.writes.Observer = s.met
	if s.eng, err = sink.New(cfg, s.js, w, store, s.log, sink.WithObserver(&s.ha.writes), sink.WithDeadLetters(s.dlq),
		sink.WithHoldOnStop()); err != nil {
		nc.Close()
		return nil, err
	}
	s.met.WatchParked(s.parkedCount)
	s.met.WatchHA(func() bool { return s.ha.active.Load() }, s.ha.takeovers.Load)
	if cfg.HTTP.Listen != "" {
		ln, err := net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("admin http: %w (set http.listen to a free host:port)", err)
		}
		if s.guard, err = newAdminGuard(cfg); err != nil {
			ln.Close()
			nc.Close()
			return nil, fmt.Errorf("admin http: %w", err)
		}
		s.addr = ln.Addr().String()
		s.http = &http.Server{Handler: s.routes(), ReadHeaderTimeout: 5 * time.Second}
		if s.guard.tls != nil {
			s.http.TLSConfig = s.guard.tls.TLSConfig()
		}
		go func() {
			var err error
			if s.guard.tls != nil {
				err = s.http.ServeTLS(ln, "", "")
			} else {
				err = s.http.Serve(ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("admin http", "err", err)
			}
		}()
	}
	s.ha.me = lease.Self(s.addr)
	return s, nil
}

// Engine is the sink's engine.
func (s *Service) Engine() *sink.Engine { return s.eng }

// Addr is the admin HTTP server's address ("" when off).
func (s *Service) Addr() string { return s.addr }

// Run runs the sink until ctx ends or it fails, then shuts everything down.
// It stands by while another instance of the sink holds the lease
// (standby.go) and runs the engine while this one does.
func (s *Service) Run(ctx context.Context) error {
	defer s.close()
	stopReload, err := s.serveReload(ctx)
	if err != nil {
		return err
	}
	defer stopReload()
	return s.runTenures(ctx)
}

// startActive starts what only the active instance does: status, resets,
// dead-letter retries and the operator's actions. stop ends them.
func (s *Service) startActive(ctx context.Context) (stop func(), err error) {
	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var undo []func()
	stop = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		stopBG()
		wg.Wait()
	}
	wg.Go(func() { s.monitor(bg) })
	wg.Go(func() { s.watchResets(bg) })
	sub, err := s.nc.Subscribe(RetrySubject(s.cfg.Name), func(m *nats.Msg) { s.handleRetry(bg, m) })
	if err != nil {
		stop()
		return nil, err
	}
	undo = append(undo, func() { _ = sub.Unsubscribe() })
	dsub, err := s.nc.Subscribe(DiscardSubject(s.cfg.Name), func(m *nats.Msg) { s.handleDiscard(bg, m) })
	if err != nil {
		stop()
		return nil, err
	}
	undo = append(undo, func() { _ = dsub.Unsubscribe() })
	stopActions, err := s.serveActions(bg)
	if err != nil {
		stop()
		return nil, err
	}
	undo = append(undo, stopActions)
	return stop, nil
}

func (s *Service) close() {
	if s.http != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.http.Shutdown(sctx)
		cancel()
	}
	if err := s.nc.Drain(); err != nil {
		s.nc.Close()
	}
}

// routes serves the admin endpoints.
func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	g, on := s.guard, s.cfg.HTTP.AuthEnabled()
	mux.Handle("GET /metrics", g.guard(on && s.cfg.HTTP.ProtectMetrics, promhttp.HandlerFor(s.met.Registry, promhttp.HandlerOpts{})))
	mux.Handle("GET /healthz", g.guard(on && s.cfg.HTTP.ProtectHealthz, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, 200, map[string]string{"status": "alive"})
	})))
	mux.Handle("GET /readyz", g.guard(on, http.HandlerFunc(s.readyz)))
	mux.Handle("GET /wait", g.guard(on, http.HandlerFunc(s.wait)))
	return mux
}

// readyz: connected to NATS and to the target, consumer running; a sink
// stopped by its error policy says at which event and why.
func (s *Service) readyz(w http.ResponseWriter, r *http.Request) {
	problems := []string{}
	if !s.nc.IsConnected() {
		problems = append(problems, "not connected to NATS")
	}
	if p := s.standbyProblem(r.Context()); p != "" {
		// Not ready to serve reads of its own: the active instance does.
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "role": "standby", "problems": append(problems, p)})
		return
	}
	snap := s.eng.Stats()
	stopped := snap.State == sink.StateStopped && snap.Stopped != nil
	switch {
	case stopped:
		problems = append(problems, s.stoppedProblem(snap.Stopped))
	case snap.State != sink.StateRunning:
		problems = append(problems, "consumer "+string(snap.State))
	}
	if p, ok := s.w.(sink.Pinger); ok {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		if err := p.Ping(ctx); err != nil {
			problems = append(problems, "target unreachable: "+err.Error())
		}
		cancel()
	}
	if len(problems) > 0 {
		body := map[string]any{"ready": false, "problems": problems}
		if stopped {
			body["stopped"] = stopStatus(snap.Stopped)
		}
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, 200, map[string]any{"ready": true, "role": "active"})
}

// wait answers 200 once the sink has applied ?position=N, 408 when
// ?timeout= (default 2s, at most 1m) passes first.
func (s *Service) wait(w http.ResponseWriter, r *http.Request) {
	pos, err := strconv.ParseUint(r.URL.Query().Get("position"), 10, 64)
	if err != nil || pos == 0 {
		writeJSON(w, 400, map[string]string{"error": "position must be a positive integer: the position the bridge answered for your append", "field": "position"})
		return
	}
	timeout := 2 * time.Second
	if t := r.URL.Query().Get("timeout"); t != "" {
		if timeout, err = time.ParseDuration(t); err != nil || timeout <= 0 || timeout > time.Minute {
			writeJSON(w, 400, map[string]string{"error": "timeout must be a duration up to 1m, e.g. 2s or 500ms", "field": "timeout"})
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	if err := s.eng.WaitFor(ctx, pos); err != nil {
		writeJSON(w, http.StatusRequestTimeout, map[string]any{"error": "position not applied yet", "position": pos, "checkpoint": s.eng.Stats().Checkpoint})
		return
	}
	writeJSON(w, 200, map[string]any{"position": pos, "checkpoint": s.eng.Stats().Checkpoint})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Service) lagSnapshot() metrics.Lag {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lag
}

// stoppedAt is the position the error policy holds the sink at, 0 when it
// is not stopped.
func (s *Service) stoppedAt() uint64 {
	if st := s.eng.Stopped(); st != nil {
		return st.Position
	}
	return 0
}

// monitor measures head and lag once a second and publishes the status.
func (s *Service) monitor(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		s.publishStatus(ctx, nil)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// measure finds the head (the last event matching the filters) and the
// oldest event not applied yet.
func (s *Service) measure(ctx context.Context, cp uint64) (metrics.Lag, error) {
	lag := metrics.Lag{Checkpoint: cp}
	stream, err := s.eventStream(ctx)
	if err != nil {
		return lag, err
	}
	if lag.Head, err = natsutil.LastPosition(ctx, stream, s.cfg.Filters); err != nil {
		return lag, err
	}
	if lag.Head <= cp {
		return lag, nil
	}
	lag.Events = lag.Head - cp
	var oldest time.Time
	for _, f := range s.cfg.Filters {
		m, err := stream.GetMsg(ctx, cp+1, jetstream.WithGetMsgSubject(f))
		if err != nil {
			continue
		}
		t := m.Time
		if ts, err := time.Parse(time.RFC3339Nano, m.Header.Get(envelope.HeaderTime)); err == nil {
			t = ts
		}
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	if !oldest.IsZero() {
		lag.Seconds = max(time.Since(oldest).Seconds(), 0)
	}
	return lag, nil
}

// eventStream returns the event stream's handle, looking it up once.
func (s *Service) eventStream(ctx context.Context) (jetstream.Stream, error) {
	s.mu.Lock()
	st := s.stream
	s.mu.Unlock()
	if st != nil {
		return st, nil
	}
	st, err := s.js.Stream(ctx, s.cfg.Stream)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.stream = st
	s.mu.Unlock()
	return st, nil
}

// publishStatus measures and stores the sink's status; runErr is the error
// Run ended with, once it has.
func (s *Service) publishStatus(ctx context.Context, runErr error) {
	snap := s.eng.Stats()
	if !snap.CheckpointKnown {
		// Starting: the target keeping the checkpoint does not answer yet.
		// Where this sink last reported beats 0 and the whole stream as lag.
		snap.Checkpoint = s.lastCheckpoint
	}
	mctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	lag, err := s.measure(mctx, snap.Checkpoint)
	now := time.Now()

	s.mu.Lock()
	prev := s.status
	if err == nil {
		s.lag = lag
	} else {
		lag = s.lag
	}
	st := control.Status{Name: s.cfg.Name, Checkpoint: snap.Checkpoint, Head: lag.Head, LagEvents: lag.Events,
		LagSeconds: lag.Seconds, Applied: snap.Applied, LastError: snap.LastError, Filters: s.cfg.Filters,
		Admin: s.addr, Updated: now, Stopped: stopStatus(snap.Stopped), CheckpointBucket: s.cpBucket,
		LeaseBucket: s.cfg.HA.Bucket, Instance: s.ha.me.String()}
	st.Parked, st.ParkedStreams, st.ParkedEvents = s.parkedStatus()
	if dt := now.Sub(prev.Updated).Seconds(); !prev.Updated.IsZero() && dt > 0 && snap.Applied >= prev.Applied {
		st.Rate = float64(snap.Applied-prev.Applied) / dt
	}
	switch {
	case snap.State == sink.StateRunning && lag.Events == 0:
		st.State = "live"
	case snap.State == sink.StateRunning:
		st.State = "catching-up"
	default:
		st.State = string(snap.State)
	}
	if runErr != nil {
		st.State, st.LastError = "failed", runErr.Error()
	}
	s.status = st
	s.mu.Unlock()
	if err := s.ctl.PublishStatus(ctx, st); err != nil && ctx.Err() == nil {
		s.log.Debug("publishing status", "err", err)
	}
}

// watchResets applies reset requests: one left while the sink was down,
// then each new one.
func (s *Service) watchResets(ctx context.Context) {
	updates, err := s.ctl.WatchResets(ctx, s.cfg.Name)
	if err != nil {
		s.log.Error("cannot watch reset requests", "err", err)
		return
	}
	if r, err := s.ctl.PendingReset(ctx, s.cfg.Name); err == nil && r != nil {
		s.applyReset(ctx, r)
	}
	for r := range updates {
		s.applyReset(ctx, r)
	}
}

func (s *Service) applyReset(ctx context.Context, r *control.ResetRequest) {
	s.log.Info("reset requested", "position", r.Position)
	if err := s.eng.Reset(ctx, r.Position); err != nil {
		s.log.Error("reset failed", "position", r.Position, "err", err)
		return
	}
	if err := s.ctl.DoneReset(ctx, s.cfg.Name, r); err != nil {
		s.log.Warn("clearing reset request", "err", err)
	}
	s.publishStatus(ctx, nil)
}

// handleRetry re-applies dead letters through the writer, in position
// order, and removes each one that was applied.
func (s *Service) handleRetry(ctx context.Context, m *nats.Msg) {
	reply := func(r RetryReply) {
		b, _ := json.Marshal(r)
		_ = m.Respond(b)
	}
	var req RetryRequest
	if len(m.Data) > 0 {
		if err := json.Unmarshal(m.Data, &req); err != nil {
			reply(RetryReply{Error: "malformed retry request: " + err.Error()})
			return
		}
	}
	if req.Stream != "" || s.eng.Parks() {
		reply(s.retryParked(ctx, req))
		return
	}
	letters, err := s.dlq.List(ctx, s.cfg.Name)
	if err != nil {
		reply(RetryReply{Error: err.Error()})
		return
	}
	want := map[uint64]bool{}
	for _, q := range req.Seqs {
		want[q] = true
	}
	var events []envelope.Event
	var seqs []uint64
	for _, l := range letters {
		if len(want) > 0 && !want[l.Seq] {
			continue
		}
		delete(want, l.Seq)
		ev, err := l.Event()
		if err != nil {
			reply(RetryReply{Error: fmt.Sprintf("dead letter %d is not a valid event and cannot be retried (discard it): %v", l.Seq, err)})
			return
		}
		events, seqs = append(events, ev), append(seqs, l.Seq)
	}
	for q := range want {
		reply(RetryReply{Error: fmt.Sprintf("%v: %d", deadletter.ErrNotFound, q)})
		return
	}
	if len(events) == 0 {
		reply(RetryReply{})
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.eng.Redeliver(rctx, events); err != nil {
		reply(RetryReply{Error: "the target still refuses them: " + err.Error()})
		return
	}
	for _, q := range seqs {
		if err := s.dlq.Delete(ctx, q); err != nil {
			s.log.Warn("removing retried dead letter", "seq", q, "err", err)
		}
	}
	s.log.Info("dead letters re-applied", "count", len(events))
	reply(RetryReply{Retried: len(events)})
}
