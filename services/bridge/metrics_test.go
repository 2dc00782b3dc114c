package main

import (
	"bytes"
	"context"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads url's /metrics page in the Prometheus text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", res.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	return mfs
}

// sample is the value of a counter or gauge, or the sample count of a
// histogram, with the given label value pairs; it fails when there is none.
func sample(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no sample of %s with labels %v", name, labels)
	return 0
}

func TestMetricsCountAppends(t *testing.T) {
	e := newEnv(t)

	// Before anything: every result is exported, at zero.
	mfs := scrape(t, e.srv.URL)
	for _, r := range resultNames {
		if v := sample(t, mfs, "jetsync_bridge_appends_total", "result", r); v != 0 {
			t.Errorf("appends_total{result=%q} = %v before any append", r, v)
		}
	}

	wantStatus(t, e.post(t, "m", "1", newEvents("m1", 3)), http.StatusOK)
	wantStatus(t, e.post(t, "m", "2", newEvents("m2", 2)), http.StatusOK)
	r := e.post(t, "m", "1", newEvents("m1", 3)) // a client retry
	if r.code != http.StatusOK || !r.Duplicate {
		t.Fatalf("retry: %+v", r)
	}
	wantStatus(t, e.post(t, "m", "1", newEvents("m1-late", 1), HeaderExpectedVersion, "1"), http.StatusConflict)
	wantStatus(t, e.post(t, "m", "1", `[{"id":"x"}]`), http.StatusBadRequest)
	wantStatus(t, e.post(t, "m", "1", `[{"id":"big","type":"T","data":"`+strings.Repeat("x", testMaxBody)+`"}]`), http.StatusRequestEntityTooLarge)

	mfs = scrape(t, e.srv.URL)
	want := map[string]float64{"ok": 2, "duplicate": 1, "conflict": 1, "bad_request": 1, "too_large": 1, "unavailable": 0, "error": 0}
	for res, n := range want {
		if v := sample(t, mfs, "jetsync_bridge_appends_total", "result", res); v != n {
			t.Errorf("appends_total{result=%q} = %v, want %v", res, v, n)
		}
	}
	if v := sample(t, mfs, "jetsync_bridge_events_appended_total"); v != 5 {
		t.Errorf("events_appended_total = %v, want 5", v)
	}
	if v := sample(t, mfs, "jetsync_bridge_append_seconds"); v != 6 {
		t.Errorf("append_seconds has %v samples, want 6 (one per append request)", v)
	}
	h := mfs["jetsync_bridge_append_events"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() != 5 {
		t.Errorf("append_events: %d appends with %v events, want 2 with 5", h.GetSampleCount(), h.GetSampleSum())
	}
	if sample(t, mfs, "go_goroutines") <= 0 {
		t.Error("go_goroutines is not positive")
	}
	if runtime.GOOS == "linux" && sample(t, mfs, "process_start_time_seconds") <= 0 {
		t.Error("process_start_time_seconds is not positive")
	}

	// NATS down: 503, counted as unavailable.
	e.ns.Stop()
	waitReady(t, e, http.StatusServiceUnavailable)
	wantStatus(t, e.post(t, "m", "3", newEvents("m3", 1)), http.StatusServiceUnavailable)
	mfs = scrape(t, e.srv.URL)
	if v := sample(t, mfs, "jetsync_bridge_appends_total", "result", "unavailable"); v != 1 {
		t.Errorf("appends_total{result=\"unavailable\"} = %v, want 1", v)
	}
	if v := sample(t, mfs, "jetsync_bridge_events_appended_total"); v != 5 {
		t.Errorf("events_appended_total = %v after a failed append, want still 5", v)
	}
	e.ns.Start()
}

func TestMetricsCountImportedEvents(t *testing.T) {
	e := importEnv(t)
	ctx := context.Background()
	file := ndjson(2, 1, 3) // 6 events
	if _, err := Import(ctx, e.js, bytes.NewReader(file), ImportOptions{Metrics: e.met}); err != nil {
		t.Fatal(err)
	}
	// Again: everything is skipped, nothing more is counted.
	if _, err := Import(ctx, e.js, bytes.NewReader(file), ImportOptions{Metrics: e.met}); err != nil {
		t.Fatal(err)
	}
	if v := sample(t, scrape(t, e.srv.URL), "jetsync_bridge_import_events_total"); v != 6 {
		t.Errorf("import_events_total = %v, want 6", v)
	}
}

// The bridge that `bridge serve` runs serves /metrics on its API port.
func TestBridgeServesMetrics(t *testing.T) {
	ctx := context.Background()
	b, err := New(ctx, embeddedConfig(t, t.TempDir()), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	url := "http://" + b.Addr()
	wantStatus(t, do(t, http.MethodPost, url+"/streams/user/u1/events", newEvents("u1", 4)), http.StatusOK)
	mfs := scrape(t, url)
	if v := sample(t, mfs, "jetsync_bridge_appends_total", "result", "ok"); v != 1 {
		t.Errorf("appends_total{result=\"ok\"} = %v, want 1", v)
	}
	if v := sample(t, mfs, "jetsync_bridge_events_appended_total"); v != 4 {
		t.Errorf("events_appended_total = %v, want 4", v)
	}
	if v := sample(t, mfs, "jetsync_bridge_grouped_appends_total"); v != 1 {
		t.Errorf("grouped_appends_total = %v, want 1 (the 4-event append went through group commit)", v)
	}
	r := do(t, http.MethodPost, url+"/metrics", "")
	wantStatus(t, r, http.StatusMethodNotAllowed)
}

func TestResultOf(t *testing.T) {
	for _, c := range []struct {
		status int
		dup    bool
		want   string
	}{
		{http.StatusOK, false, "ok"},
		{http.StatusOK, true, "duplicate"},
		{http.StatusConflict, false, "conflict"},
		{http.StatusBadRequest, false, "bad_request"},
		{http.StatusRequestEntityTooLarge, false, "too_large"},
		{http.StatusServiceUnavailable, false, "unavailable"},
		{http.StatusInternalServerError, false, "error"},
		{http.StatusUnauthorized, false, "unauthorized"},
		{http.StatusForbidden, false, "forbidden"},
		{http.StatusTooManyRequests, false, "limited"},
	} {
		if got := resultNames[resultOf(c.status, c.dup)]; got != c.want {
			t.Errorf("resultOf(%d, %v) = %s, want %s", c.status, c.dup, got, c.want)
		}
	}
}

// Counting an append stays off the heap.
func TestAppendDoneAllocatesNothing(t *testing.T) {
	m := NewMetrics()
	for _, status := range []int{http.StatusOK, http.StatusConflict, http.StatusServiceUnavailable} {
		if n := testing.AllocsPerRun(100, func() { m.appendDone(status, false, 3, time.Millisecond) }); n != 0 {
			t.Errorf("appendDone(%d) allocates %v times", status, n)
		}
	}
}
