package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

const (
	testTimeout = 5 * time.Second // append.timeout in tests: the default; 2s was short for 8 writers contending on a loaded machine
	testMaxBody = 256 << 10
)

// apiEnv is one bridge process in a test: its own NATS connection,
// appender and HTTP server, against a shared NATS server.
type apiEnv struct {
	ns     *testenv.NATSServer
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	app    *Appender
	met    *Metrics
	srv    *httptest.Server
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// newEnv starts a NATS server and one bridge on it.
func newEnv(t testing.TB) *apiEnv {
	t.Helper()
	return newEnvOn(t, testenv.NATS(t))
}

// newEnvOn starts a bridge on an existing NATS server.
func newEnvOn(t testing.TB, ns *testenv.NATSServer) *apiEnv {
	t.Helper()
	log := testLogger(t)
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
	app := NewAppender(js, stream)
	met := NewMetrics()
	met.WatchAppender(app)
	srv := httptest.NewServer(NewAPI(app, testMaxBody, testTimeout, nc.IsConnected, met, log).Handler())
	t.Cleanup(srv.Close)
	return &apiEnv{ns: ns, nc: nc, js: js, stream: stream, app: app, met: met, srv: srv}
}

// apiResp is every field any answer of the API has.
type apiResp struct {
	Positions       []uint64 `json:"positions"`
	Version         uint64   `json:"version"`
	Duplicate       bool     `json:"duplicate"`
	LastPosition    uint64   `json:"lastPosition"`
	Error           string   `json:"error"`
	Field           string   `json:"field"`
	ExpectedVersion *uint64  `json:"expectedVersion"`
	CurrentVersion  *uint64  `json:"currentVersion"`
	ID              string   `json:"id"`
	Position        uint64   `json:"position"`
	Status          string   `json:"status"`

	code int
	hdr  http.Header
}

// do sends a request and decodes the JSON answer.
func do(t testing.TB, method, url, body string, hdr ...string) apiResp {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var r apiResp
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("%s %s: answer %d is not JSON: %q", method, url, res.StatusCode, raw)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, url, ct)
	}
	r.code, r.hdr = res.StatusCode, res.Header
	return r
}

func (e *apiEnv) post(t testing.TB, category, id, body string, hdr ...string) apiResp {
	t.Helper()
	return do(t, http.MethodPost, e.srv.URL+"/streams/"+category+"/"+id+"/events", body, hdr...)
}

// newEvents is a JSON array of n events with ids prefix-0..prefix-(n-1).
func newEvents(prefix string, n int) string {
	evs := make([]map[string]any, n)
	for i := range evs {
		evs[i] = map[string]any{"id": fmt.Sprintf("%s-%d", prefix, i), "type": "Tested", "data": map[string]any{"i": i}}
	}
	b, _ := json.Marshal(evs)
	return string(b)
}

func wantStatus(t testing.TB, r apiResp, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d; answer %+v", r.code, code, r)
	}
}

// readSubject reads every event stored under subject, in order.
func readSubject(t testing.TB, js jetstream.JetStream, subject string) []envelope.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []envelope.Event
	opts := []jetstreamext.GetBatchOpt{jetstreamext.GetBatchSubject(subject)}
	for {
		it, err := jetstreamext.GetBatch(ctx, js, natsutil.DefaultStream, 500, opts...)
		if err != nil {
			t.Fatal(err)
		}
		var last uint64
		for m, err := range it {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			ev, err := envelope.FromMsg(m.Subject, m.Header, m.Data, m.Sequence)
			if err != nil {
				t.Fatalf("position %d: %v", m.Sequence, err)
			}
			out = append(out, ev)
			last = m.Sequence
		}
		if last == 0 {
			return out
		}
		opts = []jetstreamext.GetBatchOpt{jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchSeq(last + 1)}
	}
}

// msgCount is the number of messages in the event stream.
func msgCount(t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, natsutil.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func jsonEqual(t testing.TB, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%q: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}
