package sink

import "github.com/jetsync/jetsync/pkg/config"

// ConfigLoader fills cfg, a service's config holding its defaults, the way
// the service loaded it at start: the same file and environment
// (config.Load). It validates cfg.
type ConfigLoader func(cfg config.Validator) error

// MappingReloader is a Writer whose mappings, how events become writes,
// can change while the sink runs (SIGHUP, jetsyncctl reload); pkg/sinkd
// finds it by type assertion.
//
// ReloadMappings loads the configuration again with load. When it is valid
// and differs from the running one only in the keys the writer can change
// live (its mappings), every batch the writer starts from then on uses it,
// and it returns those keys (none: nothing changed). Otherwise it changes
// nothing and returns an error naming the keys: wrapping config.ErrInvalid
// for a configuration that does not load, config.ErrNeedsRestart for other
// keys that changed. Events already applied are not written again.
//
// It may be called while WriteBatch runs, from another goroutine: the batch
// being written, retries included, finishes with the mappings it started
// with.
type MappingReloader interface {
	ReloadMappings(load ConfigLoader) (changed []string, err error)
}
