package sink

import (
	"errors"
	"strings"
	"testing"
	"time"

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

func TestConfigHALease(t *testing.T) {
	for _, tc := range []struct {
		lease  time.Duration
		bucket string
		bad    string
	}{
		{10 * time.Second, "jetsync-leases", ""},
		{2 * time.Second, "leases", ""},
		{time.Second, "jetsync-leases", "ha.lease: must be whole seconds between 2s and 10m"},
		{2500 * time.Millisecond, "jetsync-leases", "ha.lease: must be whole seconds"},
		{time.Hour, "jetsync-leases", "ha.lease:"},
		{10 * time.Second, "bad.bucket", "ha.bucket:"},
	} {
		c := DefaultConfig("cache")
		c.HA.Lease, c.HA.Bucket = tc.lease, tc.bucket
		var p config.Problems
		c.Validate(&p)
		switch err := p.Err(); {
		case tc.bad == "" && err != nil:
			t.Errorf("ha %s %s: rejected: %v", tc.lease, tc.bucket, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("ha %s %s: got %v, want %q", tc.lease, tc.bucket, err, tc.bad)
		}
	}
	if d := DefaultConfig("x").HA.Lease; d != 10*time.Second {
		t.Errorf("default ha.lease %s, want 10s", d)
	}
}
