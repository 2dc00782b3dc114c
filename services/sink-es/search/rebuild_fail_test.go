package search

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// A rebuild whose new index refuses an event after the old index got its
// write block (here: the rebuild's config maps a field the log holds a
// string for as a long) ends by itself with an error naming the event and
// Elasticsearch's reason; the alias stays on the live index, the write
// block is lifted (the live sink writes the event that came in meanwhile),
// the new index is deleted, or kept with KeepFailed, and the rebuild's
// checkpoint is gone. The error says all of it.
func TestRebuildStopsAtRefusedEvent(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep-failed=%v", keep), func(t *testing.T) {
			url := testenv.Elasticsearch(t)
			es := newES(t, url)
			n := newNATS(t)
			alias := uniqueName("refused")
			cfg := orderConfig(t, url, "live", alias)
			events := orderEvents("rf", 400, 20)
			n.publish(t, events)
			live, err := NewWriter(cfg, testLog())
			if err != nil {
				t.Fatal(err)
			}
			r := n.start(t, cfg, live)
			r.WaitFor(t, headOf(events), 60*time.Second)
			old := aliasTarget(t, es, alias)

			// The rebuild's config maps "note" as a long; the live index
			// took it dynamically, as text.
			rcfg := withProperty(cfg, alias, "note", map[string]any{"type": "long"})
			bad := envelope.Event{ID: "rf-bad", StreamID: "order-007", Category: "order", Type: tUpdated,
				Version: 1000, Time: time.Now().UTC(), Data: json.RawMessage(`{"note":"n/a"}`)}
			opts := RebuildOptions{KeepFailed: keep}
			var blocked bool
			var hookErr error
			opts.afterBlock = func() { // in Rebuild's goroutine: no t.Fatal here
				if blocked, hookErr = isWriteBlocked(es, old); hookErr != nil {
					return
				}
				ack, err := n.js.PublishMsg(context.Background(), bad.ToMsg()) // the live sink waits on the block
				if err != nil {
					hookErr = err
					return
				}
				bad.Position = ack.Sequence
			}

			start := time.Now()
			res, err := rebuildWithin(t, 90*time.Second, rcfg, n, opts)
			took := time.Since(start)
			t.Logf("rebuild failed after %s: %v", took.Round(time.Millisecond), err)
			if res != nil || err == nil {
				t.Fatalf("Rebuild = %+v, %v; want an error", res, err)
			}
			if hookErr != nil {
				t.Fatal(hookErr)
			}
			if !blocked {
				t.Fatal("the old index had no write block when the event came: the test proves nothing")
			}
			for _, target := range []error{ErrRebuild, sink.ErrStopped, ErrRefused} {
				if !errors.Is(err, target) {
					t.Errorf("the error does not wrap %q", target)
				}
			}
			msg := err.Error()
			want := []string{
				fmt.Sprintf("event %s (type %s) at position %d:", bad.ID, bad.Type, bad.Position), // the event
				"status 400", // Elasticsearch's answer
				fmt.Sprintf("alias %s still points to the live index %s", alias, old),
				fmt.Sprintf("the write block of %s is lifted", old),
			}
			if keep {
				want = append(want, "is kept (-keep-failed)")
			} else {
				want = append(want, "is deleted (-keep-failed keeps it)")
			}
			for _, w := range want {
				if !strings.Contains(msg, w) {
					t.Errorf("the error does not say %q:\n%s", w, msg)
				}
			}

			if got := aliasTarget(t, es, alias); got != old {
				t.Errorf("alias %s -> %s, want the live index %s", alias, got, old)
			}
			if writeBlocked(t, es, old) {
				t.Errorf("the write block of %s is still set", old)
			}
			others := indicesLike(t, es, alias+"-*")
			others = deleteString(others, old)
			switch {
			case !keep && len(others) > 0:
				t.Errorf("the unfinished index is still there: %v", others)
			case keep && len(others) != 1:
				t.Errorf("indices besides the live one: %v, want the one kept", others)
			case keep && !strings.Contains(msg, "the unfinished index "+others[0]+" is kept"):
				t.Errorf("the error does not name the kept index %s:\n%s", others[0], msg)
			}
			if keys := rebuildKeys(t, n); len(keys) > 0 {
				t.Errorf("the rebuild's checkpoint is still there: %v", keys)
			}

			// The live sink goes on: the block is gone, it writes the event
			// the rebuild refused (its index took "note" as text).
			all := append(append([]envelope.Event{}, events...), bad)
			r.WaitFor(t, bad.Position, 30*time.Second)
			compareDocs(t, foldOrders(all), readDocs(t, es, alias))
			if took > 30*time.Second {
				t.Errorf("the failed rebuild took %s to end", took)
			}
		})
	}
}

