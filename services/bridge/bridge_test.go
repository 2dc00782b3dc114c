package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestMain lets a test run the real main() in a child process.
func TestMain(m *testing.M) {
	if args := os.Getenv("BRIDGE_TEST_MAIN_ARGS"); args != "" {
		os.Args = append([]string{"bridge"}, strings.Fields(args)...)
		main()
		return
	}
	code := m.Run()
	stopSharedPostgres()
	os.Exit(code)
}

func embeddedConfig(t *testing.T, storeDir string) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.HTTP.ShutdownTimeout = 5 * time.Second
	cfg.NATS.Embedded.Port = -1
	cfg.NATS.Embedded.StoreDir = storeDir
	cfg.Append.Timeout = testTimeout
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestEmbeddedBridgeKeepsDataAcrossRestarts(t *testing.T) {
	cfg := embeddedConfig(t, t.TempDir())
	ctx := context.Background()

	b, err := New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + b.Addr()
	wantStatus(t, do(t, http.MethodGet, url+"/readyz", ""), http.StatusOK)
	r := do(t, http.MethodPost, url+"/streams/user/u1/events", newEvents("u1", 3))
	wantStatus(t, r, http.StatusOK)
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx); err != nil { // twice is fine
		t.Fatal(err)
	}

	b, err = New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	url = "http://" + b.Addr()
	st := do(t, http.MethodGet, url+"/streams/user/u1", "")
	wantStatus(t, st, http.StatusOK)
	if st.Version != 3 || st.LastPosition != r.Positions[2] {
		t.Fatalf("after restart %+v, want version 3 at %d", st, r.Positions[2])
	}
	r = do(t, http.MethodPost, url+"/streams/user/u1/events?expectedVersion=3", newEvents("u1-more", 1))
	wantStatus(t, r, http.StatusOK)
	if r.Version != 4 {
		t.Fatalf("version %d, want 4", r.Version)
	}
	// A retry from before the restart is still recognised.
	r = do(t, http.MethodPost, url+"/streams/user/u1/events", newEvents("u1-more", 1))
	if r.code != http.StatusOK || !r.Duplicate {
		t.Fatalf("retry after restart: %+v", r)
	}
}

func TestServeCommandStopsCleanly(t *testing.T) {
	port := testenv.FreePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf("http: {listen: 127.0.0.1:%d}\nnats:\n  embedded: {port: -1, store_dir: %s}\n", port, t.TempDir()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exit := make(chan int, 1)
	go func() { exit <- run(ctx, []string{"serve", "-config", cfgPath}, nil, nil, t.Output()) }()

	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.Eventually(t, 10*time.Second, func() bool {
		res, err := http.Get(url + "/healthz")
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == http.StatusOK
	}, "the bridge to serve")
	wantStatus(t, do(t, http.MethodPost, url+"/streams/a/b/events", newEvents("x", 2)), http.StatusOK)

	cancel() // what SIGTERM does through signal.NotifyContext
	select {
	case code := <-exit:
		if code != exitOK {
			t.Fatalf("exit code %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop within 20s")
	}
	if _, err := http.Get(url + "/healthz"); err == nil {
		t.Fatal("still serving after stop")
	}
}

func TestServeCommandRejectsBadConfig(t *testing.T) {
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"serve", "-config", writeConfig(t, "http: {listn: x}\n")}, nil, nil, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "http.listn") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if code := run(context.Background(), []string{"frobnicate"}, nil, nil, &stderr); code != exitUsage {
		t.Fatalf("unknown command: exit %d", code)
	}
}

// The real binary's main: SIGTERM stops it gracefully with exit code 0.
func TestMainStopsOnSIGTERM(t *testing.T) {
	port := testenv.FreePort(t)
	cfgPath := writeConfig(t, fmt.Sprintf("http: {listen: 127.0.0.1:%d}\nnats:\n  embedded: {port: -1, store_dir: %s}\n", port, t.TempDir()))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BRIDGE_TEST_MAIN_ARGS=serve -config "+cfgPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.Eventually(t, 15*time.Second, func() bool {
		res, err := http.Get(url + "/readyz")
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == http.StatusOK
	}, "the bridge process to be ready")
	wantStatus(t, do(t, http.MethodPost, url+"/streams/a/b/events", newEvents("x", 1)), http.StatusOK)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("bridge exited with %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("bridge did not stop within 20s of SIGTERM; stderr:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "bridge stopped") {
		t.Fatalf("no clean stop in the log:\n%s", stderr.String())
	}
}

// A config that exposes the API without auth fails at start (exit 2); with
// http.insecure it starts and warns.
func TestServeRefusesExposedListenWithoutAuth(t *testing.T) {
	dir := t.TempDir()
	p := writeConfig(t, "http: {listen: 0.0.0.0:0}\nnats: {embedded: {port: -1, store_dir: "+dir+"}}\n")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"serve", "-config", p}, nil, &out, &errb); code != exitUsage {
		t.Fatalf("exit %d, want %d: %s", code, exitUsage, errb.String())
	}
	if !strings.Contains(errb.String(), "http.insecure") {
		t.Fatalf("stderr does not name the fix: %s", errb.String())
	}

	cfg := embeddedConfig(t, dir)
	cfg.HTTP.Listen = "0.0.0.0:0"
	cfg.HTTP.Insecure = true
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	buf := &syncBuffer{}
	b, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), "INSECURE") {
		t.Fatalf("no warning at start:\n%s", buf.String())
	}
}
