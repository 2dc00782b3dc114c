package sinkd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/httpauth"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsSink is a sink whose admin server serves HTTPS with certificates made
// in the test; one event (position 1, category order) is in the stream.
type tlsSink struct {
	svc      *Service
	url      string
	serverCA *testenv.CA
	clientCA *testenv.CA
	certFile string
	keyFile  string
	hup      chan os.Signal
}

func startTLSSink(t *testing.T, mutual bool, edit func(*sink.Config)) *tlsSink {
	t.Helper()
	dir := t.TempDir()
	ts := &tlsSink{serverCA: testenv.NewCA(t, "server CA"), clientCA: testenv.NewCA(t, "client CA"),
		certFile: filepath.Join(dir, "admin.pem"), keyFile: filepath.Join(dir, "admin.key"), hup: make(chan os.Signal, 1)}
	c, k, _ := ts.serverCA.Issue(t, pkix.Name{CommonName: "sink"}, true)
	writeFile(t, ts.certFile, c)
	writeFile(t, ts.keyFile, k)

	srv := testenv.NATS(t)
	_, js := srv.Connect(t)
	if _, err := natsutil.EnsureStream(t.Context(), js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	ev := envelope.Event{ID: "e-1", Category: "order", StreamID: "o-1", Type: "T", Version: 1, Time: time.Now(), Data: []byte("{}")}
	if _, err := js.PublishMsg(t.Context(), ev.ToMsg()); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig{sink.DefaultConfig("admin")}
	cfg.NATS.URL = srv.URL()
	cfg.Filters = []string{"events.order.>"}
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.HTTP.TLS = httpauth.TLSConfig{CertFile: ts.certFile, KeyFile: ts.keyFile}
	if mutual {
		cfg.HTTP.TLS.ClientCAFile = filepath.Join(dir, "clients.pem")
		writeFile(t, cfg.HTTP.TLS.ClientCAFile, ts.clientCA.PEM)
	}
	if edit != nil {
		edit(&cfg.Config)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	svc, err := New(t.Context(), cfg.Config, nopWriter{}, slog.New(slog.NewTextHandler(t.Output(), nil)), withReloadSignal(ts.hup))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	ts.svc, ts.url = svc, "https://"+svc.Addr()
	return ts
}

// client trusts ca and presents cert (none when nil).
func httpsClient(t *testing.T, ca *testenv.CA, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(c *http.Client, url, token string) (*http.Response, string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	return res, string(raw), nil
}

// TestAdminTokens: over HTTPS, /wait and /readyz take a read: token
// covering the sink's filters (events.order.>): none or an unknown one is
// 401 with WWW-Authenticate, one for another category 403 naming the scope;
// /metrics and /healthz stay open, unless protected; no secret in a body.
func TestAdminTokens(t *testing.T) {
	tokens := []httpauth.Token{
		{Name: "reader", SHA256: httpauth.HashToken("s3cret-reader"), Scopes: []string{"read:order"}},
		{Name: "all", SHA256: httpauth.HashToken("s3cret-all"), Scopes: []string{"read:*"}},
		{Name: "prefix", SHA256: httpauth.HashToken("s3cret-prefix"), Scopes: []string{"read:ord*"}},
		{Name: "ops", SHA256: httpauth.HashToken("s3cret-ops"), Scopes: []string{"admin"}},
		{Name: "billing", SHA256: httpauth.HashToken("s3cret-billing"), Scopes: []string{"read:invoice", "append:order"}},
	}
	ts := startTLSSink(t, false, func(c *sink.Config) { c.HTTP.Tokens = tokens })
	c := httpsClient(t, ts.serverCA, nil)
	testenv.Eventually(t, 10*time.Second, func() bool {
		res, _, err := get(c, ts.url+"/wait?position=1", "s3cret-reader")
		return err == nil && res.StatusCode == 200
	}, "the sink never applied position 1")

	tests := []struct {
		name, path, token string
		want              int
		wantAuth          string // in WWW-Authenticate
	}{
		{"wait: read:order", "/wait?position=1", "s3cret-reader", 200, ""},
		{"wait: read:*", "/wait?position=1", "s3cret-all", 200, ""},
		{"wait: read:ord*", "/wait?position=1", "s3cret-prefix", 200, ""},
		{"wait: admin", "/wait?position=1", "s3cret-ops", 200, ""},
		{"wait: no token", "/wait?position=1", "", 401, `Bearer realm="jetsync"`},
		{"wait: unknown token", "/wait?position=1", "guess", 401, `error="invalid_token"`},
		{"wait: wrong scope", "/wait?position=1", "s3cret-billing", 403, `scope="read:order"`},
		{"readyz: read:order", "/readyz", "s3cret-reader", 200, ""},
		{"readyz: no token", "/readyz", "", 401, `Bearer realm="jetsync"`},
		{"readyz: wrong scope", "/readyz", "s3cret-billing", 403, `error="insufficient_scope"`},
		{"metrics: open", "/metrics", "", 200, ""},
		{"healthz: open", "/healthz", "", 200, ""},
	}
	raw, err := os.ReadFile("../../docs/sink-admin.openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatal(err)
	}
	doc.Servers = openapi3.Servers{{URL: ts.url}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body, err := get(c, ts.url+tt.path, tt.token)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", res.StatusCode, tt.want, body)
			}
			// The answer conforms to docs/sink-admin.openapi.yaml.
			req := mustRequest(t, "GET", ts.url+tt.path)
			route, params, err := router.FindRoute(req)
			if err != nil {
				t.Fatal(err)
			}
			opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true}
			out := &openapi3filter.ResponseValidationInput{Status: res.StatusCode, Header: res.Header, Options: opts,
				RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}}
			out.SetBodyBytes([]byte(body))
			if err := openapi3filter.ValidateResponse(t.Context(), out); err != nil {
				t.Errorf("answer %d %s breaks the contract: %v", res.StatusCode, body, err)
			}
			if got := res.Header.Get("WWW-Authenticate"); !strings.Contains(got, tt.wantAuth) {
				t.Errorf("WWW-Authenticate = %q, want it to hold %q", got, tt.wantAuth)
			}
			if strings.Contains(body, "s3cret") || strings.Contains(body, "guess") {
				t.Errorf("the body shows the token: %s", body)
			}
		})
	}

	t.Run("protected metrics and healthz", func(t *testing.T) {
		ts := startTLSSink(t, false, func(c *sink.Config) {
			c.HTTP.Tokens = tokens
			c.HTTP.ProtectMetrics, c.HTTP.ProtectHealthz = true, true
		})
		c := httpsClient(t, ts.serverCA, nil)
		for _, p := range []string{"/metrics", "/healthz"} {
			if res, body, err := get(c, ts.url+p, ""); err != nil || res.StatusCode != 401 {
				t.Errorf("%s without a token: %v %v %s, want 401", p, res.StatusCode, err, body)
			}
			if res, body, err := get(c, ts.url+p, "s3cret-reader"); err != nil || res.StatusCode != 200 {
				t.Errorf("%s with a token: %v %v %s, want 200", p, res.StatusCode, err, body)
			}
		}
	})
}

