package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Writer writes batches of events to Elasticsearch with the plain Bulk API:
// one bulk request per batch (split only past elasticsearch.max_request_bytes),
// each document's events folded into one item, its position as the external
// version. The checkpoint stays in the engine's NATS KV store.
//
// It does not use esutil.BulkIndexer: that helper spreads items over
// several workers (reordering them) and drops an item once its OnFailure
// callback ran, and its flushes are driven by its own timer rather than by
// the engine's batches. This writer reads every item's status itself and
// keeps the items to retry.
type Writer struct {
	name    string
	es      ESConfig
	indices map[string]IndexConfig
	targets map[string]string
	log     *slog.Logger
	stats   writerStats

	// plan is swapped whole by ReloadMappings (reload.go); WriteBatch reads
	// it once per batch. cfg is the configuration it was compiled from.
	plan     atomic.Pointer[planner]
	reloadMu sync.Mutex
	cfg      Config

	mu     sync.Mutex
	client *elasticsearch.Client // nil before Connect and after Close

	// Touched only by WriteBatch, which the engine calls from one goroutine
	// (never during Connect or Close).
	job *job
	buf []byte
}

var (
	_ sink.Writer          = (*Writer)(nil)
	_ sink.Pinger          = (*Writer)(nil)
	_ sink.MappingReloader = (*Writer)(nil)
)

// Option changes a Writer.
type Option func(*Writer)

// WithTargets makes the writer write what the mappings send to a declared
// alias into a concrete index instead (alias -> index); a rebuild writes
// to its new index this way. Those aliases are not set up at Connect.
func WithTargets(targets map[string]string) Option {
	return func(w *Writer) { w.targets = targets }
}

// NewWriter validates cfg and compiles its mappings; it does not connect.
func NewWriter(cfg Config, log *slog.Logger, opts ...Option) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	var p config.Problems
	acts := compileMappings(&cfg, &p)
	if err := p.Err(); err != nil { // Validate passed, so this cannot happen
		return nil, err
	}
	w := &Writer{
		name:    cfg.Name,
		es:      cfg.Elasticsearch,
		indices: cfg.Indices,
		log:     log.With("sink", cfg.Name),
		cfg:     cfg,
	}
	for _, o := range opts {
		o(w)
	}
	w.plan.Store(&planner{byType: acts, unknownErr: cfg.UnknownTypes == UnknownError, pf: cfg.Elasticsearch.PositionField, targets: w.targets})
	return w, nil
}

// WriterStats counts the writer's requests (for tests and benchmarks).
type WriterStats struct {
	Bulks, Mgets, Items, RetriedItems, RefusedItems uint64
	// BulkTime is the time spent in bulk requests (waiting for Elasticsearch).
	BulkTime time.Duration
}

type writerStats struct {
	bulks, mgets, items, retried, refused atomic.Uint64
	bulkTime                              atomic.Int64
}

// Stats returns the writer's counters.
func (w *Writer) Stats() WriterStats {
	return WriterStats{Bulks: w.stats.bulks.Load(), Mgets: w.stats.mgets.Load(), Items: w.stats.items.Load(),
		RetriedItems: w.stats.retried.Load(), RefusedItems: w.stats.refused.Load(), BulkTime: time.Duration(w.stats.bulkTime.Load())}
}

// newClient builds the official client for cfg. Its own retries are off:
// the engine retries with backoff, and the writer knows which items to send
// again.
func newClient(cfg ESConfig) (*elasticsearch.Client, error) {
	return elasticsearch.NewClient(elasticsearch.Config{
		Addresses:    cfg.URLs,
		Username:     cfg.Username,
		Password:     cfg.Password,
		APIKey:       cfg.APIKey,
		DisableRetry: true,
	})
}

// Connect checks Elasticsearch answers and sets up the declared indices:
// a missing alias gets a new concrete index behind it, a templated name an
// index template.
func (w *Writer) Connect(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client != nil {
		return nil
	}
	es, err := newClient(w.es)
	if err != nil {
		return sink.Permanent(fmt.Errorf("elasticsearch client: %w", err))
	}
	if err := ping(ctx, es, w.es.RequestTimeout); err != nil {
		_ = es.Close(ctx)
		return fmt.Errorf("connecting to elasticsearch at %v: %w", w.es.URLs, err)
	}
	if err := w.setupIndices(ctx, es); err != nil {
		_ = es.Close(ctx)
		return err
	}
	w.client = es
	return nil
}

