package main

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/httpauth"
)

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bridge.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaultsAreValid(t *testing.T) {
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.MaxBodyBytes != 1<<20 || cfg.Stream.Name != "EVENTS" || cfg.Append.Timeout != 5*time.Second || cfg.NATS.Embedded.StoreDir == "" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestConfigFileAndEnv(t *testing.T) {
	p := writeConfig(t, `
http:
  listen: 127.0.0.1:9090
  max_body_bytes: 4MiB
nats:
  url: nats://10.0.0.1:4222
stream: {name: ORDERS, replicas: 3, max_age: 0s, max_bytes: 1GiB, duplicate_window: 5m, allow_delete: false, allow_purge: false}
append: {timeout: 2s}
`)
	t.Setenv("JETSYNC_HTTP_LISTEN", ":8181")
	t.Setenv("JETSYNC_HTTP_INSECURE", "true") // :8181 is every address, auth is off
	t.Setenv("JETSYNC_NATS_URL", "nats://a:4222,nats://b:4222")
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.Listen != ":8181" || !cfg.HTTP.Insecure || cfg.NATS.URL != "nats://a:4222,nats://b:4222" || cfg.HTTP.MaxBodyBytes != 4<<20 ||
		cfg.Stream.Name != "ORDERS" || cfg.Stream.Replicas != 3 || cfg.Stream.MaxBytes != 1<<30 || cfg.Stream.DuplicateWindow != 5*time.Minute || cfg.Append.Timeout != 2*time.Second {
		t.Fatalf("loaded %+v", cfg)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name, yaml string
		env        map[string]string
		keys       []string
	}{
		{"unknown key", "http:\n  listn: :8080\n", nil, []string{"http.listn"}},
		{"unknown section", "nats:\n  url: nats://x:4222\nsink: {}\n", nil, []string{"sink"}},
		{"bad size", "http:\n  max_body_bytes: lots\n", nil, []string{"http.max_body_bytes"}},
		{"bad duration", "append:\n  timeout: soon\n", nil, []string{"append.timeout"}},
		{"every problem at once", `
http: {listen: "nowhere", max_body_bytes: 10, shutdown_timeout: 0s}
nats: {url: "", embedded: {store_dir: "", port: 70000}}
stream: {name: "A.B", replicas: 2, duplicate_window: 0s}
append: {timeout: -1s}
`, nil, []string{"http.listen", "http.max_body_bytes", "http.shutdown_timeout", "nats.embedded.store_dir", "nats.embedded.port", "stream.replicas", "stream.name", "stream.duplicate_window", "append.timeout"}},
		{"bad url", "nats:\n  url: http://x:4222\n", nil, []string{"nats.url"}},
		{"bad env value", "", map[string]string{"JETSYNC_APPEND_TIMEOUT": "abc"}, []string{"append.timeout", "JETSYNC_APPEND_TIMEOUT"}},
		{"bad env port", "", map[string]string{"JETSYNC_NATS_EMBEDDED_PORT": "x"}, []string{"nats.embedded.port"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			_, err := LoadConfig(writeConfig(t, c.yaml))
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("error %v, want config.ErrInvalid", err)
			}
			for _, k := range c.keys {
				if !strings.Contains(err.Error(), k) {
					t.Errorf("error does not name %s:\n%v", k, err)
				}
			}
		})
	}
}

// The example file documents the defaults: it loads, and equals them.
func TestExampleConfigIsTheDefault(t *testing.T) {
	cfg, err := LoadConfig("bridge.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, DefaultConfig()) {
		t.Fatalf("example %+v\ndefaults %+v", cfg, DefaultConfig())
	}
}

