package sink

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/httpauth"
	"github.com/jetsync/jetsync/pkg/natsutil"
)

// Error policies for an event the target refuses for good.
const (
	// OnErrorStop halts the sink with the checkpoint just before the event;
	// a sink service stays up, stopped, until an operator skips the event,
	// resumes after fixing the target, or resets (sink.WithHoldOnStop).
	OnErrorStop = "stop"
	OnErrorSkip = "skip" // log the event with its position and move on
	// OnErrorDeadLetter stores the event in the dlq.<sink> stream with the
	// reason, then moves on; jetsyncctl dlq retry applies it later.
	OnErrorDeadLetter = "dead-letter"
	// OnErrorPark dead-letters the event like "dead-letter" and parks its
	// stream (its subject): every later event of that stream is stored in
	// dlq.<sink> too, without being attempted, until jetsyncctl dlq retry
	// --stream re-applies them in order or dlq discard --stream drops
	// them; other streams flow on (park.go).
	OnErrorPark = "park"
)

// Config is what every sink service shares. Services embed it with
// `yaml:",inline"` so its keys sit at the top of their YAML file.
type Config struct {
	Name    string          `yaml:"name"`
	NATS    natsutil.Config `yaml:"nats"`
	Stream  string          `yaml:"stream"`
	Filters []string        `yaml:"filters"`
	Batch   BatchConfig     `yaml:"batch"`
	Retry   RetryConfig     `yaml:"retry"`
	OnError string          `yaml:"on_error"`
	// ShutdownTimeout bounds how long SIGTERM may spend flushing the last
	// batch; what is not written by then is read again on the next start.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// StallTimeout is how long the consumer may deliver nothing while the
	// stream holds events past the last one delivered and the sink is
	// idle, before it is recreated from the checkpoint (a consumer that
	// stalls silently after a NATS leader change or restart); 0 turns the
	// check off.
	StallTimeout time.Duration `yaml:"stall_timeout"`
	Checkpoint   struct {
		Bucket string `yaml:"bucket"`
		// Replicas of the bucket when this sink creates it (it is
		// missing); an existing bucket is used as it is. The bridge
		// provisions the default bucket with its stream.replicas.
		Replicas int `yaml:"replicas"`
	} `yaml:"checkpoint"`
	// HTTP is the sink's admin server: /metrics, /healthz, /readyz, /wait.
	HTTP HTTPConfig `yaml:"http"`
	// HA is the hot standby: every process started with this name takes
	// part in the lease election; one is active, the others wait.
	HA HAConfig `yaml:"ha"`
}

// HAConfig is the lease that makes one instance of a sink active (pkg/lease).
type HAConfig struct {
	// Lease is how long the active instance holds the lease without
	// renewing it (it renews every third): a standby takes over at most
	// this long after the active one died or froze, and a restarted
	// single instance waits as long for its own old lease after a crash
	// (not after a clean stop, which releases it). Whole seconds, >= 2s.
	Lease time.Duration `yaml:"lease"`
	// Bucket is the NATS KV bucket of the leases.
	Bucket string `yaml:"bucket"`
}

// HTTPConfig is a sink's admin server. With tokens (or a client CA), /wait
// and /readyz need a read: scope covering the sink's filters (or admin);
// /metrics and /healthz stay open unless protect_metrics/protect_healthz.
type HTTPConfig struct {
	Listen string `yaml:"listen"` // host:port; empty turns it off
	// TLS serves HTTPS; the files are re-read on SIGHUP. client_ca_file
	// turns on mutual TLS: a verified client certificate is accepted in
	// place of a token.
	TLS httpauth.TLSConfig `yaml:"tls"`
	// Tokens are bearer tokens by name and SHA-256 hash (never the
	// secret), as the bridge's auth.tokens; TokensFile is a YAML file with
	// `tokens:` in that form (the bridge's tokens file works), re-read on
	// SIGHUP.
	Tokens         []httpauth.Token `yaml:"tokens"`
	TokensFile     string           `yaml:"tokens_file"`
	ProtectMetrics bool             `yaml:"protect_metrics"` // GET /metrics needs a token too
	ProtectHealthz bool             `yaml:"protect_healthz"` // GET /healthz needs a token too
}

