package search

import (
	"errors"
	"fmt"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
)

// reloadable are the keys of sink-es's config that change while it runs
// (SIGHUP, jetsyncctl reload): which document writes events become.
// Everything else needs a restart, indices included: the sink sets its
// indices up when it starts, and index settings or mappings of an existing
// index change only through sink-es rebuild.
var reloadable = []string{"mappings", "unknown_types"}

// ReloadMappings implements sink.MappingReloader. The next batch is planned
// with the new mappings, within the indices the sink set up at start (a
// mapping may only target an index declared under indices, as at start).
// Documents written before stay as they are; the index mappings are not
// touched: a new field is mapped by Elasticsearch's dynamic mapping, or
// refused by a strict one (then on_error decides).
func (w *Writer) ReloadMappings(load sink.ConfigLoader) ([]string, error) {
	w.reloadMu.Lock()
	defer w.reloadMu.Unlock()
	next := DefaultConfig()
	if err := load(&next); err != nil {
		return nil, err
	}
	changed, err := config.Changes(w.cfg, next, reloadable...)
	if errors.Is(err, config.ErrNeedsRestart) && len(config.Diff(w.cfg.Indices, next.Indices)) > 0 {
		err = fmt.Errorf("%w (indices: a restart sets up new ones; changed settings or mappings of an existing index need sink-es rebuild)", err)
	}
	if err != nil || len(changed) == 0 {
		return nil, err
	}
	var p config.Problems
	acts := compileMappings(&next, &p)
	if err := p.Err(); err != nil { // load validated next, so only if it did not
		return nil, err
	}
	w.plan.Store(&planner{byType: acts, unknownErr: next.UnknownTypes == UnknownError, pf: next.Elasticsearch.PositionField, targets: w.targets})
	w.cfg = next
	return changed, nil
}
