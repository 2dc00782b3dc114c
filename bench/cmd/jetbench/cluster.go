package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/natsutil"
)

// natsCluster is three JetStream servers in this process, routed to each
// other on loopback: enough for R3 streams, whose atomic batches
// nats-server stages in memory instead of in a new file store.
type natsCluster struct {
	servers []*server.Server
}

// startCluster starts the three servers with their stores under dir and
// waits until JetStream has a meta leader.
func startCluster(dir string) (*natsCluster, error) {
	const n = 3
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort()
	}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	c := &natsCluster{}
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("bench-n%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "jetbench", Host: "127.0.0.1", Port: ports[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		s, err := server.NewServer(opts)
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("cluster node %d: %w", i+1, err)
		}
		go s.Start()
		c.servers = append(c.servers, s)
		if !s.ReadyForConnections(15 * time.Second) {
			c.stop()
			return nil, fmt.Errorf("cluster node %d did not become ready", i+1)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for !c.hasMetaLeader() {
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("the 3-node cluster elected no JetStream meta leader within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c, nil
}

func (c *natsCluster) hasMetaLeader() bool {
	for _, s := range c.servers {
		if s.JetStreamIsLeader() {
			return true
		}
	}
	return false
}

// urls is the client URLs of every node, comma-separated.
func (c *natsCluster) urls() string {
	var u []string
	for _, s := range c.servers {
		u = append(u, s.ClientURL())
	}
	return strings.Join(u, ",")
}

func (c *natsCluster) stop() {
	for _, s := range c.servers {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// connectR3 connects to the cluster and provisions an R3 event stream
// configured like the bridge's (file storage, atomic publish, direct gets).
func connectR3(ctx context.Context, c *natsCluster) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(c.urls(), nats.Name("jetbench raw appends R3"))
	if err != nil {
		return nil, nil, err
	}
	js, _ := jetstream.New(nc)
	cfg := natsutil.DefaultStreamConfig()
	cfg.Replicas = 3
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		_, err = natsutil.EnsureStream(ctx, js, cfg)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // the cluster may still be forming
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("R3 stream: %w", err)
	}
	return nc, js, nil
}
