package kinesink

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kinesis"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/testenv"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesistest"
)

// The tests run against a real kinesalite (testenv.Kinesalite, or the
// server at KINESIS_ENDPOINT), often through kinesistest's fault-injecting
// proxy. The writer finds the test credentials through the SDK's standard
// chain, as in production: from the environment set here.
func TestMain(m *testing.M) {
	for _, kv := range kinesistest.Env() {
		k, v, _ := strings.Cut(kv, "=")
		if os.Getenv(k) == "" {
			os.Setenv(k, v)
		}
	}
	os.Exit(m.Run())
}

// target is one test's Kinesis server, the proxy in front of it, and a
// client that reads the server directly.
type target struct {
	srv   *testenv.KinesisServer
	proxy *kinesistest.Proxy
	kc    *kinesis.Client
}

func newTarget(t *testing.T) *target {
	t.Helper()
	srv := testenv.Kinesalite(t)
	return &target{srv: srv, proxy: kinesistest.NewProxy(t, srv.URL), kc: kinesistest.Client(srv.URL)}
}

var streamSeq atomic.Int64

// uniqueStream names a Kinesis stream no other test (nor an earlier run
// against KINESIS_ENDPOINT) uses.
func uniqueStream(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e10, streamSeq.Add(1))
}

// testConfig is a valid config writing to stream through endpoint,
// creating it with two shards.
func testConfig(t *testing.T, endpoint, stream string) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = "kin"
	cfg.NATS.URL = "nats://unused.invalid:4222" // the tests hand the engine their JetStream
	cfg.Kinesis.StreamName = stream
	cfg.Kinesis.Endpoint = endpoint
	cfg.Kinesis.CreateStreamIfMissing = true
	cfg.Kinesis.ShardCount = 2
	cfg.Kinesis.RequestTimeout = 10 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func testLog() *slog.Logger {
	out := io.Discard
	if testing.Verbose() {
		out = os.Stderr
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// connected returns a connected writer for cfg, closed when the test ends.
func connected(t *testing.T, cfg Config) *Writer {
	t.Helper()
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Connect(ctx); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

// makeEvents makes n events over `streams` stream ids with positions
// from+1 ... from+n and versions counted per stream; pad sets the data size.
func makeEvents(n, streams int, from uint64, pad int) []envelope.Event {
	next := map[string]uint64{}
	evs := make([]envelope.Event, n)
	for i := range evs {
		sid := fmt.Sprintf("s%03d", i%streams)
		next[sid]++
		evs[i] = envelope.Event{
			ID: fmt.Sprintf("e-%d", from+uint64(i)+1), StreamID: sid, Category: "conf", Type: "Updated",
			Version: next[sid], Time: time.Unix(1700000000, int64(i)).UTC(), Position: from + uint64(i) + 1,
			Data: json.RawMessage(fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, strings.Repeat("x", pad))),
		}
	}
	return evs
}

func readBack(t *testing.T, kc *kinesis.Client, stream string) []kinesistest.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	recs, err := kinesistest.ReadStream(ctx, kc, stream)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// checkAllInOrder checks that recs hold every event of evs, that each
// stream's last copies and the reader's version rule both give the
// stream's events in order, and returns how often each position occurs.
func checkAllInOrder(t *testing.T, evs []envelope.Event, recs []kinesistest.Record) map[uint64]int {
	t.Helper()
	count := kinesistest.Positions(recs)
	want := map[string][]uint64{}
	for _, ev := range evs {
		if count[ev.Position] == 0 {
			t.Errorf("event at position %d (%s) is missing", ev.Position, ev.ID)
		}
		k := ev.Category + "/" + ev.StreamID
		want[k] = append(want[k], ev.Position)
	}
	if len(count) > len(evs) {
		t.Errorf("read back %d distinct positions, only %d events were written", len(count), len(evs))
	}
	for name, got := range map[string]map[string][]kinesistest.Record{
		"last copies":  kinesistest.LastCopies(recs),
		"version rule": kinesistest.InOrder(recs),
	} {
		for k, ps := range want {
			if len(got[k]) != len(ps) {
				t.Errorf("%s of %s: %d records, want %d", name, k, len(got[k]), len(ps))
				continue
			}
			for i, r := range got[k] {
				if r.Position != ps[i] {
					t.Errorf("%s of %s: record %d has position %d, want %d", name, k, i, r.Position, ps[i])
					break
				}
			}
		}
	}
	return count
}
