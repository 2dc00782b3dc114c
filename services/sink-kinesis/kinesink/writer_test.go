package kinesink

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/smithy-go"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/services/sink-kinesis/kinesistest"
)

func batchOf(evs []envelope.Event) *sink.Batch {
	b := &sink.Batch{Events: evs}
	for _, ev := range evs {
		b.Bytes += ev.Size()
		b.Through = ev.Position
	}
	return b
}

// TestCallLimits: one batch is split into PutRecords calls of at most 500
// records and 5MiB, in order, and every record lands once.
func TestCallLimits(t *testing.T) {
	tg := newTarget(t)
	ctx := context.Background()

	t.Run("500 records", func(t *testing.T) {
		stream := uniqueStream("count")
		w := connected(t, testConfig(t, tg.proxy.URL, stream))
		evs := makeEvents(1234, 40, 0, 10)
		if err := w.WriteBatch(ctx, batchOf(evs)); err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for _, c := range tg.proxy.Calls() {
			if c.Stream == stream {
				sizes = append(sizes, len(c.Keys))
			}
		}
		if !slices.Equal(sizes, []int{500, 500, 234}) {
			t.Errorf("calls of %v records, want [500 500 234]", sizes)
		}
		if count := checkAllInOrder(t, evs, readBack(t, tg.kc, stream)); len(count) != len(evs) {
			t.Errorf("%d distinct positions read back", len(count))
		}
		for pos, n := range kinesistest.Positions(readBack(t, tg.kc, stream)) {
			if n != 1 {
				t.Errorf("position %d read back %d times", pos, n)
			}
		}
	})

	t.Run("5MiB", func(t *testing.T) {
		stream := uniqueStream("bytes")
		w := connected(t, testConfig(t, tg.proxy.URL, stream))
		evs := makeEvents(12, 3, 0, 900<<10) // ~900KiB records: 5 fit in 5MiB
		if err := w.WriteBatch(ctx, batchOf(evs)); err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for _, c := range tg.proxy.Calls() {
			if c.Stream != stream {
				continue
			}
			sizes = append(sizes, len(c.Keys))
			if c.Bytes() > MaxBytesPerCall {
				t.Errorf("call %d carries %d bytes, over the 5MiB limit", c.N, c.Bytes())
			}
		}
		if !slices.Equal(sizes, []int{5, 5, 2}) {
			t.Errorf("calls of %v records, want [5 5 2]", sizes)
		}
		checkAllInOrder(t, evs, readBack(t, tg.kc, stream))
	})

	t.Run("configured smaller", func(t *testing.T) {
		stream := uniqueStream("small")
		cfg := testConfig(t, tg.proxy.URL, stream)
		cfg.Kinesis.MaxRecordsPerCall = 7
		w := connected(t, cfg)
		evs := makeEvents(20, 3, 0, 10)
		if err := w.WriteBatch(ctx, batchOf(evs)); err != nil {
			t.Fatal(err)
		}
		if s := w.Stats(); s.Calls != 3 || s.Records != 20 || s.Resent != 0 {
			t.Errorf("stats %+v, want 3 calls of 20 records", s)
		}
		checkAllInOrder(t, evs, readBack(t, tg.kc, stream))
	})
}

// TestOversizeEventIsAPerEventFailure: an event whose record exceeds 1MiB
// (data plus partition key) comes back in a *sink.BatchError and nothing
// of the batch is sent, so the engine's error policy decides and the rest
// is written once.
func TestOversizeEventIsAPerEventFailure(t *testing.T) {
	tg := newTarget(t)
	stream := uniqueStream("oversize")
	w := connected(t, testConfig(t, tg.proxy.URL, stream))
	evs := makeEvents(6, 4, 0, 10) // index 3 is the only event of s003
	evs[3].Data = []byte(`"` + strings.Repeat("y", MaxRecordBytes) + `"`)
	err := w.WriteBatch(context.Background(), batchOf(evs))
	var be *sink.BatchError
	if !errors.As(err, &be) || len(be.Failures) != 1 || be.Failures[0].Index != 3 || !errors.Is(be.Failures[0].Err, ErrRecordTooLarge) {
		t.Fatalf("WriteBatch returned %v, want a BatchError for index 3 wrapping ErrRecordTooLarge", err)
	}
	if n := len(tg.proxy.Calls()); n != 0 {
		t.Fatalf("%d PutRecords calls made before reporting the failure, want 0", n)
	}
	// What the engine does with on_error: skip.
	rest := batchOf(slices.Delete(slices.Clone(evs), 3, 4))
	if err := w.WriteBatch(context.Background(), rest); err != nil {
		t.Fatal(err)
	}
	checkAllInOrder(t, rest.Events, readBack(t, tg.kc, stream))
}

