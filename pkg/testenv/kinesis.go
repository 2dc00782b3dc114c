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
	proc     *kinesalite
}

// Kinesalite returns a Kinesis-compatible server for this test: the one at
// KINESIS_ENDPOINT if that is set (it cannot be stopped or started then),
// else a kinesalite of its own on a free 127.0.0.1 port, stopped when the
// test ends. The first use runs `npm ci` in testenv/kinesalite if its
// node_modules is missing or older than package-lock.json. A server that
// cannot be had fails the test; nothing is skipped.
func Kinesalite(t testing.TB) *KinesisServer {
	t.Helper()
	if ep, err := externalKinesis(); ep != "" || err != nil {
		if err != nil {
			t.Fatal(err)
		}
		return &KinesisServer{URL: ep, t: t, external: true}
	}
	k := &KinesisServer{t: t, dir: t.TempDir()}
	k.Start()
	t.Cleanup(k.Stop)
	return k
}

// StartKinesalite is Kinesalite for a program that is not a test (a
// benchmark): the server at KINESIS_ENDPOINT if that is set (stop then does
// nothing), else a kinesalite of its own on a free port with its store and
// log in dir, which stop shuts down. The error names what is missing when
// it cannot start.
func StartKinesalite(dir string) (url string, stop func(), err error) {
	if ep, err := externalKinesis(); ep != "" || err != nil {
		return ep, func() {}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	p, err := runKinesalite(dir, 0)
	if err != nil {
		return "", nil, err
	}
	return p.url(), p.stop, nil
}

// externalKinesis is the server at KINESIS_ENDPOINT, checked to accept
// connections; "" when KINESIS_ENDPOINT is unset.
func externalKinesis() (string, error) {
	ep := os.Getenv("KINESIS_ENDPOINT")
	if ep == "" {
		return "", nil
	}
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("KINESIS_ENDPOINT=%q is not a URL like http://127.0.0.1:4567", ep)
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
		return "", fmt.Errorf("KINESIS_ENDPOINT=%s does not accept connections: %v", ep, err)
	}
	c.Close()
	return ep, nil
}

// Start (re)starts a local server on its port and store and waits until it
// listens. The first Start lets the server pick a free port; later ones
// reuse it.
func (k *KinesisServer) Start() {
	k.t.Helper()
	if k.external {
		k.t.Fatalf("KinesisServer.Start: the server at KINESIS_ENDPOINT=%s is not ours to start; unset KINESIS_ENDPOINT for a local kinesalite", k.URL)
	}
	if k.proc != nil {
		return
	}
	p, err := runKinesalite(k.dir, k.port)
	if err != nil {
		k.t.Fatal(err)
	}
	k.proc, k.port, k.URL = p, p.port, p.url()
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
	if k.proc == nil {
		return
	}
	k.proc.stop()
	k.proc = nil
}

// kinesalite is a running testenv/kinesalite server process.
type kinesalite struct {
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
}

func (p *kinesalite) url() string { return "http://127.0.0.1:" + strconv.Itoa(p.port) }

// runKinesalite starts testenv/kinesalite on port (0: a free one) with its
// LevelDB store and log in dir, and waits until it listens. It stops by
// itself when this process exits.
func runKinesalite(dir string, port int) (*kinesalite, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("node not found: %s", kinesaliteInstallHint)
	}
	kdir, err := kinesaliteDir()
	if err != nil {
		return nil, fmt.Errorf("preparing kinesalite: %v", err)
	}
	logPath := filepath.Join(dir, "kinesalite.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kinesalite log: %v", err)
	}
	listening := newLineWatch(logf)
	cmd := exec.Command(node, filepath.Join(kdir, "server.js"), strconv.Itoa(port))
	cmd.Dir = kdir
	cmd.Env = append(os.Environ(),
		"KINESALITE_PATH="+filepath.Join(dir, "leveldb"),
		"KINESALITE_OWNER_PID="+strconv.Itoa(os.Getpid()))
	cmd.Stdout = listening
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting kinesalite: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()

	select {
	case port := <-listening.port:
		return &kinesalite{port: port, cmd: cmd, exited: exited}, nil
	case <-exited:
		log, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("kinesalite exited before listening on port %d; its log:\n%s", port, log)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		log, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("kinesalite did not listen within 30s; its log:\n%s", log)
	}
}

// stop shuts the server down gracefully (it closes its LevelDB store).
func (p *kinesalite) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

var kinesaliteSetup struct {
	once sync.Once
	dir  string
	err  error
}

// kinesaliteDir returns testenv/kinesalite with its node_modules installed
// (`npm ci`, once per process, under a file lock shared with test
// binaries running in parallel).
func kinesaliteDir() (string, error) {
	kinesaliteSetup.once.Do(func() {
		kinesaliteSetup.dir, kinesaliteSetup.err = setupKinesalite()
	})
	return kinesaliteSetup.dir, kinesaliteSetup.err
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
