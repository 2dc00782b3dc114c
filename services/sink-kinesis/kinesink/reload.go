package kinesink

import (
	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/sink"
)

// reloadable are the keys of sink-kinesis's config that change while it
// runs (SIGHUP, jetsyncctl reload): how an event becomes a record.
// Everything else (the stream, region, endpoint, call limits, nats,
// filters, batch, ...) needs a restart.
var reloadable = []string{"kinesis.partition_key", "kinesis.project"}

// ReloadMappings implements sink.MappingReloader. The records of the next
// batch are made with the new partition key and projection; records already
// in Kinesis stay as they are (a batch being retried keeps the records it
// was made with, so a re-sent record is the same record).
func (w *Writer) ReloadMappings(load sink.ConfigLoader) ([]string, error) {
	w.reloadMu.Lock()
	defer w.reloadMu.Unlock()
	next := DefaultConfig()
	if err := load(&next); err != nil {
		return nil, err
	}
	changed, err := config.Changes(w.running, next, reloadable...)
	if err != nil || len(changed) == 0 {
		return nil, err
	}
	var p config.Problems
	c := compile(&next, &p)
	if err := p.Err(); err != nil { // load validated next, so only if it did not
		return nil, err
	}
	w.maker.Store(&recordMaker{partitionKey: c.partitionKey, project: c.project})
	w.running = next
	return changed, nil
}
