package mapping

import (
	"context"
	"sync"
	"time"

	"github.com/itchyny/gojq"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// A direct projection is a jq expression simple enough to evaluate without
// gojq and without decoding the whole event: an object of paths and
// constants, such as {customer_id: .data.customerId, status: "shipped"}, or
// one path (.data, .data.customer). Most mappings are of this kind, and for
// them decoding every field of the data into Go values and running the jq
// machine was two thirds of sink-postgres' CPU (BENCHMARKS.md,
// sink-postgres); a direct projection decodes only the fields its paths
// name. Anything it is not sure of (a path through something that is not an
// object, data that does not parse) it hands back to gojq, which then gives
// the answer or the error it always gave: a direct projection only ever
// returns what gojq returns (FuzzDirectProjection checks it).
type direct struct {
	fields []directField // an object's fields; nil with a path
	path   []string      // the one path, when the expression is one
}

// directField is one field of the output object: a constant or a path.
type directField struct {
	key   string
	path  []string // from the envelope: "data", "customerId"
	value any      // the constant, when path is nil
}

// compileDirect returns the direct form of q, or nil when q is not one.
func compileDirect(q *gojq.Query) *direct {
	t := plainTerm(q)
	if t == nil {
		return nil
	}
	if path := pathOf(t); path != nil {
		return &direct{path: path}
	}
	if t.Type != gojq.TermTypeObject || len(t.SuffixList) != 0 {
		return nil
	}
	d := &direct{fields: make([]directField, 0, len(t.Object.KeyVals))}
	for _, kv := range t.Object.KeyVals {
		f := directField{key: kv.Key}
		switch {
		case kv.Key != "":
		case kv.KeyString != nil && len(kv.KeyString.Queries) == 0:
			f.key = kv.KeyString.Str
		default:
			return nil // a computed key or a variable
		}
		vt := plainTerm(kv.Val)
		if vt == nil {
			return nil // {a} shorthand or an operator
		}
		if f.path = pathOf(vt); f.path == nil {
			v, ok := constant(vt)
			if !ok {
				return nil
			}
			f.value = v
		}
		d.fields = append(d.fields, f)
	}
	return d
}

// plainTerm is q's term when q is nothing but one term.
func plainTerm(q *gojq.Query) *gojq.Term {
	if q == nil || q.Term == nil || q.Left != nil || q.Right != nil || q.Meta != nil ||
		len(q.Imports) != 0 || len(q.FuncDefs) != 0 || len(q.Patterns) != 0 {
		return nil
	}
	return q.Term
}

// pathOf is t's field names when t is a path of fields from the input
// (.a.b, .a["b c"]), else nil.
func pathOf(t *gojq.Term) []string {
	if t.Type != gojq.TermTypeIndex {
		return nil
	}
	first, ok := fieldName(t.Index)
	if !ok {
		return nil
	}
	path := []string{first}
	for _, s := range t.SuffixList {
		if s.Iter || s.Optional || s.Index == nil {
			return nil
		}
		name, ok := fieldName(s.Index)
		if !ok {
			return nil
		}
		path = append(path, name)
	}
	return path
}

// fieldName is the constant field an index names (.a or ["a"]).
func fieldName(ix *gojq.Index) (string, bool) {
	switch {
	case ix == nil || ix.IsSlice || ix.End != nil:
		return "", false
	case ix.Name != "":
		return ix.Name, true
	case ix.Str != nil && len(ix.Str.Queries) == 0:
		return ix.Str.Str, true
	case ix.Start != nil:
		if t := plainTerm(ix.Start); t != nil && t.Type == gojq.TermTypeString && len(t.SuffixList) == 0 &&
			t.Str != nil && len(t.Str.Queries) == 0 {
			return t.Str.Str, true
		}
	}
	return "", false
}

// constant is the value of a literal term, as gojq itself computes it.
func constant(t *gojq.Term) (any, bool) {
	switch t.Type {
	case gojq.TermTypeNull, gojq.TermTypeTrue, gojq.TermTypeFalse, gojq.TermTypeNumber:
	case gojq.TermTypeString:
		if t.Str == nil || len(t.Str.Queries) != 0 {
			return nil, false
		}
	default:
		return nil, false
	}
	if len(t.SuffixList) != 0 {
		return nil, false
	}
	code, err := gojq.Compile(&gojq.Query{Term: t})
	if err != nil {
		return nil, false
	}
	iter := code.RunWithContext(context.Background(), nil)
	v, ok := iter.Next()
	if _, isErr := v.(error); !ok || isErr {
		return nil, false
	}
	return v, true
}

// eval is the projection of ev; ok false hands it to gojq.
func (d *direct) eval(ev *envelope.Event) (any, bool) {
	if d.fields == nil {
		in := getSplit()
		defer splits.Put(in)
		if !in.split(ev) {
			return nil, false
		}
		return in.path(d.path)
	}
	var buf [16]Field
	fields, ok := d.evalFields(ev, buf[:0])
	if !ok {
		return nil, false
	}
	out := make(map[string]any, len(fields))
	for _, f := range fields {
		out[f.Key] = f.Value
	}
	return out, true
}

// evalFields appends the members of an object projection's output for ev
// to dst, each key once (a key given twice takes its last value, as in
// gojq); ok false hands it to gojq.
func (d *direct) evalFields(ev *envelope.Event, dst []Field) ([]Field, bool) {
	in := getSplit()
	defer splits.Put(in)
	if !in.split(ev) {
		return dst, false
	}
	start := len(dst)
fields:
	for _, f := range d.fields {
		v := f.value
		if f.path != nil {
			var ok bool
			if v, ok = in.path(f.path); !ok {
				return dst[:start], false
			}
		}
		for i := start; i < len(dst); i++ {
			if dst[i].Key == f.key {
				dst[i].Value = v
				continue fields
			}
		}
		dst = append(dst, Field{Key: f.key, Value: v})
	}
	return dst, true
}

// splits recycles splitEvents: one is 1.5 KB, and escape analysis cannot
// keep it on the stack (the members it holds reach the decoder), so each
// projection allocated one.
var splits = sync.Pool{New: func() any { return new(splitEvent) }}

func getSplit() *splitEvent { return splits.Get().(*splitEvent) }

// split sets in to ev, its data and metadata split into members when they
// are objects. It is false when either is not JSON: gojq's input fails to
// build then, whatever the expression reads, and so does a direct
// projection. Splitting an object checks it; anything else is checked
// whole.
func (in *splitEvent) split(ev *envelope.Event) bool {
	in.ev, in.meta, in.metaObj = ev, nil, false // it may be recycled
	if in.data, in.dataObj = envelope.SplitObject(in.dataBuf[:0], ev.Data); !in.dataObj && !envelope.ValidJSON(ev.Data) {
		return false
	}
	if len(ev.Metadata) != 0 {
		if in.meta, in.metaObj = envelope.SplitObject(in.metaBuf[:0], ev.Metadata); !in.metaObj && !envelope.ValidJSON(ev.Metadata) {
			return false
		}
	}
	return true
}

// splitEvent is an event whose data and metadata, when they are objects,
// are split into members once for all the paths of a projection.
type splitEvent struct {
	ev               *envelope.Event
	data, meta       []envelope.Member
	dataObj, metaObj bool
	// most events' data and metadata have fewer members
	dataBuf, metaBuf [16]envelope.Member
}

// path follows path from the envelope object (see EnvelopeObject) without
// building it.
func (in *splitEvent) path(path []string) (any, bool) {
	ev, rest := in.ev, path[1:]
	switch path[0] {
	case "data":
		return memberPath(ev.Data, in.data, in.dataObj, rest)
	case "metadata":
		if len(ev.Metadata) == 0 {
			return nil, true // null, and so is any field of it
		}
		return memberPath(ev.Metadata, in.meta, in.metaObj, rest)
	}
	if len(rest) != 0 {
		return nil, false // indexing a string or number: gojq's error
	}
	switch path[0] {
	case "id":
		return ev.ID, true
	case "streamId":
		return ev.StreamID, true
	case "category":
		return ev.Category, true
	case "type":
		return ev.Type, true
	case "version":
		return int(ev.Version), true
	case "position":
		return int(ev.Position), true
	case "time":
		if ev.Time.IsZero() {
			return nil, true
		}
		return ev.Time.UTC().Format(time.RFC3339Nano), true
	}
	return nil, true // a field the envelope does not have is null
}

// memberPath decodes the value at path in the JSON text b, whose members
// (when isObj) are split already.
func memberPath(b []byte, members []envelope.Member, isObj bool, path []string) (any, bool) {
	if len(path) == 0 {
		v, err := DecodeJSON(b)
		return v, err == nil
	}
	if !isObj {
		return nil, false // indexing something else: gojq's answer
	}
	var val []byte
	for _, m := range members {
		if string(m.Key) == path[0] {
			val = m.Val // the last one wins, as in encoding/json
		}
	}
	if val == nil {
		return nil, true // missing: null, and so is any field of it
	}
	if len(path) == 1 {
		v, err := DecodeJSON(val)
		return v, err == nil
	}
	var buf [16]envelope.Member
	inner, isObj := envelope.SplitObject(buf[:0], val)
	return memberPath(val, inner, isObj, path[1:])
}
