package kinesink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Writer puts batches of events into one Kinesis stream with PutRecords.
// It keeps no checkpoint: the engine saves it (in NATS KV) after WriteBatch
// returned nil, i.e. once every record of the batch is in.
//
// Guarantee: at least once, and per partition key in order. A batch is put
// in calls of at most 500 records and 5MiB, one call at a time. When Kinesis
// fails some records of a call (FailedRecordCount > 0), WriteBatch re-sends
// them together with every later record of the same partition key, even
// those that succeeded, so the last copy of each record is in order; it
// returns a transient error first, so the engine backs off, and resumes with
// just those records when the engine calls it again with the same batch.
// Duplicates happen only after such a failure, a transport error (a call
// whose answer was lost is sent again) or a crash between a write and the
// checkpoint (at most one batch); every record carries its event's
// position, so a reader recognises them.
type Writer struct {
	name     string
	cfg      KinesisConfig
	maxCount int
	maxBytes int
	log      *slog.Logger

	mu     sync.Mutex
	client *kinesis.Client // nil before Connect and after Close

	// cur is the batch being written, kept across WriteBatch calls so a
	// retry of the same batch re-sends only what is not in yet. Only
	// WriteBatch touches it; the engine calls that from one goroutine.
	cur *progress

	calls, sent, resent, failed atomic.Uint64

	// maker is swapped whole by ReloadMappings (reload.go); prepare reads
	// it once per batch. running is the configuration it was made from.
	maker    atomic.Pointer[recordMaker]
	reloadMu sync.Mutex
	running  Config
}

var (
	_ sink.Writer          = (*Writer)(nil)
	_ sink.Pinger          = (*Writer)(nil)
	_ sink.MappingReloader = (*Writer)(nil)
)

// Stats counts what the writer did since it was made.
type Stats struct {
	Calls   uint64 // PutRecords calls, failed ones included
	Records uint64 // records sent, re-sends included
	Resent  uint64 // records sent again after a failed call or failed records
	Failed  uint64 // records Kinesis reported failed (throttled, internal failure)
}

// Stats returns the writer's counters.
func (w *Writer) Stats() Stats {
	return Stats{Calls: w.calls.Load(), Records: w.sent.Load(), Resent: w.resent.Load(), Failed: w.failed.Load()}
}

// NewWriter validates cfg and compiles its templates and projection; it
// does not connect.
func NewWriter(cfg Config, log *slog.Logger) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	var p config.Problems
	c := compile(&cfg, &p)
	if err := p.Err(); err != nil { // Validate passed, so this cannot happen
		return nil, err
	}
	w := &Writer{
		name:     cfg.Name,
		cfg:      cfg.Kinesis,
		maxCount: cfg.Kinesis.MaxRecordsPerCall,
		maxBytes: int(cfg.Kinesis.MaxBytesPerCall),
		log:      log.With("sink", cfg.Name, "kinesis_stream", cfg.Kinesis.StreamName),
		running:  cfg,
	}
	w.maker.Store(&recordMaker{partitionKey: c.partitionKey, project: c.project})
	return w, nil
}

// Connect loads the AWS configuration (the SDK's standard chain), checks
// that the stream exists and is writable, creating it when configured to,
// and keeps the client.
func (w *Writer) Connect(ctx context.Context) error {
	if w.kc() != nil {
		return nil
	}
	opts := []func(*awsconfig.LoadOptions) error{
		// No retries inside the SDK: a call re-sent there could duplicate
		// records behind the writer's back. The engine retries instead,
		// with its backoff, and the writer re-sends only what is not in.
		awsconfig.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if w.cfg.Region != "" {
		opts = append(opts, awsconfig.WithRegion(w.cfg.Region))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return sink.Permanent(fmt.Errorf("loading the AWS configuration: %w", err))
	}
	if awsCfg.Region == "" {
		return sink.Permanent(fmt.Errorf("%w: set kinesis.region or AWS_REGION", ErrNoRegion))
	}
	client := kinesis.NewFromConfig(awsCfg, func(o *kinesis.Options) {
		if w.cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(w.cfg.Endpoint)
		}
	})
	if err := w.ensureStream(ctx, client); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client == nil {
		w.client = client
	}
	return nil
}