func TestNonLoopbackListenNeedsAuthOrInsecure(t *testing.T) {
	tok := "\nauth:\n  tokens: [{name: a, sha256: " + httpauth.HashToken("x") + ", scopes: [admin]}]\n"
	for _, tt := range []struct {
		name, yaml string
		ok         bool
	}{
		{"loopback v4", "http: {listen: 127.0.0.1:8080}", true},
		{"loopback v6", "http: {listen: \"[::1]:8080\"}", true},
		{"localhost", "http: {listen: localhost:8080}", true},
		{"any address", "http: {listen: 0.0.0.0:8080}", false},
		{"empty host", "http: {listen: \":8080\"}", false},
		{"host name", "http: {listen: bridge.internal:8080}", false},
		{"any address, insecure", "http: {listen: 0.0.0.0:8080, insecure: true}", true},
		{"any address, tokens", "http: {listen: 0.0.0.0:8080}" + tok, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, tt.yaml))
			if tt.ok && err != nil {
				t.Fatal(err)
			}
			if !tt.ok {
				if err == nil {
					t.Fatal("accepted")
				}
				for _, want := range []string{"http.listen", "auth.tokens", "http.insecure: true", "127.0.0.1"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error does not mention %q: %v", want, err)
					}
				}
			}
		})
	}
}

// make up's config (loopback, no auth) loads as it is; the compose config
// (0.0.0.0) loads with its tokens file, and would be refused without it.
func TestDeployConfigsLoad(t *testing.T) {
	if _, err := LoadConfig("../../deploy/local/bridge.yaml"); err != nil {
		t.Fatalf("deploy/local/bridge.yaml: %v", err)
	}
	t.Setenv("JETSYNC_AUTH_TOKENS_FILE", "../../deploy/secrets/bridge-tokens.yaml") // mounted at /etc/jetsync in compose
	t.Setenv("JETSYNC_HTTP_LISTEN", "0.0.0.0:8080")
	cfg, err := LoadConfig("../../deploy/config/bridge.yaml")
	if err != nil {
		t.Fatalf("deploy/config/bridge.yaml: %v", err)
	}
	auth, err := NewAuthenticator(cfg)
	if err != nil || auth == nil || auth.lookupToken("jetsync-dev-token") == nil {
		t.Fatalf("the documented dev token is not configured: %v", err)
	}
	t.Setenv("JETSYNC_AUTH_TOKENS_FILE", "")
	if _, err := LoadConfig("../../deploy/config/bridge.yaml"); err == nil || !strings.Contains(err.Error(), "http.insecure") {
		t.Fatalf("compose config without tokens: %v", err)
	}
}

func TestSourceConfigErrorsNameTheKey(t *testing.T) {
	for key, yaml := range map[string]string{
		"source.postgres_url":    "source: {postgres_url: 'mysql://x'}",
		"source.name":            "source: {postgres_url: 'postgres://x/db', name: 'a.b'}",
		"source.table":           "source: {postgres_url: 'postgres://x/db', table: 'drop table;'}",
		"source.columns.data":    "source: {postgres_url: 'postgres://x/db', columns: {data: ''}}",
		"source.columns.version": "source: {postgres_url: 'postgres://x/db', columns: {version: 'v-1'}}",
		"source.category":        "source: {postgres_url: 'postgres://x/db', columns: {category: ''}, category: '{nope'}",
		"source.on_error":        "source: {postgres_url: 'postgres://x/db', on_error: retry}",
		"source.batch_size":      "source: {postgres_url: 'postgres://x/db', batch_size: 0}",
		"source.poll_interval":   "source: {postgres_url: 'postgres://x/db', poll_interval: 0s}",
		"source.status_listen":   "source: {postgres_url: 'postgres://x/db', status_listen: nope}",
	} {
		_, err := LoadConfig(writeConfig(t, yaml))
		var ke *config.KeyError
		if !errors.As(err, &ke) || !strings.Contains(err.Error(), key+":") || !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%s: got %v, want an error naming %s", yaml, err, key)
		}
	}
	// Both a category column and a constant: keep one.
	_, err := LoadConfig(writeConfig(t, "source: {postgres_url: 'postgres://x/db', category: order}"))
	if err == nil || !strings.Contains(err.Error(), "source.category: is set and so is source.columns.category") {
		t.Errorf("category twice: %v", err)
	}
	// Off without postgres_url: nothing else is checked.
	if _, err := LoadConfig(writeConfig(t, "source: {on_error: retry}")); err != nil {
		t.Errorf("a disabled source is not checked: %v", err)
	}
}

func TestRelayCommandNeedsASource(t *testing.T) {
	var out, errb strings.Builder
	if code := run(t.Context(), []string{"relay"}, nil, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "source.postgres_url is empty") {
		t.Fatalf("bridge relay without a source: exit %d, %q", code, errb.String())
	}
}
