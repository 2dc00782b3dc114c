package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/testenv"
)

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsBridge is a bridge serving HTTPS with certificates made in the test.
type tlsBridge struct {
	b        *Bridge
	url      string
	serverCA *testenv.CA
	clientCA *testenv.CA
	certFile string
	keyFile  string
	log      *syncBuffer
}

func startTLSBridge(t *testing.T, auth AuthConfig, mutual bool) *tlsBridge {
	t.Helper()
	dir := t.TempDir()
	tb := &tlsBridge{serverCA: testenv.NewCA(t, "server CA"), clientCA: testenv.NewCA(t, "client CA"), log: &syncBuffer{},
		certFile: filepath.Join(dir, "server.pem"), keyFile: filepath.Join(dir, "server.key")}
	c, k, _ := tb.serverCA.Issue(t, pkix.Name{CommonName: "bridge"}, true)
	writeFile(t, tb.certFile, c)
	writeFile(t, tb.keyFile, k)
	cfg := DefaultConfig()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.HTTP.ShutdownTimeout = 5 * time.Second
	cfg.NATS.URL = testenv.NATS(t).URL()
	cfg.Append.Timeout = testTimeout
	cfg.HTTP.TLS = TLSConfig{CertFile: tb.certFile, KeyFile: tb.keyFile}
	if mutual {
		cfg.HTTP.TLS.ClientCAFile = filepath.Join(dir, "clients.pem")
		writeFile(t, cfg.HTTP.TLS.ClientCAFile, tb.clientCA.PEM)
	}
	cfg.Auth = auth
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(tb.log, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := New(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	tb.b, tb.url = b, "https://"+b.Addr()
	return tb
}

// client trusts the server CA and presents cert (none when nil).
func (tb *tlsBridge) client(t *testing.T, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(tb.serverCA.Cert)
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func send(c *http.Client, method, url, body, token string) (int, string, error) {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(raw), nil
}

func TestMutualTLS(t *testing.T) {
	auth := AuthConfig{ClientCerts: []ClientCertConfig{
		{Subject: "orders", Scopes: []string{"append:order", "read:order"}},
		{Subject: "CN=billing,O=acme", Scopes: []string{"append:invoice"}},
	}}
	tb := startTLSBridge(t, auth, true)
	other := testenv.NewCA(t, "someone else's CA")
	tests := []struct {
		name      string
		cert      *tls.Certificate
		path      string
		want      int // 0: the handshake fails
		principal string
	}{
		{"client cert by CN", tb.clientCA.ClientCert(t, pkix.Name{CommonName: "orders", Organization: []string{"acme"}}), "/streams/order/m1/events", 200, "CN=orders,O=acme"},
		{"client cert by subject", tb.clientCA.ClientCert(t, pkix.Name{CommonName: "billing", Organization: []string{"acme"}}), "/streams/invoice/m2/events", 200, "CN=billing,O=acme"},
		{"wrong scope", tb.clientCA.ClientCert(t, pkix.Name{CommonName: "orders"}), "/streams/invoice/m3/events", 403, ""},
		{"unlisted subject", tb.clientCA.ClientCert(t, pkix.Name{CommonName: "stranger"}), "/streams/order/m4/events", 403, ""},
		{"no client cert", nil, "/streams/order/m5/events", 0, ""},
		{"cert of another CA", other.ClientCert(t, pkix.Name{CommonName: "orders"}), "/streams/order/m6/events", 0, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body, err := send(tb.client(t, tt.cert), "POST", tb.url+tt.path, newEvents("m"+string(rune('a'+i)), 1), "")
			if tt.want == 0 {
				if err == nil {
					t.Fatalf("accepted without a valid client certificate: %d %s", code, body)
				}
				return
			}
			if err != nil || code != tt.want {
				t.Fatalf("%d %s %v, want %d", code, body, err, tt.want)
			}
			if tt.principal != "" {
				parts := strings.Split(tt.path, "/")
				evs := readSubject(t, tb.b.js, "events."+parts[2]+"."+parts[3])
				if len(evs) != 1 || evs[0].Principal != tt.principal {
					t.Fatalf("stored %+v, want principal %q", evs, tt.principal)
				}
			}
		})
	}
	// /healthz needs no scope but still the TLS handshake.
	if code, _, err := send(tb.client(t, tb.clientCA.ClientCert(t, pkix.Name{CommonName: "x"})), "GET", tb.url+"/healthz", "", ""); err != nil || code != 200 {
		t.Fatalf("/healthz: %d %v", code, err)
	}
}

// With tokens and a client CA, a client sends either; a token wins over a
// certificate for the principal.
func TestTLSTokenOrCertificate(t *testing.T) {
	auth := testAuthConfig()
	auth.ClientCerts = []ClientCertConfig{{Subject: "orders", Scopes: []string{"append:*"}}}
	tb := startTLSBridge(t, auth, true)
	if code, body, err := send(tb.client(t, nil), "POST", tb.url+"/streams/order/t1/events", newEvents("t1", 1), secretWriter); err != nil || code != 200 {
		t.Fatalf("token without certificate: %d %s %v", code, body, err)
	}
	if code, _, err := send(tb.client(t, nil), "POST", tb.url+"/streams/order/t1/events", newEvents("t2", 1), ""); err != nil || code != 401 {
		t.Fatalf("neither: %d %v", code, err)
	}
	cert := tb.clientCA.ClientCert(t, pkix.Name{CommonName: "orders"})
	if code, body, err := send(tb.client(t, cert), "POST", tb.url+"/streams/order/t1/events", newEvents("t3", 1), secretWriter); err != nil || code != 200 {
		t.Fatalf("both: %d %s %v", code, body, err)
	}
	evs := readSubject(t, tb.b.js, "events.order.t1")
	if len(evs) != 2 || evs[0].Principal != "writer" || evs[1].Principal != "writer" {
		t.Fatalf("stored %+v", evs)
	}
	assertNoSecretsLogged(t, tb.log.String())
}

// servedSerial is the serial number of the certificate the bridge presents.
func servedSerial(t *testing.T, tb *tlsBridge) int64 {
	t.Helper()
	conn, err := tls.Dial("tcp", tb.b.Addr(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func TestTLSRotationBySIGHUP(t *testing.T) {
	tb := startTLSBridge(t, testAuthConfig(), false)
	before := servedSerial(t, tb)
	if code, _, err := send(tb.client(t, nil), "GET", tb.url+"/healthz", "", ""); err != nil || code != 200 {
		t.Fatalf("%d %v", code, err)
	}

	// A broken file is refused and the served certificate stays.
	writeFile(t, tb.certFile, []byte("not a certificate"))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return strings.Contains(tb.log.String(), "certificates not reloaded") },
		"no reload error logged:\n%s", tb.log.String())
	if got := servedSerial(t, tb); got != before {
		t.Fatalf("serving %d after a failed reload, want %d", got, before)
	}

	// New files, then SIGHUP: new handshakes get the new certificate.
	c, k, after := tb.serverCA.Issue(t, pkix.Name{CommonName: "bridge rotated"}, true)
	writeFile(t, tb.certFile, c)
	writeFile(t, tb.keyFile, k)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return servedSerial(t, tb) == after },
		"still serving serial %d, want %d", servedSerial(t, tb), after)
	if code, _, err := send(tb.client(t, nil), "POST", tb.url+"/streams/order/r1/events", newEvents("r1", 1), secretWriter); err != nil || code != 200 {
		t.Fatalf("after rotation: %d %v", code, err)
	}
}

func TestTLSConfigProblems(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	for _, tt := range []struct {
		name string
		tls  TLSConfig
		auth AuthConfig
		keys []string
	}{
		{"cert without key", TLSConfig{CertFile: missing}, AuthConfig{}, []string{"http.tls.key_file"}},
		{"key without cert", TLSConfig{KeyFile: missing}, AuthConfig{}, []string{"http.tls.cert_file"}},
		{"unreadable", TLSConfig{CertFile: missing, KeyFile: missing}, AuthConfig{}, []string{"http.tls.cert_file"}},
		{"client CA without TLS", TLSConfig{ClientCAFile: missing}, AuthConfig{}, []string{"http.tls.client_ca_file"}},
		{"client certs without client CA", TLSConfig{}, AuthConfig{ClientCerts: []ClientCertConfig{{Subject: "x", Scopes: []string{"admin"}}}}, []string{"auth.client_certs"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.HTTP.TLS, cfg.Auth = tt.tls, tt.auth
			err := cfg.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, k := range tt.keys {
				if !strings.Contains(err.Error(), k) {
					t.Errorf("error does not name %s: %v", k, err)
				}
			}
		})
	}
}
