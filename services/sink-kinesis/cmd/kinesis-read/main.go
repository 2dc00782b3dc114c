// Command kinesis-read reads a Kinesis stream that sink-kinesis feeds, from
// TRIM_HORIZON on every shard, and prints one JSON line per record. With
// -apply it applies the reader's rule instead: per stream (category and
// stream id) only the record with the next version is printed, so
// duplicates and copies that got ahead of a failed predecessor are dropped
// and each event comes out once, in order.
//
//	go run ./services/sink-kinesis/cmd/kinesis-read -endpoint http://127.0.0.1:4567 -stream jetsync-events -apply
//
// Credentials and region come from the AWS SDK's standard chain
// (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_REGION, ...), or -region.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

func main() {
	endpoint := flag.String("endpoint", "", "endpoint override, e.g. http://127.0.0.1:4567 (empty: AWS)")
	stream := flag.String("stream", "jetsync-events", "Kinesis stream name")
	region := flag.String("region", "", "AWS region (empty: the SDK's chain)")
	apply := flag.Bool("apply", false, "print each event once, in order per stream (the reader's rule)")
	flag.Parse()
	if err := run(*endpoint, *stream, *region, *apply); err != nil {
		fmt.Fprintln(os.Stderr, "kinesis-read:", err)
		os.Exit(1)
	}
}

// record is what sink-kinesis puts in a record (the envelope), with where
// it was read.
type record struct {
	Shard    string          `json:"shard"`
	Sequence string          `json:"sequence"`
	Position uint64          `json:"position"`
	ID       string          `json:"id"`
	StreamID string          `json:"streamId"`
	Category string          `json:"category"`
	Type     string          `json:"type"`
	Version  uint64          `json:"version"`
	Data     json.RawMessage `json:"data"`
}

func run(endpoint, stream, region string, apply bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var opts []func(*awsconfig.LoadOptions) error
	if region != "" {
		opts = append(opts, awsconfig.WithRegion(region))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return err
	}
	kc := kinesis.NewFromConfig(cfg, func(o *kinesis.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
	})
	shards, err := kc.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		return err
	}
	sort.Slice(shards.Shards, func(i, j int) bool {
		return aws.ToString(shards.Shards[i].ShardId) < aws.ToString(shards.Shards[j].ShardId)
	})
	next := map[string]uint64{} // per category/streamId: the version applied last
	enc := json.NewEncoder(os.Stdout)
	for _, sh := range shards.Shards {
		it, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{
			StreamName: aws.String(stream), ShardId: sh.ShardId, ShardIteratorType: types.ShardIteratorTypeTrimHorizon,
		})
		if err != nil {
			return err
		}
		for iter := it.ShardIterator; iter != nil; {
			out, err := kc.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter})
			if err != nil {
				return err
			}
			for _, r := range out.Records {
				rec := record{Shard: aws.ToString(sh.ShardId), Sequence: aws.ToString(r.SequenceNumber)}
				if err := json.Unmarshal(r.Data, &rec); err != nil {
					return fmt.Errorf("record %s is not a jetsync envelope: %w", rec.Sequence, err)
				}
				if apply {
					key := rec.Category + "/" + rec.StreamID
					if rec.Version != next[key]+1 {
						continue // a duplicate (same position again) or ahead of its predecessor
					}
					next[key] = rec.Version
				}
				if err := enc.Encode(rec); err != nil {
					return err
				}
			}
			if len(out.Records) == 0 && aws.ToInt64(out.MillisBehindLatest) == 0 {
				break // caught up
			}
			iter = out.NextShardIterator
		}
	}
	return nil
}
