package testenv

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/natsutil"
)

// Cluster is a JetStream cluster of in-process servers with distinct
// names, stores and client and route ports on loopback. A node can be
// stopped and started again on its port and store, like a node restart.
type Cluster struct {
	t     testing.TB
	Nodes []*ClusterNode
}

// ClusterNode is one server of a Cluster.
type ClusterNode struct {
	Name string
	cfg  natsutil.EmbeddedConfig
	srv  *server.Server
}

// ClusterConfigs is the embedded-server configuration of n cluster nodes
// on loopback with free ports and stores under dir: what StartCluster
// runs in this process, and what a test can hand to `bridge nats`
// processes instead.
func ClusterConfigs(t testing.TB, n int, dir string) []natsutil.EmbeddedConfig {
	t.Helper()
	routePorts := make([]int, n)
	var routes []string
	for i := range routePorts {
		routePorts[i] = FreePort(t)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[i]))
	}
	cfgs := make([]natsutil.EmbeddedConfig, n)
	for i := range cfgs {
		cfgs[i] = natsutil.EmbeddedConfig{
			Host: "127.0.0.1", Port: FreePort(t), StoreDir: filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			ServerName: fmt.Sprintf("n%d", i+1),
			Cluster:    natsutil.ClusterConfig{Name: "jetsync-test", Listen: fmt.Sprintf("127.0.0.1:%d", routePorts[i]), Routes: routes},
		}
	}
	return cfgs
}

// StartCluster starts n JetStream servers routed to each other and waits
// until the cluster has a JetStream meta leader; they are shut down when
// the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	for _, cfg := range ClusterConfigs(t, n, t.TempDir()) {
		c.Nodes = append(c.Nodes, &ClusterNode{Name: cfg.ServerName, cfg: cfg})
	}
	t.Cleanup(c.Stop)
	// The nodes start together: each waits for the others' routes before
	// JetStream is ready.
	errs := make(chan error, n)
	for _, node := range c.Nodes {
		go func() { errs <- node.start() }()
	}
	for range c.Nodes {
		if err := <-errs; err != nil {
			t.Fatalf("starting the NATS cluster: %v", err)
		}
	}
	c.WaitMetaLeader(60 * time.Second)
	return c
}

func (n *ClusterNode) start() error {
	s, err := natsutil.RunEmbedded(n.cfg)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.srv = s
	return nil
}

// URL is the node's client URL.
func (n *ClusterNode) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.cfg.Port) }

// Server is the running server, nil while the node is stopped.
func (n *ClusterNode) Server() *server.Server { return n.srv }

// Running reports whether the node is up.
func (n *ClusterNode) Running() bool { return n.srv != nil }

// URLs is every node's client URL, comma-separated: a client's nats.url.
func (c *Cluster) URLs() string {
	var u []string
	for _, n := range c.Nodes {
		u = append(u, n.URL())
	}
	return strings.Join(u, ",")
}

// Node is the node named name (n1, n2, ...).
func (c *Cluster) Node(name string) *ClusterNode {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("no cluster node %q", name)
	return nil
}

// StopNode shuts one node down.
func (c *Cluster) StopNode(n *ClusterNode) {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// StartNode starts a stopped node again on its port and store.
func (c *Cluster) StartNode(n *ClusterNode) {
	c.t.Helper()
	if err := n.start(); err != nil {
		c.t.Fatal(err)
	}
}

// Stop shuts every node down; safe to call twice.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		c.StopNode(n)
	}
}

// WaitMetaLeader waits until a running node leads the JetStream meta group.
func (c *Cluster) WaitMetaLeader(timeout time.Duration) {
	c.t.Helper()
	Eventually(c.t, timeout, func() bool {
		for _, n := range c.Nodes {
			if n.srv != nil && n.srv.JetStreamIsLeader() {
				return true
			}
		}
		return false
	}, "the NATS cluster elected no JetStream meta leader")
}

// StreamLeader is the node leading stream's Raft group, nil when none does.
func (c *Cluster) StreamLeader(stream string) *ClusterNode {
	for _, n := range c.Nodes {
		if n.srv != nil && n.srv.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return n
		}
	}
	return nil
}

// WaitStreamLeader waits until stream has a leader and every replica is
// current, and returns the leader.
func (c *Cluster) WaitStreamLeader(stream string, timeout time.Duration) *ClusterNode {
	c.t.Helper()
	var leader *ClusterNode
	Eventually(c.t, timeout, func() bool {
		leader = c.StreamLeader(stream)
		return leader != nil
	}, "stream %s has no leader", stream)
	return leader
}

// Connect opens a client connection to every node, closed at the end of
// the test.
func (c *Cluster) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return connectNATS(t, c.URLs())
}

// EnsureStream provisions an event stream with replicas on the cluster,
// retrying while the cluster settles (a new cluster may refuse placement
// for a moment).
func (c *Cluster) EnsureStream(t testing.TB, js jetstream.JetStream, replicas int) jetstream.Stream {
	t.Helper()
	cfg := natsutil.DefaultStreamConfig()
	cfg.Replicas = replicas
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		s, err := natsutil.EnsureStream(ctx, js, cfg)
		if err == nil {
			return s
		}
		if ctx.Err() != nil {
			t.Fatalf("R%d stream on the cluster: %v", replicas, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
