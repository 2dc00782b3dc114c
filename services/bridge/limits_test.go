package main

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/httpauth"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func TestJSONDepthLimit(t *testing.T) {
	e := newEnv(t)
	nested := func(n int) string { return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) }
	for _, tt := range []struct {
		name  string
		event string
		want  int
	}{
		{"data at the limit", `{"id":"d1","type":"T","data":` + nested(DefaultMaxJSONDepth) + `}`, 200},
		{"data past the limit", `{"id":"d2","type":"T","data":` + nested(DefaultMaxJSONDepth+1) + `}`, 400},
		{"arrays past the limit", `{"id":"d3","type":"T","data":` + strings.Repeat("[", 2000) + strings.Repeat("]", 2000) + `}`, 400},
		{"metadata past the limit", `{"id":"d4","type":"T","data":{},"metadata":{"m":` + nested(DefaultMaxJSONDepth) + `}}`, 400},
		{"brackets in strings do not count", `{"id":"d5","type":"T","data":{"s":"` + strings.Repeat("[{", 200) + `\""}}`, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.post(t, "deep", "d", "["+tt.event+"]")
			wantStatus(t, r, tt.want)
			if tt.want == 400 && (r.Field != "events[0]" || !strings.Contains(r.Error, "append.max_json_depth")) {
				t.Errorf("answer %+v", r)
			}
		})
	}
}

func TestTokenInflightLimit(t *testing.T) {
	ac := testAuthConfig()
	ac.Tokens[0].MaxInflight = 1
	e := newAuthEnv(t, ac)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.app.beforePublish = func() {
		once.Do(func() {
			close(entered)
			<-release
		})
	}
	first := make(chan apiResp, 1)
	go func() {
		first <- do(t, "POST", e.url+"/streams/order/i1/events", newEvents("i1", 1), bearer(secretWriter)...)
	}()
	<-entered
	r := do(t, "POST", e.url+"/streams/order/i2/events", newEvents("i2", 1), bearer(secretWriter)...)
	wantStatus(t, r, 429)
	if r.hdr.Get("Retry-After") == "" || !strings.Contains(r.Error, "max_inflight") {
		t.Errorf("429 answer %+v", r)
	}
	close(release)
	wantStatus(t, <-first, 200)
	// The place is free again.
	wantStatus(t, do(t, "POST", e.url+"/streams/order/i2/events", newEvents("i2", 1), bearer(secretWriter)...), 200)
}

func TestTokenRateLimit(t *testing.T) {
	ac := testAuthConfig()
	ac.Tokens[0].Rate, ac.Tokens[0].Burst = 2, 2
	e := newAuthEnv(t, ac)
	post := func(id string) apiResp {
		return do(t, "POST", e.url+"/streams/order/rl/events", newEvents(id, 1), bearer(secretWriter)...)
	}
	wantStatus(t, post("r1"), 200)
	wantStatus(t, post("r2"), 200)
	r := post("r3")
	wantStatus(t, r, 429)
	if r.hdr.Get("Retry-After") != "1" || !strings.Contains(r.Error, "rate") {
		t.Errorf("429 answer %+v", r)
	}
	// Another token is not limited by this one's rate.
	wantStatus(t, do(t, "GET", e.url+"/streams/order/rl", "", bearer(secretReader)...), 200)
	// Within about half a second the bucket refills.
	testenv.Eventually(t, 3*time.Second, func() bool { return post("r4").code == 200 }, "still limited")
	if n := len(readSubject(t, e.js, "events.order.rl")); n != 3 {
		t.Errorf("%d events stored, want 3", n)
	}
	assertNoSecretsLogged(t, e.log.String())
}

func TestLimitConfigProblems(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Append.MaxJSONDepth = 0
	cfg.Auth.Tokens = []TokenConfig{{Name: "a", SHA256: httpauth.HashToken("a"), Scopes: []string{"admin"}, MaxInflight: -1, Rate: -1, Burst: 3}}
	err := cfg.Validate()
	for _, k := range []string{"append.max_json_depth", "auth.tokens[0].max_inflight", "auth.tokens[0].rate", "auth.tokens[0].burst"} {
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("does not name %s: %v", k, err)
		}
	}
}
