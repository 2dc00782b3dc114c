package main

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesink"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesistest"
)

// kinesisShards is the shard count of every stream the benchmark creates,
// the sink's and the raw loader's alike.
const kinesisShards = 2

// putRecordsMax is the PutRecords limit, and so the sink's call size.
const putRecordsMax = 500

// kinesisTarget is a Kinesis-compatible server (kinesalite). The sink puts
// one record per event into a fresh stream per run; the raw loader puts the
// same records into a stream of its own.
type kinesisTarget struct {
	b      *bench
	url    string
	kc     *kinesis.Client
	names  runNamer
	stream string // the sink's stream of the current run
}

func newKinesisTarget(b *bench, url string) *kinesisTarget {
	return &kinesisTarget{b: b, url: url, kc: kinesistest.Client(url)}
}

func (t *kinesisTarget) env() []string { return kinesistest.Env() }

func (t *kinesisTarget) describe() string {
	return fmt.Sprintf("sink-kinesis puts one record per event (the default record: the whole envelope as JSON, partition key {streamId}) into a stream of %d shards, "+
		"PutRecords calls of at most %d records. The raw target puts the same record bytes and partition keys in sequential PutRecords calls of %d, "+
		"no NATS, into a fresh stream per repetition.", kinesisShards, putRecordsMax, putRecordsMax)
}

func (t *kinesisTarget) fresh(ctx context.Context) {
	if t.stream != "" {
		t.deleteStream(ctx, t.stream)
	}
	t.stream = t.names.next("bench-")
}

func (t *kinesisTarget) configYAML() string {
	return fmt.Sprintf("kinesis: {stream_name: %q, endpoint: %q, create_stream_if_missing: true, shard_count: %d}\n", t.stream, t.url, kinesisShards)
}

// deleteStream frees kinesalite's store of a finished run's records.
func (t *kinesisTarget) deleteStream(ctx context.Context, name string) {
	_, _ = t.kc.DeleteStream(ctx, &kinesis.DeleteStreamInput{StreamName: aws.String(name)})
}

// createStream makes an ACTIVE stream.
func (t *kinesisTarget) createStream(ctx context.Context, name string) {
	if _, err := t.kc.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: aws.String(name), ShardCount: aws.Int32(kinesisShards)}); err != nil {
		t.b.fatalf("creating stream %s: %v", name, err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		out, err := t.kc.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(name)})
		if err == nil && out.StreamDescriptionSummary.StreamStatus == types.StreamStatusActive {
			return
		}
	}
	t.b.fatalf("stream %s did not become ACTIVE within 30s", name)
}

func (t *kinesisTarget) raw(ctx context.Context, n, batch int) result {
	name := t.names.next("bench-raw-")
	recs := t.records(n) // rendered before the clock starts, as the sink's input is
	t.createStream(ctx, name)
	defer t.deleteStream(ctx, name)
	start := time.Now()
	for lo := 0; lo < n; lo += putRecordsMax {
		out, err := t.kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(name), Records: recs[lo:min(lo+putRecordsMax, n)]})
		if err != nil {
			t.b.fatalf("raw PutRecords: %v", err)
		}
		if failed := aws.ToInt32(out.FailedRecordCount); failed != 0 {
			t.b.fatalf("raw PutRecords: %d records failed", failed)
		}
	}
	return result{events: n, elapsed: time.Since(start), bytes: t.b.rd.dataBytes[n],
		note: fmt.Sprintf("sequential PutRecords of %d records", putRecordsMax)}
}

// records are the sink's records of the first n events: the envelope JSON
// with the position first, keyed by stream id.
func (t *kinesisTarget) records(n int) []types.PutRecordsRequestEntry {
	out := make([]types.PutRecordsRequestEntry, n)
	for i := range n {
		ev := t.b.ev(i)
		ev.Position = uint64(i + 1)
		out[i] = types.PutRecordsRequestEntry{Data: record(&ev), PartitionKey: aws.String(ev.StreamID)}
	}
	return out
}

// record is sink-kinesis's default record of ev.
func record(ev *envelope.Event) []byte {
	data, err := kinesink.EnvelopeJSON(ev)
	if err != nil {
		panic(err) // the benchmark's own events are valid JSON
	}
	return data
}
