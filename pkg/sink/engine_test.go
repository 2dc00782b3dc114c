package sink_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinktest"
)

// memWriter is an in-memory target. It exercises the engine's own logic
// (ordering, checkpoints, crash, outage, retries); it proves nothing about a
// real target, which every sink shows by running the same suite against its
// real server.
type memWriter struct {
	mu      sync.Mutex
	docs    map[string]string
	applied map[uint64]int
	down    bool
}

var _ sink.Writer = (*memWriter)(nil)

var errDown = errors.New("target down")

func (m *memWriter) Connect(context.Context) error { return nil }
func (m *memWriter) Close(context.Context) error   { return nil }

func (m *memWriter) WriteBatch(_ context.Context, b *sink.Batch) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return errDown
	}
	for _, ev := range b.Events {
		switch ev.Type {
		case sinktest.TypeCreated, sinktest.TypeUpdated:
			m.docs[ev.StreamID] = string(ev.Data)
		case sinktest.TypeDeleted:
			delete(m.docs, ev.StreamID)
		}
		m.applied[ev.Position]++
	}
	return nil
}

func TestEngineConformanceInMemory(t *testing.T) {
	runMemConformance(t, func(w *memWriter) sink.Writer { return w })
}

// prepWriter is a memWriter that prepares batches (sink.Preparer). What
// Prepare returns must reach WriteBatch with exactly the batch it was made
// for, or not at all.
type prepWriter struct {
	*memWriter
	t                  *testing.T
	prepared, received atomic.Int64
}

// batchPrint identifies a batch's events.
type batchPrint struct {
	n           int
	first, last uint64
}

func printOf(b *sink.Batch) batchPrint {
	if len(b.Events) == 0 {
		return batchPrint{}
	}
	return batchPrint{len(b.Events), b.Events[0].Position, b.Events[len(b.Events)-1].Position}
}

func (p *prepWriter) Prepare(_ context.Context, b *sink.Batch) any {
	p.prepared.Add(1)
	return printOf(b)
}

func (p *prepWriter) WriteBatch(ctx context.Context, b *sink.Batch) error {
	if b.Prepared != nil {
		if b.Prepared != any(printOf(b)) {
			p.t.Errorf("batch %+v arrived with what was prepared for %+v", printOf(b), b.Prepared)
		}
		p.received.Add(1)
	}
	return p.memWriter.WriteBatch(ctx, b)
}

// TestEngineConformanceInMemoryPrepared runs the suite with the prepare
// stage: nothing lost, reordered or applied twice with a batch prepared
// while another is written.
func TestEngineConformanceInMemoryPrepared(t *testing.T) {
	var all []*prepWriter
	var mu sync.Mutex
	runMemConformance(t, func(w *memWriter) sink.Writer {
		p := &prepWriter{memWriter: w, t: t}
		mu.Lock()
		all = append(all, p)
		mu.Unlock()
		return p
	})
	var prepared, received int64
	for _, p := range all {
		prepared, received = prepared+p.prepared.Load(), received+p.received.Load()
	}
	if prepared == 0 || received == 0 {
		t.Fatalf("%d batches prepared, %d written with what was prepared: the engine does not use Preparer", prepared, received)
	}
}

func runMemConformance(t *testing.T, wrap func(*memWriter) sink.Writer) {
	targets := map[string]*memWriter{}
	var mu sync.Mutex
	get := func(name string) *memWriter {
		mu.Lock()
		defer mu.Unlock()
		if targets[name] == nil {
			targets[name] = &memWriter{docs: map[string]string{}, applied: map[uint64]int{}}
		}
		return targets[name]
	}
	var all []*memWriter
	sinktest.Run(t, sinktest.Target{
		NewWriter: func(t *testing.T, name string) sink.Writer {
			w := get(name)
			mu.Lock()
			all = append(all, w)
			mu.Unlock()
			return wrap(w)
		},
		State: func(t *testing.T, name string) map[string]string {
			w := get(name)
			w.mu.Lock()
			defer w.mu.Unlock()
			out := make(map[string]string, len(w.docs))
			for k, v := range w.docs {
				out[k] = v
			}
			return out
		},
		Applied: func(t *testing.T, name string) map[uint64]int {
			w := get(name)
			w.mu.Lock()
			defer w.mu.Unlock()
			out := make(map[uint64]int, len(w.applied))
			for k, v := range w.applied {
				out[k] = v
			}
			return out
		},
		AtLeastOnce: true,
		Outage: func(t *testing.T) func() {
			set := func(down bool) {
				mu.Lock()
				defer mu.Unlock()
				for _, w := range all {
					w.mu.Lock()
					w.down = down
					w.mu.Unlock()
				}
			}
			set(true)
			return func() { set(false) }
		},
	})
}
