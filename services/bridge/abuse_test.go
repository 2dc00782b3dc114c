package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/httpauth"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// Abuse-test sizes and bounds. The bridge runs as a child process (the test
// binary's real main), so its RSS is its own and its file descriptors do not
// share the test's limit.
const (
	abuseIdleConns   = 10000
	abuseMaxConns    = 10200 // http.max_connections
	abuseSlowConns   = 100
	abuseGoodClients = 8
	abuseP99Bound    = time.Second // well-behaved appends under abuse
	abuseRSSBound    = 512 << 20   // the bridge's peak RSS (VmHWM)
)

const (
	secretGood  = "jst_good-secret-0123456789"
	secretFlood = "jst_flood-secret-0123456789"
)

// abuseBridge is a bridge process under attack.
type abuseBridge struct {
	cmd    *exec.Cmd
	url    string
	addr   string
	js     jetstream.JetStream
	stderr *syncBuffer
}

func startAbuseBridge(t *testing.T) *abuseBridge {
	t.Helper()
	port, nport := testenv.FreePort(t), testenv.FreePort(t)
	cfg := fmt.Sprintf(`http:
  listen: 127.0.0.1:%d
  max_body_bytes: 8388608
  max_connections: %d
  read_header_timeout: 2s
nats:
  embedded: {port: %d, store_dir: %s}
auth:
  tokens:
    - {name: good, sha256: %s, scopes: ["append:*", "read:*"]}
    - {name: flood, sha256: %s, scopes: ["append:*"], rate: 20, burst: 20}
`, port, abuseMaxConns, nport, t.TempDir(), httpauth.HashToken(secretGood), httpauth.HashToken(secretFlood))
	path := filepath.Join(t.TempDir(), "bridge.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &abuseBridge{url: fmt.Sprintf("http://127.0.0.1:%d", port), addr: fmt.Sprintf("127.0.0.1:%d", port), stderr: &syncBuffer{}}
	b.cmd = exec.Command(os.Args[0], "-test.run=^$")
	b.cmd.Env = append(os.Environ(), "BRIDGE_TEST_MAIN_ARGS=serve -config "+path)
	b.cmd.Stderr = b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = b.cmd.Process.Kill()
			<-done
		}
	})
	testenv.Eventually(t, 20*time.Second, func() bool {
		res, err := http.Get(b.url + "/readyz")
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == http.StatusOK
	}, "the bridge process to be ready")
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", nport))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if b.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return b
}

// procStatus reads a field of /proc/PID/status in bytes (VmRSS, VmHWM).
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the bridge's memory from /proc (Linux only): %v", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// post sends an append with client c and returns the status and Retry-After.
func abusePost(c *http.Client, url, secret, body string) (int, string, error) {
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	res, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, res.Header.Get("Retry-After"), nil
}

// goodLoad runs well-behaved clients (one 1-event append at a time each,
// keep-alive) for d and returns their latencies and how many were stored.
type goodLoad struct {
	client *http.Client
	url    string
	n      atomic.Int64 // events acknowledged
	seq    atomic.Int64
}

func (g *goodLoad) run(t *testing.T, d time.Duration) []time.Duration {
	t.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	var failed atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for c := range abuseGoodClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				id := g.seq.Add(1)
				start := time.Now()
				code, _, err := abusePost(g.client, fmt.Sprintf("%s/streams/good/c%d/events", g.url, c), secretGood, newEvents(fmt.Sprintf("g%d", id), 1))
				el := time.Since(start)
				if err != nil || code != 200 {
					failed.Add(1)
					t.Errorf("well-behaved append: %d %v", code, err)
					return
				}
				g.n.Add(1)
				mu.Lock()
				lat = append(lat, el)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat
}

func pct(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	return lat[min(len(lat)-1, int(float64(len(lat))*p))]
}

func logLatency(t *testing.T, phase string, lat []time.Duration, d time.Duration) time.Duration {
	t.Helper()
	p99 := pct(lat, 0.99)
	t.Logf("%-38s %6d appends, %6.0f/s, p50 %v, p99 %v, max %v", phase+":", len(lat), float64(len(lat))/d.Seconds(),
		pct(lat, 0.50).Round(10*time.Microsecond), p99.Round(10*time.Microsecond), pct(lat, 1).Round(10*time.Microsecond))
	if p99 > abuseP99Bound {
		t.Errorf("%s: well-behaved p99 %v is past %v", phase, p99, abuseP99Bound)
	}
	return p99
}

