package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// BenchmarkImport imports 100,000 events of about 250 bytes over 10,000
// streams into an embedded JetStream, for profiling the import path:
//
//	go test -run '^$' -bench Import -benchtime 3x -cpuprofile /tmp/imp.cpu ./services/bridge/
//
// The ratio against raw publish is measured by bench/cmd/jetbench.
func BenchmarkImport(b *testing.B) {
	const n, streams = 100_000, 10_000
	var file bytes.Buffer
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		s, v := i%streams, i/streams+1
		ev := envelope.Event{
			ID: fmt.Sprintf("e-%08d", i), Category: "order", StreamID: fmt.Sprintf("o-%05d", s),
			Type: "OrderUpdated", Version: uint64(v), Time: t0.Add(time.Duration(i) * time.Millisecond),
			Data:     json.RawMessage(fmt.Sprintf(`{"orderId":"o-%05d","customerId":"c-12345","status":"updated","currency":"EUR","total":1234.56,"items":[{"sku":"SKU-48213","qty":2,"price":19.99},{"sku":"SKU-11873","qty":1,"price":5.49}],"shipTo":{"city":"Lyon","zip":"69002","country":"FR"},"rev":%d}`, s, v)),
			Metadata: json.RawMessage(`{"correlationId":"c-1234","causationId":"e-1233","user":"u-1"}`),
		}
		line, _ := json.Marshal(ev)
		file.Write(line)
		file.WriteByte('\n')
	}
	ns := testenv.NATS(b)
	nc, err := natsutil.Connect(natsutil.Config{URL: ns.URL()}, "bench-import", testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	b.SetBytes(int64(file.Len() / n))
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		_ = js.DeleteStream(ctx, natsutil.DefaultStream)
		if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := Import(ctx, js, bytes.NewReader(file.Bytes()), ImportOptions{})
		if err != nil || res.Published != n {
			b.Fatalf("%+v %v", res, err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkDecodeEvent is one import line through decodeEvent and Validate.
func BenchmarkDecodeEvent(b *testing.B) {
	line := []byte(`{"id":"e-00000042","type":"OrderUpdated","category":"order","streamId":"o-00042","version":7,"time":"2024-01-01T00:00:00.042Z","data":{"orderId":"o-00042","customerId":"c-12345","status":"updated","currency":"EUR","total":1234.56,"items":[{"sku":"SKU-48213","qty":2,"price":19.99},{"sku":"SKU-11873","qty":1,"price":5.49}],"shipTo":{"city":"Lyon","zip":"69002","country":"FR"},"rev":17},"metadata":{"correlationId":"c-1234","causationId":"e-1233","user":"u-1"}}`)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		ev, err := decodeEvent(line, "line 1: ", importFields)
		if err == nil {
			err = ev.Validate("line 1: ")
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
