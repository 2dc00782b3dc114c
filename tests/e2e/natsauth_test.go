package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509/pkix"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestNATSAuthEveryComponent: against a NATS server that wants TLS and a
// user and password, the bridge (serve and import), sink-cache and
// jetsyncctl all connect with the same JETSYNC_NATS_* variables, and the
// pipeline works end to end.
func TestNATSAuthEveryComponent(t *testing.T) {
	ca := testenv.NewCA(t, "nats CA")
	certPEM, keyPEM, _ := ca.Issue(t, pkix.Name{CommonName: "nats"}, true)
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ns := testenv.NATSWith(t, func(o *server.Options) {
		o.Username, o.Password = "jetsync", "nats-pw"
		o.TLS = true
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
		o.TLSTimeout = 5
	})
	caFile := writeFile(t, "nats-ca.pem", string(ca.PEM))
	env := []string{
		"JETSYNC_NATS_URL=" + strings.Replace(ns.URL(), "nats://", "tls://", 1),
		"JETSYNC_NATS_USER=jetsync", "JETSYNC_NATS_PASSWORD=nats-pw", "JETSYNC_NATS_TLS_CA=" + caFile,
	}
	// The server really refuses a client without them.
	if out, err := exec.Command(filepath.Join(binDir, "jetsyncctl"), "-nats", ns.URL(), "status").CombinedOutput(); err == nil {
		t.Fatalf("jetsyncctl connected without credentials:\n%s", out)
	}

	rds := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: rds.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	port := testenv.FreePort(t)
	s := &stack{t: t, redis: rds, rdb: rdb, bridgeURL: fmt.Sprintf("http://127.0.0.1:%d", port)}
	bridgeCfg := writeFile(t, "bridge.yaml", fmt.Sprintf("http: {listen: \"127.0.0.1:%d\"}\n", port))
	s.bridge = startProcEnv(t, env, "bridge", "serve", "-config", bridgeCfg)
	testenv.Eventually(t, 30*time.Second, func() bool {
		code, _ := get(s.bridgeURL + "/readyz")
		return code == http.StatusOK
	}, "bridge never became ready over TLS with a password")

	// bridge import: ten streams of one event each.
	var ndjson strings.Builder
	for i := range 10 {
		fmt.Fprintf(&ndjson, `{"id":"imp-%d","category":"order","streamId":"imp-%d","type":"OrderPlaced","version":1,"time":"2026-01-01T00:00:00Z","data":{"imported":%d}}`+"\n", i, i, i)
	}
	imp := startProcEnv(t, env, "bridge", "import", "-config", bridgeCfg, "-progress=false", writeFile(t, "events.ndjson", ndjson.String()))
	if code := imp.waitExit(60 * time.Second); code != 0 {
		t.Fatalf("bridge import exited %d:\n%s", code, imp.output())
	}

	adminPort := testenv.FreePort(t)
	s.sinkConfig = writeFile(t, "sink-cache.yaml", sinkYAML("nats://unused-the-environment-overrides-it:4222", rds.Addr(), adminPort))
	s.sink = startProcEnv(t, env, "sink-cache", "-config", s.sinkConfig)
	w := newWorkload(10, 10)
	if err := w.appendAll(s, 5, 2); err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink-cache never reached %d over TLS with a password", head)
	w.verify(t, s)
	for i := range 10 {
		if got, _ := rdb.Get(context.Background(), fmt.Sprintf("order:imp-%d", i)).Result(); got != fmt.Sprintf(`{"imported":%d}`, i) {
			t.Errorf("order:imp-%d = %q: the imported event was not applied", i, got)
		}
	}

	ctl := exec.Command(filepath.Join(binDir, "jetsyncctl"), "status")
	ctl.Env = append(ctl.Environ(), env...)
	out, err := ctl.CombinedOutput()
	if err != nil || !strings.Contains(string(out), sinkName) {
		t.Fatalf("jetsyncctl status with JETSYNC_NATS_*: %v\n%s", err, out)
	}
	// The same with flags, and a half-given login refused before connecting.
	tlsURL := strings.Replace(ns.URL(), "nats://", "tls://", 1)
	flags := exec.Command(filepath.Join(binDir, "jetsyncctl"), "-nats", tlsURL, "-nats-user", "jetsync", "-nats-password", "nats-pw", "-nats-ca", caFile, "status")
	if out, err := flags.CombinedOutput(); err != nil || !strings.Contains(string(out), sinkName) {
		t.Fatalf("jetsyncctl status with -nats-* flags: %v\n%s", err, out)
	}
	half := exec.Command(filepath.Join(binDir, "jetsyncctl"), "-nats", tlsURL, "-nats-user", "jetsync", "status")
	out, _ = half.CombinedOutput()
	if half.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "nats.password") {
		t.Fatalf("jetsyncctl with a user and no password: exit %d, want 2 naming nats.password:\n%s", half.ProcessState.ExitCode(), out)
	}
	t.Logf("TLS + user/password NATS: bridge serve, bridge import, sink-cache and jetsyncctl (environment and flags) all connected; %d events folded", w.total()+10)
}
