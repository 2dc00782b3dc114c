package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// testRedis is one real redis-server per test, with a client for checks.
type testRedis struct {
	srv *testenv.RedisServer
	rdb *redis.Client
}

func startRedis(t *testing.T) *testRedis {
	t.Helper()
	srv := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true})
	t.Cleanup(func() { _ = rdb.Close() })
	return &testRedis{srv: srv, rdb: rdb}
}

// writer builds a connected Writer from a YAML config body.
func (r *testRedis) writer(t *testing.T, body string) *Writer {
	t.Helper()
	cfg := DefaultConfig()
	if err := config.Decode([]byte(body), &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	cfg.Redis.Addr = r.srv.Addr()
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	if err := w.Connect(t.Context()); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = w.Close(context.Background()) })
	return w
}

func (r *testRedis) checkpoint(t *testing.T, w *Writer) uint64 {
	t.Helper()
	cp, err := w.LoadCheckpoint(t.Context())
	if err != nil {
		t.Fatalf("LoadCheckpoint: %v", err)
	}
	return cp
}

func (r *testRedis) get(t *testing.T, key string) string {
	t.Helper()
	v, err := r.rdb.Get(t.Context(), key).Result()
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	return v
}

func (r *testRedis) hash(t *testing.T, key string) map[string]string {
	t.Helper()
	v, err := r.rdb.HGetAll(t.Context(), key).Result()
	if err != nil {
		t.Fatalf("HGETALL %s: %v", key, err)
	}
	return v
}

func (r *testRedis) list(t *testing.T, key string) []string {
	t.Helper()
	v, err := r.rdb.LRange(t.Context(), key, 0, -1).Result()
	if err != nil {
		t.Fatalf("LRANGE %s: %v", key, err)
	}
	return v
}

func (r *testRedis) exists(t *testing.T, key string) bool {
	t.Helper()
	n, err := r.rdb.Exists(t.Context(), key).Result()
	if err != nil {
		t.Fatalf("EXISTS %s: %v", key, err)
	}
	return n == 1
}

func event(pos uint64, typ, stream, data string) envelope.Event {
	return envelope.Event{
		ID: fmt.Sprintf("ev-%d", pos), StreamID: stream, Category: "order", Type: typ, Version: pos,
		Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Data: json.RawMessage(data), Position: pos,
	}
}

func batch(evs ...envelope.Event) *sink.Batch {
	b := &sink.Batch{Events: evs}
	for _, e := range evs {
		b.Bytes += e.Size()
		b.Through = e.Position
	}
	return b
}

func write(t *testing.T, w *Writer, b *sink.Batch) {
	t.Helper()
	if err := w.WriteBatch(t.Context(), b); err != nil {
		t.Fatalf("WriteBatch through %d: %v", b.Through, err)
	}
}

const opsConfig = `
mappings:
  Placed:
    - {op: set, key: "order:{streamId}", ttl: 1h}
    - {op: append, key: "log:{streamId}", value: "{position}"}
    - {op: append, key: "raw:{streamId}"}
    - {op: set, key: "summary:{streamId}", project: '{id: .streamId, v: .version, total: .data.total, at: .time, sink: .metadata.by}'}
    - {op: incr, key: "stats:{category}", field: "{type}"}
  Updated:
    - {op: merge, key: "order:{streamId}:h", ttl: 10m}
    - {op: incr, key: "stats:{category}", field: "{type}"}
  Replaced:
    - {op: hset, key: "order:{streamId}:h"}
  Projected:
    - {op: merge, key: "p:{streamId}", project: '{status: .data.s, n: (.data.n + 1), tags: .data.tags}'}
  Cancelled:
    - {op: del, key: "order:{streamId}"}
    - {op: append, key: "log:{streamId}", value: "{position}"}
`

