package kinesink

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesistest"
)

// benchEvents is how many events each side of the benchmark puts.
const benchEvents = 20000

// BenchmarkSinkVsRawPutRecords measures, in one run against one kinesalite,
// records/s through the whole sink (ordered consumer from an in-process
// JetStream, batching, PutRecords, KV checkpoint) and kinesalite's own rate
// for the same records put directly in sequential 500-record PutRecords
// calls (no NATS, no sink), and reports the ratio. Each iteration puts
// benchEvents records each way into fresh streams of 2 shards:
//
//	go test -run '^$' -bench SinkVsRaw -benchtime 3x ./kinesink/
func BenchmarkSinkVsRawPutRecords(b *testing.B) {
	srv := testenv.Kinesalite(b)
	kc := kinesistest.Client(srv.URL)
	_, js := testenv.NATS(b).Connect(b)
	ctx := context.Background()
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		b.Fatal(err)
	}
	store, err := checkpoint.NewKV(ctx, js, "")
	if err != nil {
		b.Fatal(err)
	}
	// The same events (100 streams, ~150 bytes of data) go into NATS for the
	// sink and, as the sink's own records, straight into kinesalite.
	evs := makeEvents(benchEvents, 100, 0, 100)
	futures := make([]jetstream.PubAckFuture, len(evs))
	for i := range evs {
		if futures[i], err = js.PublishMsgAsync(evs[i].ToMsg()); err != nil {
			b.Fatal(err)
		}
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			evs[i].Position = ack.Sequence
		case err := <-f.Err():
			b.Fatal(err)
		}
	}
	head := evs[len(evs)-1].Position

	var rawTotal, sinkTotal time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		raw := rawRecords(b, evs)
		rawStream := createStream(b, srv.URL, fmt.Sprintf("bench-raw-%d-%d", time.Now().UnixNano(), i))
		b.StartTimer()

		d := putRaw(b, kc, rawStream, raw)
		rawTotal += d

		b.StopTimer()
		cfg := DefaultConfig() // the defaults: 1000 events, 1MiB, 20ms batches
		cfg.Name = fmt.Sprintf("bench%d", i)
		cfg.NATS.URL = "unused"
		cfg.Kinesis.StreamName = createStream(b, srv.URL, fmt.Sprintf("bench-sink-%d-%d", time.Now().UnixNano(), i))
		cfg.Kinesis.Endpoint = srv.URL
		w, err := NewWriter(cfg, testLog())
		if err != nil {
			b.Fatal(err)
		}
		eng, err := sink.New(cfg.Config, js, w, store, testLog())
		if err != nil {
			b.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		b.StartTimer()

		start := time.Now()
		go func() { done <- eng.Run(runCtx) }()
		for eng.Stats().Checkpoint < head {
			select {
			case err := <-done:
				b.Fatalf("sink stopped: %v", err)
			case <-time.After(time.Millisecond):
			}
		}
		d = time.Since(start)
		sinkTotal += d

		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if s := w.Stats(); s.Records != benchEvents || s.Resent != 0 {
			b.Fatalf("the sink put %+v, want exactly %d records", s, benchEvents)
		}
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(benchEvents * b.N)
	rawRate, sinkRate := n/rawTotal.Seconds(), n/sinkTotal.Seconds()
	b.ReportMetric(sinkRate, "sink-rec/s")
	b.ReportMetric(rawRate, "raw-rec/s")
	b.ReportMetric(sinkRate/rawRate, "sink/raw")
	b.Logf("%d records x %d: sink %.0f records/s, raw PutRecords %.0f records/s, ratio %.2f", benchEvents, b.N, sinkRate, rawRate, sinkRate/rawRate)
}

// rawRecords are the sink's records of evs: the same bytes and keys.
func rawRecords(b *testing.B, evs []envelope.Event) []types.PutRecordsRequestEntry {
	b.Helper()
	m := recordMaker{}
	var err error
	if m.partitionKey, err = mapping.CompileTemplate(DefaultPartitionKey, "bench", true); err != nil {
		b.Fatal(err)
	}
	out := make([]types.PutRecordsRequestEntry, len(evs))
	for i := range evs {
		r, err := m.make(context.Background(), &evs[i])
		if err != nil {
			b.Fatal(err)
		}
		out[i] = types.PutRecordsRequestEntry{Data: r.data, PartitionKey: aws.String(r.key)}
	}
	return out
}

// putRaw puts recs in sequential calls of 500 and returns the time taken.
func putRaw(b *testing.B, kc *kinesis.Client, stream string, recs []types.PutRecordsRequestEntry) time.Duration {
	b.Helper()
	start := time.Now()
	for lo := 0; lo < len(recs); lo += MaxRecordsPerCall {
		hi := min(lo+MaxRecordsPerCall, len(recs))
		out, err := kc.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: recs[lo:hi]})
		if err != nil {
			b.Fatal(err)
		}
		if aws.ToInt32(out.FailedRecordCount) != 0 {
			b.Fatalf("%d records failed", aws.ToInt32(out.FailedRecordCount))
		}
	}
	return time.Since(start)
}

// createStream makes an ACTIVE stream of 2 shards.
func createStream(b *testing.B, endpoint, name string) string {
	b.Helper()
	cfg := DefaultConfig()
	cfg.Kinesis.StreamName = name
	cfg.Kinesis.Endpoint = endpoint
	cfg.Kinesis.CreateStreamIfMissing = true
	cfg.Kinesis.ShardCount = 2
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		b.Fatal(err)
	}
	if err := w.Connect(context.Background()); err != nil {
		b.Fatal(err)
	}
	return name
}