// AuthEnabled reports whether protected routes need a token or a client
// certificate.
func (c HTTPConfig) AuthEnabled() bool {
	return len(c.Tokens) > 0 || c.TokensFile != "" || c.TLS.ClientCAFile != ""
}

// ReadTokens is the configured tokens: http.tokens, then the tokens file's.
func (c HTTPConfig) ReadTokens() ([]httpauth.Token, error) {
	toks := c.Tokens
	if c.TokensFile != "" {
		more, err := httpauth.ReadTokensFile(c.TokensFile)
		if err != nil {
			return nil, &config.KeyError{Key: "http.tokens_file", Reason: err.Error()}
		}
		toks = append(toks[:len(toks):len(toks)], more...)
	}
	return toks, nil
}

func (c HTTPConfig) validate(p *config.Problems) {
	c.TLS.Validate("http.tls", p)
	httpauth.ValidateTokens("http.tokens", c.Tokens, p)
	if c.TokensFile != "" {
		toks, err := httpauth.ReadTokensFile(c.TokensFile)
		if err != nil {
			p.Addf("http.tokens_file", "%v", err)
		}
		httpauth.ValidateTokens("http.tokens_file: tokens", toks, p)
	}
	if !c.AuthEnabled() {
		if c.ProtectMetrics {
			p.Addf("http.protect_metrics", "needs http.tokens, http.tokens_file or http.tls.client_ca_file: nothing could open /metrics")
		}
		if c.ProtectHealthz {
			p.Addf("http.protect_healthz", "needs http.tokens, http.tokens_file or http.tls.client_ca_file: nothing could open /healthz")
		}
	}
}

// Categories are the categories the filters cover, as a read: scope names
// them: "*" when a filter spans every category.
func (c *Config) Categories() []string {
	var out []string
	for _, f := range c.Filters {
		toks := strings.Split(f, ".")
		cat := "*"
		if len(toks) > 1 && toks[1] != "*" && toks[1] != ">" {
			cat = toks[1]
		}
		if !slices.Contains(out, cat) {
			out = append(out, cat)
		}
	}
	return out
}

// BatchConfig: a batch is flushed when any limit is reached.
type BatchConfig struct {
	MaxEvents   int             `yaml:"max_events"`
	MaxBytes    config.ByteSize `yaml:"max_bytes"`
	MaxInterval time.Duration   `yaml:"max_interval"`
	// FlushWhenIdle hands a batch to the writer as soon as no more events
	// are waiting and the writer is idle (group commit): low latency at low
	// load, full batches under load. Off, a batch waits for a limit.
	FlushWhenIdle bool `yaml:"flush_when_idle"`
}

// RetryConfig shapes the exponential backoff (with jitter) of transient
// failures. Retries never give up: a sink waits for its target.
type RetryConfig struct {
	Initial time.Duration `yaml:"initial"`
	Max     time.Duration `yaml:"max"`
}

// DefaultConfig holds the defaults every sink starts from.
func DefaultConfig(name string) Config {
	c := Config{
		Name:            name,
		NATS:            natsutil.Config{URL: "nats://127.0.0.1:4222"},
		Stream:          natsutil.DefaultStream,
		Filters:         []string{envelope.SubjectPrefix + ".>"},
		Batch:           BatchConfig{MaxEvents: 1000, MaxBytes: 1 << 20, MaxInterval: 20 * time.Millisecond, FlushWhenIdle: true},
		Retry:           RetryConfig{Initial: 50 * time.Millisecond, Max: 5 * time.Second},
		OnError:         OnErrorStop,
		ShutdownTimeout: 10 * time.Second,
		StallTimeout:    30 * time.Second,
	}
	c.Checkpoint.Bucket = "jetsync-checkpoints"
	c.Checkpoint.Replicas = 1
	c.HTTP.Listen = "127.0.0.1:9090"
	c.HA = HAConfig{Lease: 10 * time.Second, Bucket: "jetsync-leases"}
	return c
}

