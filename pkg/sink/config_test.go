package sink

import (
	"errors"
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
)

func TestConfigValidateNamesEveryKey(t *testing.T) {
	c := DefaultConfig("cache")
	c.Name = "bad.name"
	c.Filters = []string{"orders.>", "events.a b", "events.>.x"}
	c.Batch.MaxEvents = 0
	c.Batch.MaxInterval = 0
	c.OnError = "retry"
	var p config.Problems
	c.Validate(&p)
	err := p.Err()
	if !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("err %v does not wrap config.ErrInvalid", err)
	}
	for _, key := range []string{"name:", "filters[0]:", "filters[1]:", "filters[2]:", "batch.max_events:", "batch.max_interval:", "on_error:"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
	good := DefaultConfig("cache")
	good.Filters = []string{"events.>", "events.order.>", "events.*.x"}
	var q config.Problems
	good.Validate(&q)
	if q.Err() != nil {
		t.Fatalf("valid config rejected: %v", q.Err())
	}
}
