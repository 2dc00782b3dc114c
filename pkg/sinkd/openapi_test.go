package sinkd

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestAdminAPIConformsToOpenAPI checks a live sink's admin server against
// docs/sink-admin.openapi.yaml: the document is valid, and each real call,
// errors included, conforms to it.
func TestAdminAPIConformsToOpenAPI(t *testing.T) {
	raw, err := os.ReadFile("../../docs/sink-admin.openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("sink-admin.openapi.yaml is not a valid OpenAPI document: %v", err)
	}

	srv := testenv.NATS(t)
	_, js := srv.Connect(t)
	if _, err := natsutil.EnsureStream(t.Context(), js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	ev := envelope.Event{ID: "e-1", Category: "order", StreamID: "o-1", Type: "T", Version: 1, Time: time.Now(), Data: []byte("{}")}
	ack, err := js.PublishMsg(t.Context(), ev.ToMsg())
	if err != nil {
		t.Fatal(err)
	}

	cfg := sink.DefaultConfig("contract")
	cfg.NATS.URL = srv.URL()
	cfg.HTTP.Listen = "127.0.0.1:0"
	svc, err := New(t.Context(), cfg, nopWriter{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	base := "http://" + svc.Addr()
	doc.Servers = openapi3.Servers{{URL: base}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		res, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	}, "the sink never became ready")

	check := func(method, path string, want int, badRequest bool) {
		t.Helper()
		res, err := http.DefaultClient.Do(mustRequest(t, method, base+path))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != want {
			t.Fatalf("%s %s: status %d, want %d: %s", method, path, res.StatusCode, want, body)
		}
		req := mustRequest(t, method, base+path)
		route, params, err := router.FindRoute(req)
		if want == http.StatusMethodNotAllowed {
			// Not an operation: #/components/responses/MethodNotAllowed.
			if err == nil {
				t.Fatalf("%s %s is an operation of the contract", method, path)
			}
			mna := doc.Components.Responses["MethodNotAllowed"].Value
			if res.Header.Get("Allow") == "" || mna.Content.Get(res.Header.Get("Content-Type")) == nil {
				t.Errorf("%s %s: 405 with Allow %q, Content-Type %q breaks the contract", method, path, res.Header.Get("Allow"), res.Header.Get("Content-Type"))
			}
			return
		}
		if err != nil {
			t.Fatalf("%s %s: not in the contract: %v", method, path, err)
		}
		opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
		if err := openapi3filter.ValidateRequest(t.Context(), in); (err != nil) != badRequest {
			t.Errorf("%s %s: request validation %v, want refused=%v", method, path, err, badRequest)
		}
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: res.StatusCode, Header: res.Header, Options: opts}
		out.SetBodyBytes(body)
		if err := openapi3filter.ValidateResponse(t.Context(), out); err != nil {
			t.Errorf("%s %s: answer %d %s breaks the contract: %v", method, path, res.StatusCode, body, err)
		}
	}
	pos := ack.Sequence
	check("GET", "/healthz", 200, false)
	check("GET", "/readyz", 200, false)
	check("GET", "/metrics", 200, false)
	check("GET", "/wait?position="+itoa(pos)+"&timeout=5s", 200, false)
	check("GET", "/wait?position="+itoa(pos+100)+"&timeout=50ms", 408, false)
	check("GET", "/wait?position=0", 400, true)
	check("GET", "/wait?position=abc", 400, true)
	check("GET", "/wait", 400, true)
	check("GET", "/wait?position=1&timeout=forever", 400, true)
	check("GET", "/wait?position=1&timeout=2h", 400, false)
	check("POST", "/healthz", 405, false)
	check("DELETE", "/wait?position=1", 405, false)

	srv.Stop()
	testenv.Eventually(t, 10*time.Second, func() bool { return !svc.nc.IsConnected() }, "still connected")
	check("GET", "/readyz", 503, false)
}

func mustRequest(t *testing.T, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
