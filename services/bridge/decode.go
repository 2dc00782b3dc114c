package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
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
// It checks the whole object is valid JSON first, and reports the first
// problem in field-name order, so the same input always gets the same error.
// data and metadata come out valid JSON, metadata compacted; the rest of the
// event is not validated: call ValidateNew or Validate after.
//
// The input is scanned once (envelope.SplitObject): the bulk import spends
// most of its CPU here, and encoding/json would scan each line three or four
// times.
func decodeEvent(raw []byte, prefix string, f eventFields) (envelope.Event, error) {
	var ev envelope.Event
	var buf [10]envelope.Member // on the stack: an event has up to 9 members
	members, ok := envelope.SplitObject(buf[:0], raw)
	if !ok {
		name := strings.TrimSuffix(strings.TrimSuffix(prefix, "."), ": ")
		if name == "" {
			name = "event"
		}
		return ev, &envelope.FieldError{Field: name, Reason: "must be a JSON object, e.g. {\"id\":\"...\",\"type\":\"...\",\"data\":{}}"}
	}
	// Insertion sort: an event has a handful of members.
	for i := 1; i < len(members); i++ {
		for j := i; j > 0 && bytes.Compare(members[j].Key, members[j-1].Key) < 0; j-- {
			members[j], members[j-1] = members[j-1], members[j]
		}
	}
	for _, m := range members {
		k, v := m.Key, m.Val
		if reason, ok := f.refused[string(k)]; ok {
			return ev, &envelope.FieldError{Field: prefix + string(k), Reason: reason}
		}
		if f.ignored[string(k)] {
			continue
		}
		if !f.allowed[string(k)] {
			return ev, &envelope.FieldError{Field: prefix + string(k), Reason: "is not an event field; valid fields: " + f.names()}
		}
		var err error
		switch string(k) {
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
				// v is a valid JSON value: ParseUint accepts exactly the
				// non-negative integers that fit.
				if ev.Version, err = strconv.ParseUint(string(v), 10, 64); err != nil {
					err = fmt.Errorf("must be a positive integer, got %s", clip(v))
				}
			}
		case "time":
			if !isNull(v) {
				if ev.Time.UnmarshalJSON(v) != nil {
					err = fmt.Errorf("must be an RFC 3339 time such as \"2024-05-01T12:00:00Z\", got %s", clip(v))
				}
			}
		case "data":
			ev.Data = bytes.Clone(v) // the input buffer is reused
		case "metadata":
			if !isNull(v) {
				ev.Metadata = compactJSON(v) // it travels in a header, where a line break would end it
			}
		}
		if err != nil {
			return ev, &envelope.FieldError{Field: prefix + string(k), Reason: err.Error()}
		}
	}
	return ev, nil
}

// decodeString decodes a JSON string (or null, leaving dst alone).
func decodeString(v []byte, dst *string) error {
	if isNull(v) {
		return nil
	}
	if len(v) >= 2 && v[0] == '"' && bytes.IndexByte(v, '\\') < 0 {
		*dst = string(v[1 : len(v)-1])
		return nil
	}
	if json.Unmarshal(v, dst) != nil {
		return fmt.Errorf("must be a string, got %s", clip(v))
	}
	return nil
}

// compactJSON returns valid JSON v without insignificant whitespace, as a
// copy.
func compactJSON(v []byte) []byte {
	if bytes.IndexAny(v, " \t\r\n") < 0 {
		return bytes.Clone(v)
	}
	var b bytes.Buffer
	_ = json.Compact(&b, v) // v is valid
	return b.Bytes()
}

func isNull(v []byte) bool { return string(v) == "null" }

// clip shortens a JSON value for an error message.
func clip(v []byte) string {
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
