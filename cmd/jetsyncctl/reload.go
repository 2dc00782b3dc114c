package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/control"
)

// reloadTimeout bounds a reload: the sink reads and compiles its file.
const reloadTimeout = 15 * time.Second

// reload asks a running sink to read its config file again and apply a
// changed mappings section. A refused reload (the file does not load, or
// changed keys that need a restart) exits 2 with the sink's reason: nothing
// changed.
func (c *ctl) reload(ctx context.Context, args []string) error {
	if len(args) != 1 || len(args[0]) > 0 && args[0][0] == '-' {
		return usageErr("reload: name one sink (see jetsyncctl status)")
	}
	st, err := c.control.Status(ctx, args[0])
	if errors.Is(err, control.ErrUnknownSink) {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, reloadTimeout)
	defer cancel()
	done, err := control.RequestReload(rctx, c.nc, st.Name)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("sink %s is not running (last status %s ago): it reads its config file when it starts",
			st.Name, time.Since(st.Updated).Round(time.Second))
	case errors.Is(err, control.ErrReloadRefused):
		return refused{err}
	case err != nil:
		return err
	}
	fmt.Fprintln(c.out, done)
	return nil
}

// refused is an operator request the sink refused, nothing changed: exit
// code 2 like bad usage, printed without the usage.
type refused struct{ error }

func (refused) Is(target error) bool { return target == errUsage }

func (r refused) Unwrap() error { return r.error }