// TestPartialFailureKeepsPerKeyOrder: the proxy fails chosen records of a
// PutRecords call, either after kinesalite stored the whole call (the
// answer is rewritten) or by keeping them from kinesalite (as AWS does:
// the later records of the same key are then in the stream ahead of their
// predecessor). The writer must re-send the failed records and every later
// record of the same partition key, nothing else, and only then report the
// batch done.
func TestPartialFailureKeepsPerKeyOrder(t *testing.T) {
	tg := newTarget(t)
	for _, mode := range []string{"stored", "rejected"} {
		t.Run(mode, func(t *testing.T) {
			stream := uniqueStream("partial-" + mode)
			w := connected(t, testConfig(t, tg.proxy.URL, stream))
			ctx := context.Background()
			evs := makeEvents(30, 3, 0, 10) // streams s000, s001, s002 interleaved
			// Index 4 is s001 v2, index 9 is s000 v4: fail them in the first call.
			first := 0
			tg.proxy.SetFault(func(c *kinesistest.Call) kinesistest.Fault {
				if c.Stream != stream {
					return kinesistest.Fault{}
				}
				if first == 0 {
					first = c.N
					if mode == "stored" {
						return kinesistest.Fault{FailEntries: []int{4, 9}}
					}
					return kinesistest.Fault{RejectEntries: []int{4, 9}}
				}
				return kinesistest.Fault{}
			})
			b := batchOf(evs)
			err := w.WriteBatch(ctx, b)
			if !errors.Is(err, ErrThrottled) || errors.Is(err, sink.ErrPermanent) {
				t.Fatalf("first WriteBatch returned %v, want a transient ErrThrottled", err)
			}
			if err := w.WriteBatch(ctx, b); err != nil { // the engine's retry of the same batch
				t.Fatalf("retry: %v", err)
			}
			calls := tg.proxy.Calls()[first-1:]
			if len(calls) != 2 {
				t.Fatalf("%d calls, want 2", len(calls))
			}
			// Re-sent: s001 from v2 on (indexes 4, 7, 10, ...) and s000 from
			// v4 on (9, 12, ...), in stream order; s002 not at all.
			var want []uint64
			for i, ev := range evs {
				if ev.StreamID == "s001" && i >= 4 || ev.StreamID == "s000" && i >= 9 {
					want = append(want, ev.Position)
				}
			}
			if !slices.Equal(calls[1].Positions, want) {
				t.Errorf("re-sent positions %v, want %v", calls[1].Positions, want)
			}
			if s := w.Stats(); s.Failed != 2 || s.Resent != uint64(len(want)) {
				t.Errorf("stats %+v, want 2 failed and %d re-sent", s, len(want))
			}
			recs := readBack(t, tg.kc, stream)
			count := checkAllInOrder(t, evs, recs)
			for i, ev := range evs {
				wantN := 1 + btoi(slices.Contains(want, ev.Position))
				if mode == "rejected" && (i == 4 || i == 9) {
					wantN = 1 // never stored by the failed call
				}
				if count[ev.Position] != wantN {
					t.Errorf("position %d read back %d times, want %d", ev.Position, count[ev.Position], wantN)
				}
			}
			// What a reader of s001 sees: the first call's copies (without v2
			// when it was rejected), then v2 and everything after it again.
			var s001 []uint64
			for _, r := range recs {
				if r.StreamID == "s001" {
					s001 = append(s001, r.Version)
				}
			}
			wantSeq := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2, 3, 4, 5, 6, 7, 8, 9, 10}
			if mode == "rejected" {
				wantSeq = slices.Delete(wantSeq, 1, 2)
			}
			if !slices.Equal(s001, wantSeq) {
				t.Errorf("s001 read back as versions %v, want %v", s001, wantSeq)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestWholeCallFailures: a throttled call (nothing stored) and a call
// whose answer is lost (all stored) are both sent again whole; the lost
// answer is the one source of duplicates here.
func TestWholeCallFailures(t *testing.T) {
	tg := newTarget(t)
	stream := uniqueStream("whole")
	cfg := testConfig(t, tg.proxy.URL, stream)
	cfg.Kinesis.MaxRecordsPerCall = 10
	w := connected(t, cfg)
	ctx := context.Background()
	evs := makeEvents(30, 4, 0, 10)
	tg.proxy.SetFault(func(c *kinesistest.Call) kinesistest.Fault {
		switch c.N {
		case 2:
			return kinesistest.Fault{ThrottleCall: true}
		case 4:
			return kinesistest.Fault{DropReply: true}
		}
		return kinesistest.Fault{}
	})
	b := batchOf(evs)
	var errs []error
	for range 5 {
		err := w.WriteBatch(ctx, b)
		if err == nil {
			break
		}
		if errors.Is(err, sink.ErrPermanent) {
			t.Fatalf("permanent: %v", err)
		}
		errs = append(errs, err)
	}
	if len(errs) != 2 {
		t.Fatalf("errors %v, want two transient ones", errs)
	}
	var ae smithy.APIError
	if !errors.As(errs[0], &ae) || ae.ErrorCode() != kinesistest.ThrottleCode {
		t.Errorf("first error %v, want the throttling API error", errs[0])
	}
	calls := tg.proxy.Calls()
	if len(calls) != 5 || !slices.Equal(calls[1].Positions, calls[2].Positions) || !slices.Equal(calls[3].Positions, calls[4].Positions) {
		t.Fatalf("calls %+v: want each failed call sent again whole", calls)
	}
	count := checkAllInOrder(t, evs, readBack(t, tg.kc, stream))
	for _, ev := range evs {
		want := 1 + btoi(slices.Contains(calls[3].Positions, ev.Position))
		if count[ev.Position] != want {
			t.Errorf("position %d read back %d times, want %d", ev.Position, count[ev.Position], want)
		}
	}
}

// TestNewBatchDropsOldProgress: when the engine gives up on a batch (stop
// policy, shutdown) and hands over another, the writer starts afresh.
func TestNewBatchDropsOldProgress(t *testing.T) {
	tg := newTarget(t)
	stream := uniqueStream("fresh")
	w := connected(t, testConfig(t, tg.proxy.URL, stream))
	ctx := context.Background()
	evs := makeEvents(10, 2, 0, 10)
	tg.proxy.SetFault(func(c *kinesistest.Call) kinesistest.Fault {
		if c.N == 1 {
			return kinesistest.Fault{FailEntries: []int{0}}
		}
		return kinesistest.Fault{}
	})
	if err := w.WriteBatch(ctx, batchOf(evs)); !errors.Is(err, ErrThrottled) {
		t.Fatalf("got %v, want ErrThrottled", err)
	}
	if err := w.WriteBatch(ctx, batchOf(evs)); err != nil { // an equal batch, not the same one
		t.Fatal(err)
	}
	if calls := tg.proxy.Calls(); len(calls) != 2 || len(calls[1].Positions) != 10 {
		t.Fatalf("calls %+v: want the new batch sent whole", calls)
	}
}

func TestStreamCreationAndMissingStream(t *testing.T) {
	tg := newTarget(t)
	ctx := context.Background()

	cfg := testConfig(t, tg.srv.URL, uniqueStream("missing"))
	cfg.Kinesis.CreateStreamIfMissing = false
	w, err := NewWriter(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Connect(ctx); !errors.Is(err, ErrStreamNotFound) || !errors.Is(err, sink.ErrPermanent) {
		t.Fatalf("Connect to a missing stream: %v, want a permanent ErrStreamNotFound", err)
	}
	if err := w.WriteBatch(ctx, batchOf(makeEvents(1, 1, 0, 1))); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("WriteBatch before Connect: %v", err)
	}
	if err := w.Ping(ctx); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Ping before Connect: %v", err)
	}

	cfg.Kinesis.CreateStreamIfMissing = true
	cfg.Kinesis.ShardCount = 3
	w = connected(t, cfg)
	out, err := tg.kc.DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(cfg.Kinesis.StreamName)})
	if err != nil {
		t.Fatal(err)
	}
	if n := aws.ToInt32(out.StreamDescriptionSummary.OpenShardCount); n != 3 {
		t.Errorf("created with %d shards, want 3", n)
	}
	if err := w.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
	// A second writer finds the stream there; Close is safe twice.
	w2 := connected(t, cfg)
	if err := w2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w2.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestClassify(t *testing.T) {
	for code, want := range map[string]error{
		"ResourceNotFoundException":              ErrStreamNotFound,
		"AccessDeniedException":                  ErrAuth,
		"UnrecognizedClientException":            ErrAuth,
		"KMSDisabledException":                   ErrKMS,
		"InvalidArgumentException":               ErrRejected,
		"KMSThrottlingException":                 nil,
		"ProvisionedThroughputExceededException": nil,
		"LimitExceededException":                 nil,
		"InternalFailure":                        nil,
		"ServiceUnavailable":                     nil,
	} {
		err := classify(&smithy.GenericAPIError{Code: code, Message: "m"})
		switch {
		case want == nil && errors.Is(err, sink.ErrPermanent):
			t.Errorf("%s: %v is permanent, want it retried", code, err)
		case want != nil && (!errors.Is(err, want) || !errors.Is(err, sink.ErrPermanent)):
			t.Errorf("%s: %v, want permanent %v", code, err, want)
		}
	}
	if err := classify(errors.New("connection refused")); errors.Is(err, sink.ErrPermanent) {
		t.Errorf("a transport error is permanent: %v", err)
	}
	if permanentRecordError("KMSThrottlingException", "", 1) != nil || permanentRecordError(kinesistest.ThrottleCode, "", 1) != nil ||
		permanentRecordError("InternalFailure", "", 1) != nil || !errors.Is(permanentRecordError("KMSNotFoundException", "", 1), ErrKMS) {
		t.Error("per-record codes classified wrongly")
	}
}
