package relational

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
)

var _ sink.MappingReloader = (*Writer)(nil)

// reloadable are the keys of sink-postgres's config that change while it
// runs (SIGHUP, jetsyncctl reload): which writes events become. Everything
// else needs a restart, tables included: the sink creates and checks them
// when it starts.
var reloadable = []string{"mappings", "unknown_types"}

// mappingSet is a compiled generation of the mappings.
type mappingSet struct {
	maps       map[string][]action
	unknownErr bool
}

// mappings is the generation every batch starts with.
func (w *Writer) mappings() *mappingSet { return w.live.Load() }

// ReloadMappings implements sink.MappingReloader. The next batch is built
// with the new mappings. Row writes may only target tables the sink
// checked at start; raw SQL statements are prepared against the database
// before they are taken (when connected), so a statement PostgreSQL
// refuses is refused here, naming its key. Rows written before stay as
// they are.
func (w *Writer) ReloadMappings(load sink.ConfigLoader) ([]string, error) {
	w.reloadMu.Lock()
	defer w.reloadMu.Unlock()
	next := DefaultConfig()
	if err := load(&next); err != nil {
		return nil, err
	}
	changed, err := config.Changes(w.cfg, next, reloadable...)
	if errors.Is(err, config.ErrNeedsRestart) && len(config.Diff(w.cfg.Tables, next.Tables)) > 0 {
		err = fmt.Errorf("%w (tables: a restart creates and checks them)", err)
	}
	if err != nil || len(changed) == 0 {
		return nil, err
	}
	var p config.Problems
	maps := compileMappings(next.Name, next.Mappings, next.Tables, &p)
	w.mu.Lock()
	cols, pool := w.cols, w.pool
	w.mu.Unlock()
	if cols != nil {
		for _, typ := range sortedKeys(maps) {
			for _, a := range maps[typ] {
				if a.raw == nil && cols[a.table] == nil {
					p.Addf(a.where+".table", "%s is not a table the sink checked at start: writing to a new table needs a restart", a.table)
				}
			}
		}
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if pool != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := checkRawSQL(ctx, pool, maps); err != nil {
			return nil, err
		}
	}
	w.live.Store(&mappingSet{maps: maps, unknownErr: next.UnknownTypes == UnknownError})
	w.cfg = next
	return changed, nil
}
