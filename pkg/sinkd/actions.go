package sinkd

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/control"
)

// An action is one operator request a running sink answers at once
// (control.Ask): it returns what it did, or why it does not apply.
type action func(ctx context.Context, req control.ActionRequest) control.ActionReply

// actions are the operator actions this service answers, by name. A new
// one (reload, say) is a handler in a file of its own, listed here.
func (s *Service) actions() map[string]action {
	return map[string]action{
		control.ActionSkip:     s.skip,
		control.ActionResume:   s.resume,
		control.ActionFailover: s.failover,
	}
}

// serveActions answers each action on its subject until ctx ends or the
// returned function is called. Each action has its own subscription, so a
// slow one (a resume waiting for its outcome) does not hold up the others.
func (s *Service) serveActions(ctx context.Context) (stop func(), err error) {
	var subs []*nats.Subscription
	stop = func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}
	for name, act := range s.actions() {
		sub, err := s.nc.Subscribe(control.ActionSubject(s.cfg.Name, name), func(m *nats.Msg) {
			var req control.ActionRequest
			reply := control.ActionReply{}
			if len(m.Data) > 0 {
				if err := json.Unmarshal(m.Data, &req); err != nil {
					reply.Refused = "malformed " + name + " request: " + err.Error()
				}
			}
			if reply.Refused == "" {
				reply = act(ctx, req)
			}
			b, _ := json.Marshal(reply)
			_ = m.Respond(b)
		})
		if err != nil {
			stop()
			return nil, err
		}
		subs = append(subs, sub)
	}
	return stop, nil
}
