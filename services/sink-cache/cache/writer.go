package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Writer writes batches of events to Redis and keeps the sink's checkpoint
// in Redis too, committed in the same MULTI/EXEC as the batch.
type Writer struct {
	name  string
	cpKey string
	opts  redis.Options
	skip  bool // on_error: skip
	log   *slog.Logger

	// plan is swapped whole by ReloadMappings (reload.go); WriteBatch reads
	// it once per batch. cfg is the configuration it was compiled from.
	plan     atomic.Pointer[plan]
	reloadMu sync.Mutex
	cfg      Config
	retrying planned // only WriteBatch touches it

	mu  sync.Mutex
	rdb *redis.Client // nil before Connect and after Close

	// last is the checkpoint this process last read or wrote. Finding
	// another value in Redis means someone else writes this sink's keys
	// (or Redis lost writes): the sink must stop rather than interleave.
	last      atomic.Uint64
	lastKnown atomic.Bool

	// epoch is the lease tenure this writer writes under (fence.go), 0
	// when it runs without a lease.
	epoch atomic.Uint64
}

var _ interface {
	sink.CheckpointWriter
	sink.CheckpointResetter
	sink.Pinger
	sink.MappingReloader
} = (*Writer)(nil)

// NewWriter validates cfg and compiles its mappings; it does not connect.
func NewWriter(cfg Config, log *slog.Logger) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	var p config.Problems
	acts := compileMappings(cfg.Name, cfg.Mappings, &p)
	cpKey, err := mapping.CompileTemplate(cfg.Redis.CheckpointKey, cfg.Name, false)
	p.Add(err)
	if err := p.Err(); err != nil { // Validate passed, so this cannot happen
		return nil, err
	}
	w := &Writer{
		name:  cfg.Name,
		cpKey: cpKey.Render(nil),
		opts: redis.Options{
			Addr:     cfg.Redis.Addr,
			Username: cfg.Redis.Username,
			Password: cfg.Redis.Password,
			DB:       cfg.Redis.DB,
			// No client-side retries: a command re-sent after a lost reply
			// could run twice. The engine retries the whole batch instead,
			// and the checkpoint inside Redis makes that idempotent.
			MaxRetries: -1,
			// One dial per attempt: the engine's backoff paces reconnects.
			DialerRetries:   1,
			DisableIdentity: true,
		},
		skip: cfg.OnError == sink.OnErrorSkip,
		log:  log.With("sink", cfg.Name, "redis", cfg.Redis.Addr),
		cfg:  cfg,
	}
	w.plan.Store(&plan{byType: acts, unknownErr: cfg.UnknownTypes == UnknownError})
	return w, nil
}

// CheckpointKey is the Redis key holding the sink's checkpoint.
func (w *Writer) CheckpointKey() string { return w.cpKey }

// Connect opens the connection pool and checks Redis answers.
func (w *Writer) Connect(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rdb != nil {
		return nil
	}
	opts := w.opts
	rdb := redis.NewClient(&opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return classify(fmt.Errorf("connecting to redis at %s: %w", w.opts.Addr, err))
	}
	w.rdb = rdb
	return nil
}

// Close closes the connection pool; it is safe to call twice, and Connect
// may open it again.
func (w *Writer) Close(context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rdb == nil {
		return nil
	}
	err := w.rdb.Close()
	w.rdb = nil
	return err
}

func (w *Writer) client() *redis.Client {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rdb
}

// LoadCheckpoint reads the position of the last applied event (0 for none).
func (w *Writer) LoadCheckpoint(ctx context.Context) (uint64, error) {
	rdb := w.client()
	if rdb == nil {
		return 0, ErrNotConnected
	}
	cp, err := readCheckpoint(ctx, rdb, w.cpKey)
	if err == nil {
		w.remember(cp)
	}
	return cp, classify(err)
}

// readCheckpoint GETs the checkpoint key.
func readCheckpoint(ctx context.Context, c redis.StringCmdable, key string) (uint64, error) {
	s, err := c.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading checkpoint %s: %w", key, err)
	}
	pos, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, sink.Permanent(fmt.Errorf("%w: %s holds %q; delete it to replay from the start or set it to a position", ErrBadCheckpoint, key, s))
	}
	return pos, nil
}

// WriteBatch applies b and sets the checkpoint to b.Through in one
// MULTI/EXEC, watching the checkpoint key. Events at or below the stored
// checkpoint are already applied and are not written again, so writing the
// same batch twice (a retry after a lost EXEC reply) applies it once.
func (w *Writer) WriteBatch(ctx context.Context, b *sink.Batch) (err error) {
	rdb := w.client()
	if rdb == nil {
		return ErrNotConnected
	}
	pl := w.planFor(b)
	defer func() { w.keepPlan(b, pl, err) }()
	cmds, failures, err := pl.build(ctx, b.Events)
	if err != nil {
		return err
	}
	if len(failures) > 0 {
		return &sink.BatchError{Failures: failures}
	}

	if b.Redelivery {
		return w.redeliver(ctx, rdb, cmds)
	}

	var run []command
	var out []redis.Cmder
	err = rdb.Watch(ctx, func(tx *redis.Tx) error {
		if err := w.checkFence(ctx, tx); err != nil {
			return err
		}
		cp, err := readCheckpoint(ctx, tx, w.cpKey)
		if err != nil {
			return err
		}
		if err := w.checkOwnership(cp, b.Through); err != nil {
			return err
		}
		if cp >= b.Through {
			return nil // applied already: a retry after a lost EXEC reply
		}
		run = cmds[sort.Search(len(cmds), func(i int) bool { return cmds[i].pos > cp }):]
		out, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, c := range run {
				pipe.Do(ctx, c.args...)
			}
			pipe.Set(ctx, w.cpKey, b.Through, 0)
			return nil
		})
		return err
	}, w.watchKeys()...)
	if err == nil {
		w.remember(b.Through)
		return nil
	}
	if committed(out, len(run)) {
		w.remember(b.Through)
		return w.partlyApplied(b, run, out)
	}
	// A failed transaction (the watched checkpoint was touched, for example
	// by Redis reloading its append-only file after a restart) is retried;
	// the retry's ownership check tells a second instance apart.
	return classify(fmt.Errorf("writing batch through %d: %w", b.Through, err))
}

