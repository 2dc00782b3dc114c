package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// esInstallHint is how to get what testenv/elasticsearch/es.sh needs.
const esInstallHint = "install Java 17+, Maven 3.8+ and curl " +
	"(apt-get install -y openjdk-17-jdk-headless maven curl), " +
	"or set ES_URL to a running Elasticsearch 8 server"

// shared is the one Elasticsearch node per test binary.
var shared struct {
	once sync.Once
	mu   sync.Mutex
	url  string
	dir  string
	err  error
}

// Elasticsearch returns the base URL (no trailing slash) of a real
// Elasticsearch 8 server, with security off:
//
//   - if ES_URL is set, that server, after checking that GET / answers with
//     an 8.x version;
//   - otherwise one node that testenv/elasticsearch/es.sh starts on a free
//     127.0.0.1 port the first time any test of this test binary asks, and
//     that every later test of the binary shares. Tests must therefore use
//     their own index names.
//
// The shared node stops by itself when the test binary exits (it watches
// the binary's pid) and deletes its data. A TestMain may call
// StopElasticsearch after m.Run to stop it sooner. Starting it takes about
// 3s (plus a one-off ~45 MB Maven download into ~/.m2 on a new machine).
// A server that cannot be had fails the test; nothing is skipped.
func Elasticsearch(t testing.TB) string {
	t.Helper()
	if u, err := externalElasticsearch(); u != "" || err != nil {
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	shared.once.Do(func() {
		shared.mu.Lock()
		defer shared.mu.Unlock()
		dir, err := os.MkdirTemp("", "jetsync-es-")
		if err != nil {
			shared.err = err
			return
		}
		url, line, err := startES(dir, true)
		if err != nil {
			_ = os.RemoveAll(dir)
			shared.err = err
			return
		}
		shared.url, shared.dir = url, dir
		t.Logf("testenv: %s", line)
	})
	if shared.err != nil {
		t.Fatalf("starting the test Elasticsearch: %v", shared.err)
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.url == "" {
		t.Fatalf("the shared test Elasticsearch was stopped (StopElasticsearch) and is not started again")
	}
	return shared.url
}

// externalElasticsearch is the server at ES_URL, checked to answer as
// Elasticsearch 8; "" when ES_URL is unset.
func externalElasticsearch() (string, error) {
	u := strings.TrimRight(os.Getenv("ES_URL"), "/")
	if u == "" {
		return "", nil
	}
	if _, err := ElasticsearchVersion(u); err != nil {
		return "", fmt.Errorf("ES_URL=%s is not a usable Elasticsearch 8 server: %v", u, err)
	}
	return u, nil
}

// StartElasticsearch is Elasticsearch for a program that is not a test (a
// benchmark): the server at ES_URL if that is set (stop then does nothing),
// else a node of its own on a free port with its home in dir, which stop
// shuts down. The node also stops, and deletes dir, when this process
// exits. The error names what is missing when the node cannot start.
func StartElasticsearch(dir string) (url string, stop func(), err error) {
	if u, err := externalElasticsearch(); u != "" || err != nil {
		return u, func() {}, err
	}
	if url, _, err = startES(dir, true); err != nil {
		return "", nil, err
	}
	return url, func() { _ = stopES(dir) }, nil
}

// StopElasticsearch stops the node that Elasticsearch started for this test
// binary, if any, and deletes its data. Call it from a TestMain after m.Run
// to stop the node sooner than the binary's exit; safe to call twice.
func StopElasticsearch() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.dir == "" {
		return
	}
	_ = stopES(shared.dir)
	_ = os.RemoveAll(shared.dir)
	shared.url, shared.dir = "", ""
}

// ElasticsearchServer is a node of its own for one test, which can be
// stopped and started again on the same port and data, like a real
// restart: an outage drill for a sink. It always runs locally (ES_URL is
// not used for it).
type ElasticsearchServer struct {
	t    testing.TB
	URL  string
	port int
	dir  string
	up   bool
}

// NewElasticsearch starts a node for this test alone; it is stopped when
// the test ends. Prefer the shared Elasticsearch unless the test stops
// the server.
func NewElasticsearch(t testing.TB) *ElasticsearchServer {
	t.Helper()
	e := &ElasticsearchServer{t: t, port: FreePort(t), dir: t.TempDir()}
	e.URL = "http://127.0.0.1:" + strconv.Itoa(e.port)
	e.Start()
	t.Cleanup(e.Stop)
	return e
}

// Start (re)starts the node on its port and data dir and waits until it
// answers and its indices are recovered (cluster health yellow).
func (e *ElasticsearchServer) Start() {
	e.t.Helper()
	if e.up {
		return
	}
	if _, _, err := startESOnPort(e.port, e.dir, false); err != nil {
		e.t.Fatalf("starting a test Elasticsearch: %v", err)
	}
	e.up = true
}

// Stop shuts the node down cleanly (SIGTERM); safe to call twice.
func (e *ElasticsearchServer) Stop() {
	if !e.up {
		return
	}
	if err := stopES(e.dir); err != nil {
		e.t.Errorf("stopping the test Elasticsearch: %v", err)
	}
	e.up = false
}

// ElasticsearchVersion asks GET {url}/ for the server's version.number and
// fails unless it is 8.x.
func ElasticsearchVersion(url string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(strings.TrimRight(url, "/") + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		Version struct {
			Number string `json:"number"`
		} `json:"version"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET / answered %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", fmt.Errorf("GET / answered no JSON: %v", err)
	}
	if !strings.HasPrefix(body.Version.Number, "8.") {
		return "", fmt.Errorf("GET / answered version.number %q, want 8.x", body.Version.Number)
	}
	return body.Version.Number, nil
}

// startES starts a node on a free port with its home in dir. ownedByBinary
// makes the node stop and delete dir when this process exits.
func startES(dir string, ownedByBinary bool) (url, line string, err error) {
	var lastErr error
	for range 3 { // a free port can be taken before the node binds it
		port, err := freePort()
		if err != nil {
			return "", "", err
		}
		url, line, err := startESOnPort(port, dir, ownedByBinary)
		if err == nil {
			return url, line, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "BindException") && !strings.Contains(err.Error(), "already answers") {
			break
		}
	}
	return "", "", lastErr
}

// startESOnPort runs `es.sh start PORT DIR` and returns the URL it prints
// last and its "ready" line. The node always watches this process and stops
// when it exits; deleteHome also makes it delete dir then.
func startESOnPort(port int, dir string, deleteHome bool) (url, line string, err error) {
	script, err := esScript()
	if err != nil {
		return "", "", err
	}
	if _, err := exec.LookPath("bash"); err != nil {
		return "", "", fmt.Errorf("bash not found: %s", esInstallHint)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script, "start", strconv.Itoa(port), dir)
	cmd.Env = append(os.Environ(), "ES_OWNER_PID="+strconv.Itoa(os.Getpid()))
	if deleteHome {
		cmd.Env = append(cmd.Env, "ES_DELETE_HOME_ON_EXIT=1")
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		hint := ""
		if strings.Contains(msg, "not found") {
			hint = "\n" + esInstallHint
		}
		return "", "", fmt.Errorf("%s start %d %s: %v\n%s%s", script, port, dir, err, msg, hint)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	url = strings.TrimSpace(lines[len(lines)-1])
	if !strings.HasPrefix(url, "http://") {
		return "", "", fmt.Errorf("%s start printed no URL last:\n%s", script, stdout.String())
	}
	if len(lines) > 1 {
		line = lines[len(lines)-2]
	}
	return url, line, nil
}

// stopES runs `es.sh stop DIR`.
func stopES(dir string) error {
	script, err := esScript()
	if err != nil {
		return err
	}
	out, err := exec.Command("bash", script, "stop", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s stop %s: %v\n%s", script, dir, err, out)
	}
	return nil
}

func esScript() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "testenv", "elasticsearch", "es.sh"), nil
}

// RepoRoot walks up from the working directory (a package dir under go
// test, or anywhere inside the checkout) to the directory that holds go.work.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory: run the tests inside the jetsync repo")
		}
		dir = parent
	}
}

// freePort is FreePort without a testing.TB.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
