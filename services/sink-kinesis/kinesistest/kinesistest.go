// Package kinesistest helps test code against a Kinesis-compatible server
// (kinesalite, see pkg/testenv): a client with test credentials, reading a
// whole stream back, and a fault-injecting reverse proxy that does what
// kinesalite never does, failing chosen records of a PutRecords call after
// the server stored the others.
package kinesistest

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// Test credentials and region: kinesalite checks that requests are signed,
// not by whom.
const (
	AccessKeyID     = "AKIDJETSYNCTEST"
	SecretAccessKey = "jetsync-test-secret"
	Region          = "us-east-1"
)

// Env is the environment a sink-kinesis process needs to find the test
// credentials through the SDK's standard chain.
func Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + AccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + SecretAccessKey,
		"AWS_REGION=" + Region,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Client is a Kinesis client for endpoint with the test credentials and the
// SDK's retries off.
func Client(endpoint string) *kinesis.Client {
	return kinesis.New(kinesis.Options{
		Region:       Region,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKeyID, SecretAccessKey, ""),
		BaseEndpoint: aws.String(endpoint),
		Retryer:      aws.NopRetryer{},
	})
}

// Record is one record read back, with the fields of the sink's envelope
// record decoded (zero when the data is not such a record).
type Record struct {
	Shard        string
	Sequence     string
	PartitionKey string
	Data         []byte

	Position uint64 `json:"position"`
	ID       string `json:"id"`
	StreamID string `json:"streamId"`
	Category string `json:"category"`
	Type     string `json:"type"`
	Version  uint64 `json:"version"`
	// Payload is the envelope's data as it is in the record.
	Payload json.RawMessage `json:"data"`
}

// ReadStream reads every record of every shard of stream from TRIM_HORIZON
// until each shard is caught up: shards in id order, each shard's records
// in sequence order (the order Kinesis consumers see them).
func ReadStream(ctx context.Context, kc *kinesis.Client, stream string) ([]Record, error) {
	var shards []types.Shard
	in := &kinesis.ListShardsInput{StreamName: aws.String(stream)}
	for {
		out, err := kc.ListShards(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("ListShards %s: %w", stream, err)
		}
		shards = append(shards, out.Shards...)
		if out.NextToken == nil {
			break
		}
		in = &kinesis.ListShardsInput{NextToken: out.NextToken}
	}
	sort.Slice(shards, func(i, j int) bool { return aws.ToString(shards[i].ShardId) < aws.ToString(shards[j].ShardId) })
	var recs []Record
	for _, sh := range shards {
		it, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{
			StreamName: aws.String(stream), ShardId: sh.ShardId, ShardIteratorType: types.ShardIteratorTypeTrimHorizon,
		})
		if err != nil {
			return nil, fmt.Errorf("GetShardIterator %s/%s: %w", stream, aws.ToString(sh.ShardId), err)
		}
		iter := it.ShardIterator
		for iter != nil {
			out, err := kc.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter, Limit: aws.Int32(5000)})
			if err != nil {
				return nil, fmt.Errorf("GetRecords %s/%s: %w", stream, aws.ToString(sh.ShardId), err)
			}
			for _, r := range out.Records {
				rec := Record{Shard: aws.ToString(sh.ShardId), Sequence: aws.ToString(r.SequenceNumber), PartitionKey: aws.ToString(r.PartitionKey), Data: r.Data}
				_ = json.Unmarshal(r.Data, &rec) // not an envelope record: the fields stay zero
				recs = append(recs, rec)
			}
			if len(out.Records) == 0 && aws.ToInt64(out.MillisBehindLatest) == 0 {
				break
			}
			iter = out.NextShardIterator
		}
	}
	return recs, nil
}

// Positions counts how often each position occurs in recs.
func Positions(recs []Record) map[uint64]int {
	out := make(map[uint64]int, len(recs))
	for _, r := range recs {
		out[r.Position]++
	}
	return out
}

// InOrder applies the reader's rule for one stream (category and stream
// id, whose events share a partition key and so a shard): a record is
// applied when its version is the next one, and dropped otherwise, as a
// duplicate (version already applied) or as a copy that got ahead of a
// failed predecessor (the sink sends it again after that one). It returns
// each stream's applied records, which are every event once, in order,
// when the sink kept its guarantee.
func InOrder(recs []Record) map[string][]Record {
	out := map[string][]Record{}
	for _, r := range recs {
		k := r.Category + "/" + r.StreamID
		if r.Version == uint64(len(out[k]))+1 {
			out[k] = append(out[k], r)
		}
	}
	return out
}

// FirstCopies keeps, for each stream (category and stream id), the first
// copy of each position in the order the copies were read.
func FirstCopies(recs []Record) map[string][]Record {
	seen := make(map[uint64]bool, len(recs))
	out := map[string][]Record{}
	for _, r := range recs {
		if !seen[r.Position] {
			seen[r.Position] = true
			k := r.Category + "/" + r.StreamID
			out[k] = append(out[k], r)
		}
	}
	return out
}

// LastCopies keeps, for each stream (category and stream id), the last copy
// of each position in the order the copies were read: with the sink's
// guarantee these are every event of the stream once, in order.
func LastCopies(recs []Record) map[string][]Record {
	last := make(map[uint64]int, len(recs))
	for i, r := range recs {
		last[r.Position] = i
	}
	out := map[string][]Record{}
	for i, r := range recs {
		if last[r.Position] == i {
			k := r.Category + "/" + r.StreamID
			out[k] = append(out[k], r)
		}
	}
	return out
}
