package mapping

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/itchyny/gojq"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// ErrProjection is wrapped by the per-event failures of a projection that
// compiled but fails on this event (a runtime error, no value, several
// values, data that is not JSON). Sinks hand such events to on_error.
var ErrProjection = errors.New("projection failed")

// Projection is a compiled jq expression run on the envelope object
// {id, streamId, category, type, version, time, position, data, metadata}.
type Projection struct {
	expr   string
	code   *gojq.Code
	direct *direct // nil unless the expression is simple enough (see direct)
}

// CompileProjection parses and compiles expr. The environment is hidden
// from it: $ENV and env would otherwise expose the process's secrets.
func CompileProjection(expr string) (*Projection, error) {
	q, err := gojq.Parse(expr)
	if err != nil {
		return nil, fmt.Errorf("%q is not a jq expression: %v", expr, err)
	}
	code, err := gojq.Compile(q, gojq.WithEnvironLoader(func() []string { return nil }))
	if err != nil {
		return nil, fmt.Errorf("%q does not compile: %v", expr, err)
	}
	return &Projection{expr: expr, code: code, direct: compileDirect(q)}, nil
}

// String is the expression as written.
func (p *Projection) String() string { return p.expr }

// Input is one event as its projections see it. The envelope object
// (EnvelopeObject) is built when the first projection that needs all of it
// runs, and shared by the event's other projections; a direct projection
// does not need it.
type Input struct {
	Event *envelope.Event
	obj   map[string]any
	err   error
	built bool
}

// NewInput is ev as projections see it.
func NewInput(ev *envelope.Event) *Input { return &Input{Event: ev} }

// Object is the envelope object, built on the first call.
func (in *Input) Object() (map[string]any, error) {
	if !in.built {
		in.obj, in.err = EnvelopeObject(in.Event)
		in.built = true
	}
	return in.obj, in.err
}

// Run projects the event and wants exactly one value back.
func (p *Projection) Run(ctx context.Context, in *Input) (any, error) {
	if p.direct != nil {
		if v, ok := p.direct.eval(in.Event); ok {
			return v, nil
		}
	}
	obj, err := in.Object()
	if err != nil {
		return nil, err
	}
	return p.RunValue(ctx, obj)
}

// Field is one member of an object a projection outputs.
type Field struct {
	Key   string
	Value any
}

// RunObject is Run for a projection whose output should be an object: it
// appends the object's members to dst, each key once, in no set order.
// A direct projection (direct.go) gives them without building the
// object. When the output is not an object, isObj is false and out is it.
func (p *Projection) RunObject(ctx context.Context, in *Input, dst []Field) (fields []Field, out any, isObj bool, err error) {
	if p.direct != nil && p.direct.fields != nil {
		if fields, ok := p.direct.evalFields(in.Event, dst); ok {
			return fields, nil, true, nil
		}
	}
	v, err := p.Run(ctx, in)
	if err != nil {
		return dst, nil, false, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return dst, v, false, nil
	}
	for k, x := range m {
		dst = append(dst, Field{Key: k, Value: x})
	}
	return dst, nil, true, nil
}

// RunValue runs the expression on any value.
func (p *Projection) RunValue(ctx context.Context, v any) (any, error) {
	iter := p.code.RunWithContext(ctx, v)
	out, ok := iter.Next()
	if !ok {
		return nil, fmt.Errorf("%w: it produced no value (use empty-safe expressions, e.g. .data // {})", ErrProjection)
	}
	if err, isErr := out.(error); isErr {
		return nil, fmt.Errorf("%w: %v", ErrProjection, err)
	}
	if next, more := iter.Next(); more {
		if err, isErr := next.(error); isErr {
			return nil, fmt.Errorf("%w: %v", ErrProjection, err)
		}
		return nil, fmt.Errorf("%w: it produced more than one value; collect them into an array with [ ... ]", ErrProjection)
	}
	return out, nil
}

// Marshal writes a projection's output as JSON.
func Marshal(v any) ([]byte, error) {
	b, err := gojq.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: output cannot be written as JSON: %v", ErrProjection, err)
	}
	return b, nil
}

// EnvelopeObject is the value a projection sees.
func EnvelopeObject(ev *envelope.Event) (map[string]any, error) {
	data, err := DecodeJSON(ev.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: the data is not valid JSON: %v", ErrProjection, err)
	}
	var meta any
	if len(ev.Metadata) > 0 {
		if meta, err = DecodeJSON(ev.Metadata); err != nil {
			return nil, fmt.Errorf("%w: the metadata is not valid JSON: %v", ErrProjection, err)
		}
	}
	var ts any
	if !ev.Time.IsZero() {
		ts = ev.Time.UTC().Format(time.RFC3339Nano)
	}
	return map[string]any{
		"id":       ev.ID,
		"streamId": ev.StreamID,
		"category": ev.Category,
		"type":     ev.Type,
		"version":  int(ev.Version),
		"time":     ts,
		"position": int(ev.Position),
		"data":     data,
		"metadata": meta,
	}, nil
}

// DecodeJSON decodes one JSON value keeping numbers exact (gojq reads
// json.Number): objects as map[string]any, arrays as []any, numbers as
// json.Number, as encoding/json does with UseNumber. It runs decodeFast
// first and falls back to encoding/json for anything decodeFast does not
// take (syntax errors included, so the error is encoding/json's).
func DecodeJSON(b []byte) (any, error) {
	if v, ok := decodeFast(b); ok {
		return v, nil
	}
	return decodeStd(b)
}

// decodeStd is DecodeJSON by encoding/json alone.
func decodeStd(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after the JSON value")
	}
	return v, nil
}
