package cache

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/envelope"
)

// BenchmarkBuild measures the pure part of WriteBatch for a 1000-event
// batch: set (raw data, no re-encoding) and append, and merge (decodes).
func BenchmarkBuild(b *testing.B) {
	for _, op := range []string{"set", "merge"} {
		b.Run(op, func(b *testing.B) {
			var p config.Problems
			acts := compileMappings("cache", map[string][]Action{"E": {
				{Op: op, Key: "doc:{streamId}"},
				{Op: OpAppend, Key: "applied:{streamId}", Value: "{position}"},
			}}, &p)
			if err := p.Err(); err != nil {
				b.Fatal(err)
			}
			pl := plan{byType: acts}
			evs := make([]envelope.Event, 1000)
			for i := range evs {
				evs[i] = envelope.Event{StreamID: fmt.Sprintf("s%d", i%20), Type: "E", Position: uint64(i + 1),
					Data: json.RawMessage(fmt.Sprintf(`{"id":%d,"status":"paid","total":12.5,"items":[1,2,3]}`, i))}
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, f, err := pl.build(b.Context(), evs); err != nil || f != nil {
					b.Fatal(err, f)
				}
			}
		})
	}
}
