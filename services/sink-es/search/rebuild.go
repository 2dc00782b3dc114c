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
	"strings"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
)

// RebuildOptions tunes Rebuild.
type RebuildOptions struct {
	// KeepOld keeps the previous indices (with a write block) instead of
	// deleting them; it overrides rebuild.keep_old when set.
	KeepOld *bool
	// KeepFailed keeps the new, unfinished indices of a rebuild that fails
	// before the swap (for inspection) instead of deleting them.
	KeepFailed bool
	// Poll is how often the rebuild's progress is checked (default 100ms).
	Poll time.Duration
	// EngineOptions are passed to the rebuild's engine (observer, dead letters).
	EngineOptions []sink.Option

	// afterBlock, for tests, runs right after the write block is set.
	afterBlock func()
}

// RebuildResult says what a rebuild did.
type RebuildResult struct {
	Sink    string            // the rebuild's own sink name (its checkpoint is deleted at the end)
	Old     map[string]string // alias -> index it pointed to before (deleted unless kept)
	New     map[string]string // alias -> index it points to now
	Through uint64            // the position the new indices were complete up to at the swap
	Events  uint64            // events the rebuild applied
	Blocked time.Duration     // how long the old indices refused writes before the swap
	Took    time.Duration
}

// Rebuild builds every alias the mappings write to anew, from position 0,
// while the live sink keeps serving and writing through the aliases:
//
//  1. a new index <alias>-<time> per alias, with the configured settings and
//     mappings; a second engine, sink <name>-rebuild-<time> with its own
//     checkpoint (0) in the KV bucket, writes into them;
//  2. when it has caught up with the stream head of the sink's filters (is
//     less than a batch behind it), the old indices get a write block: the
//     live sink's writes to them are refused as retryable and wait; the
//     rebuild catches up with the head once more (everything the live sink
//     wrote is then in the new indices);
//  3. one _aliases request moves every alias to its new index atomically;
//     the live sink's waiting writes go through the alias to the new index
//     (a version conflict there means already applied);
//  4. the rebuild's engine stops, the old indices are deleted (or kept,
//     read-only), and the rebuild's checkpoint is deleted.
//
// Reads through an alias see the old index, complete, until the swap, and
// the new one, complete and refreshed, after it. If anything fails before
// the swap (with on_error "stop", an event the new indices refuse; the
// error then names it and wraps sink.ErrStopped), every alias stays on its
// old index, the write block is lifted, the new indices are deleted (kept
// with KeepFailed), and the error says so.
func Rebuild(ctx context.Context, cfg Config, js jetstream.JetStream, store checkpoint.Store, log *slog.Logger, opts RebuildOptions) (_ *RebuildResult, err error) {
	start := time.Now()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if opts.Poll <= 0 {
		opts.Poll = 100 * time.Millisecond
	}
	keepOld := cfg.Rebuild.KeepOld
	if opts.KeepOld != nil {
		keepOld = *opts.KeepOld
	}
	aliases, err := rebuildAliases(&cfg)
	if err != nil {
		return nil, err
	}
	es, err := newClient(cfg.Elasticsearch)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	defer es.Close(context.WithoutCancel(ctx))
	timeout := cfg.Elasticsearch.RequestTimeout

	res := &RebuildResult{Old: map[string]string{}, New: map[string]string{}}
	for _, alias := range aliases {
		idx, err := aliasIndices(ctx, es, alias, timeout)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
		}
		if len(idx) != 1 {
			return nil, fmt.Errorf("%w: alias %s points to %d indices (%v); it must point to exactly one: start the sink once to create it, and rebuild only an alias the sink created",
				ErrRebuild, alias, len(idx), idx)
		}
		res.Old[alias] = idx[0]
	}

	stream, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("%w: stream %s: %w", ErrRebuild, cfg.Stream, err)
	}

	now := time.Now()
	res.Sink = cfg.Name + "-rebuild-" + now.UTC().Format("20060102-150405")
	log = log.With("rebuild", res.Sink)
	cleanup := &rebuildCleanup{es: es, js: js, bucket: cfg.Checkpoint.Bucket, sink: res.Sink, timeout: timeout, log: log,
		aliases: aliases, old: res.Old, new: res.New, keepFailed: opts.KeepFailed, stopWait: cfg.ShutdownTimeout + 15*time.Second}
	defer func() { err = cleanup.run(ctx, err) }()
	for _, alias := range aliases {
		idx := NewIndexName(alias, now)
		if err := createIndex(ctx, es, timeout, idx, indexBody(cfg.Indices[alias], cfg.Elasticsearch.PositionField, ""), "indices."+alias); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
		}
		cleanup.created = append(cleanup.created, idx)
		res.New[alias] = idx
		log.Info("rebuilding", "alias", alias, "from", res.Old[alias], "into", idx)
	}

	rcfg := cfg
	rcfg.Name = res.Sink
	w, err := NewWriter(rcfg, log, WithTargets(res.New))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	eng, err := sink.New(rcfg.Config, js, w, store, log, opts.EngineOptions...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	run := eng.Start(ctx)
	cleanup.engine = run

	head := func() (uint64, error) { return lastPosition(ctx, stream, cfg.Filters, cfg.Retry, log) }
	wait := func(pos uint64) error { return waitCheckpoint(ctx, run, pos, opts.Poll, log) }

	// 1. Catch up while the live sink writes to the old indices, until the
	// rebuild is less than a batch behind the head: what the write block
	// will have to wait for.
	for {
		h, err := head()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
		}
		if err := wait(h); err != nil {
			return nil, err
		}
		h2, err := head()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
		}
		if cp := eng.Stats().Checkpoint; cp >= h2 || h2-cp <= uint64(cfg.Batch.MaxEvents) {
			break
		}
	}

	// 2. Freeze the old indices, then take in what the live sink wrote.
	olds := make([]string, 0, len(aliases))
	for _, a := range aliases {
		olds = append(olds, res.Old[a])
	}
	blockedAt := time.Now()
	cleanup.blocked = olds
	if err := putSettings(ctx, es, timeout, olds, `{"index.blocks.write":true}`); err != nil {
		return nil, fmt.Errorf("%w: blocking writes to %v: %w", ErrRebuild, olds, err)
	}
	if opts.afterBlock != nil {
		opts.afterBlock()
	}
	h, err := head()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}
	if err := wait(h); err != nil {
		return nil, err
	}
	news := make([]string, 0, len(aliases))
	for _, a := range aliases {
		news = append(news, res.New[a])
	}
	if err := refresh(ctx, es, timeout, news); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRebuild, err)
	}

	// 3. Swap every alias in one request.
	var actions []map[string]any
	for _, a := range aliases {
		actions = append(actions,
			map[string]any{"remove": map[string]any{"index": res.Old[a], "alias": a}},
			map[string]any{"add": map[string]any{"index": res.New[a], "alias": a, "is_write_index": true}})
	}
	if err := updateAliases(ctx, es, timeout, actions); err != nil {
		return nil, fmt.Errorf("%w: swapping aliases: %w", ErrRebuild, err)
	}
	res.Blocked = time.Since(blockedAt)
	cleanup.swapped = true
	res.Through = h
	log.Info("aliases swapped", "through", h, "writes_blocked_for", res.Blocked.Round(time.Millisecond))

	// 4. Stop the rebuild, drop the old indices.
	res.Events = eng.Stats().Applied
	if err := run.Stop(cleanup.stopWait); err != nil {
		log.Warn("rebuild engine stopped with an error after the swap", "err", err)
	}
	if keepOld {
		log.Info("kept the old indices, read-only (index.blocks.write)", "indices", olds)
	} else if err := deleteIndices(ctx, es, timeout, olds); err != nil {
		log.Warn("could not delete the old indices; delete them by hand", "indices", olds, "err", err)
	}
	res.Took = time.Since(start)
	return res, nil
}