// With dynamic mappings, a field's type is set by the first value
// Elasticsearch sees, and that depends on how events were folded into
// batches. The live sink got a document's number and its later string in
// one batch, folded them and sent only the string (text); the rebuild, with
// the same config, cuts the batches elsewhere, sends the number first
// (long), and then cannot take the string. An explicit mapping makes both
// agree.
func TestRebuildFoldsOtherwiseThanTheLiveSink(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	n := newNATS(t)
	alias := uniqueName("folds")
	cfg := orderConfig(t, url, "live", alias)
	cfg.Batch = sink.BatchConfig{MaxEvents: 3, MaxBytes: 256 << 10, MaxInterval: 500 * time.Millisecond}
	live, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	r := n.start(t, cfg, live)
	ev := func(sid, typ string, v uint64, data string) envelope.Event {
		return envelope.Event{ID: fmt.Sprintf("%s-%d", sid, v), StreamID: sid, Category: "order", Type: typ,
			Version: v, Time: time.Now().UTC(), Data: json.RawMessage(data)}
	}
	first := []envelope.Event{ev("order-a", tPlaced, 1, `{"status":"placed"}`), ev("order-b", tPlaced, 1, `{"status":"placed"}`)}
	n.publish(t, first)
	r.WaitFor(t, headOf(first), 30*time.Second)
	// One batch for the live sink: folded into one document, note "n/a".
	second := []envelope.Event{ev("order-c", tPlaced, 1, `{"status":"placed","note":5}`), ev("order-c", tUpdated, 2, `{"note":"n/a"}`)}
	n.publish(t, second)
	r.WaitFor(t, headOf(second), 30*time.Second)
	all := append(append([]envelope.Event{}, first...), second...)
	compareDocs(t, foldOrders(all), readDocs(t, es, alias))
	if st := r.Eng.Stats(); st.LastError != "" {
		t.Fatalf("the live sink had an error: %s", st.LastError)
	}
	old := aliasTarget(t, es, alias)

	// The rebuild reads the backlog: [1 2 3] [4]. Event 3 alone makes
	// note a long, event 4 is refused.
	_, err = rebuildWithin(t, 60*time.Second, cfg, n, RebuildOptions{})
	bad := second[1]
	if !errors.Is(err, sink.ErrStopped) || !errors.Is(err, ErrRefused) ||
		!strings.Contains(err.Error(), fmt.Sprintf("event %s (type %s) at position %d:", bad.ID, bad.Type, bad.Position)) {
		t.Fatalf("Rebuild = %v; want it stopped at event %s, position %d", err, bad.ID, bad.Position)
	}
	t.Logf("with dynamic mappings: %v", err)
	if got := aliasTarget(t, es, alias); got != old {
		t.Fatalf("alias %s -> %s, want %s", alias, got, old)
	}

	// An explicit mapping: the same log rebuilds.
	explicit := withProperty(cfg, alias, "note", map[string]any{"type": "keyword"})
	res, err := rebuildWithin(t, 60*time.Second, explicit, n, RebuildOptions{})
	if err != nil {
		t.Fatalf("with note mapped as a keyword: %v", err)
	}
	if got := aliasTarget(t, es, alias); got != res.New[alias] {
		t.Fatalf("alias %s -> %s, want %s", alias, got, res.New[alias])
	}
	compareDocs(t, foldOrders(all), readDocs(t, es, alias))
}

// rebuildWithin runs Rebuild and fails the test if it has not returned
// within limit (a rebuild that hangs must not hang the test binary).
func rebuildWithin(t *testing.T, limit time.Duration, cfg Config, n *natsEnv, opts RebuildOptions) (*RebuildResult, error) {
	t.Helper()
	type result struct {
		res *RebuildResult
		err error
	}
	ch := make(chan result, 1)
	go func() {
		res, err := Rebuild(context.Background(), cfg, n.js, n.store, testLog(), opts)
		ch <- result{res, err}
	}()
	select {
	case r := <-ch:
		return r.res, r.err
	case <-time.After(limit):
		t.Fatalf("Rebuild has not returned after %s", limit)
		return nil, nil
	}
}

// withProperty is cfg with one more explicit field mapping for alias (a
// copy: cfg's maps are not changed).
func withProperty(cfg Config, alias, field string, mapping map[string]any) Config {
	ic := cfg.Indices[alias]
	props := maps.Clone(ic.Mappings["properties"].(map[string]any))
	props[field] = mapping
	ic.Mappings = maps.Clone(ic.Mappings)
	ic.Mappings["properties"] = props
	cfg.Indices = maps.Clone(cfg.Indices)
	cfg.Indices[alias] = ic
	return cfg
}

// aliasTarget is the one index alias points to.
func aliasTarget(t *testing.T, es *elasticsearch.Client, alias string) string {
	t.Helper()
	idx, err := aliasIndices(context.Background(), es, alias, 10*time.Second)
	if err != nil || len(idx) != 1 {
		t.Fatalf("alias %s -> %v, %v; want one index", alias, idx, err)
	}
	return idx[0]
}

// writeBlocked reports whether index has index.blocks.write set.
func writeBlocked(t *testing.T, es *elasticsearch.Client, index string) bool {
	t.Helper()
	b, err := isWriteBlocked(es, index)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func isWriteBlocked(es *elasticsearch.Client, index string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := esapi.IndicesGetSettingsRequest{Index: []string{index}}.Do(ctx, es)
	if err != nil {
		return false, err
	}
	defer res.Body.Close()
	if res.IsError() {
		return false, requestError("settings of "+index, res)
	}
	var out map[string]struct {
		Settings struct {
			Index struct {
				Blocks struct {
					Write string `json:"write"`
				} `json:"blocks"`
			} `json:"index"`
		} `json:"settings"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return false, fmt.Errorf("settings of %s: %w", index, err)
	}
	return out[index].Settings.Index.Blocks.Write == "true", nil
}

// indicesLike lists the indices matching pattern, sorted.
func indicesLike(t *testing.T, es *elasticsearch.Client, pattern string) []string {
	t.Helper()
	var out map[string]json.RawMessage
	esCall(t, es, esapi.IndicesGetRequest{Index: []string{pattern}}, &out)
	names := make([]string, 0, len(out))
	for name := range out {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func deleteString(list []string, s string) []string {
	out := list[:0:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

// rebuildKeys lists the checkpoint keys of rebuilds.
func rebuildKeys(t *testing.T, n *natsEnv) []string {
	t.Helper()
	kv, err := n.js.KeyValue(context.Background(), checkpoint.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	lister, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range lister.Keys() {
		if strings.Contains(k, "-rebuild-") {
			keys = append(keys, k)
		}
	}
	return keys
}
