// Package testenv starts the real servers jetsync's tests run against:
// an in-process NATS JetStream server and a redis-server process. A server
// that cannot be started fails the test: nothing is skipped silently.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/natsutil"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// NATSServer is an in-process JetStream server that can be stopped and
// started again on the same port and store, like a real restart.
type NATSServer struct {
	t         testing.TB
	port      int
	storeDir  string
	srv       *server.Server
	configure func(*server.Options) // NATSWith's changes; nil for a plain server
}

// NATS starts a JetStream server with its file store in a temp dir; it is
// shut down when the test ends.
func NATS(t testing.TB) *NATSServer {
	t.Helper()
	n := &NATSServer{t: t, port: FreePort(t), storeDir: t.TempDir()}
	n.Start()
	t.Cleanup(n.Stop)
	return n
}

// NATSWith starts a JetStream server like NATS, with configure's changes
// to its options (authorization, TLS); configure runs on every Start.
func NATSWith(t testing.TB, configure func(*server.Options)) *NATSServer {
	t.Helper()
	n := &NATSServer{t: t, port: FreePort(t), storeDir: t.TempDir(), configure: configure}
	n.Start()
	t.Cleanup(n.Stop)
	return n
}

// URL is the server's client URL.
func (n *NATSServer) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// Start (re)starts the server on its port and store.
func (n *NATSServer) Start() {
	n.t.Helper()
	if n.configure != nil {
		opts := &server.Options{ServerName: "jetsync-test", Host: "127.0.0.1", Port: n.port, JetStream: true,
			StoreDir: n.storeDir, NoSigs: true, NoLog: true}
		n.configure(opts)
		s, err := server.NewServer(opts)
		if err != nil {
			n.t.Fatalf("starting NATS: %v", err)
		}
		go s.Start()
		if !s.ReadyForConnections(15 * time.Second) {
			s.Shutdown()
			n.t.Fatalf("NATS did not become ready within 15s")
		}
		n.srv = s
		return
	}
	s, err := natsutil.RunEmbedded(natsutil.EmbeddedConfig{Host: "127.0.0.1", Port: n.port, StoreDir: n.storeDir})
	if err != nil {
		n.t.Fatalf("starting embedded NATS: %v", err)
	}
	n.srv = s
}

// Stop shuts the server down; safe to call twice.
func (n *NATSServer) Stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// Connect opens a client connection closed at the end of the test.
func (n *NATSServer) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return connectNATS(t, n.URL())
}

// connectNATS connects to urls (comma-separated), reconnecting for ever,
// and closes the connection at the end of the test.
func connectNATS(t testing.TB, urls string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connecting to NATS at %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// RedisServer is a redis-server process on a free port with an append-only
// file, so stopping and starting it loses nothing, like a real restart.
type RedisServer struct {
	t    testing.TB
	Port int
	dir  string
	cmd  *exec.Cmd
}

// RedisBinary finds redis-server or fails the test with how to install it.
func RedisBinary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("redis-server not found: run `make test` (it installs it), or `apt-get install -y redis-server`")
	return ""
}

// Redis starts a redis-server; it is stopped when the test ends.
func Redis(t testing.TB) *RedisServer {
	t.Helper()
	r := &RedisServer{t: t, Port: FreePort(t), dir: t.TempDir()}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Addr is host:port for go-redis.
func (r *RedisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.Port) }

// Start (re)starts the server on its port and data dir and waits until it
// accepts connections.
func (r *RedisServer) Start() {
	r.t.Helper()
	r.cmd = exec.Command(RedisBinary(r.t),
		"--bind", "127.0.0.1", "--port", strconv.Itoa(r.Port),
		"--dir", r.dir, "--appendonly", "yes", "--appendfsync", "everysec",
		"--save", "", "--protected-mode", "no", "--logfile", filepath.Join(r.dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("starting redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", r.Addr(), 200*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	r.t.Fatalf("redis-server did not accept connections on %s within 10s; its log:\n%s", r.Addr(), log)
}

// Stop shuts the server down gracefully (it syncs its append-only file);
// safe to call twice.
func (r *RedisServer) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-done
	}
	r.cmd = nil
}

// Eventually polls cond every 20ms until it is true or timeout passes, then
// fails the test with msg. Tests poll for conditions instead of sleeping.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
