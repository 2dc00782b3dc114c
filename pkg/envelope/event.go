// Package envelope defines jetsync's event envelope and how it maps onto a
// JetStream message: subject events.<category>.<streamId>, data in the body,
// everything else in headers.
package envelope

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// SubjectPrefix is the first token of every event subject.
const SubjectPrefix = "events"

// Header names. Nats-Msg-Id is JetStream's own deduplication header.
const (
	HeaderID       = nats.MsgIdHdr // "Nats-Msg-Id"
	HeaderType     = "Jetsync-Type"
	HeaderVersion  = "Jetsync-Version"
	HeaderTime     = "Jetsync-Time"
	HeaderMetadata = "Jetsync-Metadata"
	// HeaderPrincipal is who appended the event: the bridge's authenticated
	// token name or client certificate subject. Only the bridge sets it.
	HeaderPrincipal = "Jetsync-Principal"
)

// MetadataPrincipal is the metadata key under which FromMsg exposes the
// principal, so sinks write it wherever they write the metadata. Clients
// cannot set it: the bridge refuses appends whose metadata has it.
const MetadataPrincipal = "principal"

// MaxTokenLen bounds category and stream id lengths; a subject is not a blob.
const MaxTokenLen = 256

// Event is one domain event. Position is its global position, the JetStream
// stream sequence, and is only known once the event is stored.
type Event struct {
	ID       string          `json:"id"`
	StreamID string          `json:"streamId"`
	Category string          `json:"category"`
	Type     string          `json:"type"`
	Version  uint64          `json:"version"`
	Time     time.Time       `json:"time"`
	Data     json.RawMessage `json:"data"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
	Position uint64          `json:"position,omitempty"`
	// Principal is who appended the event ("" when the bridge ran without
	// auth). FromMsg also puts it in Metadata under MetadataPrincipal.
	Principal string `json:"-"`
}

// Subject is the JetStream subject the event is stored under.
func (e *Event) Subject() string {
	return SubjectPrefix + "." + e.Category + "." + e.StreamID
}

// StreamSubject is the subject of every event of one stream.
func StreamSubject(category, streamID string) string {
	return SubjectPrefix + "." + category + "." + streamID
}

// Size is the number of bytes the event costs in a batch: its body plus a
// rough allowance for the headers. It is used for byte-based batching.
func (e *Event) Size() int {
	return len(e.Data) + len(e.Metadata) + len(e.ID) + len(e.Type) + len(e.StreamID) + len(e.Category) + 64
}

// ValidateToken checks that s can stand as one subject token. field is the
// name used in the error message.
func ValidateToken(field, s string) error { return validateToken("", field, s) }

// validateToken is ValidateToken for the field prefix+name, joined only
// for an error: ValidateNew runs for every appended or imported event.
func validateToken(prefix, name, s string) error {
	field := func() string { return prefix + name }
	switch {
	case s == "":
		return fieldErr(field(), "is required and must not be empty")
	case len(s) > MaxTokenLen:
		return fieldErr(field(), fmt.Sprintf("is %d bytes long; use at most %d", len(s), MaxTokenLen))
	case !utf8.ValidString(s):
		return fieldErr(field(), "must be valid UTF-8")
	}
	for _, r := range s {
		switch {
		case r == '.':
			return fieldErr(field(), fmt.Sprintf("%q contains '.', which separates subject tokens; use '-' or '_' instead", s))
		case r == '*' || r == '>':
			return fieldErr(field(), fmt.Sprintf("%q contains the wildcard %q, which subjects cannot hold; remove it", s, r))
		case r == ' ' || r == '\t' || r == '\r' || r == '\n' || r < 0x20 || r == 0x7f:
			return fieldErr(field(), fmt.Sprintf("%q contains whitespace or a control character; remove it", s))
		}
	}
	return nil
}

// ValidateNew checks an event before it is appended. prefix is prepended to
// field names (e.g. "events[3].") so errors point into the request. Version
// is not checked here: the bridge assigns it on append.
func (e *Event) ValidateNew(prefix string) error {
	if e.ID == "" {
		return fieldErr(prefix+"id", "is required: a unique id per event, used for deduplication (e.g. a UUID)")
	}
	if len(e.ID) > MaxTokenLen || strings.ContainsAny(e.ID, " \t\r\n") {
		return fieldErr(prefix+"id", fmt.Sprintf("must be 1..%d bytes without whitespace", MaxTokenLen))
	}
	if err := validateToken(prefix, "category", e.Category); err != nil {
		return err
	}
	if err := validateToken(prefix, "streamId", e.StreamID); err != nil {
		return err
	}
	if e.Type == "" {
		return fieldErr(prefix+"type", "is required: the event type, e.g. \"OrderPlaced\"")
	}
	if strings.ContainsAny(e.Type, "\r\n") || len(e.Type) > MaxTokenLen {
		return fieldErr(prefix+"type", "must be one line of at most 256 bytes")
	}
	if strings.TrimSpace(e.Type) != e.Type {
		// NATS trims header values: " OrderPlaced" would be stored as
		// "OrderPlaced", and " " as no type at all.
		return fieldErr(prefix+"type", fmt.Sprintf("%q has leading or trailing spaces; remove them", e.Type))
	}
	if len(e.Data) == 0 {
		return fieldErr(prefix+"data", "is required: the event payload as JSON (use {} for none)")
	}
	if !ValidJSON(e.Data) {
		return fieldErr(prefix+"data", "is not valid JSON")
	}
	if len(e.Metadata) > 0 && !isJSONObjectOrNull(e.Metadata) {
		return fieldErr(prefix+"metadata", "must be a JSON object, e.g. {\"correlationId\":\"...\"}")
	}
	return nil
}

// Validate checks a complete event, as read from an import file.
func (e *Event) Validate(prefix string) error {
	if err := e.ValidateNew(prefix); err != nil {
		return err
	}
	if e.Version == 0 {
		return fieldErr(prefix+"version", "is required: the event's version within its stream, starting at 1")
	}
	return nil
}

// isJSONObjectOrNull reports whether b is one JSON object or null: exactly
// when decoding it into a map would succeed, without building the map.
func isJSONObjectOrNull(b []byte) bool {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i < len(b) && (b[i] == '{' || b[i] == 'n') && ValidJSON(b)
}

// ToMsg builds the JetStream message for the event. The data is not copied.
func (e *Event) ToMsg() *nats.Msg {
	m := &nats.Msg{Subject: e.Subject(), Data: e.Data, Header: make(nats.Header, 5)}
	// Assigning the map directly skips the canonicalisation nats.Header.Set does;
	// these keys are already canonical.
	m.Header[HeaderID] = []string{e.ID}
	m.Header[HeaderType] = []string{e.Type}
	m.Header[HeaderVersion] = []string{strconv.FormatUint(e.Version, 10)}
	m.Header[HeaderTime] = []string{e.Time.UTC().Format(time.RFC3339Nano)}
	if len(e.Metadata) > 0 && string(e.Metadata) != "null" {
		m.Header[HeaderMetadata] = []string{string(e.Metadata)}
	}
	if e.Principal != "" {
		m.Header[HeaderPrincipal] = []string{e.Principal}
	}
	return m
}

// FromMsg decodes an event from a stored message's subject, headers and body.
// position is the message's stream sequence. Errors wrap ErrInvalid: a message
// that fails here was not written by jetsync, or was damaged.
func FromMsg(subject string, hdr nats.Header, data []byte, position uint64) (Event, error) {
	ev := Event{Data: data, Position: position}
	rest, ok := strings.CutPrefix(subject, SubjectPrefix+".")
	if !ok {
		return ev, fieldErr("subject", fmt.Sprintf("%q does not start with %q", subject, SubjectPrefix+"."))
	}
	ev.Category, ev.StreamID, ok = strings.Cut(rest, ".")
	if !ok || ev.Category == "" || ev.StreamID == "" || strings.Contains(ev.StreamID, ".") {
		return ev, fieldErr("subject", fmt.Sprintf("%q is not of the form events.<category>.<streamId>", subject))
	}
	ev.ID = first(hdr, HeaderID)
	if ev.ID == "" {
		return ev, fieldErr(HeaderID, "header is missing")
	}
	ev.Type = first(hdr, HeaderType)
	if ev.Type == "" {
		return ev, fieldErr(HeaderType, "header is missing")
	}
	v, err := strconv.ParseUint(first(hdr, HeaderVersion), 10, 64)
	if err != nil || v == 0 {
		return ev, fieldErr(HeaderVersion, fmt.Sprintf("header %q is not a positive integer", first(hdr, HeaderVersion)))
	}
	ev.Version = v
	if ts := first(hdr, HeaderTime); ts != "" {
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return ev, fieldErr(HeaderTime, fmt.Sprintf("header %q is not an RFC 3339 time", ts))
		}
		ev.Time = t
	}
	if md := first(hdr, HeaderMetadata); md != "" {
		ev.Metadata = json.RawMessage(md)
	}
	if p := first(hdr, HeaderPrincipal); p != "" {
		ev.Principal = p
		ev.Metadata = withPrincipal(ev.Metadata, p)
	}
	return ev, nil
}

// withPrincipal is the metadata object md with "principal": p first, in
// place of any principal md holds.
func withPrincipal(md json.RawMessage, p string) json.RawMessage {
	q, _ := json.Marshal(p) // a string always marshals
	out := make([]byte, 0, len(md)+len(q)+16)
	out = append(out, `{"`+MetadataPrincipal+`":`...)
	out = append(out, q...)
	var buf [16]Member
	members, _ := SplitObject(buf[:0], md) // null or not an object: no members
	for _, m := range members {
		if string(m.Key) == MetadataPrincipal {
			continue
		}
		out = append(out, ',')
		out = appendKey(out, m.Key)
		out = append(out, ':')
		out = append(out, m.Val...)
	}
	return append(out, '}')
}

// appendKey appends key as a JSON string, byte for byte as json.Marshal
// writes it; the common key (printable ASCII that needs no escape) without
// its allocation, since every authenticated event's metadata is rewritten.
func appendKey(out, key []byte) []byte {
	for _, c := range key {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			k, _ := json.Marshal(string(key))
			return append(out, k...)
		}
	}
	out = append(out, '"')
	out = append(out, key...)
	return append(out, '"')
}

// HasMetadataKey reports whether the metadata object md has the top-level
// key (compared unescaped).
func HasMetadataKey(md []byte, key string) bool {
	if !bytes.Contains(md, []byte(key)) && !bytes.Contains(md, []byte(`\u`)) {
		return false
	}
	var buf [16]Member
	members, _ := SplitObject(buf[:0], md)
	for _, m := range members {
		if string(m.Key) == key {
			return true
		}
	}
	return false
}

// first is hdr.Get without canonicalising the key on every call.
func first(hdr nats.Header, key string) string {
	if v := hdr[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}