func TestEveryOp(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, opsConfig)
	ctx := t.Context()
	if cp := r.checkpoint(t, w); cp != 0 {
		t.Fatalf("fresh checkpoint = %d, want 0", cp)
	}

	placed := event(1, "Placed", "42", `{"total": 12.50,  "items":[1,2]}`)
	placed.Metadata = json.RawMessage(`{"by":"alice"}`)
	write(t, w, batch(
		placed,
		event(2, "Updated", "42", `{"status":"paid","amount":12.5,"flags":{"a":true},"note":null}`),
		event(3, "Updated", "42", `{"status":"shipped"}`),
	))

	// set writes the data bytes untouched, with a TTL.
	if got := r.get(t, "order:42"); got != string(placed.Data) {
		t.Errorf("set: %q, want the raw data %q", got, placed.Data)
	}
	if ttl := r.rdb.PTTL(ctx, "order:42").Val(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("set ttl: %s", ttl)
	}
	// append: the value template, or the data by default.
	if got := r.list(t, "log:42"); !slices.Equal(got, []string{"1"}) {
		t.Errorf("append value: %q", got)
	}
	if got := r.list(t, "raw:42"); !slices.Equal(got, []string{string(placed.Data)}) {
		t.Errorf("append data: %q", got)
	}
	// set with a projection of the whole envelope; numbers stay exact.
	if got, want := r.get(t, "summary:42"), `{"at":"2025-01-02T03:04:05Z","id":"42","sink":"alice","total":12.50,"v":1}`; got != want {
		t.Errorf("projection: %s, want %s", got, want)
	}
	// merge: strings as they are, other values as JSON text, other fields kept.
	want := map[string]string{"status": "shipped", "amount": "12.5", "flags": `{"a":true}`, "note": "null"}
	if got := r.hash(t, "order:42:h"); !maps(got, want) {
		t.Errorf("merge: %v, want %v", got, want)
	}
	if ttl := r.rdb.PTTL(ctx, "order:42:h").Val(); ttl <= 0 || ttl > 10*time.Minute {
		t.Errorf("merge ttl: %s", ttl)
	}
	// incr with a field template.
	if got := r.hash(t, "stats:order"); !maps(got, map[string]string{"Placed": "1", "Updated": "2"}) {
		t.Errorf("incr: %v", got)
	}
	if cp := r.checkpoint(t, w); cp != 3 {
		t.Errorf("checkpoint = %d, want 3", cp)
	}

	// hset replaces the hash; projection output feeds merge.
	write(t, w, batch(
		event(4, "Replaced", "42", `{"status":"returned","n":1}`),
		event(5, "Projected", "42", `{"s":"x","n":41,"tags":["a","b"],"ignored":1}`),
	))
	if got := r.hash(t, "order:42:h"); !maps(got, map[string]string{"status": "returned", "n": "1"}) {
		t.Errorf("hset: %v", got)
	}
	if got := r.hash(t, "p:42"); !maps(got, map[string]string{"status": "x", "n": "42", "tags": `["a","b"]`}) {
		t.Errorf("projected merge: %v", got)
	}
	// hset of an empty object leaves no hash at all.
	write(t, w, batch(event(6, "Replaced", "42", `{}`)))
	if r.exists(t, "order:42:h") {
		t.Error("hset {} left the hash")
	}

	// del.
	write(t, w, batch(event(7, "Cancelled", "42", `{}`)))
	if r.exists(t, "order:42") {
		t.Error("del left the key")
	}
	if got := r.list(t, "log:42"); !slices.Equal(got, []string{"1", "7"}) {
		t.Errorf("append log: %q", got)
	}
	if cp := r.checkpoint(t, w); cp != 7 {
		t.Errorf("checkpoint = %d, want 7", cp)
	}
}

func maps(got, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// failedIndexes returns the indexes a *sink.BatchError reports.
func failedIndexes(t *testing.T, err error) []int {
	t.Helper()
	var be *sink.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("got %v, want a *sink.BatchError", err)
	}
	var idx []int
	for _, f := range be.Failures {
		idx = append(idx, f.Index)
	}
	return idx
}

func TestPermanentEventErrorsWriteNothing(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, opsConfig+"unknown_types: error\n")
	write(t, w, batch(event(1, "Placed", "1", `{"total":1}`)))

	b := batch(
		event(2, "Placed", "1", `{"total":2}`),
		event(3, "Updated", "1", `"not-an-object"`),     // merge needs an object
		event(4, "Replaced", "1", `[1,2]`),              // so does hset
		event(5, "Projected", "1", `{"s":"x","n":"a"}`), // "a" + 1 fails at run time
		event(6, "Updated", "1", `null`),
		event(7, "Mystery", "1", `{}`), // no mapping, unknown_types: error
		event(8, "Updated", "1", `{"ok":true}`),
	)
	err := w.WriteBatch(t.Context(), b)
	if got := failedIndexes(t, err); !slices.Equal(got, []int{1, 2, 3, 4, 5}) {
		t.Fatalf("failed indexes %v, want [1 2 3 4 5]; err: %v", got, err)
	}
	var be *sink.BatchError
	errors.As(err, &be)
	for i, want := range []error{ErrNotObject, ErrNotObject, ErrProjection, ErrNotObject, ErrUnknownType} {
		if !errors.Is(be.Failures[i].Err, want) {
			t.Errorf("failure %d: %v, want %v", i, be.Failures[i].Err, want)
		}
	}
	if cp := r.checkpoint(t, w); cp != 1 {
		t.Errorf("checkpoint moved to %d by a refused batch", cp)
	}
	if r.get(t, "order:1") != `{"total":1}` || r.exists(t, "order:1:h") {
		t.Error("a refused batch wrote data")
	}
}

