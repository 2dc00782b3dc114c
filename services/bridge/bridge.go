package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/httpauth"
	"github.com/jetsync/jetsync/pkg/lease"
	"github.com/jetsync/jetsync/pkg/natsutil"
)

// Bridge is a running `bridge serve`: NATS (embedded or remote), the event
// stream, and the HTTP append API.
type Bridge struct {
	cfg  Config
	log  *slog.Logger
	ns   *server.Server // the embedded server; nil with nats.url
	nc   *nats.Conn
	js   jetstream.JetStream
	app  *Appender
	met  *Metrics
	ln   *limitListener
	srv  *http.Server
	done chan error             // the HTTP server's result
	tls  *httpauth.CertReloader // nil without http.tls
	auth *Authenticator         // nil with auth off
	hup  chan os.Signal
	stop chan struct{} // closed by Close: ends the SIGHUP watcher

	relay       *Relay        // nil without source.postgres_url
	relayDone   chan struct{} // closed when the relay's Run returned
	relayCancel context.CancelFunc
	relayStatus func() // stops source.status_listen's server

	closeOnce sync.Once
	closeErr  error
}

// New starts everything and returns once the API accepts requests. On
// error, whatever was started is stopped again.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Bridge, err error) {
	if log == nil {
		log = slog.Default()
	}
	b := &Bridge{cfg: cfg, log: log, done: make(chan error, 1), stop: make(chan struct{})}
	defer func() {
		if err != nil {
			b.stopNATS(context.Background())
		}
	}()

	ncfg := cfg.NATS.Config
	if ncfg.URL == "" {
		if b.ns, err = natsutil.RunEmbedded(cfg.NATS.Embedded); err != nil {
			return nil, err
		}
		ncfg = natsutil.Config{URL: b.ns.ClientURL()}
		log.Info("embedded NATS running", "url", ncfg.URL, "store_dir", cfg.NATS.Embedded.StoreDir)
	}
	if b.nc, err = natsutil.Connect(ncfg, "jetsync-bridge", log, nats.ReconnectBufSize(-1)); err != nil {
		return nil, err
	}
	if b.js, err = jetstream.New(b.nc, jetstream.WithDefaultTimeout(cfg.Append.Timeout)); err != nil {
		return nil, err
	}
	ectx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var stream jetstream.Stream
	if err := untilProvisioned(ectx, log, func(ctx context.Context) (err error) {
		if stream, err = natsutil.EnsureStream(ctx, b.js, cfg.Stream); err != nil {
			return err
		}
		return provisionSinkStores(ctx, b.js, cfg.Stream.Replicas)
	}); err != nil {
		return nil, err
	}
	b.app = NewAppender(b.js, stream)

	if cfg.HTTP.TLS.Enabled() {
		if b.tls, err = httpauth.NewCertReloader(tlsKey, cfg.HTTP.TLS, len(cfg.Auth.Tokens) > 0 || cfg.Auth.TokensFile != ""); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return nil, fmt.Errorf("http.listen: %w", err)
	}
	b.ln = newLimitListener(ln, cfg.HTTP.MaxConnections)
	b.met = NewMetrics()
	b.met.WatchAppender(b.app)
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		b.ln.Close()
		return nil, err
	}
	api := NewAPI(b.app, int64(cfg.HTTP.MaxBodyBytes), cfg.Append.Timeout, b.nc.IsConnected, b.met, log).WithAuth(auth).WithMaxDepth(cfg.Append.MaxJSONDepth)
	b.srv = &http.Server{
		Handler:           api.Handler(),
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	b.auth = auth
	if b.tls != nil || cfg.Auth.TokensFile != "" {
		b.hup = make(chan os.Signal, 1)
		signal.Notify(b.hup, syscall.SIGHUP)
		go b.watchHUP()
	}
	if b.tls != nil {
		b.srv.TLSConfig = b.tls.TLSConfig()
		go func() { b.done <- b.srv.ServeTLS(b.ln, "", "") }()
	} else {
		go func() { b.done <- b.srv.Serve(b.ln) }()
	}
	if cfg.exposed() {
		log.Warn("INSECURE: the append API listens beyond loopback without authentication (http.insecure: true); anyone who reaches it can append. Configure auth.tokens or auth.tokens_file",
			"addr", b.ln.Addr().String())
	}
	if cfg.Source.Enabled() {
		if err := b.startRelay(); err != nil {
			b.srv.Close()
			return nil, err
		}
	}
	log.Info("bridge serving", "addr", b.ln.Addr().String(), "stream", cfg.Stream.Name, "auth", auth != nil, "tls", b.tls != nil)
	return b, nil
}