// checkOwnership compares the checkpoint found in Redis with the one this
// process knows: only that one, or this batch's own (a retry whose first
// EXEC went through), are possible when this process is the only writer.
func (w *Writer) checkOwnership(cp, through uint64) error {
	if !w.lastKnown.Load() {
		return nil
	}
	last := w.last.Load()
	switch {
	case cp == last || cp == through:
		return nil
	case cp > last:
		return sink.Permanent(fmt.Errorf("%w: the checkpoint %s of sink %s is at %d, this process left it at %d; run one instance per sink name",
			ErrConcurrentWriter, w.cpKey, w.name, cp, last))
	default:
		return sink.Permanent(fmt.Errorf("%w: the checkpoint %s of sink %s went back from %d to %d (Redis lost writes, or it was reset behind the sink's back); restart the sink to apply again from %d",
			ErrConcurrentWriter, w.cpKey, w.name, last, cp, cp))
	}
}

func (w *Writer) remember(cp uint64) {
	w.last.Store(cp)
	w.lastKnown.Store(true)
}

// redeliver applies dead letters an operator retries: one MULTI/EXEC,
// unguarded by the checkpoint (they are behind it by nature), which it
// leaves alone.
func (w *Writer) redeliver(ctx context.Context, rdb *redis.Client, cmds []command) error {
	var out []redis.Cmder
	err := rdb.Watch(ctx, func(tx *redis.Tx) error {
		if err := w.checkFence(ctx, tx); err != nil {
			return err
		}
		var err error
		out, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, c := range cmds {
				pipe.Do(ctx, c.args...)
			}
			return nil
		})
		return err
	}, w.FenceKey())
	for _, c := range out {
		if c.Err() != nil && err == nil {
			err = c.Err()
		}
	}
	return classify(err)
}

// ResetCheckpoint sets the checkpoint to pos (jetsyncctl reset/replay). The
// engine calls it with no batch in flight; a MULTI keeps it one write.
func (w *Writer) ResetCheckpoint(ctx context.Context, pos uint64) error {
	rdb := w.client()
	if rdb == nil {
		return ErrNotConnected
	}
	err := rdb.Watch(ctx, func(tx *redis.Tx) error {
		if err := w.checkFence(ctx, tx); err != nil {
			return err
		}
		_, err := tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, w.cpKey, pos, 0)
			return nil
		})
		return err
	}, w.FenceKey())
	if err == nil {
		w.remember(pos)
	}
	return classify(err)
}

// Ping tells /readyz whether Redis answers.
func (w *Writer) Ping(ctx context.Context) error {
	rdb := w.client()
	if rdb == nil {
		return ErrNotConnected
	}
	return rdb.Ping(ctx).Err()
}

// committed reports whether EXEC ran: the checkpoint SET, queued last,
// got its OK. TxPipelined then reports only commands that failed inside.
func committed(out []redis.Cmder, n int) bool {
	if len(out) != n+1 {
		return false
	}
	st, ok := out[n].(*redis.StatusCmd)
	return ok && st.Err() == nil && st.Val() == "OK"
}

// partlyApplied handles a committed transaction in which Redis refused some
// commands at run time (WRONGTYPE and the like). Redis does not roll back,
// so the checkpoint has moved: log every failure, and stop the sink unless
// the error policy is skip.
func (w *Writer) partlyApplied(b *sink.Batch, run []command, out []redis.Cmder) error {
	var first error
	n := 0
	for i, c := range out[:len(run)] {
		if err := c.Err(); err != nil {
			n++
			w.log.Error("redis refused a command of a committed batch", "position", run[i].pos, "command", c.Name(), "key", run[i].args[1], "err", err)
			if first == nil {
				first = fmt.Errorf("position %d: %s %v: %w", run[i].pos, c.Name(), run[i].args[1], err)
			}
		}
	}
	if w.skip || first == nil {
		return nil
	}
	return sink.Permanent(fmt.Errorf("%w: %d command(s) of the batch through %d failed, the checkpoint is at %d; first: %w", ErrPartiallyApplied, n, b.Through, b.Through, first))
}

// classify marks errors that retrying cannot fix as permanent; everything
// else (connection refused, timeouts, LOADING) is returned for a retry.
func classify(err error) error {
	switch {
	case err == nil || errors.Is(err, sink.ErrPermanent):
		return err
	case redis.IsAuthError(err), redis.IsPermissionError(err):
		return sink.Permanent(fmt.Errorf("%w: %w", ErrAuth, err))
	}
	return err
}

// Checkpoints reads sink-cache checkpoints from Redis for
// checkpoint.WaitFor (read-your-writes from Go): the sink keeps its
// checkpoint in Redis, at DefaultCheckpointKey unless configured otherwise.
type Checkpoints struct {
	Client *redis.Client
	// KeyTemplate is the sink's redis.checkpoint_key; empty means the default.
	KeyTemplate string
}

// Load implements checkpoint.Loader.
func (c Checkpoints) Load(ctx context.Context, sinkName string) (uint64, error) {
	tmpl := c.KeyTemplate
	if tmpl == "" {
		tmpl = DefaultCheckpointKey
	}
	return readCheckpoint(ctx, c.Client, strings.ReplaceAll(tmpl, "{sink}", sinkName))
}
