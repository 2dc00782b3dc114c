// Package natsutil holds what every jetsync process does with NATS: connect
// (or run an embedded JetStream server), and provision the event stream.
package natsutil

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
)

// DefaultStream is the JetStream stream that holds every event.
const DefaultStream = "EVENTS"

// connect dials url (comma-separated servers) with the defaults Connect
// documents.
func connect(url, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(url, append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("reconnected to NATS", "url", c.ConnectedUrl()) }),
	}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", url, err)
	}
	return nc, nil
}

// EmbeddedConfig configures the in-process NATS server the bridge runs when
// no NATS URL is given.
type EmbeddedConfig struct {
	Host     string `yaml:"host"`
	Port     int    `yaml:"port"`      // -1 picks a free port
	StoreDir string `yaml:"store_dir"` // JetStream file store
	// ServerName names the server; a cluster's nodes need distinct names.
	ServerName string `yaml:"server_name"`
	// Cluster makes the server a node of a JetStream cluster (`bridge
	// nats` runs one node without the bridge: make up CLUSTER=3).
	Cluster ClusterConfig `yaml:"cluster"`
}

// ClusterConfig joins the embedded server to a cluster: every node names
// the same cluster and routes to the others' cluster ports.
type ClusterConfig struct {
	Name   string   `yaml:"name"`   // empty: a single server
	Listen string   `yaml:"listen"` // host:port for routes from the other nodes
	Routes []string `yaml:"routes"` // nats-route://host:port of every node (its own included is fine)
}

// Validate reports problems under the key prefix.
func (c EmbeddedConfig) Validate(prefix string, p *config.Problems) {
	if c.StoreDir == "" {
		p.Addf(prefix+".store_dir", "is required: a directory for the embedded JetStream file store, e.g. ./data/nats")
	}
	if c.Port < -1 || c.Port > 65535 {
		p.Addf(prefix+".port", "must be a TCP port (0..65535) or -1 for a free one, got %d", c.Port)
	}
	if c.Cluster.Name == "" {
		if c.Cluster.Listen != "" || len(c.Cluster.Routes) > 0 {
			p.Addf(prefix+".cluster.name", "is required with cluster.listen or cluster.routes, e.g. jetsync")
		}
		return
	}
	if _, _, err := net.SplitHostPort(c.Cluster.Listen); err != nil {
		p.Addf(prefix+".cluster.listen", "must be host:port for the other nodes' routes, e.g. 127.0.0.1:6222, got %q", c.Cluster.Listen)
	}
	if len(c.Cluster.Routes) == 0 {
		p.Addf(prefix+".cluster.routes", "needs the route URL of every node, e.g. [nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224]")
	}
	if c.ServerName == "" {
		p.Addf(prefix+".server_name", "is required in a cluster: every node needs its own name, e.g. nats-1")
	}
}

