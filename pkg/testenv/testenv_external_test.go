package testenv_test

// These tests prove that the real test servers for the Elasticsearch and
// Kinesis sinks start here and that the official clients accept them:
// go-elasticsearch v8 against testenv.Elasticsearch, aws-sdk-go-v2's
// Kinesis client against testenv.Kinesalite.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/testenv"
)

// esDo runs an esapi call and decodes its JSON body into out (if not nil),
// failing the test on a transport error or an error status.
func esDo(t *testing.T, what string, res *esapi.Response, err error, out any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.IsError() {
		t.Fatalf("%s: %s: %s", what, res.Status(), body)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%s: decoding %s: %v", what, body, err)
		}
	}
}

func newESClient(t *testing.T, url string) *elasticsearch.Client {
	t.Helper()
	es, err := elasticsearch.NewClient(elasticsearch.Config{Addresses: []string{url}})
	if err != nil {
		t.Fatalf("elasticsearch.NewClient: %v", err)
	}
	return es
}

func TestExternalElasticsearchGoClient(t *testing.T) {
	url := testenv.Elasticsearch(t)
	es := newESClient(t, url)

	var info struct {
		ClusterName string `json:"cluster_name"`
		Version     struct {
			Number string `json:"number"`
		} `json:"version"`
	}
	res, err := es.Info()
	esDo(t, "Info", res, err, &info)
	if !strings.HasPrefix(info.Version.Number, "8.") {
		t.Fatalf("Info: version %q, want 8.x", info.Version.Number)
	}
	t.Logf("Elasticsearch %s, cluster %q, at %s", info.Version.Number, info.ClusterName, url)

	suffix := fmt.Sprint(time.Now().UnixNano())
	docs, bulk := "jetsync-testenv-docs-"+suffix, "jetsync-testenv-bulk-"+suffix
	t.Cleanup(func() {
		if res, err := es.Indices.Delete([]string{docs, bulk}); err == nil {
			res.Body.Close()
		}
	})

	res, err = es.Index(docs, strings.NewReader(`{"subject":"orders.created","n":1}`),
		es.Index.WithDocumentID("k1"), es.Index.WithRefresh("true"))
	esDo(t, "Index", res, err, nil)

	var got struct {
		Found  bool `json:"found"`
		Source struct {
			Subject string `json:"subject"`
			N       int    `json:"n"`
		} `json:"_source"`
	}
	res, err = es.Get(docs, "k1")
	esDo(t, "Get", res, err, &got)
	if !got.Found || got.Source.Subject != "orders.created" || got.Source.N != 1 {
		t.Fatalf("Get: %+v", got)
	}

	body := fmt.Sprintf(`{"index":{"_index":%q,"_id":"a"}}
{"n":1}
{"index":{"_index":%q,"_id":"b"}}
{"n":2}
`, bulk, bulk)
	var bulkRes struct {
		Errors bool `json:"errors"`
		Items  []map[string]struct {
			Status int `json:"status"`
		} `json:"items"`
	}
	res, err = es.Bulk(strings.NewReader(body))
	esDo(t, "Bulk", res, err, &bulkRes)
	if bulkRes.Errors || len(bulkRes.Items) != 2 {
		t.Fatalf("Bulk: %+v", bulkRes)
	}
	for _, it := range bulkRes.Items {
		if it["index"].Status != 201 {
			t.Fatalf("Bulk item: %+v", bulkRes.Items)
		}
	}

	res, err = es.Indices.Refresh(es.Indices.Refresh.WithIndex(bulk))
	esDo(t, "Refresh", res, err, nil)

	var count struct {
		Count int `json:"count"`
	}
	res, err = es.Count(es.Count.WithIndex(bulk))
	esDo(t, "Count", res, err, &count)
	if count.Count != 2 {
		t.Fatalf("Count = %d, want 2", count.Count)
	}
}

// TestExternalElasticsearchRestart is the outage drill: a node of the
// test's own is stopped and started on the same port and data, and the
// document written before is still there.
func TestExternalElasticsearchRestart(t *testing.T) {
	srv := testenv.NewElasticsearch(t)
	es := newESClient(t, srv.URL)

	res, err := es.Index("jetsync-restart", strings.NewReader(`{"n":7}`),
		es.Index.WithDocumentID("x"), es.Index.WithRefresh("true"))
	esDo(t, "Index", res, err, nil)

	srv.Stop()
	if _, err := testenv.ElasticsearchVersion(srv.URL); err == nil {
		t.Fatalf("the node still answers after Stop")
	}
	srv.Start()

	var got struct {
		Found  bool `json:"found"`
		Source struct {
			N int `json:"n"`
		} `json:"_source"`
	}
	res, err = es.Get("jetsync-restart", "x")
	esDo(t, "Get after restart", res, err, &got)
	if !got.Found || got.Source.N != 7 {
		t.Fatalf("Get after restart: %+v", got)
	}
}

