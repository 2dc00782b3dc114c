package search

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// A rebuild under load: the live sink keeps writing through the alias while
// events keep coming, readers search through the alias all along and never
// get an error or an empty index, and afterwards the alias points to the new
// index, which equals the fold of every event, and the old index is gone.
func TestRebuildUnderLoad(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	n := newNATS(t)
	alias := uniqueName("orders")
	cfg := orderConfig(t, url, "live", alias)
	events := orderEvents("rb", 3000, 50)
	n.publish(t, events)
	live, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	r := n.start(t, cfg, live)
	r.WaitFor(t, headOf(events), 60*time.Second)
	oldIdx, err := aliasIndices(context.Background(), mustClient(t, url), alias, 10*time.Second)
	if err != nil || len(oldIdx) != 1 {
		t.Fatalf("alias %s -> %v, %v", alias, oldIdx, err)
	}
	esCall(t, es, esapi.IndicesRefreshRequest{Index: []string{alias}}, nil)

	// Load: more events for the same orders, appended while the rebuild runs.
	var mu sync.Mutex
	all := append([]envelope.Event{}, events...)
	stopLoad := make(chan struct{})
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		// Without deletes: orderEvents deletes every order in the same
		// round, and a refresh in between would show an index that is
		// rightly empty, which the readers below count as a failure.
		var gen []envelope.Event
		for _, ev := range orderEvents("rb-live", 20000, 50) {
			if ev.Type != tDeleted {
				gen = append(gen, ev)
			}
		}
		for i := 0; i+40 <= len(gen); i += 40 {
			select {
			case <-stopLoad:
				return
			case <-time.After(15 * time.Millisecond):
			}
			batch := gen[i : i+40]
			for j := range batch {
				batch[j].Version += 100000
			}
			n.publish(t, batch)
			mu.Lock()
			all = append(all, batch...)
			mu.Unlock()
		}
	}()

	// Readers: search through the alias as fast as they can.
	var reads, failures, empty atomic.Int64
	seen := sync.Map{} // concrete indices that answered
	stopRead := make(chan struct{})
	readDone := make(chan struct{})
	var firstFailure atomic.Value
	go func() {
		defer close(readDone)
		for {
			select {
			case <-stopRead:
				return
			default:
			}
			total, index, err := searchAlias(es, alias)
			reads.Add(1)
			switch {
			case err != nil:
				failures.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())
			case total == 0:
				empty.Add(1)
			default:
				seen.Store(index, true)
			}
		}
	}()

	res, err := Rebuild(context.Background(), cfg, n.js, n.store, testLog(), RebuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let readers and writers run on the new index a moment
	close(stopLoad)
	<-loadDone
	close(stopRead)
	<-readDone
	t.Logf("rebuild: %s -> %s through %d, %d events in %s, old index refused writes for %s; %d reads through the alias",
		res.Old[alias], res.New[alias], res.Through, res.Events, res.Took.Round(time.Millisecond), res.Blocked.Round(time.Millisecond), reads.Load())
	if f := failures.Load(); f > 0 {
		t.Errorf("%d of %d reads through the alias failed; first: %v", f, reads.Load(), firstFailure.Load())
	}
	if e := empty.Load(); e > 0 {
		t.Errorf("%d of %d reads through the alias saw an empty index", e, reads.Load())
	}
	if _, ok := seen.Load(res.New[alias]); !ok {
		t.Error("no read was answered by the new index")
	}
	if _, ok := seen.Load(oldIdx[0]); !ok {
		t.Error("no read was answered by the old index")
	}

	now, err := aliasIndices(context.Background(), mustClient(t, url), alias, 10*time.Second)
	if err != nil || len(now) != 1 || now[0] != res.New[alias] || res.Old[alias] != oldIdx[0] {
		t.Fatalf("alias %s -> %v (%v), want only %s", alias, now, err, res.New[alias])
	}
	if ok, _ := indexExists(context.Background(), mustClient(t, url), oldIdx[0], 10*time.Second); ok {
		t.Errorf("the old index %s still exists", oldIdx[0])
	}
	mu.Lock()
	final := append([]envelope.Event{}, all...)
	mu.Unlock()
	r.WaitFor(t, headOf(final), 60*time.Second)
	compareDocs(t, foldOrders(final), readDocs(t, es, alias))
	t.Logf("live sink: %d retries (its writes waited during the swap); %d events appended during the rebuild", r.Eng.Stats().Retries, len(final)-len(events))
	if len(final)-len(events) < 200 {
		t.Errorf("only %d events were appended during the rebuild: not under load", len(final)-len(events))
	}
}

func mustClient(t *testing.T, url string) *elasticsearch.Client {
	t.Helper()
	c, err := newClient(ESConfig{URLs: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// searchAlias asks for one document through alias: total hits and the
// concrete index that answered.
func searchAlias(es *elasticsearch.Client, alias string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := esapi.SearchRequest{Index: []string{alias}, Size: esapi.IntPtr(1), Body: strings.NewReader(`{"query":{"match_all":{}}}`)}.Do(ctx, es)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.IsError() {
		return 0, "", fmt.Errorf("%s: %s", res.Status(), body)
	}
	var out struct {
		Hits struct {
			Total struct {
				Value int `json:"value"`
			} `json:"total"`
			Hits []struct {
				Index string `json:"_index"`
			} `json:"hits"`
		} `json:"hits"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return 0, "", err
	}
	idx := ""
	if len(out.Hits.Hits) > 0 {
		idx = out.Hits.Hits[0].Index
	}
	return out.Hits.Total.Value, idx, nil
}
