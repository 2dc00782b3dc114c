package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// eventFields says which JSON fields an event may have in one input format
// and why a field is refused when it is known but not allowed.
type eventFields struct {
	allowed map[string]bool
	refused map[string]string // field -> reason
	ignored map[string]bool   // accepted and dropped
}

// appendFields are the fields of an event in an append request: the bridge
// assigns version and position.
var appendFields = eventFields{
	allowed: map[string]bool{"id": true, "type": true, "data": true, "metadata": true, "time": true, "category": true, "streamId": true},
	refused: map[string]string{
		"version":  "is assigned by the bridge; to append only at a known version use ?expectedVersion=N",
		"position": "is assigned by JetStream when the event is stored; leave it out",
	},
}

// importFields are the fields of a line of an import file: a complete event.
// position is accepted (an export has it) and ignored: JetStream assigns it.
var importFields = eventFields{
	allowed: map[string]bool{"id": true, "type": true, "data": true, "metadata": true, "time": true, "category": true, "streamId": true, "version": true},
	ignored: map[string]bool{"position": true},
}

func (f eventFields) names() string {
	var out []string
	for k := range f.allowed {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// decodeEvent reads one JSON object into an event field by field, so every
// problem names its field: prefix + field ("events[2].time", "line 7: time").
// It does not validate the event; call ValidateNew or Validate after.
func decodeEvent(raw []byte, prefix string, f eventFields) (envelope.Event, error) {
	var ev envelope.Event
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		name := strings.TrimSuffix(strings.TrimSuffix(prefix, "."), ": ")
		if name == "" {
			name = "event"
		}
		return ev, &envelope.FieldError{Field: name, Reason: "must be a JSON object, e.g. {\"id\":\"...\",\"type\":\"...\",\"data\":{}}"}
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same field first every time
	for _, k := range keys {
		v := obj[k]
		field := prefix + k
		if reason, ok := f.refused[k]; ok {
			return ev, &envelope.FieldError{Field: field, Reason: reason}
		}
		if f.ignored[k] {
			continue
		}
		if !f.allowed[k] {
			return ev, &envelope.FieldError{Field: field, Reason: "is not an event field; valid fields: " + f.names()}
		}
		var err error
		switch k {
		case "id":
			err = decodeString(v, &ev.ID)
		case "type":
			err = decodeString(v, &ev.Type)
		case "category":
			err = decodeString(v, &ev.Category)
		case "streamId":
			err = decodeString(v, &ev.StreamID)
		case "version":
			if !isNull(v) {
				if json.Unmarshal(v, &ev.Version) != nil {
					err = fmt.Errorf("must be a positive integer, got %s", clip(v))
				}
			}
		case "time":
			if !isNull(v) {
				if json.Unmarshal(v, &ev.Time) != nil {
					err = fmt.Errorf("must be an RFC 3339 time such as \"2024-05-01T12:00:00Z\", got %s", clip(v))
				}
			}
		case "data":
			ev.Data = v // json.Unmarshal gave each RawMessage its own copy
		case "metadata":
			if !isNull(v) {
				// Compact: metadata travels in a header, where a raw line
				// break would end it.
				var b bytes.Buffer
				if json.Compact(&b, v) == nil {
					ev.Metadata = b.Bytes()
				} else {
					ev.Metadata = v // ValidateNew reports it
				}
			}
		}
		if err != nil {
			return ev, &envelope.FieldError{Field: field, Reason: err.Error()}
		}
	}
	return ev, nil
}

func decodeString(v json.RawMessage, dst *string) error {
	if isNull(v) {
		return nil
	}
	if json.Unmarshal(v, dst) != nil {
		return fmt.Errorf("must be a string, got %s", clip(v))
	}
	return nil
}

func isNull(v json.RawMessage) bool { return string(v) == "null" }

// clip shortens a JSON value for an error message.
func clip(v json.RawMessage) string {
	const max = 40
	if len(v) > max {
		return string(v[:max]) + "..."
	}
	return string(v)
}

// defaultTime fills in a missing event time.
func defaultTime(ev *envelope.Event, now time.Time) {
	if ev.Time.IsZero() {
		ev.Time = now
	}
}
