package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"go.yaml.in/yaml/v3"

	"github.com/jetsync/jetsync/pkg/httpauth"
)

// contract loads the embedded OpenAPI document, validates it, and points its
// server at baseURL.
func contract(t testing.TB, baseURL string) (*openapi3.T, routers.Router) {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(openapiYAML)
	if err != nil {
		t.Fatalf("loading openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: baseURL}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return doc, router
}

// TestOpenAPICopyIsCurrent fails when the embedded contract is not
// docs/openapi.yaml: run `go generate ./services/bridge`.
func TestOpenAPICopyIsCurrent(t *testing.T) {
	src, err := os.ReadFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatalf("the source of the contract: %v", err)
	}
	if !bytes.Equal(src, openapiYAML) {
		t.Fatal("services/bridge/openapi.yaml differs from docs/openapi.yaml; run `go generate ./services/bridge`")
	}
}

func TestOpenAPIDocument(t *testing.T) {
	doc, _ := contract(t, "http://127.0.0.1:8080")
	if !doc.IsOpenAPI31OrLater() {
		t.Errorf("openapi %q, want 3.1", doc.OpenAPI)
	}
	if s := doc.Components.SecuritySchemes["bearerAuth"]; s == nil || s.Value.Scheme != "bearer" {
		t.Error("no bearerAuth security scheme")
	}
	// The JSON form is the same document.
	j, err := openapiJSON()
	if err != nil {
		t.Fatal(err)
	}
	var fromYAML any
	if err := yaml.Unmarshal(openapiYAML, &fromYAML); err != nil {
		t.Fatal(err)
	}
	y, _ := json.Marshal(fromYAML)
	if !jsonEqual(t, j, y) {
		t.Error("openapi.json is not openapi.yaml")
	}
}

// contractCall is one real call to a bridge, checked against the contract.
type contractCall struct {
	name, method, path, body string
	hdr                      []string
	want                     int
	// badRequest: the contract itself already refuses this request (the
	// bridge must then answer 4xx conforming to it all the same).
	badRequest bool
	// unrouted: the path or method is not an operation of the contract;
	// the body is checked against this component response instead.
	unrouted string
}

// checkCall sends c to baseURL and validates request and response against
// the contract.
func checkCall(t *testing.T, doc *openapi3.T, router routers.Router, baseURL string, c contractCall) {
	t.Helper()
	newReq := func() *http.Request {
		req, err := http.NewRequest(c.method, baseURL+c.path, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		if c.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for i := 0; i+1 < len(c.hdr); i += 2 {
			req.Header.Set(c.hdr[i], c.hdr[i+1])
		}
		return req
	}
	res, err := http.DefaultClient.Do(newReq())
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != c.want {
		t.Fatalf("%s %s: status %d, want %d; body %s", c.method, c.path, res.StatusCode, c.want, body)
	}

	ctx := context.Background()
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true, MultiError: true}
	req := newReq()
	route, params, err := router.FindRoute(req)
	if c.unrouted != "" {
		if err == nil {
			t.Fatalf("%s %s is an operation of the contract (%s); drop unrouted", c.method, c.path, route.Operation.OperationID)
		}
		checkComponentResponse(t, doc, c.unrouted, res.Header, body)
		return
	}
	if err != nil {
		t.Fatalf("%s %s: not in the contract: %v", c.method, c.path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	reqErr := openapi3filter.ValidateRequest(ctx, in)
	switch {
	case c.badRequest && reqErr == nil:
		t.Errorf("%s %s: the contract accepts this request; it should refuse it", c.method, c.path)
	case !c.badRequest && reqErr != nil:
		t.Errorf("%s %s: request breaks the contract: %v", c.method, c.path, reqErr)
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: res.StatusCode, Header: res.Header, Options: opts}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		t.Errorf("%s %s: answer %d %s breaks the contract: %v", c.method, c.path, res.StatusCode, body, err)
	}
}

// checkComponentResponse validates a response against
// #/components/responses/name: its required headers and JSON body.
func checkComponentResponse(t *testing.T, doc *openapi3.T, name string, hdr http.Header, body []byte) {
	t.Helper()
	ref := doc.Components.Responses[name]
	if ref == nil {
		t.Fatalf("no component response %q", name)
	}
	for h, hr := range ref.Value.Headers {
		if hr.Value.Required && hdr.Get(h) == "" {
			t.Errorf("%s: header %s is missing", name, h)
		}
	}
	mt := ref.Value.Content.Get(hdr.Get("Content-Type"))
	if mt == nil {
		t.Fatalf("%s: Content-Type %q is not in the contract", name, hdr.Get("Content-Type"))
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("%s: body %q: %v", name, body, err)
	}
	if err := mt.Schema.Value.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
		t.Errorf("%s: body %s breaks the contract: %v", name, body, err)
	}
}

// TestAPIConformsToOpenAPI makes real calls, successes and every error the
// bridge answers, and checks each request and answer against the contract.
func TestAPIConformsToOpenAPI(t *testing.T) {
	e := newEnv(t)
	doc, router := contract(t, e.srv.URL)

	// A message on an event subject that jetsync did not write: reading
	// that stream's state fails (500).
	if _, err := e.js.Publish(context.Background(), "events.foreign.f-1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	big := `[{"id":"big-1","type":"Big","data":"` + strings.Repeat("x", testMaxBody) + `"}]`
	for _, c := range []contractCall{
		{name: "append", method: "POST", path: "/streams/order/o-1/events", body: `[{"id":"e-1","type":"OrderPlaced","data":{"total":42},"metadata":{"c":"x"},"time":"2024-05-01T12:00:00Z"},{"id":"e-2","type":"OrderPaid","data":{}}]`, want: 200},
		{name: "retry is a duplicate", method: "POST", path: "/streams/order/o-1/events", body: `[{"id":"e-1","type":"OrderPlaced","data":{"total":42},"metadata":{"c":"x"},"time":"2024-05-01T12:00:00Z"},{"id":"e-2","type":"OrderPaid","data":{}}]`, want: 200},
		{name: "expected version (query)", method: "POST", path: "/streams/order/o-1/events?expectedVersion=2", body: `[{"id":"e-3","type":"OrderShipped","data":null,"category":"order","streamId":"o-1"}]`, want: 200},
		{name: "expected version (header)", method: "POST", path: "/streams/order/o-1/events", body: `[{"id":"e-4","type":"OrderClosed","data":1}]`, hdr: []string{HeaderExpectedVersion, "3"}, want: 200},
		{name: "wrong expected version", method: "POST", path: "/streams/order/o-1/events?expectedVersion=0", body: `[{"id":"e-5","type":"T","data":{}}]`, want: 409},
		{name: "id reused by another append", method: "POST", path: "/streams/order/o-1/events", body: `[{"id":"e-1","type":"Other","data":{}}]`, want: 409},
		{name: "query and header disagree", method: "POST", path: "/streams/order/o-1/events?expectedVersion=1", body: `[{"id":"e-6","type":"T","data":{}}]`, hdr: []string{HeaderExpectedVersion, "2"}, want: 400},
		{name: "expectedVersion not a number", method: "POST", path: "/streams/order/o-1/events?expectedVersion=abc", body: `[{"id":"e-6","type":"T","data":{}}]`, want: 400, badRequest: true},
		{name: "header not a number", method: "POST", path: "/streams/order/o-1/events", body: `[{"id":"e-6","type":"T","data":{}}]`, hdr: []string{HeaderExpectedVersion, "-1"}, want: 400, badRequest: true},
		{name: "invalid JSON", method: "POST", path: "/streams/order/o-2/events", body: `[{"id":`, want: 400, badRequest: true},
		{name: "empty body", method: "POST", path: "/streams/order/o-2/events", body: ``, want: 400, badRequest: true},
		{name: "no events", method: "POST", path: "/streams/order/o-2/events", body: `[]`, want: 400, badRequest: true},
		{name: "missing type", method: "POST", path: "/streams/order/o-2/events", body: `[{"id":"x","data":{}}]`, want: 400, badRequest: true},
		{name: "version given", method: "POST", path: "/streams/order/o-2/events", body: `[{"id":"x","type":"T","data":{},"version":3}]`, want: 400, badRequest: true},
		{name: "unknown field", method: "POST", path: "/streams/order/o-2/events", body: `[{"id":"x","type":"T","data":{},"colour":"red"}]`, want: 400, badRequest: true},
		{name: "bad time", method: "POST", path: "/streams/order/o-2/events", body: `[{"id":"x","type":"T","data":{},"time":"yesterday"}]`, want: 400, badRequest: true},
		{name: "same id twice", method: "POST", path: "/streams/order/o-2/events", body: `[{"id":"x","type":"T","data":{}},{"id":"x","type":"T","data":{}}]`, want: 400},
		{name: "category mismatch", method: "POST", path: "/streams/order/o-2/events", body: `[{"id":"x","type":"T","data":{},"category":"invoice"}]`, want: 400},
		{name: "dot in category", method: "POST", path: "/streams/or.der/o-2/events", body: `[{"id":"x","type":"T","data":{}}]`, want: 400, badRequest: true},
		{name: "empty category", method: "POST", path: "/streams//o-2/events", body: `[{"id":"x","type":"T","data":{}}]`, want: 400, unrouted: "BadRequest"},
		{name: "body too large", method: "POST", path: "/streams/order/o-2/events", body: big, want: 413},
		{name: "stream state", method: "GET", path: "/streams/order/o-1", want: 200},
		{name: "state of a new stream", method: "GET", path: "/streams/order/nobody", want: 200},
		{name: "wildcard in stream id", method: "GET", path: "/streams/order/o*", want: 400, badRequest: true},
		{name: "foreign message", method: "GET", path: "/streams/foreign/f-1", want: 500},
		{name: "GET on events", method: "GET", path: "/streams/order/o-1/events", want: 405},
		{name: "POST on a stream", method: "POST", path: "/streams/order/o-1", body: `[]`, want: 405},
		{name: "DELETE on a stream", method: "DELETE", path: "/streams/order/o-1", want: 405, unrouted: "MethodNotAllowed"},
		{name: "POST on healthz", method: "POST", path: "/healthz", want: 405, unrouted: "MethodNotAllowed"},
		{name: "no such endpoint", method: "GET", path: "/nope", want: 404, unrouted: "NotFound"},
		{name: "too deep", method: "GET", path: "/streams/order/o-1/events/more", want: 404, unrouted: "NotFound"},
		{name: "healthz", method: "GET", path: "/healthz", want: 200},
		{name: "readyz", method: "GET", path: "/readyz", want: 200},
		{name: "metrics", method: "GET", path: "/metrics", want: 200},
		{name: "openapi.yaml", method: "GET", path: "/openapi.yaml", want: 200},
		{name: "openapi.json", method: "GET", path: "/openapi.json", want: 200},
	} {
		t.Run(c.name, func(t *testing.T) { checkCall(t, doc, router, e.srv.URL, c) })
	}

	// NATS down: appends and reads answer 503 with Retry-After, /readyz 503.
	e.ns.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for e.nc.IsConnected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range []contractCall{
		{name: "append, NATS down", method: "POST", path: "/streams/order/o-3/events", body: `[{"id":"d-1","type":"T","data":{}}]`, want: 503},
		{name: "state, NATS down", method: "GET", path: "/streams/order/o-3", want: 503},
		{name: "readyz, NATS down", method: "GET", path: "/readyz", want: 503},
	} {
		t.Run(c.name, func(t *testing.T) { checkCall(t, doc, router, e.srv.URL, c) })
	}

	// A bridge with tokens: calls with no, unknown or wrong-scope tokens,
	// and past a token's rate, get the documented 401, 403 and 429.
	t.Run("with tokens", func(t *testing.T) {
		ae := newAuthEnv(t, AuthConfig{ProtectMetrics: true, Tokens: []TokenConfig{
			{Name: "orders", SHA256: httpauth.HashToken("orders-secret"), Scopes: []string{"append:order", "read:order"}},
			{Name: "slow", SHA256: httpauth.HashToken("slow-secret"), Scopes: []string{"append:order"}, Rate: 0.001, Burst: 1},
			{Name: "ops", SHA256: httpauth.HashToken("ops-secret"), Scopes: []string{"admin"}},
		}})
		doc, router := contract(t, ae.url)
		ev := func(id string) string { return `[{"id":"` + id + `","type":"T","data":{}}]` }
		for _, c := range []contractCall{
			{name: "append", method: "POST", path: "/streams/order/a-1/events", body: ev("a-1"), hdr: bearer("orders-secret"), want: 200},
			{name: "append, no token", method: "POST", path: "/streams/order/a-1/events", body: ev("a-2"), want: 401},
			{name: "append, unknown token", method: "POST", path: "/streams/order/a-1/events", body: ev("a-2"), hdr: bearer("nobody"), want: 401},
			{name: "append, not bearer", method: "POST", path: "/streams/order/a-1/events", body: ev("a-2"), hdr: []string{"Authorization", "Basic eDp5"}, want: 401},
			{name: "append, wrong scope", method: "POST", path: "/streams/invoice/i-1/events", body: ev("a-2"), hdr: bearer("orders-secret"), want: 403},
			{name: "append, admin is not append", method: "POST", path: "/streams/order/a-1/events", body: ev("a-2"), hdr: bearer("ops-secret"), want: 403},
			{name: "append within the rate", method: "POST", path: "/streams/order/s-1/events", body: ev("s-1"), hdr: bearer("slow-secret"), want: 200},
			{name: "append past the rate", method: "POST", path: "/streams/order/s-1/events", body: ev("s-2"), hdr: bearer("slow-secret"), want: 429},
			{name: "state", method: "GET", path: "/streams/order/a-1", hdr: bearer("orders-secret"), want: 200},
			{name: "state, no token", method: "GET", path: "/streams/order/a-1", want: 401},
			{name: "state, unknown token", method: "GET", path: "/streams/order/a-1", hdr: bearer("nobody"), want: 401},
			{name: "state, wrong scope", method: "GET", path: "/streams/invoice/i-1", hdr: bearer("orders-secret"), want: 403},
			{name: "state, append only", method: "GET", path: "/streams/order/a-1", hdr: bearer("slow-secret"), want: 403},
			{name: "metrics, admin", method: "GET", path: "/metrics", hdr: bearer("ops-secret"), want: 200},
			{name: "metrics, no token", method: "GET", path: "/metrics", want: 401},
			{name: "metrics, unknown token", method: "GET", path: "/metrics", hdr: bearer("nobody"), want: 401},
			{name: "metrics, wrong scope", method: "GET", path: "/metrics", hdr: bearer("orders-secret"), want: 403},
			{name: "healthz stays open", method: "GET", path: "/healthz", want: 200},
			{name: "readyz stays open", method: "GET", path: "/readyz", want: 200},
			{name: "openapi stays open", method: "GET", path: "/openapi.yaml", want: 200},
		} {
			t.Run(c.name, func(t *testing.T) { checkCall(t, doc, router, ae.url, c) })
		}
	})
}

// TestOpenAPIValidatorBites makes sure the checks above can fail: answers
// that break the contract are refused.
func TestOpenAPIValidatorBites(t *testing.T) {
	doc, router := contract(t, "http://bridge.test")
	req, _ := http.NewRequest("POST", "http://bridge.test/streams/order/o-1/events", strings.NewReader(`[{"id":"a","type":"T","data":{}}]`))
	req.Header.Set("Content-Type", "application/json")
	route, params, err := router.FindRoute(req)
	if err != nil {
		t.Fatal(err)
	}
	opts := &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	json := http.Header{"Content-Type": {"application/json"}}
	for _, bad := range []struct {
		status int
		hdr    http.Header
		body   string
	}{
		{200, json, `{"positions":[1]}`},                                      // no version
		{200, json, `{"positions":[1],"version":1,"extra":true}`},             // unknown field
		{400, json, `{"error":"bad"}`},                                        // no field
		{409, json, `{"error":"wrong expected version","expectedVersion":1}`}, // no currentVersion
		{503, json, `{"error":"down"}`},                                       // no Retry-After
		{418, json, `{"error":"teapot"}`},                                     // undocumented status
	} {
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: bad.status, Header: bad.hdr, Options: opts}
		out.SetBodyBytes([]byte(bad.body))
		if err := openapi3filter.ValidateResponse(context.Background(), out); err == nil {
			t.Errorf("%d %s passes the contract", bad.status, bad.body)
		}
	}
	_ = doc
}
