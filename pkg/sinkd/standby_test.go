package sinkd

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestOneActiveInstance: two services of one sink: one is active (runs the
// engine, /readyz 200 role active), the other stands by (/readyz 503 role
// standby naming the active one); when the active one stops cleanly it
// releases the lease and the standby takes over well within the lease.
func TestOneActiveInstance(t *testing.T) {
	srv := testenv.NATS(t)
	_, js := srv.Connect(t)
	if _, err := natsutil.EnsureStream(t.Context(), js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	type running struct {
		svc    *Service
		cancel context.CancelFunc
		done   chan error
	}
	start := func() running {
		cfg := sink.DefaultConfig("ha")
		cfg.NATS.URL = srv.URL()
		cfg.HTTP.Listen = "127.0.0.1:0"
		svc, err := New(t.Context(), cfg, nopWriter{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r := running{svc, cancel, make(chan error, 1)}
		go func() { r.done <- svc.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-r.done })
		return r
	}
	readyz := func(r running) (int, string) {
		resp, err := http.Get("http://" + r.svc.Addr() + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	a := start()
	testenv.Eventually(t, 10*time.Second, func() bool { return a.svc.ha.active.Load() }, "the first instance never became active")
	b := start()
	testenv.Eventually(t, 10*time.Second, func() bool {
		h, err := b.svc.ha.store.Holders(t.Context(), "ha")
		return err == nil && len(h.Standbys) == 1
	}, "the second instance never stood by")
	if b.svc.ha.active.Load() {
		t.Fatal("two instances active at once")
	}
	testenv.Eventually(t, 10*time.Second, func() bool { code, _ := readyz(a); return code == 200 }, "the active instance never became ready")
	if code, body := readyz(a); !strings.Contains(body, `"role":"active"`) {
		t.Errorf("active /readyz: %d %s", code, body)
	}
	if code, body := readyz(b); code != 503 || !strings.Contains(body, `"role":"standby"`) || !strings.Contains(body, a.svc.ha.me.String()+" is active") {
		t.Errorf("standby /readyz: %d %s", code, body)
	}

	a.cancel()
	if err := <-a.done; err != nil {
		t.Fatalf("the active instance's clean stop: %v", err)
	}
	a.done <- nil // for the cleanup
	stopped := time.Now()
	testenv.Eventually(t, 5*time.Second, func() bool { return b.svc.ha.active.Load() }, "the standby never took over a released lease")
	if d := time.Since(stopped); d > 5*time.Second {
		t.Errorf("takeover after a clean stop took %s", d)
	}
	if n := b.svc.ha.takeovers.Load(); n != 1 {
		t.Errorf("takeovers %d, want 1", n)
	}
}
