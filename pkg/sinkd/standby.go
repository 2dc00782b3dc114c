package sinkd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/lease"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Hot standby: every process started with a sink's name competes for its
// lease (pkg/lease, ha.lease). The holder is active: it runs the engine,
// publishes the status and answers the operator's actions. The others are
// standbys: connected, registered in the lease bucket, reading and writing
// nothing, until the lease is free (the active died, froze, lost NATS, or
// handed over with jetsyncctl failover). An active instance that loses the
// lease stops writing at once, even its last batch, and stands by again.

// failoverExtra is how much longer than ha.lease jetsyncctl failover
// waits for a standby to take the lease.
const failoverExtra = 5 * time.Second

// ha is the service's place in the election.
type ha struct {
	store *lease.Store
	me    lease.Instance

	active    atomic.Bool
	takeovers atomic.Uint64

	writes writeTracker // the last batch this process wrote

	mu       sync.Mutex
	lease    *lease.Lease // the current tenure's, nil while standing by
	handOver func()       // ends the current tenure on purpose (failover)
	handing  bool
}

// writeTracker is the engine's observer: it remembers the last batch
// written, for the log line of a tenure's end (what a drill checks: a
// former active wrote nothing after it lost the lease).
type writeTracker struct {
	sink.Observer
	through atomic.Uint64
	at      atomic.Int64 // unix nanoseconds
}

// BatchWritten implements sink.Observer.
func (w *writeTracker) BatchWritten(b *sink.Batch, took time.Duration) {
	w.through.Store(b.Through)
	w.at.Store(time.Now().UnixNano())
	w.Observer.BatchWritten(b, took)
}

// lastWrite is the log attributes of the last batch written.
func (w *writeTracker) lastWrite() []any {
	at := w.at.Load()
	if at == 0 {
		return []any{"last_batch", "none"}
	}
	return []any{"last_batch_through", w.through.Load(), "last_batch_at", time.Unix(0, at).UTC().Format(time.RFC3339Nano)}
}

// current is the lease held now, nil while standing by.
func (h *ha) current() *lease.Lease {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lease
}

// runTenures stands by until this instance holds the lease, runs the sink
// while it does, and stands by again after losing it or handing it over,
// until ctx ends or the sink fails.
func (s *Service) runTenures(ctx context.Context) error {
	var holdOff time.Duration
	for {
		s.log.Info("standing by for the lease", "lease", s.cfg.HA.Lease, "instance", s.ha.me.String())
		l, err := s.ha.store.Acquire(ctx, s.cfg.Name, s.cfg.HA.Lease, s.ha.me, holdOff)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		holdOff = 0
		s.ha.takeovers.Add(1)
		s.log.Info("lease acquired: active", "epoch", l.Epoch(), "instance", s.ha.me.String())
		err, handed := s.runActive(ctx, l)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if rerr := l.Release(rctx); rerr != nil {
			s.log.Warn("releasing the lease", "err", rerr)
		}
		cancel()
		switch {
		case ctx.Err() != nil:
			return err
		case handed:
			s.log.Info("lease handed over: standing by", append([]any{"epoch", l.Epoch()}, s.ha.writes.lastWrite()...)...)
			holdOff = s.cfg.HA.Lease // let a standby take it first
		case lostLease(err):
			s.log.Warn("lease lost: stopped writing, standing by", append([]any{"epoch", l.Epoch(), "err", err}, s.ha.writes.lastWrite()...)...)
			if errors.Is(err, sink.ErrFenced) {
				// A newer tenure fenced the target; should that fence be
				// above every epoch the lease bucket can give (the bucket
				// was recreated, docs/ha.md), do not spin on it.
				holdOff = s.cfg.HA.Lease
			}
		case err != nil:
			return err
		}
	}
}

// lostLease tells the errors that mean another instance is (or may be)
// active now: this one's lease lapsed, or the target or the checkpoint
// store refused a write of an older tenure.
func lostLease(err error) bool {
	return errors.Is(err, lease.ErrLost) || errors.Is(err, sink.ErrFenced) || errors.Is(err, checkpoint.ErrConflict)
}

