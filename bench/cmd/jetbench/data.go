package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// Event types of the benchmark's order streams and what the sink does with
// them (benchMappings): creates, updates, partial updates and deletes.
const (
	tPlaced    = iota // SET order:{streamId}            (a create)
	tUpdated          // SET order:{streamId}            (an update)
	tShipped          // HSET order:{streamId}:shipping  (a partial update, merge)
	tCancelled        // DEL order:{streamId} and order:{streamId}:shipping (a delete)
)

var typeNames = [...]string{"OrderPlaced", "OrderUpdated", "OrderShipped", "OrderCancelled"}

// benchMappings is the sink-cache mapping every sink run uses; the raw
// loader and the naive synchroniser issue exactly these commands.
const benchMappings = `mappings:
  OrderPlaced:
    - {op: set, key: "order:{streamId}"}
  OrderUpdated:
    - {op: set, key: "order:{streamId}"}
  OrderShipped:
    - {op: merge, key: "order:{streamId}:shipping"}
  OrderCancelled:
    - {op: del, key: "order:{streamId}"}
    - {op: del, key: "order:{streamId}:shipping"}
`

// spec is one generated event, compact: the payload is rendered from the
// index on demand so a million events cost 12 MB, not 500 MB.
type spec struct {
	stream int32
	typ    uint8
	ver    uint32
}

// workload is a deterministic sequence of events over a number of streams.
type workload struct {
	specs   []spec
	payload int // target size of the data JSON
	base    time.Time
	mix     [4]int
}

// newWorkload generates n events over streams aggregates: each stream starts
// with OrderPlaced; then 78% OrderUpdated, 12% OrderShipped, 10%
// OrderCancelled, after which the next event of that stream is OrderPlaced
// again. The same seed gives the same events.
func newWorkload(n, streams, payload int) *workload {
	r := rand.New(rand.NewPCG(42, 1))
	w := &workload{specs: make([]spec, n), payload: payload, base: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)}
	exists := make([]bool, streams)
	vers := make([]uint32, streams)
	for i := range w.specs {
		s := r.IntN(streams)
		var t uint8
		switch p := r.IntN(100); {
		case !exists[s]:
			t, exists[s] = tPlaced, true
		case p < 78:
			t = tUpdated
		case p < 90:
			t = tShipped
		default:
			t, exists[s] = tCancelled, false
		}
		vers[s]++
		w.specs[i] = spec{stream: int32(s), typ: t, ver: vers[s]}
		w.mix[t]++
	}
	return w
}

func streamID(s int32) string { return fmt.Sprintf("o-%05d", s) }

// event renders event i (0-based) of the workload.
func (w *workload) event(i int) envelope.Event {
	sp := w.specs[i]
	return envelope.Event{
		ID:       "e-" + strconv.Itoa(i+1),
		StreamID: streamID(sp.stream),
		Category: "order",
		Type:     typeNames[sp.typ],
		Version:  uint64(sp.ver),
		Time:     w.base.Add(time.Duration(i) * time.Millisecond),
		Data:     w.data(i),
		Metadata: json.RawMessage(`{"correlationId":"c-` + strconv.Itoa(i/3) + `","causationId":"e-` + strconv.Itoa(max(i, 1)) + `"}`),
	}
}

// data renders a realistic JSON payload of about w.payload bytes.
func (w *workload) data(i int) json.RawMessage {
	sp := w.specs[i]
	h := uint64(i)*0x9E3779B97F4A7C15 + 1
	next := func(m uint64) uint64 { h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 29; return h % m }
	at := w.base.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano)
	var s string
	switch sp.typ {
	case tPlaced, tUpdated:
		status := "placed"
		if sp.typ == tUpdated {
			status = "updated"
		}
		s = fmt.Sprintf(`{"orderId":"%s","customerId":"c-%05d","status":"%s","currency":"EUR","total":%d.%02d,"items":[{"sku":"SKU-%05d","qty":%d,"price":%d.99},{"sku":"SKU-%05d","qty":%d,"price":%d.49}],"shipTo":{"city":"Lyon","zip":"69002","country":"FR"},"updatedAt":"%s","rev":%d`,
			streamID(sp.stream), next(100000), status, next(5000), next(100), next(100000), 1+next(5), next(200), next(100000), 1+next(3), next(50), at, sp.ver)
	case tShipped:
		s = fmt.Sprintf(`{"status":"shipped","carrier":"DHL","trackingNo":"JD%016d","shippedAt":"%s","warehouse":"WH-%d","parcels":%d,"weightKg":%d.%02d,"signature":false`,
			next(1e16), at, next(20), 1+next(4), next(30), next(100))
	case tCancelled:
		s = fmt.Sprintf(`{"reason":"customer-request","cancelledBy":"c-%05d","refund":%d.%02d,"cancelledAt":"%s","restock":true`,
			next(100000), next(5000), next(100), at)
	}
	const filler = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat duis aute irure dolor in reprehenderit"
	if pad := w.payload - len(s) - len(`,"note":""}`); pad > 0 {
		s += `,"note":"` + filler[:min(pad, len(filler))] + `"`
	}
	return json.RawMessage(s + "}")
}

// commands are the Redis commands the mapping gives for event i: what the
// raw loader and the naive synchroniser write, and the sink must write.
func (w *workload) commands(i int, ev *envelope.Event) [][]any {
	key := "order:" + ev.StreamID
	switch w.specs[i].typ {
	case tPlaced, tUpdated:
		return [][]any{{"set", key, []byte(ev.Data)}}
	case tShipped:
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(ev.Data, &fields); err != nil {
			panic(err)
		}
		args := []any{"hset", key + ":shipping"}
		for f, raw := range fields {
			if raw[0] == '"' {
				var s string
				_ = json.Unmarshal(raw, &s)
				args = append(args, f, s)
			} else {
				args = append(args, f, []byte(raw))
			}
		}
		return [][]any{args}
	default:
		return [][]any{{"del", key}, {"del", key + ":shipping"}}
	}
}

// writeNDJSON writes the first n events as an import file.
func (w *workload) writeNDJSON(path string, n int) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	var size int64
	for i := range n {
		ev := w.event(i)
		b, err := json.Marshal(&ev)
		if err != nil {
			return 0, err
		}
		b = append(b, '\n')
		size += int64(len(b))
		if _, err := bw.Write(b); err != nil {
			return 0, err
		}
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return size, f.Close()
}
