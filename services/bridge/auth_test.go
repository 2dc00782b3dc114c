package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/httpauth"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// Secrets of the test tokens; only their hashes are configured.
const (
	secretWriter = "jst_writer-secret-0123456789"
	secretReader = "jst_reader-secret-0123456789"
	secretAdmin  = "jst_admin-secret-0123456789"
	secretOther  = "jst_other-secret-0123456789" // configured nowhere
)

func testAuthConfig() AuthConfig {
	return AuthConfig{Tokens: []TokenConfig{
		{Name: "writer", SHA256: httpauth.HashToken(secretWriter), Scopes: []string{"append:order", "append:user-*", "read:order"}},
		{Name: "reader", SHA256: httpauth.HashToken(secretReader), Scopes: []string{"read:*"}},
		{Name: "ops", SHA256: httpauth.HashToken(secretAdmin), Scopes: []string{"admin"}},
	}}
}

// syncBuffer is a log sink tests can search.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// authEnv is a bridge with auth on whose log (every level) is captured.
type authEnv struct {
	url string
	js  jetstream.JetStream
	app *Appender
	log *syncBuffer
}

func newAuthEnv(t *testing.T, ac AuthConfig) *authEnv {
	t.Helper()
	buf := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(buf, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	ns := testenv.NATS(t)
	nc, err := natsutil.Connect(natsutil.Config{URL: ns.URL()}, "test-bridge", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(testTimeout))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Auth = ac
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	app := NewAppender(js, stream)
	api := NewAPI(app, testMaxBody, testTimeout, nc.IsConnected, nil, log).WithAuth(auth)
	srv := httptest.NewUnstartedServer(api.Handler())
	srv.Config.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	srv.Start()
	t.Cleanup(srv.Close)
	return &authEnv{url: srv.URL, js: js, app: app, log: buf}
}

func bearer(secret string) []string {
	if secret == "" {
		return nil
	}
	return []string{"Authorization", "Bearer " + secret}
}

func TestAuthPerEndpoint(t *testing.T) {
	e := newAuthEnv(t, testAuthConfig())
	body := func(id string) string { return newEvents(id, 1) }
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		hdr        []string
		want       int
		wantErr    string // in the error body
		wantHeader string // in WWW-Authenticate
	}{
		// POST /streams/{category}/{id}/events
		{"append no token", "POST", "/streams/order/o1/events", body("a1"), nil, 401, "Bearer <token>", `Bearer realm="jetsync"`},
		{"append unknown token", "POST", "/streams/order/o1/events", body("a2"), bearer(secretOther), 401, "unknown token", `error="invalid_token"`},
		{"append not bearer", "POST", "/streams/order/o1/events", body("a3"), []string{"Authorization", "Basic " + secretWriter}, 401, "Bearer <token>", `error="invalid_request"`},
		{"append valid", "POST", "/streams/order/o1/events", body("a4"), bearer(secretWriter), 200, "", ""},
		{"append prefix pattern", "POST", "/streams/user-eu/u1/events", body("a5"), bearer(secretWriter), 200, "", ""},
		{"append other category", "POST", "/streams/invoice/i1/events", body("a6"), bearer(secretWriter), 403, `"writer" lacks the scope append:invoice`, `error="insufficient_scope", scope="append:invoice"`},
		{"append with read scope", "POST", "/streams/order/o1/events", body("a7"), bearer(secretReader), 403, "append:order", "insufficient_scope"},
		{"append with admin scope", "POST", "/streams/order/o1/events", body("a8"), bearer(secretAdmin), 403, "append:order", "insufficient_scope"},
		// GET /streams/{category}/{id}
		{"read no token", "GET", "/streams/order/o1", "", nil, 401, "Bearer <token>", "Bearer"},
		{"read unknown token", "GET", "/streams/order/o1", "", bearer(secretOther), 401, "unknown token", "invalid_token"},
		{"read valid", "GET", "/streams/order/o1", "", bearer(secretReader), 200, "", ""},
		{"read valid exact", "GET", "/streams/order/o1", "", bearer(secretWriter), 200, "", ""},
		{"read wrong scope", "GET", "/streams/user-eu/u1", "", bearer(secretWriter), 403, "read:user-eu", "insufficient_scope"},
		// open endpoints
		{"healthz open", "GET", "/healthz", "", nil, 200, "", ""},
		{"readyz open", "GET", "/readyz", "", nil, 200, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, tt.method, e.url+tt.path, tt.body, tt.hdr...)
			wantStatus(t, r, tt.want)
			if !strings.Contains(r.Error, tt.wantErr) {
				t.Errorf("error %q, want it to contain %q", r.Error, tt.wantErr)
			}
			if got := r.hdr.Get("WWW-Authenticate"); !strings.Contains(got, tt.wantHeader) || (tt.wantHeader == "") != (got == "") {
				t.Errorf("WWW-Authenticate %q, want %q", got, tt.wantHeader)
			}
			for _, s := range []string{secretWriter, secretReader, secretAdmin, secretOther} {
				if strings.Contains(r.Error, s) {
					t.Errorf("the error body holds a secret: %q", r.Error)
				}
			}
		})
	}
	// /metrics is open and holds neither secrets nor token names as labels.
	res, err := http.Get(e.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("/metrics: %d", res.StatusCode)
	}
	for _, s := range []string{secretWriter, secretReader, secretAdmin, secretOther, httpauth.HashToken(secretWriter)} {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("/metrics holds %q", s)
		}
	}
	assertNoSecretsLogged(t, e.log.String())
}