// ensureStream waits until the stream accepts records, creating it first
// when it is missing and create_stream_if_missing is on.
func (w *Writer) ensureStream(ctx context.Context, client *kinesis.Client) error {
	created := false
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
		out, err := client.DescribeStreamSummary(cctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(w.cfg.StreamName)})
		cancel()
		var nf *types.ResourceNotFoundException
		switch {
		case errors.As(err, &nf) && !w.cfg.CreateStreamIfMissing:
			return sink.Permanent(fmt.Errorf("%w: %s (create it, or set kinesis.create_stream_if_missing for development)", ErrStreamNotFound, w.cfg.StreamName))
		case errors.As(err, &nf) && !created:
			if err := w.createStream(ctx, client); err != nil {
				return err
			}
			created = true
			continue
		case err != nil && !errors.As(err, &nf):
			return classify(fmt.Errorf("describing kinesis stream %s: %w", w.cfg.StreamName, err))
		case err == nil:
			switch st := out.StreamDescriptionSummary.StreamStatus; st {
			case types.StreamStatusActive, types.StreamStatusUpdating:
				w.log.Info("kinesis stream ready", "status", st, "shards", aws.ToInt32(out.StreamDescriptionSummary.OpenShardCount))
				return nil
			case types.StreamStatusDeleting:
				return fmt.Errorf("kinesis stream %s is being deleted", w.cfg.StreamName)
			}
		}
		select { // CREATING, or created a moment ago and not visible yet
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (w *Writer) createStream(ctx context.Context, client *kinesis.Client) error {
	cctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	defer cancel()
	_, err := client.CreateStream(cctx, &kinesis.CreateStreamInput{
		StreamName: aws.String(w.cfg.StreamName),
		ShardCount: aws.Int32(w.cfg.ShardCount),
	})
	var inUse *types.ResourceInUseException
	if err != nil && !errors.As(err, &inUse) { // in use: someone else created it
		return classify(fmt.Errorf("creating kinesis stream %s: %w", w.cfg.StreamName, err))
	}
	w.log.Info("created kinesis stream", "shards", w.cfg.ShardCount)
	return nil
}

// Close drops the client; it is safe to call twice, and Connect may make a
// new one.
func (w *Writer) Close(context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.client = nil
	return nil
}

func (w *Writer) kc() *kinesis.Client {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.client
}

// Ping checks that the stream answers.
func (w *Writer) Ping(ctx context.Context) error {
	client := w.kc()
	if client == nil {
		return ErrNotConnected
	}
	cctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	defer cancel()
	_, err := client.DescribeStreamSummary(cctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(w.cfg.StreamName)})
	return classify(err)
}

// progress is a batch on its way into Kinesis.
type progress struct {
	batch   *sink.Batch
	through uint64
	n       int
	first   uint64
	recs    []record // one per event of the batch
	// pending indexes recs not in Kinesis yet (or to be sent again), in
	// stream order. For each partition key it is a suffix of the key's
	// records: everything from its first record not known to be in.
	pending []int
	sent    []bool // sent at least once
}

func (p *progress) matches(b *sink.Batch) bool {
	if p == nil || p.batch != b || p.through != b.Through || p.n != len(b.Events) {
		return false
	}
	return p.n == 0 || p.first == b.Events[0].Position
}

// WriteBatch puts every event of b into the stream, in order, and returns
// nil only when all of them are in. Events that can never be put (a record
// over 1MiB, a bad partition key, a failing projection) are reported in a
// *sink.BatchError before anything is sent, so the error policy decides
// and the rest is written on the next call.
func (w *Writer) WriteBatch(ctx context.Context, b *sink.Batch) error {
	client := w.kc()
	if client == nil {
		return ErrNotConnected
	}
	p := w.cur
	if !p.matches(b) {
		var err error
		if p, err = w.prepare(ctx, b); err != nil {
			return err
		}
		w.cur = p
	}
	for len(p.pending) > 0 {
		if err := w.put(ctx, client, p); err != nil {
			return err
		}
	}
	w.cur = nil
	return nil
}

// prepare builds the records of b, or reports the events that have none.
func (w *Writer) prepare(ctx context.Context, b *sink.Batch) (*progress, error) {
	p := &progress{batch: b, through: b.Through, n: len(b.Events), recs: make([]record, len(b.Events)),
		pending: make([]int, len(b.Events)), sent: make([]bool, len(b.Events))}
	if p.n > 0 {
		p.first = b.Events[0].Position
	}
	var failures []sink.EventFailure
	maker := w.maker.Load()
	for i := range b.Events {
		r, err := maker.make(ctx, &b.Events[i])
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			failures = append(failures, sink.EventFailure{Index: i, Err: err})
			continue
		}
		p.recs[i] = r
		p.pending[i] = i
	}
	if len(failures) > 0 {
		return nil, &sink.BatchError{Failures: failures}
	}
	return p, nil
}

// chunk is how many pending records the next call takes: as many as fit
// in the call limits, at least one.
func (w *Writer) chunk(p *progress) int {
	n, size := 0, 0
	for _, i := range p.pending {
		s := p.recs[i].size()
		if n == w.maxCount || (n > 0 && size+s > w.maxBytes) {
			break
		}
		n++
		size += s
	}
	return n
}

