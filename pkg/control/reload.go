package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// ErrReloadRefused means a sink refused to reload its configuration (it
// does not load, or changed keys that need a restart): it runs on with the
// mappings it had. The error names the keys.
var ErrReloadRefused = errors.New("reload refused")

// ReloadSubject is where a running sink answers jetsyncctl reload
// (request/reply): it reads its config file again and applies a changed
// mappings section, as on SIGHUP. Unlike a reset nothing waits in the
// bucket: a sink that is not running reads its file when it starts.
func ReloadSubject(sink string) string { return "jetsync.ctl." + sink + ".reload" }

// ReloadReply is what a reload did, one of the three.
type ReloadReply struct {
	Done    string `json:"done,omitempty"`    // applied (or nothing to apply), for the operator
	Refused string `json:"refused,omitempty"` // why not; the running mappings stay
	Error   string `json:"error,omitempty"`   // the sink could not tell
}

// RequestReload asks the running sink to reload its configuration and
// returns what it did. The error wraps nats.ErrNoResponders when no sink
// answers and ErrReloadRefused when the sink kept its mappings.
func RequestReload(ctx context.Context, nc *nats.Conn, sink string) (string, error) {
	if err := envelope.ValidateToken("sink", sink); err != nil {
		return "", err
	}
	msg, err := nc.RequestWithContext(ctx, ReloadSubject(sink), nil)
	if err != nil {
		return "", fmt.Errorf("asking %s to reload: %w", sink, err)
	}
	var reply ReloadReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return "", fmt.Errorf("sink %s answered reload with %q", sink, msg.Data)
	}
	switch {
	case reply.Refused != "":
		return "", fmt.Errorf("%w: %s", ErrReloadRefused, reply.Refused)
	case reply.Error != "":
		return "", errors.New(reply.Error)
	}
	return reply.Done, nil
}