func TestProjectionMustYieldOneValue(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, `
mappings:
  Many: [{op: set, key: "k", project: '.data[]'}]
  None: [{op: set, key: "k", project: 'empty'}]
  Err:  [{op: set, key: "k", project: 'error("boom")'}]
  Obj:  [{op: hset, key: "k", project: '.data.list'}]
`)
	err := w.WriteBatch(t.Context(), batch(
		event(1, "Many", "s", `[1,2]`),
		event(2, "None", "s", `{}`),
		event(3, "Err", "s", `{}`),
		event(4, "Obj", "s", `{"list":[1]}`),
	))
	if got := failedIndexes(t, err); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Fatalf("failed %v: %v", got, err)
	}
}

func TestUnknownTypesIgnoredMoveTheCheckpoint(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, opsConfig)
	write(t, w, batch(event(1, "Mystery", "s", `{}`), event(2, "Other", "s", `{}`)))
	if cp := r.checkpoint(t, w); cp != 2 {
		t.Fatalf("checkpoint %d, want 2", cp)
	}
	// A batch with no events at all still moves the checkpoint.
	write(t, w, &sink.Batch{Through: 9})
	if cp := r.checkpoint(t, w); cp != 9 {
		t.Fatalf("checkpoint %d after an empty batch, want 9", cp)
	}
}

func TestSameBatchTwiceAppliesOnce(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, opsConfig)
	b := batch(event(1, "Placed", "7", `{"total":1}`), event(2, "Updated", "7", `{"a":1}`), event(3, "Cancelled", "7", `{}`))
	write(t, w, b)
	write(t, w, b)
	if got := r.list(t, "log:7"); !slices.Equal(got, []string{"1", "3"}) {
		t.Errorf("log after the batch twice: %q", got)
	}
	if got := r.hash(t, "stats:order"); !maps(got, map[string]string{"Placed": "1", "Updated": "1"}) {
		t.Errorf("counters after the batch twice: %v", got)
	}
	if cp := r.checkpoint(t, w); cp != 3 {
		t.Errorf("checkpoint %d, want 3", cp)
	}
}

func TestBatchPartlyBelowCheckpointAppliesTheRest(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, opsConfig)
	write(t, w, batch(event(1, "Placed", "7", `{}`), event(2, "Cancelled", "7", `{}`), event(3, "Cancelled", "7", `{}`)))
	var evs []envelope.Event
	for p := uint64(2); p <= 6; p++ {
		evs = append(evs, event(p, "Cancelled", "7", `{}`))
	}
	write(t, w, batch(evs...))
	if got := r.list(t, "log:7"); !slices.Equal(got, []string{"1", "2", "3", "4", "5", "6"}) {
		t.Errorf("log: %q, want each position once", got)
	}
	if cp := r.checkpoint(t, w); cp != 6 {
		t.Errorf("checkpoint %d, want 6", cp)
	}
}

// execHook runs f around the MULTI/EXEC of the writer's next transaction.
type execHook struct {
	before func()
	after  func(cmds []redis.Cmder) error
}

func (h *execHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *execHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *execHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) == 0 || cmds[0].Name() != "multi" {
			return next(ctx, cmds)
		}
		if h.before != nil {
			h.before()
		}
		err := next(ctx, cmds)
		if err == nil && h.after != nil {
			err = h.after(cmds)
		}
		return err
	}
}

func TestLostExecReplyRetriedAppliesOnce(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, opsConfig)
	lost := true
	w.client().AddHook(&execHook{after: func(cmds []redis.Cmder) error {
		if !lost {
			return nil
		}
		lost = false // EXEC ran; its reply "never arrived"
		for _, c := range cmds {
			c.SetErr(io.ErrUnexpectedEOF)
		}
		return io.ErrUnexpectedEOF
	}})
	b := batch(event(1, "Placed", "9", `{}`), event(2, "Cancelled", "9", `{}`))
	err := w.WriteBatch(t.Context(), b)
	if !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("lost reply: got %v, want a transient error", err)
	}
	write(t, w, b) // the engine's retry
	if got := r.list(t, "log:9"); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("log after a retried batch: %q", got)
	}
}

func TestCheckpointChangedByAnotherInstanceIsPermanent(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, opsConfig)
	if _, err := w.LoadCheckpoint(t.Context()); err != nil { // as the engine does first
		t.Fatal(err)
	}
	w.client().AddHook(&execHook{before: func() {
		r.rdb.Set(context.Background(), w.CheckpointKey(), "100", 0) // the other instance commits
	}})
	b := batch(event(1, "Placed", "1", `{}`))
	// The transaction fails; that alone may be Redis reloading its AOF
	// after a restart, so it is retried...
	err := w.WriteBatch(t.Context(), b)
	if err == nil || errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("first attempt: got %v, want a transient error", err)
	}
	// ...and the retry finds a checkpoint this process never wrote.
	err = w.WriteBatch(t.Context(), b)
	if !errors.Is(err, ErrConcurrentWriter) || !errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("retry: got %v, want a permanent ErrConcurrentWriter", err)
	}
	if r.exists(t, "order:1") {
		t.Error("the losing transaction wrote data")
	}
}

