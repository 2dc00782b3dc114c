package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/httpauth"
)

func TestTokenExpiry(t *testing.T) {
	ac := testAuthConfig()
	ac.Tokens[0].Expires = time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	ac.Tokens[1].Expires = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	e := newAuthEnv(t, ac)
	r := do(t, "POST", e.url+"/streams/order/x1/events", newEvents("x1", 1), bearer(secretWriter)...)
	wantStatus(t, r, 401)
	if h := r.hdr.Get("WWW-Authenticate"); !strings.Contains(h, `error="invalid_token"`) || !strings.Contains(h, "expired") {
		t.Errorf("WWW-Authenticate %q", h)
	}
	if !strings.Contains(r.Error, `"writer" expired at `) || strings.Contains(r.Error, secretWriter) {
		t.Errorf("error %q", r.Error)
	}
	wantStatus(t, do(t, "GET", e.url+"/streams/order/x1", "", bearer(secretReader)...), 200) // not expired yet
	if n := len(readSubject(t, e.js, "events.order.x1")); n != 0 {
		t.Errorf("%d events stored by an expired token", n)
	}
	assertNoSecretsLogged(t, e.log.String())

	cfg := DefaultConfig()
	cfg.Auth.Tokens = []TokenConfig{{Name: "a", SHA256: httpauth.HashToken("a"), Scopes: []string{"admin"}, Expires: "tomorrow"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "auth.tokens[0].expires") {
		t.Errorf("bad expires: %v", err)
	}
}

// SIGHUP re-reads auth.tokens_file: a new token works, a removed one is
// refused; a file that does not load is refused and the tokens stay.
func TestTokensFileReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	tf := filepath.Join(dir, "tokens.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(tf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(name, secret string) string {
		return fmt.Sprintf("  - {name: %s, sha256: %s, scopes: [\"append:*\"]}\n", name, httpauth.HashToken(secret))
	}
	write("tokens:\n" + entry("writer", secretWriter))
	cfg := embeddedConfig(t, dir)
	cfg.Auth.TokensFile = tf
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	buf := &syncBuffer{}
	b, err := New(context.Background(), cfg, testLoggerTo(t, buf))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	url := "http://" + b.Addr() + "/streams/order/h1/events"
	post := func(secret, id string) int { return do(t, "POST", url, newEvents(id, 1), bearer(secret)...).code }
	if post(secretWriter, "a") != 200 || post(secretOther, "b") != 401 {
		t.Fatal("before reload")
	}
	hup := func(logged string) {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(buf.String(), logged) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log:\n%s", logged, buf.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	write("tokens:\n" + entry("other", secretOther))
	hup("tokens file reloaded")
	if post(secretOther, "c") != 200 || post(secretWriter, "d") != 401 {
		t.Fatal("after reload: the new token must work and the removed one be refused")
	}
	write("tokens:\n  - {name: broken, sha256: " + secretWriter + "}\n")
	hup("tokens file not reloaded")
	if post(secretOther, "e") != 200 || post(secretWriter, "f") != 401 {
		t.Fatal("after a refused reload the previous tokens must stay")
	}
	if strings.Contains(buf.String(), secretWriter) || strings.Contains(buf.String(), secretOther) {
		t.Errorf("a secret is in the log:\n%s", buf.String())
	}
}

func testLoggerTo(t *testing.T, buf *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.MultiWriter(buf, t.Output()), &slog.HandlerOptions{Level: slog.LevelInfo}))
}
