package sinkd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// nopWriter applies every batch without writing anything.
type nopWriter struct{}

func (nopWriter) Connect(context.Context) error                 { return nil }
func (nopWriter) WriteBatch(context.Context, *sink.Batch) error { return nil }
func (nopWriter) Close(context.Context) error                   { return nil }

// reloader is a nopWriter that can reload: it loads and reports what load
// did.
type reloader struct {
	nopWriter
	loads chan error
}

func (r reloader) ReloadMappings(load sink.ConfigLoader) ([]string, error) {
	cfg := testConfig{sink.DefaultConfig("x")}
	err := load(&cfg)
	if err == nil && cfg.Name != "from-file" {
		err = errors.New("the file was not read: name is " + cfg.Name)
	}
	r.loads <- err
	return []string{"mappings.X"}, err
}

type testConfig struct {
	sink.Config `yaml:",inline"`
}

func (c *testConfig) Validate() error {
	var p config.Problems
	c.Config.Validate(&p)
	return p.Err()
}

// TestReloadRequests: a reload asked over NATS is answered with what the
// writer did, and refused, saying why, when the sink cannot reload (no
// config file, a writer without sink.MappingReloader).
func TestReloadRequests(t *testing.T) {
	srv := testenv.NATS(t)
	nc, js := srv.Connect(t)
	if _, err := natsutil.EnsureStream(t.Context(), js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sink.yaml")
	if err := os.WriteFile(path, []byte("name: from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	serve := func(name string, w sink.Writer, opts ...Option) {
		cfg := sink.DefaultConfig(name)
		cfg.NATS.URL = srv.URL()
		cfg.HTTP.Listen = ""
		svc, err := New(t.Context(), cfg, w, slog.New(slog.NewTextHandler(io.Discard, nil)), opts...)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = svc.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	ask := func(name string) (string, error) {
		var done string
		var err error
		testenv.Eventually(t, 10*time.Second, func() bool {
			done, err = control.RequestReload(t.Context(), nc, name)
			return !strings.Contains(errString(err), "no responders")
		}, "sink %s never answered", name)
		return done, err
	}

	r := reloader{loads: make(chan error, 1)}
	serve("good", r, WithConfigFile(path, ""))
	if done, err := ask("good"); err != nil || !strings.Contains(done, "mappings.X") {
		t.Fatalf("reload = %q, %v", done, err)
	}
	if err := <-r.loads; err != nil {
		t.Fatalf("the writer's load of %s: %v", path, err)
	}

	serve("nofile", reloader{loads: make(chan error, 1)})
	if _, err := ask("nofile"); !errors.Is(err, control.ErrReloadRefused) || !strings.Contains(err.Error(), "without a config file") {
		t.Fatalf("reload without a config file: %v", err)
	}
	serve("plain", nopWriter{}, WithConfigFile(path, ""))
	if _, err := ask("plain"); !errors.Is(err, control.ErrReloadRefused) || !strings.Contains(err.Error(), "cannot change its mappings") {
		t.Fatalf("reload of a writer that cannot: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
