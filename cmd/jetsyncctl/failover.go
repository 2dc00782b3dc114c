package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/lease"
)

// failoverTimeout bounds a hand-over: the sink waits up to its ha.lease
// plus 5s for a standby to take the lease.
const failoverTimeout = 11 * time.Minute

// failover asks the active instance of a sink to hand its lease to a
// standby (a rolling upgrade: fail over, upgrade the old one, repeat).
func (c *ctl) failover(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usageErr("failover: name one sink (see jetsyncctl status)")
	}
	st, err := c.control.Status(ctx, args[0])
	if errors.Is(err, control.ErrUnknownSink) {
		return fmt.Errorf("%w: %v; nothing changed", errUsage, err)
	}
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, failoverTimeout)
	defer cancel()
	done, err := control.Ask(actx, c.nc, st.Name, control.ActionFailover, control.ActionRequest{})
	if errors.Is(err, control.ErrNotRunning) {
		return fmt.Errorf("%w: no active instance of %s answers (last status %s ago): nothing to hand over, nothing changed",
			control.ErrRefused, st.Name, time.Since(st.Updated).Round(time.Second))
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(c.out, done)
	return nil
}

// printInstances lists, per sink, the active instance and the standbys
// from the lease buckets the sinks reported.
func (c *ctl) printInstances(ctx context.Context, out io.Writer, all []control.Status) error {
	type row struct{ sink, role, inst, epoch, since, admin string }
	var rows []row
	stores := map[string]*lease.Store{}
	for _, st := range all {
		bucket := st.LeaseBucket
		if bucket == "" {
			bucket = lease.DefaultBucket
		}
		s, seen := stores[bucket]
		if !seen {
			var ok bool
			var err error
			if s, ok, err = lease.Look(ctx, c.js, bucket); err != nil {
				return err
			} else if !ok {
				s = nil
			}
			stores[bucket] = s
		}
		if s == nil {
			continue
		}
		h, err := s.Holders(ctx, st.Name)
		if err != nil {
			return err
		}
		if h.Active == nil && len(h.Standbys) == 0 {
			continue
		}
		if h.Active != nil {
			rows = append(rows, row{st.Name, "active", h.Active.String(), fmt.Sprint(h.Active.Epoch), h.Active.Since.Format(time.RFC3339), h.Active.Admin})
		} else {
			rows = append(rows, row{st.Name, "active", "none (the lease is free: a standby takes it now)", "-", "-", ""})
		}
		sort.Slice(h.Standbys, func(i, j int) bool { return h.Standbys[i].ID < h.Standbys[j].ID })
		for _, sb := range h.Standbys {
			rows = append(rows, row{st.Name, "standby", sb.String(), "-", sb.Since.Format(time.RFC3339), sb.Admin})
		}
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SINK\tROLE\tINSTANCE\tEPOCH\tSINCE\tADMIN")
	for _, r := range rows {
		admin := r.admin
		if admin == "" {
			admin = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.sink, r.role, r.inst, r.epoch, r.since, admin)
	}
	return tw.Flush()
}
