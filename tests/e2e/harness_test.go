// Package e2e runs jetsync's processes as a user would: the bridge and
// sink binaries are built once, started as child processes against a real
// NATS JetStream server and a real redis-server, and killed or restarted to
// prove that nothing is lost, reordered or applied twice.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/testenv"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "jetsync-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// Every service with a main package, so each sink's e2e test finds its
	// binary here.
	services, _ := filepath.Glob(filepath.Join("..", "..", "services", "*", "main.go"))
	tools, _ := filepath.Glob(filepath.Join("..", "..", "cmd", "*", "main.go"))
	services = append(services, tools...)
	for _, mainGo := range services {
		svcDir := filepath.Dir(mainGo)
		svc := filepath.Base(svcDir)
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, svc), ".")
		cmd.Dir = svcDir
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n", svc, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a jetsync service running as a child process.
type proc struct {
	t    *testing.T
	name string
	args []string
	env  []string // added to this process's environment
	log  *bytes.Buffer
	mu   *sync.Mutex
	cmd  *exec.Cmd
	done chan error
}

type lockedBuffer struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (b lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// startProc runs binary svc with args; it is killed when the test ends.
func startProc(t *testing.T, svc string, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, nil, svc, args...)
}

// startProcEnv is startProc with env (NAME=value) added to the environment.
func startProcEnv(t *testing.T, env []string, svc string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: svc, args: args, env: env, log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output:\n%s", svc, p.output())
		}
	})
	return p
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(filepath.Join(binDir, p.name), p.args...)
	if p.env != nil {
		p.cmd.Env = append(os.Environ(), p.env...)
	}
	p.cmd.Stdout = lockedBuffer{p.mu, p.log}
	p.cmd.Stderr = lockedBuffer{p.mu, p.log}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("starting %s: %v", p.name, err)
	}
	p.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(p.cmd, p.done)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// kill sends SIGKILL: no flush, no checkpoint, the crash the tests want.
func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop(timeout time.Duration) int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s of SIGTERM", p.name, timeout)
	}
	code := p.cmd.ProcessState.ExitCode()
	p.cmd = nil
	return code
}

// waitExit waits for the process to exit by itself and returns its code.
func (p *proc) waitExit(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s still running after %s", p.name, timeout)
	}
	code := p.cmd.ProcessState.ExitCode()
	p.cmd = nil
	return code
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// stack is NATS + Redis + bridge + sink-cache, as `make up` runs them.
type stack struct {
	t          *testing.T
	nats       *testenv.NATSServer
	redis      *testenv.RedisServer
	rdb        *redis.Client
	bridgeURL  string
	bridge     *proc
	sink       *proc
	sinkConfig string
	sinkAdmin  string       // http://127.0.0.1:PORT of the sink's admin server
	retries    atomic.Int64 // appends a client had to send again
}

const sinkName = "cache"

func sinkYAML(natsURL, redisAddr string, adminPort int) string {
	return fmt.Sprintf(`name: %s
http: {listen: "127.0.0.1:%d"}
nats: {url: %q}
stream: EVENTS
filters: ["events.order.>"]
batch: {max_events: 500, max_bytes: 1MiB, max_interval: 20ms}
retry: {initial: 20ms, max: 500ms}
on_error: stop
shutdown_timeout: 5s
redis: {addr: %q}
mappings:
  OrderPlaced:
    - {op: set, key: "order:{streamId}"}
    - {op: append, key: "applied:{streamId}", value: "{position}"}
  OrderUpdated:
    - {op: set, key: "order:{streamId}"}
    - {op: append, key: "applied:{streamId}", value: "{position}"}
  OrderShipped:
    - {op: merge, key: "shipping:{streamId}"}
    - {op: append, key: "applied:{streamId}", value: "{position}"}
  OrderCancelled:
    - {op: del, key: "order:{streamId}"}
    - {op: append, key: "applied:{streamId}", value: "{position}"}
`, sinkName, adminPort, natsURL, redisAddr)
}

func newStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{t: t, nats: testenv.NATS(t), redis: testenv.Redis(t)}
	s.rdb = redis.NewClient(&redis.Options{Addr: s.redis.Addr(), MaxRetries: -1})
	t.Cleanup(func() { s.rdb.Close() })

	port := testenv.FreePort(t)
	s.bridgeURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	bridgeCfg := writeFile(t, "bridge.yaml", fmt.Sprintf("http: {listen: \"127.0.0.1:%d\"}\nnats: {url: %q}\n", port, s.nats.URL()))
	s.bridge = startProc(t, "bridge", "serve", "-config", bridgeCfg)
	testenv.Eventually(t, 20*time.Second, func() bool {
		resp, err := http.Get(s.bridgeURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "bridge never became ready")
	adminPort := testenv.FreePort(t)
	s.sinkAdmin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	s.sinkConfig = writeFile(t, "sink-cache.yaml", sinkYAML(s.nats.URL(), s.redis.Addr(), adminPort))
	return s
}

func (s *stack) startSink() {
	if s.sink == nil {
		s.sink = startProc(s.t, "sink-cache", "-config", s.sinkConfig)
		return
	}
	s.sink.start()
}

// checkpoint reads the sink's checkpoint from Redis (0 when absent).
func (s *stack) checkpoint() uint64 {
	v, err := s.rdb.Get(context.Background(), "jetsync:checkpoint:"+sinkName).Result()
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(v, 10, 64)
	return n
}

// ctl runs jetsyncctl against the stack's NATS and returns its combined
// output and exit code.
func (s *stack) ctl(args ...string) (string, int) {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "jetsyncctl"), append([]string{"-nats", s.nats.URL()}, args...)...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		s.t.Fatalf("running jetsyncctl: %v", err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// get fetches url and returns the status code and body.
func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// appendReq is one request body event.
type appendReq struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

type appendResp struct {
	Positions []uint64 `json:"positions"`
	Version   uint64   `json:"version"`
}

// post sends one append and returns the status code and body.
func (s *stack) post(path string, body []byte) (int, []byte) {
	resp, err := http.Post(s.bridgeURL+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
