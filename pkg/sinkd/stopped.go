package sinkd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/deadletter"
	"github.com/jetsync/jetsync/pkg/sink"
)

// A sink whose error policy ("stop") halts it stays up, stopped before the
// event (sink.WithHoldOnStop): it reports the event in its status and
// /readyz, and takes jetsyncctl skip and resume (here) or reset (the
// control bucket's request, as in every state).

// How long an action may take: skip stores a dead letter and moves the
// checkpoint; resume waits this long to tell whether the event went through.
const (
	skipTimeout   = 30 * time.Second
	resumeTimeout = 15 * time.Second
)

// skip skips the event the sink is stopped at.
func (s *Service) skip(ctx context.Context, req control.ActionRequest) control.ActionReply {
	ctx, cancel := context.WithTimeout(ctx, skipTimeout)
	defer cancel()
	stop, err := s.eng.Skip(ctx, req.Position)
	if errors.Is(err, sink.ErrNotStopped) {
		return control.ActionReply{Refused: s.notStopped(control.ActionSkip, req)}
	}
	if err != nil {
		still := "the sink is still stopped there"
		if st := s.eng.Stopped(); st == nil {
			still = "the sink is not stopped any more"
		}
		return control.ActionReply{Error: fmt.Sprintf("skip of %s failed: %v; %s (jetsyncctl status)", s.cfg.Name, err, still)}
	}
	s.publishStatus(ctx, nil)
	kept := "logged with its position (the sink has no dead-letter store)"
	if s.eng.DeadLetters() {
		kept = fmt.Sprintf("stored as a dead letter in %s (jetsyncctl dlq list %s; dlq retry re-applies it)", deadletter.Subject(s.cfg.Name), s.cfg.Name)
	}
	return control.ActionReply{Done: fmt.Sprintf("skipped %s at position %d of %s: %s; %s reads on from position %d",
		stop.Event(), stop.Position, s.cfg.Name, kept, s.cfg.Name, stop.Position+1)}
}

// resume lets the sink try the event it is stopped at again and says
// whether it went through.
func (s *Service) resume(ctx context.Context, req control.ActionRequest) control.ActionReply {
	ctx, cancel := context.WithTimeout(ctx, resumeTimeout)
	defer cancel()
	stop, err := s.eng.Resume(ctx, req.Position)
	var again *sink.StopError
	switch {
	case errors.Is(err, sink.ErrNotStopped):
		return control.ActionReply{Refused: s.notStopped(control.ActionResume, req)}
	case err == nil:
		s.publishStatus(ctx, nil)
		return control.ActionReply{Done: fmt.Sprintf("resumed %s: %s at position %d is applied; the sink reads on",
			s.cfg.Name, stop.Event(), stop.Position)}
	case errors.As(err, &again):
		s.publishStatus(ctx, nil)
		if again.Position == stop.Position {
			return control.ActionReply{Error: fmt.Sprintf("resumed %s, and it stopped again at position %d: %s is still refused: %v; fix what refuses it (the target, or the sink's mappings) and resume, or skip it",
				s.cfg.Name, again.Position, again.Event(), again.Reason)}
		}
		return control.ActionReply{Error: fmt.Sprintf("resumed %s: position %d is applied, and it stopped at a later event, position %d: %s: %v",
			s.cfg.Name, stop.Position, again.Position, again.Event(), again.Reason)}
	case ctx.Err() != nil && stop != nil:
		snap := s.eng.Stats()
		return control.ActionReply{Done: fmt.Sprintf("resumed %s; position %d is not applied yet after %s: the sink is %s (last error: %s); jetsyncctl status follows it",
			s.cfg.Name, stop.Position, resumeTimeout, snap.State, snap.LastError)}
	default:
		return control.ActionReply{Error: fmt.Sprintf("resume of %s: %v", s.cfg.Name, err)}
	}
}

// notStopped says why an action that needs a stopped sink does not apply.
func (s *Service) notStopped(act string, req control.ActionRequest) string {
	if st := s.eng.Stopped(); st != nil && req.Position != 0 && st.Position != req.Position {
		return fmt.Sprintf("sink %s is stopped at position %d, not %d: nothing changed (see jetsyncctl status)", s.cfg.Name, st.Position, req.Position)
	}
	s.mu.Lock()
	state := s.status.State
	s.mu.Unlock()
	if state == "" || state == string(sink.StateStopped) {
		state = string(s.eng.Stats().State)
	}
	return fmt.Sprintf("sink %s is %s, not stopped by its error policy: %s applies only to a stopped sink; nothing changed", s.cfg.Name, state, act)
}

// stopStatus is the stop as the control bucket shows it.
func stopStatus(st *sink.StopError) *control.Stop {
	if st == nil {
		return nil
	}
	return &control.Stop{Position: st.Position, ID: st.ID, Type: st.Type, Subject: st.Subject, Error: st.Reason.Error(), Since: st.Time}
}

// stoppedProblem is /readyz's line for a stopped sink.
func (s *Service) stoppedProblem(st *sink.StopError) string {
	return fmt.Sprintf("stopped by its error policy at position %d: %s on %s: %v (jetsyncctl skip %s, resume %s, or reset %s)",
		st.Position, st.Event(), st.Subject, st.Reason, s.cfg.Name, s.cfg.Name, s.cfg.Name)
}