// Close closes the client; it is safe to call twice, and Connect may open
// it again.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client == nil {
		return nil
	}
	err := w.client.Close(ctx)
	w.client = nil
	return err
}

func (w *Writer) conn() *elasticsearch.Client {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.client
}

// Ping tells whether Elasticsearch answers right now (/readyz).
func (w *Writer) Ping(ctx context.Context) error {
	es := w.conn()
	if es == nil {
		return ErrNotConnected
	}
	return ping(ctx, es, w.es.RequestTimeout)
}

func ping(ctx context.Context, es *elasticsearch.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := esapi.InfoRequest{}.Do(ctx, es)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.IsError() {
		return requestError("GET /", res)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	return nil
}

// job is the work of one batch, kept while Elasticsearch asks to retry some
// of its items: when the engine retries the same batch, only those items
// (and what comes after them on the same documents) are sent.
type job struct {
	es       *elasticsearch.Client // a new connection starts over
	b        *sink.Batch
	n        int
	through  uint64
	chains   []*chain
	failures []sink.EventFailure
}

func (j *job) matches(es *elasticsearch.Client, b *sink.Batch) bool {
	return j != nil && j.es == es && j.b == b && j.n == len(b.Events) && j.through == b.Through
}

// WriteBatch applies b. Every item's status is read: applied and "already
// applied" (a version conflict) are success, retryable refusals (429, 5xx,
// write blocks) make it return an error wrapping ErrRetryItems and keep the
// items for the engine's retry, and refusals for good come back as a
// *sink.BatchError naming their events once nothing is left to retry.
func (w *Writer) WriteBatch(ctx context.Context, b *sink.Batch) error {
	es := w.conn()
	if es == nil {
		return ErrNotConnected
	}
	if !w.job.matches(es, b) {
		w.job = nil
		chains, failures, err := w.plan.Load().build(ctx, b.Events)
		if err != nil {
			return err
		}
		if len(failures) > 0 {
			for _, f := range failures {
				ev := &b.Events[f.Index]
				w.log.Error("cannot map event", "position", ev.Position, "id", ev.ID, "type", ev.Type, "err", f.Err)
			}
			return &sink.BatchError{Failures: failures}
		}
		w.job = &job{es: es, b: b, n: len(b.Events), through: b.Through, chains: chains}
	}
	err := w.run(ctx, es, w.job)
	var be *sink.BatchError
	if err == nil || errors.As(err, &be) || errors.Is(err, sink.ErrPermanent) {
		w.job = nil
	}
	return err
}

// run sends rounds of items until every chain is done. The first round holds
// one item per document; more rounds are needed only for scripts (each runs
// in Elasticsearch before what follows it on its document) and to find the
// event a refused folded document holds.
func (w *Writer) run(ctx context.Context, es *elasticsearch.Client, j *job) error {
	for {
		var items []*item
		var bases []*chain
		for _, c := range j.chains {
			it, needBase, err := c.next(w.es.PositionField)
			if err != nil {
				return sink.Permanent(err)
			}
			switch {
			case needBase:
				bases = append(bases, c)
			case it != nil:
				c.pending = it
				items = append(items, it)
			}
		}
		if len(bases) > 0 {
			if err := w.mget(ctx, es, bases); err != nil {
				return err
			}
			for _, c := range bases {
				c.dropApplied()
				it, _, err := c.next(w.es.PositionField)
				if err != nil {
					return sink.Permanent(err)
				}
				if it != nil {
					c.pending = it
					items = append(items, it)
				}
			}
			slices.SortStableFunc(items, func(a, b *item) int { return a.c.first - b.c.first })
		}
		if len(items) == 0 {
			break
		}
		if err := w.send(ctx, es, j, items); err != nil {
			return err
		}
	}
	if len(j.failures) > 0 {
		return &sink.BatchError{Failures: j.failures}
	}
	return nil
}

// send writes items in bulk requests of at most max_request_bytes (a
// single larger item goes alone), one after the other.
func (w *Writer) send(ctx context.Context, es *elasticsearch.Client, j *job, items []*item) error {
	limit := int(w.es.MaxRequestBytes)
	// The buffer is reused only after requests that completed: after a
	// failed one, the HTTP transport may still be reading its body.
	buf := w.buf[:0]
	w.buf = nil
	start := 0
	var retry *retryNote
	for i, it := range items {
		before := len(buf)
		buf = appendItem(buf, it)
		if len(buf) > limit && i > start {
			if err := w.bulk(ctx, es, j, items[start:i], buf[:before], &retry); err != nil {
				return err
			}
			buf = append(buf[:0], buf[before:]...)
			start = i
		}
	}
	err := w.bulk(ctx, es, j, items[start:], buf, &retry)
	if err == nil && cap(buf) <= 4*limit {
		w.buf = buf[:0]
	}
	if err == nil && retry != nil {
		err = fmt.Errorf("%w: %d of %d items; first: %s", ErrRetryItems, retry.n, len(items), retry.first)
	}
	return err
}

// retryNote sums up the items Elasticsearch asked to retry.
type retryNote struct {
	n     int
	first string
}

// bulk sends one bulk request and records each item's verdict.
func (w *Writer) bulk(ctx context.Context, es *elasticsearch.Client, j *job, items []*item, body []byte, note **retryNote) error {
	ctx, cancel := context.WithTimeout(ctx, w.es.RequestTimeout)
	defer cancel()
	w.stats.bulks.Add(1)
	w.stats.items.Add(uint64(len(items)))
	start := time.Now()
	res, err := esapi.BulkRequest{Body: bytes.NewReader(body), Refresh: w.es.Refresh, FilterPath: bulkFilter}.Do(ctx, es)
	defer func() { w.stats.bulkTime.Add(int64(time.Since(start))) }()
	if err != nil {
		return fmt.Errorf("bulk request of %d items: %w", len(items), err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusRequestEntityTooLarge && len(items) == 1 {
		w.refuse(j, items[0], bulkResult{Status: res.StatusCode, Error: &esError{Type: "request_entity_too_large",
			Reason: fmt.Sprintf("a single document of %d bytes is larger than the server takes (http.max_content_length)", len(body))}})
		return nil
	}
	if res.IsError() {
		return requestError("bulk", res)
	}
	var out bulkResponse
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return fmt.Errorf("bulk answer: %w", err)
	}
	if len(out.Items) != len(items) {
		return fmt.Errorf("bulk answer holds %d items for %d sent", len(out.Items), len(items))
	}
	for i, it := range items {
		var r bulkResult
		for _, v := range out.Items[i] {
			r = v
		}
		switch classify(it.kind, r) {
		case applied:
			it.c.applied(it)
		case retry:
			w.stats.retried.Add(1)
			if *note == nil {
				*note = &retryNote{first: fmt.Sprintf("%s %s/%s status %d %s", it.kind, it.c.key.index, it.c.key.id, r.Status, r.Error)}
			}
			(*note).n++
		case refused:
			w.refuse(j, it, r)
		}
	}
	return nil
}

// refuse handles an item Elasticsearch refuses for good. A folded item is
// taken apart (its events are written one by one in the next rounds, so the
// event to blame is found and the ones before it still land); a single
// event's item becomes a failure for the error policy, and its document's
// later events wait for the next WriteBatch.
func (w *Writer) refuse(j *job, it *item, r bulkResult) {
	c := it.c
	c.pending = nil
	if len(it.events) > 1 {
		w.log.Warn("elasticsearch refused a document folded from several events; writing them one at a time to find the one it refuses",
			"index", c.key.index, "doc", c.key.id, "events", len(it.events), "status", r.Status, "reason", r.Error.String())
		c.unfold = true
		return
	}
	w.stats.refused.Add(1)
	ev := &j.b.Events[it.events[0]]
	w.log.Error("elasticsearch refused an event", "position", ev.Position, "id", ev.ID, "type", ev.Type,
		"action", it.kind.String(), "index", c.key.index, "doc", c.key.id, "status", r.Status, "reason", r.Error.String())
	j.failures = append(j.failures, sink.EventFailure{Index: it.events[0],
		Err: fmt.Errorf("%w: %s %s/%s at position %d: status %d %s", ErrRefused, it.kind, c.key.index, c.key.id, ev.Position, r.Status, r.Error)})
	c.failed = true
}

// mgetDoc is one document of an mget answer.
type mgetDoc struct {
	Found  bool            `json:"found"`
	Source json.RawMessage `json:"_source"`
	Error  *esError        `json:"error"`
}

// mget reads the current documents of chains whose first write is a merge:
// one request for the whole round.
func (w *Writer) mget(ctx context.Context, es *elasticsearch.Client, chains []*chain) error {
	body := make([]byte, 0, 64*len(chains))
	body = append(body, `{"docs":[`...)
	for i, c := range chains {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"_index":`...)
		body = appendJSONString(body, c.key.index)
		body = append(body, `,"_id":`...)
		body = appendJSONString(body, c.key.id)
		body = append(body, '}')
	}
	body = append(body, "]}"...)
	ctx, cancel := context.WithTimeout(ctx, w.es.RequestTimeout)
	defer cancel()
	w.stats.mgets.Add(1)
	realtime := true
	res, err := esapi.MgetRequest{Body: bytes.NewReader(body), Realtime: &realtime}.Do(ctx, es)
	if err != nil {
		return fmt.Errorf("mget of %d documents: %w", len(chains), err)
	}
	defer res.Body.Close()
	if res.IsError() {
		return requestError("mget", res)
	}
	var out struct {
		Docs []mgetDoc `json:"docs"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return fmt.Errorf("mget answer: %w", err)
	}
	if len(out.Docs) != len(chains) {
		return fmt.Errorf("mget answer holds %d documents for %d asked", len(out.Docs), len(chains))
	}
	for i, d := range out.Docs {
		c := chains[i]
		switch {
		case d.Error != nil && d.Error.Type == "index_not_found_exception":
			c.state = docState{known: true}
		case d.Error != nil:
			return fmt.Errorf("mget %s/%s: %s", c.key.index, c.key.id, d.Error)
		case !d.Found:
			c.state = docState{known: true}
		case len(d.Source) == 0:
			return sink.Permanent(fmt.Errorf("%w: %s/%s (merge needs _source enabled in the index mappings)", ErrNoSource, c.key.index, c.key.id))
		default:
			c.state = docState{known: true, exists: true, src: d.Source, pos: positionOf(d.Source, w.es.PositionField)}
		}
	}
	return nil
}

// positionOf reads the position field of a document (0 when it has none).
func positionOf(src []byte, pf string) uint64 {
	var fields map[string]json.RawMessage
	if json.Unmarshal(src, &fields) != nil {
		return 0
	}
	n, err := strconv.ParseUint(string(fields[pf]), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// requestError turns an error status of a whole request into an error:
// permanent for credentials and malformed requests, retried otherwise.
func requestError(what string, res *esapi.Response) error {
	body, _ := io.ReadAll(io.LimitReader(res.Body, 8<<10))
	var e struct {
		Error *esError `json:"error"`
	}
	reason := string(body)
	if json.Unmarshal(body, &e) == nil && e.Error != nil {
		reason = e.Error.String()
	}
	err := fmt.Errorf("%s: %s: %s", what, res.Status(), reason)
	switch {
	case res.StatusCode == http.StatusForbidden && e.Error != nil && e.Error.Type == "cluster_block_exception":
		return err // a write block is lifted again
	case res.StatusCode == http.StatusUnauthorized || res.StatusCode == http.StatusForbidden:
		return sink.Permanent(fmt.Errorf("%w: %w", ErrAuth, err))
	case res.StatusCode == http.StatusBadRequest || res.StatusCode == http.StatusRequestEntityTooLarge:
		return sink.Permanent(fmt.Errorf("%w: %w", ErrBadRequest, err))
	}
	return err
}
