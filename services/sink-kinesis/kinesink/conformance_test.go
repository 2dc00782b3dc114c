package kinesink

import (
	"sync"
	"testing"

	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
	"github.com/jetsync/jetsync/pkg/testenv"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesistest"
)

// TestConformance runs the shared sink suite against a real kinesalite.
// The read model is what a Kinesis consumer folds from the stream, read
// back from TRIM_HORIZON on every shard: per stream id, the record with the
// highest position decides (a Deleted record removes the document), so
// duplicates (same position) change nothing. Applied counts each position's
// copies: the suite allows more than one only within the batch of a crash
// between write and checkpoint (AtLeastOnce).
func TestConformance(t *testing.T) {
	srv := testenv.Kinesalite(t)
	kc := kinesistest.Client(srv.URL)
	var mu sync.Mutex
	streams := map[string]string{} // sink name -> Kinesis stream
	streamOf := func(t *testing.T, name string) string {
		mu.Lock()
		defer mu.Unlock()
		s, ok := streams[name]
		if !ok {
			s = uniqueStream("conf-" + name)
			streams[name] = s
		}
		return s
	}

	target := sinktest.Target{
		NewWriter: func(t *testing.T, name string) sink.Writer {
			cfg := testConfig(t, srv.URL, streamOf(t, name))
			cfg.Name = name
			w, err := NewWriter(cfg, testLog())
			if err != nil {
				t.Fatal(err)
			}
			return w
		},
		State: func(t *testing.T, name string) map[string]string {
			type doc struct {
				pos     uint64
				deleted bool
				data    string
			}
			last := map[string]doc{}
			for _, r := range readBack(t, kc, streamOf(t, name)) {
				if d, ok := last[r.StreamID]; ok && d.pos >= r.Position {
					continue // a duplicate or an older event: the later position wins
				}
				last[r.StreamID] = doc{pos: r.Position, deleted: r.Type == sinktest.TypeDeleted, data: sinktest.Compact(r.Payload)}
			}
			out := map[string]string{}
			for sid, d := range last {
				if !d.deleted {
					out[sid] = d.data
				}
			}
			return out
		},
		Applied: func(t *testing.T, name string) map[uint64]int {
			return kinesistest.Positions(readBack(t, kc, streamOf(t, name)))
		},
		AtLeastOnce: true,
	}
	if srv.Local() {
		target.Outage = func(t *testing.T) func() {
			srv.Stop()
			return srv.Start
		}
	}
	sinktest.Run(t, target)
}