// ReloadTLS re-reads http.tls's files, as SIGHUP does; on error the
// certificates in use stay.
func (b *Bridge) ReloadTLS() error {
	if b.tls == nil {
		return nil
	}
	return b.tls.Reload()
}

// ReloadTokens re-reads auth.tokens_file, as SIGHUP does; on error the
// tokens in use stay.
func (b *Bridge) ReloadTokens() error { return b.auth.ReloadTokens() }

// watchHUP reloads the certificates and the tokens file on every SIGHUP
// until Close.
func (b *Bridge) watchHUP() {
	for {
		select {
		case <-b.stop:
			return
		case <-b.hup:
			b.reload()
		}
	}
}

// reload is what SIGHUP does: each of the certificates and the tokens file
// is re-read on its own; one that does not load is logged and the one in
// use stays.
func (b *Bridge) reload() {
	if b.tls != nil {
		if err := b.ReloadTLS(); err != nil {
			b.log.Error("SIGHUP: certificates not reloaded; the previous ones stay in use", "err", err)
		} else {
			b.log.Info("SIGHUP: certificates reloaded", "cert_file", b.cfg.HTTP.TLS.CertFile)
		}
	}
	if b.cfg.Auth.TokensFile != "" {
		if err := b.ReloadTokens(); err != nil {
			b.log.Error("SIGHUP: tokens file not reloaded; the previous tokens stay in use", "tokens_file", b.cfg.Auth.TokensFile, "err", err)
		} else {
			b.log.Info("SIGHUP: tokens file reloaded", "tokens_file", b.cfg.Auth.TokensFile, "tokens", b.auth.tokenCount())
		}
	}
}

// Addr is the API's listening address (useful with port 0).
func (b *Bridge) Addr() string { return b.ln.Addr().String() }

// Appender is the bridge's appender, for callers in this process.
func (b *Bridge) Appender() *Appender { return b.app }

// Metrics is what the bridge serves at /metrics; pass it in ImportOptions
// to count an import run in this process.
func (b *Bridge) Metrics() *Metrics { return b.met }

// Run serves until ctx ends, then shuts down gracefully. It returns nil after
// a clean shutdown.
func (b *Bridge) Run(ctx context.Context) error {
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-b.done:
		b.done <- serveErr // for Close
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.HTTP.ShutdownTimeout+5*time.Second)
	defer cancel()
	err := b.Close(cctx)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return errors.Join(fmt.Errorf("http server: %w", serveErr), err)
	}
	return err
}

// Close stops accepting requests, waits for those in flight (at most
// http.shutdown_timeout), drains the NATS connection and stops the embedded
// server. It is safe to call more than once.
func (b *Bridge) Close(ctx context.Context) error {
	b.closeOnce.Do(func() {
		if b.hup != nil {
			signal.Stop(b.hup)
		}
		close(b.stop)
		sctx, cancel := context.WithTimeout(ctx, b.cfg.HTTP.ShutdownTimeout)
		defer cancel()
		if err := b.srv.Shutdown(sctx); err != nil {
			b.log.Warn("requests still running at shutdown timeout; closing them", "err", err)
			b.closeErr = errors.Join(b.closeErr, b.srv.Close())
		}
		if err := <-b.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.closeErr = errors.Join(b.closeErr, err)
		}
		b.app.Wait() // group commits of appends that gave up waiting
		b.stopRelay()
		b.closeErr = errors.Join(b.closeErr, b.stopNATS(ctx))
		b.log.Info("bridge stopped")
	})
	return b.closeErr
}

