package kinesink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/itchyny/gojq"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/mapping"
)

// record is one event ready for PutRecords.
type record struct {
	data []byte
	key  string
	pos  uint64
}

// size is what the record costs against the per-record and per-call limits:
// its data plus its partition key, in bytes.
func (r *record) size() int { return len(r.data) + len(r.key) }

// envelopeRecord is the default record: the whole envelope. Position comes
// first so a reader can spot duplicates without decoding the data.
type envelopeRecord struct {
	Position uint64          `json:"position"`
	ID       string          `json:"id"`
	StreamID string          `json:"streamId"`
	Category string          `json:"category"`
	Type     string          `json:"type"`
	Version  uint64          `json:"version"`
	Time     *string         `json:"time"`
	Data     json.RawMessage `json:"data"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// recordMaker turns events into records; it does no I/O.
type recordMaker struct {
	partitionKey *mapping.Template
	project      *mapping.Projection
}

// make builds the record of ev. Its error is a per-event failure (the event
// can never be put), except ctx's.
func (m *recordMaker) make(ctx context.Context, ev *envelope.Event) (record, error) {
	r := record{key: m.partitionKey.Render(ev), pos: ev.Position}
	if n := utf8.RuneCountInString(r.key); r.key == "" || n > MaxPartitionKeyChars || !utf8.ValidString(r.key) {
		return r, fmt.Errorf("%w: event %s at position %d: %q renders %d characters; Kinesis takes valid UTF-8 of 1-%d",
			ErrPartitionKey, ev.ID, ev.Position, shorten(r.key), n, MaxPartitionKeyChars)
	}
	var err error
	if m.project == nil {
		r.data, err = EnvelopeJSON(ev)
	} else {
		r.data, err = m.projected(ctx, ev)
	}
	if err != nil {
		return r, err
	}
	if r.size() > MaxRecordBytes {
		return r, fmt.Errorf("%w: event %s (type %s) at position %d makes a record of %d bytes (data %d + partition key %d); the limit is %d",
			ErrRecordTooLarge, ev.ID, ev.Type, ev.Position, r.size(), len(r.data), len(r.key), MaxRecordBytes)
	}
	return r, nil
}

// EnvelopeJSON is the default record of an event (no projection): the
// envelope as JSON, position first, with the data and metadata as they are
// (no HTML escaping: "<" stays "<").
func EnvelopeJSON(ev *envelope.Event) ([]byte, error) {
	rec := envelopeRecord{
		Position: ev.Position, ID: ev.ID, StreamID: ev.StreamID, Category: ev.Category,
		Type: ev.Type, Version: ev.Version, Data: ev.Data,
	}
	if !ev.Time.IsZero() {
		ts := ev.Time.UTC().Format(time.RFC3339Nano)
		rec.Time = &ts
	}
	if len(ev.Metadata) > 0 && string(ev.Metadata) != "null" {
		rec.Metadata = ev.Metadata
	}
	var b bytes.Buffer
	b.Grow(len(ev.Data) + len(ev.Metadata) + len(ev.ID) + len(ev.StreamID) + len(ev.Category) + len(ev.Type) + 160)
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&rec); err != nil {
		return nil, fmt.Errorf("%w: event %s at position %d: the data or metadata is not valid JSON: %v", ErrProjection, ev.ID, ev.Position, err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// projected runs the projection and adds the position to its output.
func (m *recordMaker) projected(ctx context.Context, ev *envelope.Event) ([]byte, error) {
	v, err := m.project.Run(ctx, mapping.NewInput(ev))
	if err != nil {
		return nil, fmt.Errorf("kinesis.project at position %d: %w", ev.Position, err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		b, _ := gojq.Marshal(v)
		return nil, fmt.Errorf("kinesis.project at position %d: %w: the output is %s; it must be an object, so the sink can add the position",
			ev.Position, ErrProjection, shorten(string(b)))
	}
	obj["position"] = int(ev.Position)
	b, err := gojq.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("kinesis.project at position %d: %w: the output cannot be written as JSON: %v", ev.Position, ErrProjection, err)
	}
	return b, nil
}

// shorten cuts a string for an error message.
func shorten(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
