package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// TestReloadMappingsCtlAndSIGHUP: the running sink-cache binary changes its
// mappings when its config file changes, through jetsyncctl reload and
// through SIGHUP alike: the events appended after a reload are written with
// the new key template, the ones before keep theirs; a file that does not
// load, or changes a key that needs a restart, is refused naming the key
// and the running mappings keep working; nothing is replayed or lost on
// the way (every position once in the applied logs, the checkpoint at the
// head), and the process never restarts.
func TestReloadMappingsCtlAndSIGHUP(t *testing.T) {
	s := newStack(t)
	s.startSink()
	base, err := os.ReadFile(s.sinkConfig)
	if err != nil {
		t.Fatal(err)
	}
	// version v of the config writes orders to order-<v>:{streamId} ("" is the original).
	version := func(v string) string {
		if v == "" {
			return string(base)
		}
		out := strings.ReplaceAll(string(base), `key: "order:{streamId}"`, `key: "order-`+v+`:{streamId}"`)
		if out == string(base) {
			t.Fatal("test bug: the mapping was not changed")
		}
		return out
	}
	rewrite := func(body string) {
		t.Helper()
		if err := os.WriteFile(s.sinkConfig, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	var positions []uint64
	n := 0
	// place appends an OrderPlaced to a new stream, waits for the sink to
	// apply it, and returns the Redis key holding the order.
	place := func() string {
		t.Helper()
		n++
		sid := fmt.Sprintf("reload-%d", n)
		body, _ := json.Marshal([]appendReq{{ID: "rl-" + strconv.Itoa(n), Type: "OrderPlaced", Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}})
		code, resp := s.post("/streams/order/"+sid+"/events", body)
		if code != 200 {
			t.Fatalf("append: %d %s", code, resp)
		}
		var ar appendResp
		_ = json.Unmarshal(resp, &ar)
		pos := ar.Positions[0]
		positions = append(positions, pos)
		testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() >= pos }, "sink never applied position %d", pos)
		keys, err := s.rdb.Keys(ctx, "order*:"+sid).Result()
		if err != nil || len(keys) != 1 {
			t.Fatalf("keys of %s: %v, %v; want exactly one", sid, keys, err)
		}
		return keys[0]
	}
	wantKey := func(got, prefix string) {
		t.Helper()
		if !strings.HasPrefix(got, prefix+":") {
			t.Fatalf("order written to %s, want %s:...", got, prefix)
		}
	}
	pid := s.sink.cmd.Process.Pid
	hup := func() {
		t.Helper()
		if err := s.sink.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	logged := func(what string, count int) {
		t.Helper()
		testenv.Eventually(t, 15*time.Second, func() bool { return strings.Count(s.sink.output(), what) >= count },
			"the sink never logged %q %d times", what, count)
	}

	testenv.Eventually(t, 30*time.Second, func() bool { _, code := s.ctl("reload", "cache"); return code == 0 }, "sink never answered reload")
	wantKey(place(), "order")

	// jetsyncctl reload: a changed key template applies to the next events.
	rewrite(version("v2"))
	out, code := s.ctl("reload", "cache")
	if code != 0 || !strings.Contains(out, "applied") || !strings.Contains(out, "mappings.OrderPlaced") {
		t.Fatalf("reload v2: exit %d: %s", code, out)
	}
	t.Logf("jetsyncctl reload: %s", strings.TrimSpace(out))
	wantKey(place(), "order-v2")
	if v, _ := s.rdb.Get(ctx, "order:reload-1").Result(); v != `{"n":1}` {
		t.Fatalf("the order written before the reload changed: %q", v)
	}

	// Refused through jetsyncctl: exit 2, the key named, v2 keeps writing.
	for _, bad := range []struct{ name, body, key string }{
		{"invalid jq", strings.Replace(version("v2"), `{op: set, key: "order-v2:{streamId}"}`, `{op: set, key: "order-v2:{streamId}", project: '{n: .data.n'}`, 1), "mappings.OrderPlaced[0].project"},
		{"unknown key", strings.Replace(version("v2"), `{op: set, key: "order-v2:{streamId}"}`, `{op: set, kee: "order-v2:{streamId}"}`, 1), "mappings.OrderPlaced[0].kee"},
		{"syntax error", version("v2") + "  OrderNoted: [unclosed\n", "line"},
		{"changed redis", strings.Replace(version("v3"), "redis: {addr:", "redis: {db: 2, addr:", 1), "redis.db"},
	} {
		rewrite(bad.body)
		out, code := s.ctl("reload", "cache")
		if code != 2 || !strings.Contains(out, "refused") || !strings.Contains(out, bad.key) {
			t.Fatalf("reload with %s: exit %d, want 2 naming %s:\n%s", bad.name, code, bad.key, out)
		}
		t.Logf("%s: %s", bad.name, strings.TrimSpace(out))
		wantKey(place(), "order-v2")
	}

	// SIGHUP does the same.
	rewrite(version("v3"))
	hup()
	logged("mappings reloaded", 2)
	wantKey(place(), "order-v3")
	rewrite(strings.Replace(version("v4"), `{op: set, key: "order-v4:{streamId}"}`, `{op: set, key: "order-v4:{streamId}", project: '{n: .data.n'}`, 1))
	hup()
	logged("mappings.OrderPlaced[0].project", 2) // once through jetsyncctl above, once now
	wantKey(place(), "order-v3")
	rewrite(version("v4"))
	hup()
	logged("mappings reloaded", 3)
	wantKey(place(), "order-v4")

	if s.sink.cmd == nil || s.sink.cmd.Process.Pid != pid {
		t.Fatal("the sink process changed")
	}
	select {
	case err := <-s.sink.done:
		t.Fatalf("the sink exited: %v", err)
	default:
	}
	// Nothing replayed, nothing lost: each order's applied log holds its
	// one position, and the checkpoint is at the last one.
	for i, pos := range positions {
		got, _ := s.rdb.LRange(ctx, fmt.Sprintf("applied:reload-%d", i+1), 0, -1).Result()
		if len(got) != 1 || got[0] != strconv.FormatUint(pos, 10) {
			t.Errorf("applied:reload-%d = %v, want [%d]", i+1, got, pos)
		}
	}
	if cp := s.checkpoint(); cp != positions[len(positions)-1] {
		t.Errorf("checkpoint %d, want %d", cp, positions[len(positions)-1])
	}

	// Operator errors: an unknown sink is bad usage, a stopped sink says so.
	if out, code := s.ctl("reload", "nosuch"); code != 2 || !strings.Contains(out, "unknown sink") {
		t.Fatalf("reload of an unknown sink: exit %d: %s", code, out)
	}
	if code := s.sink.stop(15 * time.Second); code != 0 {
		t.Fatalf("sink exit %d", code)
	}
	if out, code := s.ctl("reload", "cache"); code != 1 || !strings.Contains(out, "not running") {
		t.Fatalf("reload of a stopped sink: exit %d: %s", code, out)
	}
}