// put sends one PutRecords call of the first pending records and updates
// p.pending with its outcome. It returns an error when anything failed;
// what is still pending then is exactly what must be sent again.
func (w *Writer) put(ctx context.Context, client *kinesis.Client, p *progress) error {
	n := w.chunk(p)
	idx := p.pending[:n]
	entries := make([]types.PutRecordsRequestEntry, n)
	for k, i := range idx {
		entries[k] = types.PutRecordsRequestEntry{Data: p.recs[i].data, PartitionKey: aws.String(p.recs[i].key)}
		if p.sent[i] {
			w.resent.Add(1)
		}
		p.sent[i] = true
	}
	w.calls.Add(1)
	w.sent.Add(uint64(n))
	cctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	out, err := client.PutRecords(cctx, &kinesis.PutRecordsInput{StreamName: aws.String(w.cfg.StreamName), Records: entries})
	cancel()
	first, last := p.recs[idx[0]].pos, p.recs[idx[n-1]].pos
	if err != nil {
		// Nothing is known about this call (its answer may be lost after
		// the records went in): all of it stays pending.
		return classify(fmt.Errorf("PutRecords of %d records (positions %d..%d): %w", n, first, last, err))
	}
	if len(out.Records) != n {
		return fmt.Errorf("PutRecords of %d records (positions %d..%d): kinesis answered %d results; sending them again", n, first, last, len(out.Records))
	}
	failedCount := int(aws.ToInt32(out.FailedRecordCount))
	blocked := map[string]bool{} // partition keys with a failed record in this call
	var retry []int
	codes := map[string]int{}
	var permanent error
	for k, i := range idx {
		res := out.Records[k]
		if code := aws.ToString(res.ErrorCode); code != "" {
			codes[code]++
			blocked[p.recs[i].key] = true
			retry = append(retry, i)
			if permanent == nil {
				permanent = permanentRecordError(code, aws.ToString(res.ErrorMessage), p.recs[i].pos)
			}
			continue
		}
		if blocked[p.recs[i].key] {
			// In, but ahead of a failed predecessor of its key: send it
			// again after that one, so the last copy is in order.
			retry = append(retry, i)
		}
	}
	switch {
	case len(codes) == 0 && failedCount == 0:
		p.pending = p.pending[n:]
		return nil
	case len(codes) == 0:
		// FailedRecordCount without an error code on any record: trust
		// neither, send the whole call again.
		return fmt.Errorf("PutRecords of %d records (positions %d..%d): FailedRecordCount %d but no record has an error code; sending them again", n, first, last, failedCount)
	}
	failed := 0
	for _, c := range codes {
		failed += c
	}
	w.failed.Add(uint64(failed))
	p.pending = append(retry, p.pending[n:]...)
	if permanent != nil {
		return sink.Permanent(permanent)
	}
	return fmt.Errorf("%w: PutRecords of %d records (positions %d..%d): %s; %d records are sent again, %d of them in already but behind a failed record of their partition key",
		ErrThrottled, n, first, last, describeCodes(codes), len(retry), len(retry)-failed)
}

// describeCodes lists error codes with their counts, e.g.
// "12 ProvisionedThroughputExceededException, 1 InternalFailure".
func describeCodes(codes map[string]int) string {
	names := make([]string, 0, len(codes))
	for c := range codes {
		names = append(names, c)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, c := range names {
		parts[i] = fmt.Sprintf("%d %s", codes[c], c)
	}
	return strings.Join(parts, ", ")
}

// permanentRecordError is the error of a per-record code that retrying
// cannot fix, nil for codes worth retrying (throttling, InternalFailure,
// and anything unknown: the sink waits rather than lose a record).
func permanentRecordError(code, msg string, pos uint64) error {
	switch {
	case code == "KMSThrottlingException":
		return nil
	case strings.HasPrefix(code, "KMS"):
		return fmt.Errorf("%w: record at position %d: %s: %s", ErrKMS, pos, code, msg)
	case code == "AccessDeniedException":
		return fmt.Errorf("%w: record at position %d: %s: %s", ErrAuth, pos, code, msg)
	}
	return nil
}

// classify marks errors that retrying cannot fix as permanent; everything
// else (transport errors, throttling, 5xx) is returned for a retry.
func classify(err error) error {
	var ae smithy.APIError
	if err == nil || errors.Is(err, sink.ErrPermanent) || !errors.As(err, &ae) {
		return err
	}
	switch code := ae.ErrorCode(); {
	case code == "ResourceNotFoundException":
		return sink.Permanent(fmt.Errorf("%w: %w", ErrStreamNotFound, err))
	case code == "AccessDeniedException", code == "UnrecognizedClientException", code == "InvalidSignatureException",
		code == "IncompleteSignatureException", code == "MissingAuthenticationTokenException", code == "MissingAuthenticationToken",
		code == "InvalidClientTokenId", code == "SignatureDoesNotMatch":
		return sink.Permanent(fmt.Errorf("%w: %w", ErrAuth, err))
	case code == "KMSThrottlingException":
		return err
	case strings.HasPrefix(code, "KMS"):
		return sink.Permanent(fmt.Errorf("%w: %w", ErrKMS, err))
	case code == "InvalidArgumentException", code == "ValidationException", code == "SerializationException":
		return sink.Permanent(fmt.Errorf("%w: %w", ErrRejected, err))
	}
	return err
}
