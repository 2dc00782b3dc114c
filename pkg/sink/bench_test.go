package sink_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// discardWriter applies nothing and keeps the checkpoint in memory: with
// it, a catch-up measures the engine's read and batch path alone.
type discardWriter struct{ through atomic.Uint64 }

func (d *discardWriter) Connect(context.Context) error { return nil }
func (d *discardWriter) Close(context.Context) error   { return nil }
func (d *discardWriter) LoadCheckpoint(context.Context) (uint64, error) {
	return 0, nil
}
func (d *discardWriter) WriteBatch(_ context.Context, b *sink.Batch) error {
	d.through.Store(b.Through)
	return nil
}

// BenchmarkEngineCatchUp times the engine from position 0 to the head of a
// stream of 200,000 events (~280-byte payloads, the five envelope headers)
// into a writer that discards them: the read path's CPU per event.
//
//	go test -run '^$' -bench EngineCatchUp -benchtime 3x -cpuprofile /tmp/eng.cpu ./pkg/sink/
func BenchmarkEngineCatchUp(b *testing.B) {
	const n = 200_000
	ns := testenv.NATS(b)
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		b.Fatal(err)
	}
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		ev := envelope.Event{ID: fmt.Sprintf("e-%08d", i), Category: "order", StreamID: fmt.Sprintf("o-%05d", i%10000),
			Type: "OrderUpdated", Version: uint64(i/10000 + 1), Time: t0.Add(time.Duration(i) * time.Millisecond),
			Data:     json.RawMessage(fmt.Sprintf(`{"orderId":"o-%05d","customerId":"c-12345","status":"updated","currency":"EUR","total":1234.56,"items":[{"sku":"SKU-48213","qty":2,"price":19.99},{"sku":"SKU-11873","qty":1,"price":5.49}],"shipTo":{"city":"Lyon","zip":"69002","country":"FR"},"rev":%d}`, i%10000, i)),
			Metadata: json.RawMessage(`{"correlationId":"c-1234","causationId":"e-1233","user":"u-1"}`)}
		if _, err := js.PublishMsgAsync(ev.ToMsg()); err != nil {
			b.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()

	cfg := sink.DefaultConfig("bench")
	cpu0 := cpuTime()
	b.ResetTimer()
	for b.Loop() {
		w := &discardWriter{}
		eng, err := sink.New(cfg, js, w, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- eng.Run(ctx) }()
		for w.through.Load() < n {
			time.Sleep(100 * time.Microsecond)
		}
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "events/s")
	// The process's CPU: engine and NATS server (embedded) together.
	b.ReportMetric(float64(cpuTime()-cpu0)/1e3/float64(n*b.N), "cpu-µs/event")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