// runActive runs the sink for one tenure of l; handed reports a hand-over
// asked by jetsyncctl failover.
func (s *Service) runActive(ctx context.Context, l *lease.Lease) (err error, handed bool) {
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.ha.mu.Lock()
	s.ha.lease, s.ha.handing = l, false
	s.ha.handOver = func() {
		s.ha.mu.Lock()
		s.ha.handing = true
		s.ha.mu.Unlock()
		cancel()
	}
	s.ha.mu.Unlock()
	s.ha.active.Store(true)
	defer func() {
		s.ha.active.Store(false)
		s.ha.mu.Lock()
		s.ha.lease, s.ha.handOver = nil, nil
		handed = s.ha.handing
		s.ha.mu.Unlock()
	}()
	// Losing the lease ends the tenure; the engine's lease check keeps
	// even the shutdown's last batch from being written.
	go func() {
		select {
		case <-l.Lost():
			cancel()
		case <-tctx.Done():
		}
	}()

	stopActive, err := s.startActive(tctx)
	if err != nil {
		return err, false
	}
	err = s.eng.RunUnder(tctx, l)
	stopActive()
	if lerr := l.Check(); lerr != nil && err == nil {
		err = lerr // cancelled because the lease was lost
	}
	s.ha.mu.Lock()
	handing := s.ha.handing
	s.ha.mu.Unlock()
	if !lostLease(err) && !handing {
		s.publishStatus(context.WithoutCancel(ctx), err)
	}
	return err, false
}

// failover hands the lease to a standby (jetsyncctl failover): the engine
// stops cleanly (its last batch written under the lease), the lease is
// released, a standby takes it, and this instance stands by.
func (s *Service) failover(ctx context.Context, _ control.ActionRequest) control.ActionReply {
	l := s.ha.current()
	if l == nil {
		return control.ActionReply{Refused: fmt.Sprintf("this instance of %s (%s) is not active; nothing changed", s.cfg.Name, s.ha.me)}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.HA.Lease+failoverExtra)
	defer cancel()
	h, err := s.ha.store.Holders(ctx, s.cfg.Name)
	if err != nil {
		return control.ActionReply{Error: "reading the standbys: " + err.Error()}
	}
	if len(h.Standbys) == 0 {
		return control.ActionReply{Refused: fmt.Sprintf("no standby of %s is running, nothing would take over: start another instance with the same name first; nothing changed", s.cfg.Name)}
	}
	s.ha.mu.Lock()
	hand := s.ha.handOver
	s.ha.mu.Unlock()
	if hand == nil {
		return control.ActionReply{Refused: "this instance is not active any more; nothing changed"}
	}
	s.log.Info("failover requested: handing the lease over", "epoch", l.Epoch(), "standbys", len(h.Standbys))
	hand()
	for {
		h, err := s.ha.store.Holders(ctx, s.cfg.Name)
		if err == nil && h.Active != nil && h.Active.ID != s.ha.me.ID {
			return control.ActionReply{Done: fmt.Sprintf("%s: %s handed over; %s is active (epoch %d); %s stands by",
				s.cfg.Name, s.ha.me, h.Active, h.Active.Epoch, s.ha.me)}
		}
		select {
		case <-ctx.Done():
			return control.ActionReply{Error: fmt.Sprintf("%s released the lease of %s, and no standby took it within %s; it takes it back (jetsyncctl status)",
				s.ha.me, s.cfg.Name, s.cfg.HA.Lease+failoverExtra)}
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// standbyProblem is /readyz's line for a standby, "" when active.
func (s *Service) standbyProblem(ctx context.Context) string {
	if s.ha.active.Load() {
		return ""
	}
	who := "no instance holds the lease right now (a takeover is under way)"
	if h, err := s.ha.store.Holders(ctx, s.cfg.Name); err == nil && h.Active != nil {
		who = h.Active.String() + " is active (epoch " + fmt.Sprint(h.Active.Epoch) + ")"
	}
	return fmt.Sprintf("standby: %s; this instance takes over within ha.lease (%s) of its end", who, s.cfg.HA.Lease)
}
