package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// startBridge runs `bridge serve` in this process with cfg's NATS section.
func startBridge(t *testing.T, nats NATSConfig, replicas int) (*Bridge, error) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.HTTP.ShutdownTimeout = 5 * time.Second
	cfg.NATS = nats
	cfg.Stream.Replicas = replicas
	cfg.Append.Timeout = testTimeout
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := New(context.Background(), cfg, testLogger(t))
	if err == nil {
		t.Cleanup(func() { _ = b.Close(context.Background()) })
	}
	return b, err
}

func appendOne(t *testing.T, b *Bridge, streamID, id string) apiResp {
	t.Helper()
	return do(t, "POST", "http://"+b.Addr()+"/streams/order/"+streamID+"/events",
		fmt.Sprintf(`[{"id":%q,"type":"OrderPlaced","data":{"n":1}}]`, id))
}

// TestBridgeLogsInToNATS: the bridge connects with nats.user/password; a
// wrong password stops it at start with the server's refusal.
func TestBridgeLogsInToNATS(t *testing.T) {
	ns := testenv.NATSWith(t, func(o *server.Options) { o.Username, o.Password = "bridge", "pw" })
	b, err := startBridge(t, NATSConfig{Config: natsutil.Config{URL: ns.URL(), User: "bridge", Password: "pw"}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if r := appendOne(t, b, "o-1", "e-1"); r.code != 200 {
		t.Fatalf("append over an authenticated connection: %d %s", r.code, r.Error)
	}
	_, err = startBridge(t, NATSConfig{Config: natsutil.Config{URL: ns.URL(), User: "bridge", Password: "wrong"}}, 1)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("a wrong password: want an authorization error, got %v", err)
	}
}

// TestBridgeReplicasUnmeetable: stream.replicas 3 on a single server stops
// the bridge at start with an error naming the key and the fix.
func TestBridgeReplicasUnmeetable(t *testing.T) {
	ns := testenv.NATS(t)
	_, err := startBridge(t, NATSConfig{Config: natsutil.Config{URL: ns.URL()}}, 3)
	if !errors.Is(err, natsutil.ErrReplicas) || !strings.Contains(err.Error(), "stream.replicas is 3") {
		t.Fatalf("want ErrReplicas naming stream.replicas, got %v", err)
	}
}

// TestBridgeOnCluster: on a 3-node cluster the bridge provisions the
// event stream, the DLQ stream and the sinks' buckets with R3; while the
// stream has no leader (two nodes down) appends answer 503 and nothing is
// written; once a leader is back the bridge appends again by itself.
func TestBridgeOnCluster(t *testing.T) {
	c := testenv.StartCluster(t, 3)
	b, err := startBridge(t, NATSConfig{Config: natsutil.Config{URL: c.URLs()}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	_, js := c.Connect(t)
	ctx := context.Background()
	for _, name := range []string{natsutil.DefaultStream, deadletter.Stream, "KV_" + checkpoint.DefaultBucket, "KV_" + control.Bucket} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas, want 3", name, r)
		}
	}
	if r := appendOne(t, b, "o-1", "ok-1"); r.code != 200 {
		t.Fatalf("append on the cluster: %d %s", r.code, r.Error)
	}

	// Take the stream's quorum away: stop the two nodes the bridge is not
	// connected to.
	connected := b.nc.ConnectedServerName()
	for _, n := range c.Nodes {
		if n.Name != connected {
			c.StopNode(n)
		}
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return c.StreamLeader(natsutil.DefaultStream) == nil }, "the stream kept a leader with one node of three")
	var refused []string
	for i := range 3 {
		id := fmt.Sprintf("no-leader-%d", i)
		r := appendOne(t, b, fmt.Sprintf("o-nl-%d", i), id)
		if r.code != 503 {
			t.Fatalf("append without a stream leader: %d %s, want 503", r.code, r.Error)
		}
		if !strings.Contains(r.Error, "retry with the same event ids") {
			t.Errorf("the 503 does not say what to do: %q", r.Error)
		}
		refused = append(refused, id)
	}

	for _, n := range c.Nodes {
		if !n.Running() {
			c.StartNode(n)
		}
	}
	c.WaitStreamLeader(natsutil.DefaultStream, 60*time.Second)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return appendOne(t, b, "o-2", "after-1").code == 200
	}, "the bridge did not append again once the stream had a leader")

	// Nothing of the refused appends was written.
	str, err := js.Stream(ctx, natsutil.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	for i := range refused {
		_, err := str.GetLastMsgForSubject(ctx, fmt.Sprintf("events.order.o-nl-%d", i))
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			t.Errorf("append %s answered 503 but its stream holds an event (err %v)", refused[i], err)
		}
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Errorf("the stream holds %d events, want 2 (the appends answered 200)", info.State.Msgs)
	}
}
