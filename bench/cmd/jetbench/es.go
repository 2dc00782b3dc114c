package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// esTarget is an Elasticsearch 8 server. The sink writes one document per
// order stream into an index behind an alias of its own per run; the raw
// loader writes the same operations into a plain index of its own.
type esTarget struct {
	b     *bench
	url   string
	names runNamer
	alias string // the sink's alias of the current run
}

const esIndexSettings = `{"number_of_shards": 1, "number_of_replicas": 0}`

func (t *esTarget) env() []string { return nil }

// runNamer names a new index or stream per run, so no run sees another's
// data.
type runNamer struct{ n int }

func (r *runNamer) next(prefix string) string {
	r.n++
	return prefix + strconv.Itoa(r.n)
}

func (t *esTarget) describe() string {
	return "sink-es mappings: OrderPlaced, OrderUpdated and OrderShipped index the event data as the order's document (id = streamId, " +
		"external version = position), OrderCancelled deletes it; one index, 1 shard, no replica, refresh_interval 1s. " +
		"The raw target is a bulk loader sending the sink's operations for the same events (a batch's operations on one document folded into the last, " +
		"as the sink does) in `_bulk` requests of max_events events, one at a time, no NATS, into a fresh index per repetition."
}

func (t *esTarget) fresh(ctx context.Context) {
	if t.alias != "" {
		t.dropAlias(ctx, t.alias)
	}
	t.alias = t.names.next("bench-orders-")
}

func (t *esTarget) configYAML() string {
	return fmt.Sprintf(`elasticsearch: {urls: [%q]}
indices:
  %[2]s: {settings: %[3]s}
mappings:
  OrderPlaced: [{action: index, index: %[2]s}]
  OrderUpdated: [{action: index, index: %[2]s}]
  OrderShipped: [{action: index, index: %[2]s}]
  OrderCancelled: [{action: delete, index: %[2]s}]
`, t.url, t.alias, esIndexSettings)
}

// do sends one request and fails the run on an error status.
func (t *esTarget) do(ctx context.Context, method, path, contentType string, body []byte) []byte {
	req, err := http.NewRequestWithContext(ctx, method, t.url+path, bytes.NewReader(body))
	if err != nil {
		t.b.fatalf("%v", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.b.fatalf("elasticsearch %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 && !(method == http.MethodGet && resp.StatusCode == http.StatusNotFound) {
		t.b.fatalf("elasticsearch %s %s: %s: %s", method, path, resp.Status, out)
	}
	return out
}

// dropAlias deletes the indices behind alias by name (Elasticsearch 8
// refuses wildcard deletes).
func (t *esTarget) dropAlias(ctx context.Context, alias string) {
	var indices map[string]json.RawMessage
	_ = json.Unmarshal(t.do(ctx, http.MethodGet, "/_alias/"+alias, "", nil), &indices)
	for index := range indices {
		if index != "error" && index != "status" {
			t.do(ctx, http.MethodDelete, "/"+index, "", nil)
		}
	}
}

func (t *esTarget) raw(ctx context.Context, n, batch int) result {
	index := t.names.next("bench-raw-")
	t.do(ctx, http.MethodPut, "/"+index, "application/json",
		[]byte(`{"settings":`+esIndexSettings+`,"mappings":{"properties":{"_position":{"type":"long"}}}}`))
	defer t.do(ctx, http.MethodDelete, "/"+index, "", nil)
	var body []byte
	start := time.Now()
	for from := 0; from < n; from += batch {
		body = t.bulkBody(body[:0], index, from, min(from+batch, n))
		var out struct{ Errors bool }
		raw := t.do(ctx, http.MethodPost, "/_bulk?filter_path=errors,items.*.error", "application/x-ndjson", body)
		if err := json.Unmarshal(raw, &out); err != nil || out.Errors {
			t.b.fatalf("raw bulk: %s", raw)
		}
	}
	return result{events: n, elapsed: time.Since(start), bytes: t.b.rd.dataBytes[n],
		note: fmt.Sprintf("`_bulk` of %d events' operations, one request at a time", batch)}
}

// bulkBody appends the bulk request of events [from, to): per document the
// last event's operation, in the order the documents first appear, with
// the position as external version and, in an indexed source, as
// _position: what the sink's planner makes of the batch with these
// mappings.
func (t *esTarget) bulkBody(buf []byte, index string, from, to int) []byte {
	last := map[int32]int{}
	var order []int32
	for i := from; i < to; i++ {
		st := t.b.wl.specs[i].stream
		if _, ok := last[st]; !ok {
			order = append(order, st)
		}
		last[st] = i
	}
	for _, st := range order {
		i := last[st]
		pos := strconv.Itoa(i + 1)
		op := "index"
		if t.b.wl.specs[i].typ == tCancelled {
			op = "delete"
		}
		buf = fmt.Appendf(buf, `{%q:{"_index":%q,"_id":%q,"version":%s,"version_type":"external"}}`+"\n", op, index, streamID(st), pos)
		if op == "index" {
			buf = append(buf, `{"_position":`+pos...)
			if data := t.b.rd.data[i]; len(data) > 2 {
				buf = append(buf, ',')
				buf = append(buf, data[1:]...)
			} else {
				buf = append(buf, '}')
			}
			buf = append(buf, '\n')
		}
	}
	return buf
}