// TestAdminTokensFileReload: http.tokens_file (the bridge's format, limits
// accepted) is read again on SIGHUP: a token added works, one removed is
// refused.
func TestAdminTokensFileReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	writeFile(t, file, []byte("tokens:\n  - {name: old, sha256: "+httpauth.HashToken("old-secret")+", scopes: [\"read:*\"], max_inflight: 4}\n"))
	ts := startTLSSink(t, false, func(c *sink.Config) { c.HTTP.TokensFile = file })
	c := httpsClient(t, ts.serverCA, nil)
	if res, body, err := get(c, ts.url+"/readyz", "old-secret"); err != nil || res.StatusCode == 401 {
		t.Fatalf("old token refused: %v %s", err, body)
	}
	writeFile(t, file, []byte("tokens:\n  - {name: new, sha256: "+httpauth.HashToken("new-secret")+", scopes: [\"read:order\"]}\n"))
	ts.hup <- syscall.SIGHUP
	testenv.Eventually(t, 10*time.Second, func() bool {
		res, _, err := get(c, ts.url+"/healthz", "")
		if err != nil || res.StatusCode != 200 {
			return false
		}
		res, _, err = get(c, ts.url+"/readyz", "new-secret")
		return err == nil && res.StatusCode != 401
	}, "the new token was never accepted")
	if res, body, err := get(c, ts.url+"/readyz", "old-secret"); err != nil || res.StatusCode != 401 {
		t.Fatalf("removed token: %v %v %s, want 401", res.StatusCode, err, body)
	}
}