func newKinesisClient(url string) *kinesis.Client {
	return kinesis.New(kinesis.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDJETSYNCTEST", "jetsync-test-secret", ""),
		BaseEndpoint: aws.String(url),
	})
}

// readAll reads a single-shard stream from TRIM_HORIZON.
func readAll(ctx context.Context, t *testing.T, kc *kinesis.Client, stream string) []types.Record {
	t.Helper()
	shards, err := kc.ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatalf("ListShards: %v", err)
	}
	if len(shards.Shards) != 1 {
		t.Fatalf("ListShards: %d shards, want 1", len(shards.Shards))
	}
	it, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{
		StreamName:        aws.String(stream),
		ShardId:           shards.Shards[0].ShardId,
		ShardIteratorType: types.ShardIteratorTypeTrimHorizon,
	})
	if err != nil {
		t.Fatalf("GetShardIterator: %v", err)
	}
	recs, err := kc.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: it.ShardIterator, Limit: aws.Int32(100)})
	if err != nil {
		t.Fatalf("GetRecords: %v", err)
	}
	return recs.Records
}

func TestExternalKinesaliteSDK(t *testing.T) {
	srv := testenv.Kinesalite(t)
	kc := newKinesisClient(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	stream := fmt.Sprintf("jetsync-testenv-%d", time.Now().UnixNano())
	if _, err := kc.CreateStream(ctx, &kinesis.CreateStreamInput{
		StreamName: aws.String(stream),
		ShardCount: aws.Int32(1),
	}); err != nil {
		t.Fatalf("CreateStream: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		out, err := kc.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
		return err == nil && out.StreamDescriptionSummary.StreamStatus == types.StreamStatusActive
	}, "stream %s ACTIVE", stream)

	var entries []types.PutRecordsRequestEntry
	for i := range 3 {
		entries = append(entries, types.PutRecordsRequestEntry{
			Data:         fmt.Appendf(nil, `{"seq":%d}`, i),
			PartitionKey: aws.String("orders"),
		})
	}
	put, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
	if err != nil {
		t.Fatalf("PutRecords: %v", err)
	}
	if aws.ToInt32(put.FailedRecordCount) != 0 || len(put.Records) != 3 {
		t.Fatalf("PutRecords: %d failed of %d", aws.ToInt32(put.FailedRecordCount), len(put.Records))
	}

	check := func(when string) {
		t.Helper()
		recs := readAll(ctx, t, kc, stream)
		if len(recs) != 3 {
			t.Fatalf("%s: GetRecords returned %d records, want 3", when, len(recs))
		}
		for i, r := range recs {
			if want := fmt.Sprintf(`{"seq":%d}`, i); string(r.Data) != want {
				t.Fatalf("%s: record %d = %s, want %s", when, i, r.Data, want)
			}
			if aws.ToString(r.SequenceNumber) != aws.ToString(put.Records[i].SequenceNumber) {
				t.Fatalf("%s: record %d sequence %s, PutRecords said %s", when, i,
					aws.ToString(r.SequenceNumber), aws.ToString(put.Records[i].SequenceNumber))
			}
			if aws.ToString(r.PartitionKey) != "orders" || r.ApproximateArrivalTimestamp == nil {
				t.Fatalf("%s: record %d: %+v", when, i, r)
			}
		}
	}
	check("before restart")

	if !srv.Local() {
		t.Logf("KINESIS_ENDPOINT=%s is not ours to stop: no restart drill", srv.URL)
		return
	}
	// The outage drill: the same port and store after a stop.
	srv.Stop()
	down, cancelDown := context.WithTimeout(ctx, 3*time.Second)
	_, err = kc.DescribeStreamSummary(down, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
	cancelDown()
	if err == nil {
		t.Fatalf("DescribeStreamSummary succeeded while the server was stopped")
	}
	srv.Start()

	sum, err := kc.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatalf("DescribeStreamSummary after restart: %v", err)
	}
	if sum.StreamDescriptionSummary.StreamStatus != types.StreamStatusActive {
		t.Fatalf("after restart the stream is %s", sum.StreamDescriptionSummary.StreamStatus)
	}
	check("after restart")
}