// rebuildAliases lists the aliases the mappings write to; a rebuild works on
// plain (alias) names only.
func rebuildAliases(cfg *Config) ([]string, error) {
	seen := map[string]bool{}
	for _, typ := range sortedKeys(cfg.Mappings) {
		for i, a := range cfg.Mappings[typ] {
			if strings.Contains(a.Index, "{") {
				return nil, fmt.Errorf("%w: mappings.%s[%d].index %q is a template; rebuild moves aliases and works only with plain index names",
					ErrRebuild, typ, i, a.Index)
			}
			seen[a.Index] = true
		}
	}
	return sortedKeys(seen), nil
}

// waitCheckpoint polls until the engine has applied pos, logging progress.
func waitCheckpoint(ctx context.Context, run *sink.Running, pos uint64, every time.Duration, log *slog.Logger) error {
	t := time.NewTicker(every)
	defer t.Stop()
	lastLog := time.Now()
	for {
		st := run.Engine().Stats()
		if st.Checkpoint >= pos {
			return nil
		}
		if time.Since(lastLog) >= 2*time.Second {
			log.Info("rebuild progress", "checkpoint", st.Checkpoint, "head", pos, "state", st.State, "last_error", st.LastError)
			lastLog = time.Now()
		}
		var halted <-chan time.Time
		if st.State == sink.StateStopped {
			// Run is returning, or (an engine that holds at a stop for an
			// operator) will not: a rebuild cannot go on either way.
			halted = time.After(time.Second)
		}
		select {
		case <-run.Done():
			err := run.Err()
			if err == nil {
				err = errors.New("stopped")
			}
			return fmt.Errorf("%w: the rebuild's sink stopped at %d before reaching %d: %w", ErrRebuild, run.Engine().Stats().Checkpoint, pos, err)
		case <-halted:
			st := run.Engine().Stats()
			return fmt.Errorf("%w: the rebuild's sink stopped at %d before reaching %d: %w: %s", ErrRebuild, st.Checkpoint, pos, sink.ErrStopped, st.LastError)
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrRebuild, ctx.Err())
		case <-t.C:
		}
	}
}

