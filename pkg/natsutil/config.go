package natsutil

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/config"
)

// Config says where NATS is and how to log in: the `nats:` section of the
// bridge, of every sink and of jetsyncctl's flags. A shared cluster is never
// open, so every component takes the same credentials and TLS options.
type Config struct {
	// URL is one server or several, comma-separated (the nodes of a
	// cluster): the client connects to any and fails over to the others.
	URL string `yaml:"url"`
	// Creds is a .creds file (user JWT and NKey seed), as `nsc` writes it.
	Creds string `yaml:"creds"`
	// User and Password log in with a user of the server's authorization
	// block; Token with its token. Use at most one of creds, user/password
	// and token. Prefer JETSYNC_NATS_PASSWORD / JETSYNC_NATS_TOKEN to
	// writing secrets into the file.
	User     string    `yaml:"user"`
	Password string    `yaml:"password"`
	Token    string    `yaml:"token"`
	TLS      TLSConfig `yaml:"tls"`
}

// TLSConfig is the client side of TLS to NATS: the CA that signed the
// servers' certificates and, for servers that verify clients, this
// client's certificate and key. PEM files.
type TLSConfig struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

func (t TLSConfig) enabled() bool { return t.CA != "" || t.Cert != "" || t.Key != "" }

// URLs is the configured servers, trimmed.
func (c Config) URLs() []string {
	var out []string
	for _, u := range strings.Split(c.URL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// Authenticated reports whether any login or TLS option is set.
func (c Config) Authenticated() bool {
	return c.Creds != "" || c.User != "" || c.Password != "" || c.Token != "" || c.TLS.enabled()
}

// Validate reports every problem under the key prefix (usually "nats"). An
// empty URL is not one of them: the bridge then runs an embedded server,
// and a sink says itself that it needs one.
func (c Config) Validate(prefix string, p *config.Problems) {
	if c.URL != "" {
		for _, u := range strings.Split(c.URL, ",") {
			if reason := validateURL(strings.TrimSpace(u)); reason != "" {
				p.Addf(prefix+".url", "%q %s", strings.TrimSpace(u), reason)
			}
		}
	} else if c.Authenticated() {
		p.Addf(prefix+".url", "is empty but NATS credentials or TLS are set: they are for a remote server; set the server's URL, e.g. tls://nats-1:4222,tls://nats-2:4222")
	}
	logins := 0
	if c.Creds != "" {
		logins++
		fileReadable(prefix+".creds", c.Creds, p)
	}
	if c.User != "" || c.Password != "" {
		logins++
		if c.User == "" {
			p.Addf(prefix+".user", "is required with %s.password", prefix)
		}
		if c.Password == "" {
			p.Addf(prefix+".password", "is required with %s.user (or set JETSYNC_NATS_PASSWORD)", prefix)
		}
	}
	if c.Token != "" {
		logins++
	}
	if logins > 1 {
		p.Addf(prefix, "sets more than one of creds, user/password and token; keep the one the server's authorization expects")
	}
	if c.TLS.CA != "" {
		fileReadable(prefix+".tls.ca", c.TLS.CA, p)
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		p.Addf(prefix+".tls", "cert and key go together: set both (a client certificate) or neither")
	}
	if c.TLS.Cert != "" {
		fileReadable(prefix+".tls.cert", c.TLS.Cert, p)
	}
	if c.TLS.Key != "" {
		fileReadable(prefix+".tls.key", c.TLS.Key, p)
	}
}

func fileReadable(key, path string, p *config.Problems) {
	f, err := os.Open(path)
	if err != nil {
		p.Addf(key, "cannot be read: %v", err)
		return
	}
	f.Close()
}

func validateURL(u string) string {
	if u == "" {
		return "is an empty entry; separate several URLs with commas"
	}
	if !strings.Contains(u, "://") {
		u = "nats://" + u
	}
	pu, err := url.Parse(u)
	if err != nil {
		return "is not a URL; write it like nats://127.0.0.1:4222"
	}
	switch pu.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return "has scheme " + strconv.Quote(pu.Scheme) + "; use nats://, tls://, ws:// or wss://"
	}
	if pu.Hostname() == "" {
		return "has no host; write it like nats://127.0.0.1:4222"
	}
	return ""
}

// Options is the login and TLS part of the client options.
func (c Config) Options() []nats.Option {
	var opts []nats.Option
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.User != "" || c.Password != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.TLS.CA != "" {
		opts = append(opts, nats.RootCAs(c.TLS.CA))
	}
	if c.TLS.Cert != "" {
		opts = append(opts, nats.ClientCert(c.TLS.Cert, c.TLS.Key))
	}
	if c.TLS.enabled() {
		opts = append(opts, nats.Secure())
	}
	return opts
}

// ReplicasError turns the server's refusal to place replicas into an
// error that says which key to change; other errors pass unchanged.
// what names the stream or bucket, key the setting that asked for n.
func ReplicasError(err error, what, key string, n int) error {
	var apiErr *jetstream.APIError
	if err == nil || !errors.As(err, &apiErr) {
		return err
	}
	switch apiErr.ErrorCode {
	case 10074: // JSStreamReplicasNotSupportedErr: a single server
		return fmt.Errorf("%s: %w: %s is %d but the NATS server is not a cluster (a single server keeps 1 replica); set %s to 1 or point nats.url at a cluster: %w",
			what, ErrReplicas, key, n, key, err)
	case 10023, 10005: // JSInsufficientResourcesErr, JSClusterNoPeersErrF
		return fmt.Errorf("%s: %w: %s is %d but the cluster cannot place that many replicas (fewer JetStream servers up, or out of storage); lower %s to at most the number of JetStream servers, or add servers: %w",
			what, ErrReplicas, key, n, key, err)
	}
	return err
}

// ErrReplicas: the configured replica count cannot be met by the NATS
// servers reached.
var ErrReplicas = errors.New("replica count the NATS servers cannot meet")

// Connect dials the configured servers (several for a cluster) with its
// credentials and TLS, and keeps reconnecting forever: a sink or bridge
// outlives NATS restarts and node losses instead of dying with them.
// opts are added after (so they override) the defaults.
func Connect(c Config, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	return connect(strings.Join(c.URLs(), ","), name, log, append(c.Options(), opts...)...)
}