// Validate reports every problem of the shared keys.
func (c *Config) Validate(p *config.Problems) {
	if err := envelope.ValidateToken("name", c.Name); err != nil {
		p.Addf("name", "must be a sink name without dots, spaces or wildcards, e.g. cache (got %q)", c.Name)
	}
	if c.NATS.URL == "" {
		p.Addf("nats.url", "is required, e.g. nats://127.0.0.1:4222 (several servers of a cluster: comma-separated)")
	}
	c.NATS.Validate("nats", p)
	if err := envelope.ValidateToken("stream", c.Stream); err != nil {
		p.Addf("stream", "must be a JetStream stream name, e.g. EVENTS (got %q)", c.Stream)
	}
	if len(c.Filters) == 0 {
		p.Addf("filters", "needs at least one subject filter, e.g. events.> or events.order.>")
	}
	for i, f := range c.Filters {
		if err := validateFilter(f); err != nil {
			p.Addf(fmt.Sprintf("filters[%d]", i), "%v", err)
		}
	}
	if c.Batch.MaxEvents < 1 {
		p.Addf("batch.max_events", "must be at least 1, got %d", c.Batch.MaxEvents)
	}
	if c.Batch.MaxBytes < 1024 {
		p.Addf("batch.max_bytes", "must be at least 1KiB, got %d bytes", c.Batch.MaxBytes)
	}
	if c.Batch.MaxInterval <= 0 {
		p.Addf("batch.max_interval", "must be positive, e.g. 20ms")
	}
	if c.Retry.Initial <= 0 {
		p.Addf("retry.initial", "must be positive, e.g. 50ms")
	}
	if c.Retry.Max < c.Retry.Initial {
		p.Addf("retry.max", "must be at least retry.initial (%s)", c.Retry.Initial)
	}
	if c.OnError != OnErrorStop && c.OnError != OnErrorSkip && c.OnError != OnErrorDeadLetter && c.OnError != OnErrorPark {
		p.Addf("on_error", "must be %q, %q, %q or %q, got %q", OnErrorStop, OnErrorSkip, OnErrorDeadLetter, OnErrorPark, c.OnError)
	}
	if c.ShutdownTimeout <= 0 {
		p.Addf("shutdown_timeout", "must be positive, e.g. 10s")
	}
	if c.StallTimeout < 0 || c.StallTimeout > 0 && c.StallTimeout < time.Second {
		p.Addf("stall_timeout", "must be at least 1s (longer than the consumer's own heartbeat recovery, e.g. 30s), or 0 to turn the stall check off; got %s", c.StallTimeout)
	}
	if err := envelope.ValidateToken("checkpoint.bucket", c.Checkpoint.Bucket); err != nil {
		p.Addf("checkpoint.bucket", "must be a KV bucket name without dots or spaces (got %q)", c.Checkpoint.Bucket)
	}
	if c.Checkpoint.Replicas < 1 || c.Checkpoint.Replicas > 5 {
		p.Addf("checkpoint.replicas", "must be between 1 and 5, got %d; 3 on a cluster", c.Checkpoint.Replicas)
	}
	c.HTTP.validate(p)
	if c.HA.Lease < 2*time.Second || c.HA.Lease > 10*time.Minute || c.HA.Lease%time.Second != 0 {
		p.Addf("ha.lease", "must be whole seconds between 2s and 10m, e.g. 10s (got %s)", c.HA.Lease)
	}
	if err := envelope.ValidateToken("ha.bucket", c.HA.Bucket); err != nil {
		p.Addf("ha.bucket", "must be a KV bucket name without dots or spaces, e.g. jetsync-leases (got %q)", c.HA.Bucket)
	}
}

// validateFilter accepts events.>, events.<category>.> and the like: tokens
// without spaces, wildcards only as whole tokens and '>' only last.
func validateFilter(f string) error {
	toks := strings.Split(f, ".")
	if toks[0] != envelope.SubjectPrefix || len(toks) < 2 {
		return fmt.Errorf("%q must start with %q, e.g. events.> or events.order.>", f, envelope.SubjectPrefix+".")
	}
	for i, t := range toks {
		switch {
		case t == "":
			return fmt.Errorf("%q has an empty token", f)
		case t == ">" && i != len(toks)-1:
			return fmt.Errorf("%q: '>' may only be the last token", f)
		case t != "*" && t != ">" && strings.ContainsAny(t, "*> \t"):
			return fmt.Errorf("%q: wildcards must stand alone as a token and spaces are not allowed", f)
		}
	}
	if len(toks) > 3 {
		return fmt.Errorf("%q has more tokens than events.<category>.<streamId>", f)
	}
	return nil
}
