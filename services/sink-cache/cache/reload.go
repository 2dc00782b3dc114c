package cache

import (
	"errors"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
)

// reloadable are the keys of sink-cache's config that change while it runs
// (SIGHUP, jetsyncctl reload): what events become in Redis. Everything else
// (redis, nats, filters, batch, on_error, ...) needs a restart.
var reloadable = []string{"mappings", "unknown_types"}

// ReloadMappings implements sink.MappingReloader. The next batch is planned
// with the new mappings; keys the old mappings wrote stay as they are (a
// changed key template writes new keys from then on, and leaves the old
// ones to expire or to be deleted by hand).
func (w *Writer) ReloadMappings(load sink.ConfigLoader) ([]string, error) {
	w.reloadMu.Lock()
	defer w.reloadMu.Unlock()
	next := DefaultConfig()
	if err := load(&next); err != nil {
		return nil, err
	}
	changed, err := config.Changes(w.cfg, next, reloadable...)
	if err != nil || len(changed) == 0 {
		return nil, err
	}
	var p config.Problems
	acts := compileMappings(next.Name, next.Mappings, &p)
	if err := p.Err(); err != nil { // load validated next, so only if it did not
		return nil, err
	}
	w.plan.Store(&plan{byType: acts, unknownErr: next.UnknownTypes == UnknownError})
	w.cfg = next
	return changed, nil
}

// planned is a batch the engine retries after a transient failure, with
// the plan it was first written with: a batch is written with one plan
// from its first attempt to its last, even when ReloadMappings swapped the
// plan in between.
type planned struct {
	b  *sink.Batch
	pl *plan
}

// planFor is the plan to write b with.
func (w *Writer) planFor(b *sink.Batch) *plan {
	if w.retrying.b == b {
		return w.retrying.pl
	}
	return w.plan.Load()
}

// keepPlan remembers b's plan when WriteBatch failed in a way the engine
// retries with the same batch, and forgets it otherwise (applied, or some
// events refused: the engine then writes another batch).
func (w *Writer) keepPlan(b *sink.Batch, pl *plan, err error) {
	var be *sink.BatchError
	if err == nil || errors.As(err, &be) || errors.Is(err, sink.ErrPermanent) {
		w.retrying = planned{}
		return
	}
	w.retrying = planned{b: b, pl: pl}
}
