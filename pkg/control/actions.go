package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// Actions a running sink takes when an operator asks, over NATS
// request/reply on ActionSubject. Unlike a reset request nothing waits in
// the bucket: a sink that is not running cannot answer, and the operator
// hears so at once.
const (
	// ActionSkip skips the event the error policy stopped the sink at
	// (dead-lettered, or logged) and lets the sink read on.
	ActionSkip = "skip"
	// ActionResume lets a stopped sink try that event again.
	ActionResume = "resume"
	// ActionFailover makes the active instance of a sink hand its lease
	// to a standby and stand by itself (hot standby; a rolling upgrade).
	ActionFailover = "failover"
)

// ActionSubject is where sink answers action.
func ActionSubject(sink, action string) string { return "jetsync.ctl." + sink + "." + action }

// ActionRequest is an operator's action.
type ActionRequest struct {
	// Position, when set, is where the operator saw the sink stopped: a
	// sink stopped at another event (or not at all) refuses.
	Position uint64 `json:"position,omitempty"`
}

// ActionReply is what the sink did, one of the three.
type ActionReply struct {
	Done    string `json:"done,omitempty"`    // what it did, for the operator
	Refused string `json:"refused,omitempty"` // why the action does not apply; nothing changed
	Error   string `json:"error,omitempty"`   // it tried and failed; what state it left
}

// Ask sends action to the running sink and returns what it did. The error
// wraps ErrNotRunning when no sink answers, ErrRefused when the action does
// not apply (nothing changed); any other error means it failed.
func Ask(ctx context.Context, nc *nats.Conn, sink, action string, req ActionRequest) (string, error) {
	if err := envelope.ValidateToken("sink", sink); err != nil {
		return "", err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return "", err
	}
	msg, err := nc.RequestWithContext(ctx, ActionSubject(sink, action), body)
	if errors.Is(err, nats.ErrNoResponders) {
		return "", fmt.Errorf("%w: %s", ErrNotRunning, sink)
	}
	if err != nil {
		return "", fmt.Errorf("asking %s to %s: %w", sink, action, err)
	}
	var reply ActionReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return "", fmt.Errorf("sink %s answered %s with %q", sink, action, msg.Data)
	}
	switch {
	case reply.Refused != "":
		return "", fmt.Errorf("%w: %s", ErrRefused, reply.Refused)
	case reply.Error != "":
		return "", errors.New(reply.Error)
	}
	return reply.Done, nil
}
