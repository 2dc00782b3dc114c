package search

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// Replaying the whole stream from 0, twice, leaves every document exactly
// as after the first pass: same source, same position, same _version, and
// the same _seq_no, so Elasticsearch wrote nothing (every item was a
// version conflict or a guarded merge that was not sent).
func TestReplayTwiceChangesNothing(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newES(t, url)
	n := newNATS(t)
	alias := uniqueName("orders")
	cfg := orderConfig(t, url, "replay", alias)
	events := orderEvents("rp", 2000, 25)
	n.publish(t, events)

	pass := func() map[string]doc {
		w, err := NewWriter(cfg, testLog())
		if err != nil {
			t.Fatal(err)
		}
		r := n.start(t, cfg, w)
		r.WaitFor(t, headOf(events), 60*time.Second)
		if err := r.Stop(t); err != nil {
			t.Fatal(err)
		}
		return readDocs(t, es, alias)
	}
	seqNo := func() int64 { // the highest _seq_no of the index: it moves with every write, deletes included
		var out struct {
			Indices map[string]struct {
				Total struct {
					Indexing struct {
						IndexTotal  int64 `json:"index_total"`
						DeleteTotal int64 `json:"delete_total"`
					} `json:"indexing"`
				} `json:"total"`
			} `json:"indices"`
		}
		esCall(t, es, esapi.IndicesStatsRequest{Index: []string{alias}, Metric: []string{"indexing"}}, &out)
		var n int64
		for _, s := range out.Indices {
			n += s.Total.Indexing.IndexTotal + s.Total.Indexing.DeleteTotal
		}
		return n
	}

	first := pass()
	compareDocs(t, foldOrders(events), first)
	writes := seqNo()
	if writes == 0 {
		t.Fatal("the indexing stats count no writes after the first pass; the check below would prove nothing")
	}
	for i := range 2 {
		if err := n.store.Reset(context.Background(), cfg.Name, 0); err != nil {
			t.Fatal(err)
		}
		again := pass()
		if !reflect.DeepEqual(first, again) {
			compareDocs(t, foldOrders(events), again)
			t.Fatalf("replay %d changed documents (sources, positions, _version or _seq_no)", i+1)
		}
		if w := seqNo(); w != writes {
			t.Errorf("replay %d: the index counted %d writes, %d before: a replay must write nothing", i+1, w, writes)
		}
	}
	t.Logf("%d documents, %d events: two full replays wrote nothing", len(first), len(events))
}
