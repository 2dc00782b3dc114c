package testenv

import (
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// kinesaliteInstallHint is how to get what testenv/kinesalite needs.
const kinesaliteInstallHint = "install Node.js 20 + npm (apt-get install -y nodejs npm), " +
	"or set KINESIS_ENDPOINT to a running Kinesis-compatible server"

// KinesisServer is a Kinesis-compatible server (kinesalite, in
// testenv/kinesalite) for one test. A local one keeps its streams and
// records in a LevelDB store in the test's temp dir, so Stop and Start on
// the same port lose nothing, like a real outage and recovery.
//
// Clients use URL as the endpoint (aws-sdk-go-v2: kinesis.Options.BaseEndpoint)
// with any static credentials and region us-east-1.
type KinesisServer struct {
	URL string

	t        testing.TB
	external bool
	port     int
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{}
}

// Kinesalite returns a Kinesis-compatible server for this test: the one at
// KINESIS_ENDPOINT if that is set (it cannot be stopped or started then),
// else a kinesalite of its own on a free 127.0.0.1 port, stopped when the
// test ends. The first use runs `npm ci` in testenv/kinesalite if its
// node_modules is missing or older than package-lock.json. A server that
// cannot be had fails the test; nothing is skipped.
func Kinesalite(t testing.TB) *KinesisServer {
	t.Helper()
	if ep := os.Getenv("KINESIS_ENDPOINT"); ep != "" {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			t.Fatalf("KINESIS_ENDPOINT=%q is not a URL like http://127.0.0.1:4567", ep)
		}
		host := u.Host
		if u.Port() == "" {
			port := "80"
			if u.Scheme == "https" {
				port = "443"
			}
			host = net.JoinHostPort(u.Hostname(), port)
		}
		c, err := net.DialTimeout("tcp", host, 5*time.Second)
		if err != nil {
			t.Fatalf("KINESIS_ENDPOINT=%s does not accept connections: %v", ep, err)
		}
		c.Close()
		return &KinesisServer{URL: ep, t: t, external: true}
	}
	k := &KinesisServer{t: t, dir: t.TempDir()}
	k.Start()
	t.Cleanup(k.Stop)
	return k
}

// Start (re)starts a local server on its port and store and waits until it
// listens. The first Start lets the server pick a free port; later ones
// reuse it.
func (k *KinesisServer) Start() {
	k.t.Helper()
	if k.external {
		k.t.Fatalf("KinesisServer.Start: the server at KINESIS_ENDPOINT=%s is not ours to start; unset KINESIS_ENDPOINT for a local kinesalite", k.URL)
	}
	if k.cmd != nil {
		return
	}
	node, err := exec.LookPath("node")
	if err != nil {
		k.t.Fatalf("node not found: %s", kinesaliteInstallHint)
	}
	dir := kinesaliteDir(k.t)
	logf, err := os.OpenFile(filepath.Join(k.dir, "kinesalite.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		k.t.Fatalf("kinesalite log: %v", err)
	}
	listening := newLineWatch(logf)
	cmd := exec.Command(node, filepath.Join(dir, "server.js"), strconv.Itoa(k.port))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"KINESALITE_PATH="+filepath.Join(k.dir, "leveldb"),
		"KINESALITE_OWNER_PID="+strconv.Itoa(os.Getpid()))
	cmd.Stdout = listening
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		k.t.Fatalf("starting kinesalite: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()

	select {
	case port := <-listening.port:
		k.port = port
		k.URL = "http://127.0.0.1:" + strconv.Itoa(port)
		k.cmd, k.exited = cmd, exited
	case <-exited:
		log, _ := os.ReadFile(filepath.Join(k.dir, "kinesalite.log"))
		k.t.Fatalf("kinesalite exited before listening on port %d; its log:\n%s", k.port, log)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		log, _ := os.ReadFile(filepath.Join(k.dir, "kinesalite.log"))
		k.t.Fatalf("kinesalite did not listen within 30s; its log:\n%s", log)
	}
}

// Local reports whether the server is a kinesalite of this test's own
// (false for KINESIS_ENDPOINT), i.e. whether Stop and Start may be used.
func (k *KinesisServer) Local() bool { return !k.external }

// Stop shuts a local server down gracefully (it closes its LevelDB store);
// safe to call twice.
func (k *KinesisServer) Stop() {
	if k.external {
		k.t.Fatalf("KinesisServer.Stop: the server at KINESIS_ENDPOINT=%s is not ours to stop; unset KINESIS_ENDPOINT for a local kinesalite", k.URL)
	}
	if k.cmd == nil {
		return
	}
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(10 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.exited
	}
	k.cmd = nil
}

var kinesaliteSetup struct {
	once sync.Once
	dir  string
	err  error
}

// kinesaliteDir returns testenv/kinesalite with its node_modules installed
// (`npm ci`, once per test binary, under a file lock shared with test
// binaries running in parallel).
func kinesaliteDir(t testing.TB) string {
	t.Helper()
	kinesaliteSetup.once.Do(func() {
		kinesaliteSetup.dir, kinesaliteSetup.err = setupKinesalite()
	})
	if kinesaliteSetup.err != nil {
		t.Fatalf("preparing kinesalite: %v", kinesaliteSetup.err)
	}
	return kinesaliteSetup.dir
}

func setupKinesalite() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "testenv", "kinesalite")
	if _, err := exec.LookPath("node"); err != nil {
		return "", fmt.Errorf("node not found: %s", kinesaliteInstallHint)
	}
	// Lock the directory itself (no lock file to keep out of git).
	lock, err := os.Open(dir)
	if err != nil {
		return "", err
	}
	defer lock.Close() // closing releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("locking %s: %v", dir, err)
	}
	if kinesaliteInstalled(dir) {
		return dir, nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return "", fmt.Errorf("npm not found: %s", kinesaliteInstallHint)
	}
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("npm ci in %s: %v\n%s", dir, err, out.String())
	}
	if !kinesaliteInstalled(dir) {
		return "", fmt.Errorf("npm ci in %s left no node_modules/kinesalite:\n%s", dir, out.String())
	}
	return dir, nil
}

// kinesaliteInstalled reports whether node_modules holds kinesalite and is
// no older than package-lock.json (npm writes node_modules/.package-lock.json
// on every install).
func kinesaliteInstalled(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "kinesalite", "package.json")); err != nil {
		return false
	}
	installed, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json"))
	if err != nil {
		return false
	}
	lock, err := os.Stat(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return false
	}
	return !installed.ModTime().Before(lock.ModTime())
}

// lineWatch copies a child's stdout to a log and reports the port of its
// first `listening 127.0.0.1:PORT` line.
type lineWatch struct {
	mu   sync.Mutex
	log  *os.File
	buf  []byte
	sent bool
	port chan int
}

var listeningRE = regexp.MustCompile(`listening 127\.0\.0\.1:(\d+)`)

func newLineWatch(log *os.File) *lineWatch {
	return &lineWatch{log: log, port: make(chan int, 1)}
}

func (w *lineWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, _ = w.log.Write(p)
	if !w.sent {
		w.buf = append(w.buf, p...)
		if m := listeningRE.FindSubmatch(w.buf); m != nil {
			port, _ := strconv.Atoi(string(m[1]))
			w.port <- port
			w.sent = true
			w.buf = nil
		}
	}
	return len(p), nil
}