// TestAdminMutualTLS: with http.tls.client_ca_file and no tokens, a client
// needs a certificate of that CA; with tokens too, either one.
func TestAdminMutualTLS(t *testing.T) {
	ts := startTLSSink(t, true, nil)
	other := testenv.NewCA(t, "someone else's CA")
	tests := []struct {
		name string
		cert *tls.Certificate
		ok   bool
	}{
		{"client cert of the CA", ts.clientCA.ClientCert(t, pkix.Name{CommonName: "reader"}), true},
		{"no client cert", nil, false},
		{"cert of another CA", other.ClientCert(t, pkix.Name{CommonName: "reader"}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, body, err := get(httpsClient(t, ts.serverCA, tt.cert), ts.url+"/wait?position=1&timeout=5s", "")
			if !tt.ok {
				if err == nil {
					t.Fatalf("accepted without a valid client certificate: %d %s", res.StatusCode, body)
				}
				return
			}
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("refused: %v %s", err, body)
			}
		})
	}

	t.Run("token or certificate", func(t *testing.T) {
		ts := startTLSSink(t, true, func(c *sink.Config) {
			c.HTTP.Tokens = []httpauth.Token{{Name: "reader", SHA256: httpauth.HashToken("tok"), Scopes: []string{"read:order"}}}
		})
		for _, tt := range []struct {
			name  string
			cert  *tls.Certificate
			token string
			want  int
		}{
			{"certificate", ts.clientCA.ClientCert(t, pkix.Name{CommonName: "x"}), "", 200},
			{"token", nil, "tok", 200},
			{"neither", nil, "", 401},
		} {
			res, body, err := get(httpsClient(t, ts.serverCA, tt.cert), ts.url+"/wait?position=1&timeout=5s", tt.token)
			if err != nil || res.StatusCode != tt.want {
				t.Errorf("%s: %v %v %s, want %d", tt.name, err, res, body, tt.want)
			}
		}
	})
}

// TestAdminCertRotation: SIGHUP re-reads the certificate files; a broken
// pair is refused and the running one stays.
func TestAdminCertRotation(t *testing.T) {
	ts := startTLSSink(t, false, nil)
	if res, _, err := get(httpsClient(t, ts.serverCA, nil), ts.url+"/healthz", ""); err != nil || res.StatusCode != 200 {
		t.Fatalf("before rotation: %v", err)
	}
	// A broken file: refused, the old certificate is still served.
	writeFile(t, ts.keyFile, []byte("not a key"))
	if err := ts.svc.ReloadAdminTLS(); err == nil || !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("reload of a broken key: %v, want a config error", err)
	}
	if _, _, err := get(httpsClient(t, ts.serverCA, nil), ts.url+"/healthz", ""); err != nil {
		t.Fatalf("after a refused reload: %v", err)
	}

	rotated := testenv.NewCA(t, "new server CA")
	c, k, _ := rotated.Issue(t, pkix.Name{CommonName: "sink"}, true)
	writeFile(t, ts.certFile, c)
	writeFile(t, ts.keyFile, k)
	ts.hup <- syscall.SIGHUP
	testenv.Eventually(t, 10*time.Second, func() bool {
		res, _, err := get(httpsClient(t, rotated, nil), ts.url+"/healthz", "")
		return err == nil && res.StatusCode == 200
	}, "the new certificate was never served")
	if _, _, err := get(httpsClient(t, ts.serverCA, nil), ts.url+"/healthz", ""); err == nil {
		t.Fatal("the old certificate is still served after SIGHUP")
	}
}

// TestAdminConfig: the admin keys are checked and named; unknown ones are
// refused.
func TestAdminConfig(t *testing.T) {
	dir := t.TempDir()
	for name, tt := range map[string]struct{ yaml, want string }{
		"unknown key":          {"http:\n  tls:\n    cert: x\n", "http.tls.cert"},
		"unknown token key":    {"http:\n  tokens: [{name: a, secret: x}]\n", "http.tokens[0].secret"},
		"key without cert":     {"http:\n  tls: {key_file: k.pem}\n", "http.tls.cert_file"},
		"missing files":        {"http:\n  tls: {cert_file: /nope.pem, key_file: /nope.key}\n", "http.tls.cert_file"},
		"ca without tls":       {"http:\n  tls: {client_ca_file: ca.pem}\n", "http.tls.client_ca_file"},
		"bad hash":             {"http:\n  tokens: [{name: a, sha256: hunter2, scopes: [\"read:*\"]}]\n", "http.tokens[0].sha256"},
		"bad scope":            {"http:\n  tokens: [{name: a, sha256: " + httpauth.HashToken("x") + ", scopes: [\"write:*\"]}]\n", "http.tokens[0].scopes[0]"},
		"no scope":             {"http:\n  tokens: [{name: a, sha256: " + httpauth.HashToken("x") + "}]\n", "http.tokens[0].scopes"},
		"missing tokens file":  {"http:\n  tokens_file: /nope.yaml\n", "http.tokens_file"},
		"protect without auth": {"http:\n  protect_metrics: true\n", "http.protect_metrics"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
			writeFile(t, path, []byte(tt.yaml))
			cfg := testConfig{sink.DefaultConfig("x")}
			err := config.Load(path, "", &cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("err = %v, want one naming %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error echoes the value: %v", err)
			}
		})
	}
}