func TestTransactionAbortedWithoutAnotherWriterIsRetried(t *testing.T) {
	r := startRedis(t)
	w := r.writer(t, opsConfig)
	if _, err := w.LoadCheckpoint(t.Context()); err != nil {
		t.Fatal(err)
	}
	touched := false
	w.client().AddHook(&execHook{before: func() {
		if !touched { // e.g. Redis reloading its AOF touches the key, same value
			touched = true
			r.rdb.Set(context.Background(), w.CheckpointKey(), "0", 0)
		}
	}})
	b := batch(event(1, "Placed", "1", `{}`))
	if err := w.WriteBatch(t.Context(), b); err == nil || errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("aborted transaction: got %v, want a transient error", err)
	}
	write(t, w, b) // the engine's retry succeeds
	if !r.exists(t, "order:1") {
		t.Error("the retried batch was not applied")
	}
}

func TestAuthErrorsArePermanent(t *testing.T) {
	r := startRedis(t)
	if err := r.rdb.ConfigSet(t.Context(), "requirepass", "s3cret").Err(); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Redis.Addr = r.srv.Addr()
	cfg.Mappings = map[string][]Action{"A": {{Op: OpDel, Key: "a"}}}
	for _, pw := range []string{"", "wrong"} {
		cfg.Redis.Password = pw
		w, err := NewWriter(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = w.Connect(t.Context())
		if !errors.Is(err, ErrAuth) || !errors.Is(err, sink.ErrPermanent) {
			t.Errorf("password %q: got %v, want a permanent ErrAuth", pw, err)
		}
	}
	cfg.Redis.Password = "s3cret"
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Connect(t.Context()); err != nil {
		t.Fatalf("right password: %v", err)
	}
	_ = w.Close(t.Context())
}

func TestCommandRefusedInsideExec(t *testing.T) {
	r := startRedis(t)
	for _, policy := range []string{sink.OnErrorStop, sink.OnErrorSkip} {
		t.Run(policy, func(t *testing.T) {
			r.rdb.FlushDB(t.Context())
			w := r.writer(t, opsConfig+"on_error: "+policy+"\n")
			r.rdb.Set(t.Context(), "order:5:h", "a string, not a hash", 0)
			err := w.WriteBatch(t.Context(), batch(event(1, "Placed", "5", `{}`), event(2, "Updated", "5", `{"a":1}`)))
			if policy == sink.OnErrorStop {
				if !errors.Is(err, ErrPartiallyApplied) || !errors.Is(err, sink.ErrPermanent) {
					t.Fatalf("got %v, want a permanent ErrPartiallyApplied", err)
				}
			} else if err != nil {
				t.Fatalf("skip: %v", err)
			}
			// Redis has no rollback: the rest of the batch and the checkpoint are in.
			if cp := r.checkpoint(t, w); cp != 2 || !r.exists(t, "order:5") {
				t.Errorf("checkpoint %d", cp)
			}
		})
	}
}

func TestCheckpointKeyAndLifecycle(t *testing.T) {
	r := startRedis(t)
	cfg := DefaultConfig()
	cfg.Name = "orders"
	cfg.Redis.Addr = r.srv.Addr()
	cfg.Mappings = map[string][]Action{"A": {{Op: OpDel, Key: "a"}}}
	w, err := NewWriter(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := w.WriteBatch(ctx, &sink.Batch{Through: 1}); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("before Connect: %v", err)
	}
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	write(t, w, &sink.Batch{Through: 5})
	if got := r.get(t, "jetsync:checkpoint:orders"); got != "5" {
		t.Fatalf("checkpoint key holds %q", got)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := w.LoadCheckpoint(ctx); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("after Close: %v", err)
	}
	if err := w.Connect(ctx); err != nil { // a restarted Run connects again
		t.Fatal(err)
	}
	defer w.Close(ctx)
	r.rdb.Set(ctx, w.CheckpointKey(), "five", 0)
	if _, err := w.LoadCheckpoint(ctx); !errors.Is(err, ErrBadCheckpoint) || !errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("bad checkpoint: %v", err)
	}
	if err := w.WriteBatch(ctx, &sink.Batch{Through: 6}); !errors.Is(err, ErrBadCheckpoint) {
		t.Fatalf("write over a bad checkpoint: %v", err)
	}
	r.rdb.Set(ctx, w.CheckpointKey(), strconv.Itoa(6), 0)
	if cp := r.checkpoint(t, w); cp != 6 {
		t.Fatalf("checkpoint %d", cp)
	}
}
