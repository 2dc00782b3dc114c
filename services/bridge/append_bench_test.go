package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// BenchmarkAppend appends in-process (no HTTP) from 32 goroutines, each to
// its own stream with an expected version, for profiling the append path:
//
//	go test -run '^$' -bench Append -benchtime 20000x ./services/bridge/
//
// "pergroup=off" publishes each multi-event append as its own atomic batch
// (no group commit), for the comparison. The HTTP figures against raw
// JetStream are measured by bench/cmd/jetbench -phases appends.
func BenchmarkAppend(b *testing.B) {
	for _, events := range []int{1, 5} {
		for _, group := range []bool{true, false} {
			if events == 1 && !group {
				continue // single events never group
			}
			b.Run(fmt.Sprintf("events=%d/group=%v", events, group), func(b *testing.B) {
				benchAppend(b, events, 32, group)
			})
		}
	}
}

func benchAppend(b *testing.B, events, clients int, group bool) {
	ns := testenv.NATS(b)
	nc, err := natsutil.Connect(natsutil.Config{URL: ns.URL()}, "bench-append", testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithDefaultTimeout(5*time.Second))
	ctx := context.Background()
	stream, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig())
	if err != nil {
		b.Fatal(err)
	}
	app := NewAppender(js, stream)
	if !group {
		app.group = nil
	} else if v := os.Getenv("GROUPS_INFLIGHT"); v != "" {
		app.group.maxInflight, _ = strconv.Atoi(v)
	}
	data := json.RawMessage(`{"orderId":"o-00042","customerId":"c-12345","status":"placed","currency":"EUR","total":1234.56,"items":[{"sku":"SKU-48213","qty":2,"price":19.99}],"shipTo":{"city":"Lyon"}}`)
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	b.ResetTimer()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			var version uint64
			var mine []time.Duration
			for next.Add(1) <= int64(b.N) {
				evs := make([]envelope.Event, events)
				for i := range evs {
					evs[i] = envelope.Event{ID: fmt.Sprintf("c%d-v%d-%d", c, version, i), Type: "OrderPlaced", Data: data}
				}
				v := version
				t0 := time.Now()
				res, err := app.Append(ctx, AppendRequest{Category: "bench", StreamID: fmt.Sprintf("s%d", c), Events: evs, ExpectedVersion: &v})
				if err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(t0))
				version = res.Version
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	el := b.Elapsed()
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(b.N)/el.Seconds(), "appends/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
	s := app.Stats()
	if s.Groups > 0 {
		b.ReportMetric(float64(s.Grouped)/float64(s.Groups), "appends/group")
	}
}

// BenchmarkHTTPAppend is BenchmarkAppend through the HTTP API (an httptest
// server in this process), plain, over TLS, and over TLS with a bearer
// token checked on every request: the cost of a bridge safe to expose.
//
//	go test -run '^$' -bench HTTPAppend -benchtime 20000x ./services/bridge/
func BenchmarkHTTPAppend(b *testing.B) {
	const secret = "bench-secret-token"
	sum := sha256.Sum256([]byte(secret))
	for _, mode := range []string{"plain", "tls", "tls+token"} {
		for _, events := range []int{1, 5} {
			b.Run(fmt.Sprintf("%s/events=%d", mode, events), func(b *testing.B) {
				e := newEnv(b)
				api := NewAPI(e.app, testMaxBody, testTimeout, e.nc.IsConnected, nil, testLogger(b))
				if mode == "tls+token" {
					cfg := DefaultConfig()
					cfg.Auth.Tokens = []TokenConfig{{Name: "bench", SHA256: hex.EncodeToString(sum[:]), Scopes: []string{"append:*"}}}
					auth, err := NewAuthenticator(cfg)
					if err != nil {
						b.Fatal(err)
					}
					api = api.WithAuth(auth)
				}
				srv := httptest.NewUnstartedServer(api.Handler())
				if mode == "plain" {
					srv.Start()
				} else {
					srv.StartTLS()
				}
				defer srv.Close()
				c := srv.Client()
				c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
				var next atomic.Int64
				b.ResetTimer()
				var wg sync.WaitGroup
				for cl := range 32 {
					wg.Go(func() {
						var version uint64
						for next.Add(1) <= int64(b.N) {
							body := newEvents(fmt.Sprintf("c%d-v%d", cl, version), events)
							url := fmt.Sprintf("%s/streams/bench/s%d/events?expectedVersion=%d", srv.URL, cl, version)
							req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
							req.Header.Set("Content-Type", "application/json")
							if mode == "tls+token" {
								req.Header.Set("Authorization", "Bearer "+secret)
							}
							resp, err := c.Do(req)
							if err != nil {
								b.Error(err)
								return
							}
							var r apiResp
							err = json.NewDecoder(resp.Body).Decode(&r)
							resp.Body.Close()
							if err != nil || resp.StatusCode != http.StatusOK {
								b.Errorf("status %d %+v %v", resp.StatusCode, r, err)
								return
							}
							version = r.Version
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
			})
		}
	}
}