// TestAbuse attacks a real bridge process (embedded NATS, token auth, real
// TCP on loopback) while well-behaved clients append, and reports their
// latency, the bridge's memory and what reached the stream.
func TestAbuse(t *testing.T) {
	b := startAbuseBridge(t)
	pid := b.cmd.Process.Pid
	good := &goodLoad{url: b.url, client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: abuseGoodClients}}}
	const window = 2 * time.Second
	t.Logf("bridge pid %d: RSS at start %d MiB", pid, procStatus(t, pid, "VmRSS")>>20)

	logLatency(t, "baseline", good.run(t, window), window)

	// 1. Idle keep-alive connections: each asks GET /healthz once, then sits.
	idle := openIdle(t, b.addr, abuseIdleConns)
	t.Logf("idle connections held: %d of %d asked; bridge RSS %d MiB", len(idle), abuseIdleConns, procStatus(t, pid, "VmRSS")>>20)
	if len(idle) < abuseIdleConns*9/10 {
		t.Errorf("only %d idle connections opened", len(idle))
	}
	logLatency(t, fmt.Sprintf("with %d idle connections", len(idle)), good.run(t, window), window)

	// 2. Past http.max_connections: connections are closed at once.
	refused, extra := 0, []net.Conn{}
	for range abuseMaxConns - len(idle) + 100 {
		c, err := net.DialTimeout("tcp", b.addr, 2*time.Second)
		if err != nil {
			refused++
			continue
		}
		extra = append(extra, c)
	}
	// Read them all at once: a read past its deadline reports a timeout
	// even when the peer closed.
	var closedAtOnce atomic.Int64
	var rwg sync.WaitGroup
	deadline := time.Now().Add(time.Second) // before read_header_timeout (2s)
	for _, c := range extra {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			_ = c.SetReadDeadline(deadline)
			if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
				closedAtOnce.Add(1)
			}
		}()
	}
	rwg.Wait()
	refused += int(closedAtOnce.Load())
	for _, c := range extra {
		c.Close()
	}
	t.Logf("past max_connections %d: %d of %d more connections closed at once", abuseMaxConns, refused, len(extra))
	if want := len(idle) + abuseGoodClients + len(extra) - abuseMaxConns; refused < want-10 || refused > want+10 {
		t.Errorf("%d connections refused past http.max_connections, want about %d", refused, want)
	}

	// 3. Slow-header clients: ReadHeaderTimeout (2s) disconnects them.
	var slowWG sync.WaitGroup
	var evictMu sync.Mutex
	var evicted []time.Duration
	for range abuseSlowConns {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		slowWG.Add(1)
		go func() {
			defer slowWG.Done()
			defer c.Close()
			start := time.Now()
			if _, err := io.WriteString(c, "POST /streams/slow/s1/events HTTP/1.1\r\nHost: x\r\n"); err != nil {
				return
			}
			for time.Since(start) < 10*time.Second {
				if _, err := io.WriteString(c, "X: y\r\n"); err != nil {
					break
				}
				_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := c.Read(make([]byte, 512)); err != nil && !isTimeout(err) {
					break
				}
			}
			evictMu.Lock()
			evicted = append(evicted, time.Since(start))
			evictMu.Unlock()
		}()
	}
	slowLat := good.run(t, window)
	slowWG.Wait()
	sort.Slice(evicted, func(i, j int) bool { return evicted[i] < evicted[j] })
	logLatency(t, fmt.Sprintf("with %d slow-header clients", abuseSlowConns), slowLat, window)
	t.Logf("slow-header clients disconnected after %v to %v (read_header_timeout 2s)", pct(evicted, 0).Round(time.Millisecond), pct(evicted, 1).Round(time.Millisecond))
	if len(evicted) != abuseSlowConns || pct(evicted, 1) > 5*time.Second {
		t.Errorf("slow-header clients not all disconnected within 5s: %d, last %v", len(evicted), pct(evicted, 1))
	}

	// 4. Bad bodies: each refused, fast, nothing stored.
	pad := strings.Repeat("x", 1<<20-30000)
	deep := `[{"id":"deep","type":"T","data":{"pad":"` + pad + `","n":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}}]`
	var many strings.Builder
	many.WriteString("[")
	for i := range 100000 {
		if i > 0 {
			many.WriteString(",")
		}
		fmt.Fprintf(&many, `{"id":"m%d","type":"T","data":1}`, i)
	}
	many.WriteString("]")
	utf := `[{"id":"u1","type":"T","data":{"s":"ok"}},{"id":"u2","type":"T","data":{"s":"` + "\xff\xfe bad \xc3" + `"}}]`
	utfID := `[{"id":"u3-` + "\xc3\x28" + `","type":"T","data":{}}]`
	for _, tt := range []struct {
		name, subject, body string
		want                []int
	}{
		{fmt.Sprintf("1 MiB body, nesting depth 10k (%d bytes)", len(deep)), "deep", deep, []int{400}},
		{fmt.Sprintf("100k-event append (%d bytes)", many.Len()), "many", many.String(), []int{400, 413}},
		{"invalid UTF-8 in data", "utf", utf, []int{400}},
		{"invalid UTF-8 in an id", "utf", utfID, []int{400}},
	} {
		start := time.Now()
		code, _, err := abusePost(good.client, b.url+"/streams/"+tt.subject+"/x/events", secretGood, tt.body)
		el := time.Since(start)
		if err != nil || !containsInt(tt.want, code) {
			t.Errorf("%s: %d %v, want %v", tt.name, code, err, tt.want)
		}
		t.Logf("%-48s -> %d in %v", tt.name, code, el.Round(100*time.Microsecond))
		if el > 2*time.Second {
			t.Errorf("%s took %v", tt.name, el)
		}
	}

	// 5. A flood past one token's rate limit (20/s): 429 with Retry-After;
	// the other token's appends unaffected.
	var flood200, flood429, noRetry atomic.Int64
	floodClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	floodEnd := time.Now().Add(window)
	var fwg sync.WaitGroup
	var fseq atomic.Int64
	for range 16 {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			for time.Now().Before(floodEnd) {
				code, ra, err := abusePost(floodClient, b.url+"/streams/flood/f1/events", secretFlood, newEvents(fmt.Sprintf("f%d", fseq.Add(1)), 1))
				switch {
				case err != nil:
					t.Errorf("flood: %v", err)
					return
				case code == 200:
					flood200.Add(1)
				case code == 429:
					flood429.Add(1)
					if ra == "" {
						noRetry.Add(1)
					}
				default:
					t.Errorf("flood: status %d", code)
					return
				}
			}
		}()
	}
	floodLat := good.run(t, window)
	fwg.Wait()
	logLatency(t, "during a rate-limit flood", floodLat, window)
	t.Logf("flood (16 clients, token rate 20/s burst 20, %v): %d stored, %d answered 429 (%d without Retry-After)", window, flood200.Load(), flood429.Load(), noRetry.Load())
	if flood429.Load() == 0 || noRetry.Load() != 0 || flood200.Load() > 20+int64(window.Seconds()*20)+5 {
		t.Errorf("rate limit did not hold: %d stored, %d limited, %d without Retry-After", flood200.Load(), flood429.Load(), noRetry.Load())
	}

	// Memory: the bridge's peak.
	hwm, rss := procStatus(t, pid, "VmHWM"), procStatus(t, pid, "VmRSS")
	t.Logf("bridge memory: peak RSS (VmHWM) %d MiB, RSS now %d MiB (bound %d MiB)", hwm>>20, rss>>20, abuseRSSBound>>20)
	if hwm > abuseRSSBound {
		t.Errorf("bridge peak RSS %d MiB is past %d MiB", hwm>>20, abuseRSSBound>>20)
	}
	for _, c := range idle {
		c.Close()
	}

	// The stream holds exactly what was acknowledged, nothing of the refused.
	for _, s := range []string{"deep", "many", "utf", "slow"} {
		if n := len(readSubject(t, b.js, "events."+s+".x")) + len(readSubject(t, b.js, "events."+s+".s1")); n != 0 {
			t.Errorf("%d events of refused appends stored under %s", n, s)
		}
	}
	goodStored := 0
	for c := range abuseGoodClients {
		goodStored += len(readSubject(t, b.js, fmt.Sprintf("events.good.c%d", c)))
	}
	floodStored := len(readSubject(t, b.js, "events.flood.f1"))
	total := msgCount(t, b.js)
	t.Logf("stream: %d messages = %d well-behaved + %d flood, all acknowledged", total, goodStored, floodStored)
	if int64(goodStored) != good.n.Load() || int64(floodStored) != flood200.Load() || total != uint64(goodStored+floodStored) {
		t.Errorf("stream holds %d (good %d of %d acknowledged, flood %d of %d)", total, goodStored, good.n.Load(), floodStored, flood200.Load())
	}
	if strings.Contains(b.stderr.String(), secretGood) || strings.Contains(b.stderr.String(), secretFlood) {
		t.Error("a secret is in the bridge's log")
	}
}

// openIdle opens n connections that each complete GET /healthz with
// keep-alive and then stay open; it returns those that made it.
func openIdle(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var mu sync.Mutex
	var out []net.Conn
	var wg sync.WaitGroup
	work := make(chan struct{})
	var failed atomic.Int64
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					failed.Add(1)
					continue
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				res, err := func() (*http.Response, error) {
					if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
						return nil, err
					}
					return http.ReadResponse(bufio.NewReader(c), nil)
				}()
				if err != nil || res.StatusCode != 200 {
					failed.Add(1)
					c.Close()
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				_ = c.SetDeadline(time.Time{})
				mu.Lock()
				out = append(out, c)
				mu.Unlock()
			}
		}()
	}
	for range n {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Logf("%d idle connections failed to open", f)
	}
	t.Cleanup(func() {
		for _, c := range out {
			c.Close()
		}
	})
	return out
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