func assertNoSecretsLogged(t *testing.T, log string) {
	t.Helper()
	for _, s := range []string{secretWriter, secretReader, secretAdmin, secretOther} {
		if strings.Contains(log, s) {
			t.Errorf("the log holds the secret %q:\n%s", s, log)
		}
	}
}

func TestAuthProtectMetrics(t *testing.T) {
	ac := testAuthConfig()
	ac.ProtectMetrics = true
	e := newAuthEnv(t, ac)
	for _, tt := range []struct {
		secret string
		want   int
	}{{"", 401}, {secretOther, 401}, {secretWriter, 403}, {secretAdmin, 200}} {
		req, _ := http.NewRequest("GET", e.url+"/metrics", nil)
		if tt.secret != "" {
			req.Header.Set("Authorization", "Bearer "+tt.secret)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tt.want {
			t.Errorf("token %q: /metrics %d, want %d", tt.secret, res.StatusCode, tt.want)
		}
	}
	wantStatus(t, do(t, "GET", e.url+"/healthz", ""), 200)
}

func TestAuthTokensFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(p, []byte("tokens:\n  - name: filed\n    sha256: "+httpauth.HashToken(secretOther)+"\n    scopes: [\"append:*\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newAuthEnv(t, AuthConfig{TokensFile: p})
	wantStatus(t, do(t, "POST", e.url+"/streams/any/x1/events", newEvents("f", 1), bearer(secretOther)...), 200)
	wantStatus(t, do(t, "POST", e.url+"/streams/any/x1/events", newEvents("g", 1), bearer(secretWriter)...), 401)
}

func TestAuthConfigProblems(t *testing.T) {
	tokFile := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(tokFile, []byte("tokens:\n  - name: x\n    secret: nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := writeConfig(t, `
auth:
  tokens:
    - name: a
      sha256: `+secretWriter+`
      scopes: [append, "read:", "write:x", "append:a.b"]
    - name: a
      sha256: `+httpauth.HashToken("x")+`
      scopes: []
    - sha256: `+httpauth.HashToken("y")+`
      scopes: [admin]
      colour: red
  tokens_file: `+tokFile+`
`)
	_, err := LoadConfig(p)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if strings.Contains(msg, secretWriter) {
		t.Errorf("the error echoes the secret pasted as a hash:\n%s", msg)
	}
	if !strings.Contains(msg, "colour") {
		t.Errorf("unknown key not named:\n%s", msg)
	}
	// Unknown keys are reported first (before validation): fix and retry.
	p = writeConfig(t, `
auth:
  tokens:
    - name: a
      sha256: `+secretWriter+`
      scopes: [append, "read:", "write:x", "append:a.b"]
    - name: a
      sha256: `+httpauth.HashToken("x")+`
      scopes: []
    - sha256: `+httpauth.HashToken("y")+`
      scopes: [admin]
  tokens_file: `+tokFile+`
`)
	_, err = LoadConfig(p)
	if err == nil {
		t.Fatal("no error")
	}
	msg = err.Error()
	for _, want := range []string{
		"auth.tokens[0].sha256", "bridge token-hash",
		"auth.tokens[0].scopes[0]", "auth.tokens[0].scopes[1]", "auth.tokens[0].scopes[2]", "auth.tokens[0].scopes[3]",
		"auth.tokens[1].name", "auth.tokens[1].scopes", "auth.tokens[2].name",
		"auth.tokens_file", "secret",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not name %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, secretWriter) {
		t.Errorf("the error echoes the secret pasted as a hash:\n%s", msg)
	}
}

func TestTokenHashCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"token-hash"}, strings.NewReader(secretWriter+"\n"), &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if got := strings.TrimSpace(out.String()); got != httpauth.HashToken(secretWriter) {
		t.Fatalf("hash %q", got)
	}
	out.Reset()
	if code := run(context.Background(), []string{"token-hash", "-new"}, nil, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var tok, sum string
	for _, l := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "token: "); ok {
			tok = v
		}
		if v, ok := strings.CutPrefix(l, "sha256: "); ok {
			sum = v
		}
	}
	if len(tok) < 40 || sum != httpauth.HashToken(tok) {
		t.Fatalf("-new printed %q", out.String())
	}
}

// The principal is stored with each event, exposed in its metadata, and
// cannot be forged: metadata.principal is refused, and a
// Jetsync-Principal request header is ignored.
func TestPrincipalStoredWithEvents(t *testing.T) {
	e := newAuthEnv(t, testAuthConfig())
	body := `[{"id":"p1","type":"Placed","data":{},"metadata":{"correlationId":"c1"}},{"id":"p2","type":"Placed","data":{}}]`
	wantStatus(t, do(t, "POST", e.url+"/streams/order/p/events", body, "Authorization", "Bearer "+secretWriter, "Jetsync-Principal", "ops"), 200)
	evs := readSubject(t, e.js, "events.order.p")
	if len(evs) != 2 {
		t.Fatalf("%d events", len(evs))
	}
	for i, want := range []string{`{"principal":"writer","correlationId":"c1"}`, `{"principal":"writer"}`} {
		if evs[i].Principal != "writer" || string(evs[i].Metadata) != want {
			t.Errorf("event %d: principal %q metadata %s, want %s", i, evs[i].Principal, evs[i].Metadata, want)
		}
	}
	for _, md := range []string{`{"principal":"ops"}`, `{"princip\u0061l":"ops"}`} {
		r := do(t, "POST", e.url+"/streams/order/p/events", `[{"id":"f1","type":"Placed","data":{},"metadata":`+md+`}]`, bearer(secretWriter)...)
		wantStatus(t, r, 400)
		if r.Field != "events[0].metadata.principal" {
			t.Errorf("field %q", r.Field)
		}
	}
}

// Without auth nothing is stored as principal, and metadata.principal is
// still refused: a reader could not tell it from an authenticated one.
func TestPrincipalRefusedWithoutAuth(t *testing.T) {
	e := newEnv(t)
	wantStatus(t, e.post(t, "order", "n", `[{"id":"n1","type":"T","data":{},"metadata":{"principal":"me"}}]`), 400)
	wantStatus(t, e.post(t, "order", "n", `[{"id":"n2","type":"T","data":{},"metadata":{"a":1}}]`), 200)
	evs := readSubject(t, e.js, "events.order.n")
	if len(evs) != 1 || evs[0].Principal != "" || string(evs[0].Metadata) != `{"a":1}` {
		t.Fatalf("%+v", evs)
	}
}
