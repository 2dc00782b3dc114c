package main

import (
	"net"
	"strconv"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/natsutil"
)

// EnvPrefix prefixes the environment overrides: JETSYNC_NATS_URL for nats.url.
const EnvPrefix = "JETSYNC"

// Config is the bridge's configuration file.
type Config struct {
	HTTP   HTTPConfig            `yaml:"http"`
	NATS   NATSConfig            `yaml:"nats"`
	Stream natsutil.StreamConfig `yaml:"stream"`
	Append AppendConfig          `yaml:"append"`
	Auth   AuthConfig            `yaml:"auth"`
	// Source is a PostgreSQL table relayed into the stream (bridge relay;
	// bridge serve too when source.postgres_url is set).
	Source SourceConfig `yaml:"source"`
}

// HTTPConfig configures the append API.
type HTTPConfig struct {
	Listen       string          `yaml:"listen"`         // host:port; port 0 picks a free one
	MaxBodyBytes config.ByteSize `yaml:"max_body_bytes"` // larger request bodies get 413
	// ShutdownTimeout bounds how long a stopping bridge waits for requests
	// in flight before it closes their connections.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Insecure lets the bridge listen beyond loopback with auth off (no
	// auth.tokens or auth.tokens_file): anyone who reaches the port can
	// append. Without it such a config is refused.
	Insecure bool `yaml:"insecure"`
	// TLS serves HTTPS (and mutual TLS with client_ca_file).
	TLS TLSConfig `yaml:"tls"`
	// MaxConnections bounds the connections open at once; a connection past
	// it is closed as soon as it is accepted (it does not wait).
	MaxConnections int `yaml:"max_connections"`
	// ReadHeaderTimeout is how long a client may take to send a request's
	// headers (from its first byte on a fresh connection); a slower one is
	// disconnected.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
}

// NATSConfig says where JetStream is and how to log in (natsutil.Config:
// url, creds, user/password, token, tls). An empty URL runs an embedded
// server.
type NATSConfig struct {
	natsutil.Config `yaml:",inline"`
	Embedded        natsutil.EmbeddedConfig `yaml:"embedded"`
}

// AppendConfig bounds one append.
type AppendConfig struct {
	// Timeout is the time an append may take, waiting for a stream busy with
	// another append of this bridge included. When it passes the client gets
	// 503 and may retry with the same event ids.
	Timeout time.Duration `yaml:"timeout"`
	// MaxJSONDepth bounds how deeply an event's data and metadata nest
	// objects and arrays; deeper events get 400.
	MaxJSONDepth int `yaml:"max_json_depth"`
}

// DefaultConfig is what an empty file means.
func DefaultConfig() Config {
	return Config{
		HTTP:   HTTPConfig{Listen: "127.0.0.1:8080", MaxBodyBytes: 1 << 20, ShutdownTimeout: 10 * time.Second, MaxConnections: DefaultMaxConnections, ReadHeaderTimeout: 10 * time.Second},
		NATS:   NATSConfig{Embedded: natsutil.EmbeddedConfig{Host: "127.0.0.1", Port: 4222, StoreDir: "./data/nats"}},
		Stream: natsutil.DefaultStreamConfig(),
		Append: AppendConfig{Timeout: 5 * time.Second, MaxJSONDepth: DefaultMaxJSONDepth},
		Source: DefaultSourceConfig(),
	}
}

// LoadConfig reads the file at path (none when empty) over the defaults,
// applies JETSYNC_* environment overrides and validates the result.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	if err := config.Load(path, EnvPrefix, &cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate reports every problem at once, each naming its YAML key.
func (c *Config) Validate() error {
	var p config.Problems
	if err := validateListen(c.HTTP.Listen); err != "" {
		p.Addf("http.listen", "%s", err)
	} else if !c.authEnabled() && !c.HTTP.Insecure && !isLoopback(c.HTTP.Listen) {
		p.Addf("http.listen", "%q is reachable beyond this machine and auth is off: anyone could append; configure auth.tokens or auth.tokens_file, listen on 127.0.0.1, or set http.insecure: true to accept the risk", c.HTTP.Listen)
	}
	if c.HTTP.MaxBodyBytes < 1024 {
		p.Addf("http.max_body_bytes", "must be at least 1KiB, got %d; e.g. 1MiB", int64(c.HTTP.MaxBodyBytes))
	}
	if c.HTTP.MaxConnections < 1 {
		p.Addf("http.max_connections", "must be positive, got %d; e.g. %d (each takes a file descriptor: keep it under the process's limit, ulimit -n)", c.HTTP.MaxConnections, DefaultMaxConnections)
	}
	if c.HTTP.ReadHeaderTimeout <= 0 {
		p.Addf("http.read_header_timeout", "must be positive, e.g. 10s")
	}
	if c.HTTP.ShutdownTimeout <= 0 {
		p.Addf("http.shutdown_timeout", "must be positive, e.g. 10s")
	}
	c.NATS.Config.Validate("nats", &p)
	if c.NATS.URL == "" {
		c.NATS.Embedded.Validate("nats.embedded", &p)
		if c.Stream.Replicas != 1 && c.NATS.Embedded.Cluster.Name == "" {
			p.Addf("stream.replicas", "must be 1 with the embedded server (nats.url is empty and nats.embedded.cluster is not set), got %d", c.Stream.Replicas)
		}
	}
	c.Stream.Validate("stream", &p)
	if c.Append.Timeout <= 0 {
		p.Addf("append.timeout", "must be positive, e.g. 5s")
	}
	if c.Append.MaxJSONDepth < 1 || c.Append.MaxJSONDepth > 1000 {
		p.Addf("append.max_json_depth", "must be 1 to 1000, got %d; e.g. %d", c.Append.MaxJSONDepth, DefaultMaxJSONDepth)
	}
	c.Auth.validate(&p)
	c.Source.validate(&p)
	c.HTTP.TLS.Validate(tlsKey, &p)
	if len(c.Auth.ClientCerts) > 0 && c.HTTP.TLS.ClientCAFile == "" {
		p.Addf("auth.client_certs", "needs http.tls.client_ca_file: without mutual TLS no client presents a certificate")
	}
	return p.Err()
}

func validateListen(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "must be host:port, e.g. 127.0.0.1:8080 or :8080, got " + strconv.Quote(addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "has port " + strconv.Quote(port) + "; use a number from 0 to 65535"
	}
	return ""
}

// isLoopback reports whether a valid listen address binds loopback only.
// A host name other than localhost is not trusted to resolve to loopback.
func isLoopback(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// exposed reports whether the API listens beyond loopback without auth
// (allowed only with http.insecure).
func (c *Config) exposed() bool {
	return !c.authEnabled() && !isLoopback(c.HTTP.Listen)
}

// natsClient is how clients reach NATS: nats.*, or the embedded server's
// address.
func (c *Config) natsClient() natsutil.Config {
	if c.NATS.URL != "" {
		return c.NATS.Config
	}
	host := c.NATS.Embedded.Host
	if host == "" {
		host = "127.0.0.1"
	}
	return natsutil.Config{URL: "nats://" + net.JoinHostPort(host, strconv.Itoa(c.NATS.Embedded.Port))}
}