// lastPosition is natsutil.LastPosition, retried (like the engine retries)
// while NATS cannot answer, e.g. during a restart.
func lastPosition(ctx context.Context, stream jetstream.Stream, filters []string, rc sink.RetryConfig, log *slog.Logger) (uint64, error) {
	wait := rc.Initial
	for {
		h, err := natsutil.LastPosition(ctx, stream, filters)
		if err == nil {
			return h, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		log.Warn("reading the stream head, retrying", "in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		wait = min(2*wait, rc.Max)
	}
}

// rebuildCleanup stops the rebuild's engine and deletes its checkpoint;
// for a rebuild that did not reach the swap, it also lifts the write block
// and deletes (or keeps) the new indices, and says so in the error.
type rebuildCleanup struct {
	es         *elasticsearch.Client
	js         jetstream.JetStream
	bucket     string
	sink       string
	timeout    time.Duration
	log        *slog.Logger
	aliases    []string
	old, new   map[string]string // alias -> index, as in RebuildResult
	keepFailed bool
	stopWait   time.Duration // how long the engine may take to stop

	engine  *sink.Running // nil until started
	created []string      // new indices
	blocked []string      // old indices with a write block
	swapped bool
}

// run returns failure (nil after a rebuild that went through) with what it
// did about it.
func (c *rebuildCleanup) run(parent context.Context, failure error) error {
	if c.engine != nil && !c.swapped { // after the swap, Rebuild stopped it
		// An engine that stopped by itself returns its error again here;
		// failure already holds it then.
		if err := c.engine.Stop(c.stopWait); err != nil && !errors.Is(failure, err) {
			c.log.Warn("the rebuild's engine stopped with an error", "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), 30*time.Second)
	defer cancel()
	var done []string
	if !c.swapped {
		done = c.undo(ctx)
	}
	if kv, err := c.js.KeyValue(ctx, c.bucket); err != nil {
		c.log.Warn("could not delete the rebuild's checkpoint", "key", c.sink, "err", err)
	} else if err := kv.Purge(ctx, c.sink); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		c.log.Warn("could not delete the rebuild's checkpoint", "key", c.sink, "err", err)
	}
	if failure == nil || len(done) == 0 {
		return failure
	}
	return fmt.Errorf("%w; %s", failure, strings.Join(done, "; "))
}

// undo puts everything back as it was before the rebuild, as far as it
// can, and returns what it found and did, one sentence each.
func (c *rebuildCleanup) undo(ctx context.Context) []string {
	var done []string
	// Where every alias points now. Normally its old index; should the
	// swap have gone through although its request failed (a timeout),
	// the new index is live and must stay.
	live := map[string]bool{}
	for _, alias := range c.aliases {
		idx, err := aliasIndices(ctx, c.es, alias, c.timeout)
		switch {
		case err != nil:
			done = append(done, fmt.Sprintf("could not check alias %s (it pointed to %s before): %v", alias, c.old[alias], err))
			if n, ok := c.new[alias]; ok {
				live[n] = true // unknown: keep it
			}
		case len(idx) == 1 && idx[0] == c.old[alias]:
			done = append(done, fmt.Sprintf("alias %s still points to the live index %s", alias, c.old[alias]))
		default:
			done = append(done, fmt.Sprintf("alias %s points to %v (it pointed to %s before): check it by hand", alias, idx, c.old[alias]))
			for _, i := range idx {
				live[i] = true
			}
		}
	}
	if len(c.blocked) > 0 {
		if err := putSettings(ctx, c.es, c.timeout, c.blocked, `{"index.blocks.write":null}`); err != nil {
			c.log.Error("could not lift the write block of the old indices: lift it by hand (PUT <index>/_settings {\"index.blocks.write\":null})", "indices", c.blocked, "err", err)
			done = append(done, fmt.Sprintf("could not lift the write block of %s: lift it by hand: PUT %s/_settings {\"index.blocks.write\":null}; %v",
				strings.Join(c.blocked, ", "), strings.Join(c.blocked, ","), err))
		} else {
			done = append(done, fmt.Sprintf("the write block of %s is lifted", strings.Join(c.blocked, ", ")))
		}
	}
	var drop, keep []string
	for _, idx := range c.created {
		if live[idx] {
			keep = append(keep, idx)
		} else {
			drop = append(drop, idx)
		}
	}
	if len(keep) > 0 {
		done = append(done, fmt.Sprintf("kept %s: an alias may point to it", strings.Join(keep, ", ")))
	}
	switch {
	case len(drop) == 0:
	case c.keepFailed:
		done = append(done, fmt.Sprintf("the unfinished index %s is kept (-keep-failed); delete it when done: DELETE /%s",
			strings.Join(drop, ", "), strings.Join(drop, ",")))
	default:
		if err := deleteIndices(ctx, c.es, c.timeout, drop); err != nil {
			c.log.Warn("could not delete the unfinished new indices", "indices", drop, "err", err)
			done = append(done, fmt.Sprintf("could not delete the unfinished index %s: delete it by hand; %v", strings.Join(drop, ", "), err))
		} else {
			done = append(done, fmt.Sprintf("the unfinished index %s is deleted (-keep-failed keeps it)", strings.Join(drop, ", ")))
		}
	}
	return done
}

func putSettings(ctx context.Context, es *elasticsearch.Client, timeout time.Duration, indices []string, body string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := esapi.IndicesPutSettingsRequest{Index: indices, Body: strings.NewReader(body)}.Do(ctx, es)
	return ack(res, err, "settings of "+strings.Join(indices, ","))
}

func refresh(ctx context.Context, es *elasticsearch.Client, timeout time.Duration, indices []string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := esapi.IndicesRefreshRequest{Index: indices}.Do(ctx, es)
	return ack(res, err, "refresh of "+strings.Join(indices, ","))
}

func updateAliases(ctx context.Context, es *elasticsearch.Client, timeout time.Duration, actions []map[string]any) error {
	body, err := json.Marshal(map[string]any{"actions": actions})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := esapi.IndicesUpdateAliasesRequest{Body: bytes.NewReader(body)}.Do(ctx, es)
	return ack(res, err, "_aliases")
}

func deleteIndices(ctx context.Context, es *elasticsearch.Client, timeout time.Duration, indices []string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := esapi.IndicesDeleteRequest{Index: indices}.Do(ctx, es)
	if err == nil && res.StatusCode == http.StatusNotFound {
		res.Body.Close()
		return nil
	}
	return ack(res, err, "deleting "+strings.Join(indices, ","))
}

// ack turns a request's outcome into an error unless it succeeded.
func ack(res *esapi.Response, err error, what string) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer res.Body.Close()
	if res.IsError() {
		return requestError(what, res)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	return nil
}