// startRelay runs the source: relay beside the API. A relay that stops (a
// bad row, a version gap) leaves the API serving; its status and
// jetsync_relay_up say so.
func (b *Bridge) startRelay() error {
	b.relay = NewRelay(b.cfg.Source, b.js, b.cfg.Stream, b.log)
	b.met.WatchRelay(b.relay)
	if b.cfg.Source.StatusListen != "" {
		stop, err := serveRelayStatus(b.cfg.Source.StatusListen, b.relay, b.met.Registry, b.log)
		if err != nil {
			return fmt.Errorf("source.status_listen: %w", err)
		}
		b.relayStatus = stop
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.relayCancel, b.relayDone = cancel, make(chan struct{})
	go func() {
		defer close(b.relayDone)
		if err := b.relay.Run(ctx); err != nil {
			b.log.Error("relay stopped; the append API keeps serving", "err", err)
		}
	}()
	return nil
}

// stopRelay stops the relay, if any, and waits for it.
func (b *Bridge) stopRelay() {
	if b.relay == nil {
		return
	}
	b.relayCancel()
	<-b.relayDone
	if b.relayStatus != nil {
		b.relayStatus()
	}
}

// Relay is the source: relay, or nil.
func (b *Bridge) Relay() *Relay { return b.relay }

// stopNATS drains the connection and shuts the embedded server down.
func (b *Bridge) stopNATS(ctx context.Context) error {
	var err error
	if b.nc != nil {
		closed := b.nc.StatusChanged(nats.CLOSED)
		if derr := b.nc.Drain(); derr != nil {
			b.nc.Close()
		} else {
			select {
			case <-closed:
			case <-ctx.Done():
				err = fmt.Errorf("draining the NATS connection: %w", ctx.Err())
				b.nc.Close()
			}
		}
	}
	if b.ns != nil {
		b.ns.Shutdown()
		b.ns.WaitForShutdown()
	}
	return err
}

// untilProvisioned runs provision until it succeeds, fails for good or ctx
// ends. A cluster that is still forming (no meta leader, peers not known
// yet, the stream's leader being elected) refuses for a few seconds what
// it will accept a moment later; the last error is returned.
func untilProvisioned(ctx context.Context, log *slog.Logger, provision func(context.Context) error) error {
	for {
		// Short attempts: a request no server answers yet (no meta leader)
		// would otherwise take the whole append.timeout each.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := provision(actx)
		cancel()
		if err == nil || !transientJS(err) || ctx.Err() != nil {
			return err
		}
		log.Warn("waiting for JetStream to provision the streams", "err", err)
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
}

// transientJS reports whether a JetStream refusal may pass by itself.
func transientJS(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return !errors.Is(err, context.Canceled) // timeouts, no responders
	}
	switch apiErr.ErrorCode {
	case 10004, 10005, 10006, 10008, 10009, 10023: // cluster incomplete, no peers, not active, not available, not leader, insufficient resources
		return true
	}
	return apiErr.Code == 503
}

// provisionSinkStores creates (or scales to replicas) what sinks keep in
// NATS besides the events: the default checkpoint bucket, the control
// bucket and the dead-letter stream. On a cluster they need the stream's
// replica count too, or a node loss takes the sinks' memory with it.
// Sinks open these as they are and create them (one replica) only when
// missing, so the bridge's count stands.
func provisionSinkStores(ctx context.Context, js jetstream.JetStream, replicas int) error {
	return errors.Join(
		checkpoint.Provision(ctx, js, checkpoint.DefaultBucket, replicas),
		control.Provision(ctx, js, replicas),
		deadletter.Provision(ctx, js, replicas),
		lease.Provision(ctx, js, replicas),
	)
}