// RunEmbedded starts a JetStream-enabled NATS server in this process.
func RunEmbedded(c EmbeddedConfig) (*server.Server, error) {
	opts := &server.Options{
		ServerName: c.ServerName,
		Host:       c.Host,
		Port:       c.Port,
		JetStream:  true,
		StoreDir:   c.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	}
	if opts.ServerName == "" {
		opts.ServerName = "jetsync-embedded"
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if c.Cluster.Name != "" {
		host, port, err := net.SplitHostPort(c.Cluster.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS: cluster.listen: %w", err)
		}
		opts.Cluster = server.ClusterOpts{Name: c.Cluster.Name, Host: host}
		if opts.Cluster.Port, err = strconv.Atoi(port); err != nil {
			return nil, fmt.Errorf("embedded NATS: cluster.listen port %q: %w", port, err)
		}
		opts.Routes = server.RoutesFromStr(strings.Join(c.Cluster.Routes, ","))
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded NATS did not become ready within 15s")
	}
	return s, nil
}

// StreamConfig is the part of the event stream a user configures.
type StreamConfig struct {
	Name            string          `yaml:"name"`
	Replicas        int             `yaml:"replicas"`
	MaxAge          time.Duration   `yaml:"max_age"`   // 0 keeps events forever
	MaxBytes        config.ByteSize `yaml:"max_bytes"` // 0 means no limit
	DuplicateWindow time.Duration   `yaml:"duplicate_window"`
	// The stream is the write model's log: deleting or purging events is
	// refused unless explicitly allowed.
	AllowDelete bool `yaml:"allow_delete"`
	AllowPurge  bool `yaml:"allow_purge"`
}

// DefaultStreamConfig is what the bridge provisions unless told otherwise.
func DefaultStreamConfig() StreamConfig {
	return StreamConfig{Name: DefaultStream, Replicas: 1, DuplicateWindow: 2 * time.Minute}
}

// Validate reports problems under the key prefix.
func (c StreamConfig) Validate(prefix string, p *config.Problems) {
	if err := envelope.ValidateToken(prefix+".name", c.Name); err != nil {
		p.Add(&config.KeyError{Key: prefix + ".name", Reason: "must be a stream name without dots, spaces or wildcards, e.g. EVENTS"})
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		p.Addf(prefix+".replicas", "must be between 1 and 5, got %d", c.Replicas)
	}
	if c.MaxAge < 0 {
		p.Addf(prefix+".max_age", "must not be negative; use 0 to keep events forever")
	}
	if c.MaxBytes < 0 {
		p.Addf(prefix+".max_bytes", "must not be negative; use 0 for no limit")
	}
	if c.DuplicateWindow <= 0 {
		p.Addf(prefix+".duplicate_window", "must be positive, e.g. 2m: appends retried within it are deduplicated by event id")
	}
	if c.MaxAge > 0 && c.DuplicateWindow > c.MaxAge {
		p.Addf(prefix+".duplicate_window", "must not exceed max_age (%s)", c.MaxAge)
	}
}

// JetStreamConfig turns the user's settings into the stream's configuration.
func (c StreamConfig) JetStreamConfig() jetstream.StreamConfig {
	maxBytes := int64(c.MaxBytes)
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:               c.Name,
		Description:        "jetsync domain events: events.<category>.<streamId>",
		Subjects:           []string{envelope.SubjectPrefix + ".>"},
		Storage:            jetstream.FileStorage,
		Retention:          jetstream.LimitsPolicy,
		Replicas:           c.Replicas,
		MaxAge:             c.MaxAge,
		MaxBytes:           maxBytes,
		Duplicates:         c.DuplicateWindow,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		DenyDelete:         !c.AllowDelete,
		DenyPurge:          !c.AllowPurge,
		Discard:            jetstream.DiscardOld,
	}
}

// EnsureStream creates the event stream or updates it to the wanted
// configuration; running it twice changes nothing.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, c.JetStreamConfig())
	if rerr := ReplicasError(err, "provisioning stream "+c.Name, "stream.replicas", c.Replicas); rerr != err {
		return nil, rerr
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return nil, fmt.Errorf("provisioning stream %s: %w (atomic batch publish needs nats-server >= 2.12)", c.Name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("provisioning stream %s: %w (is JetStream up, and on a cluster does the stream have a leader?)", c.Name, err)
	}
	return s, nil
}

// LastPosition is the position (stream sequence) of the last event in s
// matching any of filters, 0 when there is none: the head a sink catches up
// to. One direct get per filter.
func LastPosition(ctx context.Context, s jetstream.Stream, filters []string) (uint64, error) {
	var head uint64
	for _, f := range filters {
		m, err := s.GetLastMsgForSubject(ctx, f)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		head = max(head, m.Sequence)
	}
	return head, nil
}

// OpenKV opens the bucket cfg names as it is, creating it with cfg when
// missing. Sinks open their buckets this way: updating one to the sink's
// configuration would scale down what the bridge provisioned with more
// replicas (ProvisionKV). key names the setting cfg.Replicas comes from.
func OpenKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, key string) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile
			kv, err = js.KeyValue(ctx, cfg.Bucket)
		}
	}
	return kv, ReplicasError(err, "bucket "+cfg.Bucket, key, cfg.Replicas)
}

// ProvisionKV creates the bucket or updates it to cfg (the bridge, which
// owns the replica count of what it provisions).
func ProvisionKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, key string) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	return kv, ReplicasError(err, "bucket "+cfg.Bucket, key, cfg.Replicas)
}

// OpenStream opens the stream cfg names as it is, creating it with cfg
// when missing (see OpenKV).
func OpenStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, key string) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.Stream(ctx, cfg.Name)
		}
	}
	return s, ReplicasError(err, "stream "+cfg.Name, key, cfg.Replicas)
}

// ProvisionStream creates the stream or updates it to cfg (see ProvisionKV).
func ProvisionStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, key string) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	return s, ReplicasError(err, "stream "+cfg.Name, key, cfg.Replicas)
}

// Drain closes nc gracefully (pending publishes and deliveries finish),
// waiting at most 5s before closing it outright.
func Drain(nc *nats.Conn) {
	closed := nc.StatusChanged(nats.CLOSED)
	if nc.Drain() != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		nc.Close()
	}
}
