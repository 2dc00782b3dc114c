package sink_test

import (
	"context"
	"errors"
	"sync"
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
			return w
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
