package mapping

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// The mappings users write most are direct; the rest are not, and must not
// be taken for direct ones.
func TestDirectProjectionForms(t *testing.T) {
	for expr, want := range map[string]bool{
		`{customer_id: .data.customerId, status: .data.status, total: .data.total}`: true,
		`{status: "shipped", carrier: .data.carrier, n: 1, x: null, ok: true}`:      true,
		`{"a b": .data["x y"], id: .streamId, at: .position, m: .metadata.user}`:    true,
		`.data`:                    true,
		`.data.customer.address`:   true,
		`{a}`:                      false, // shorthand
		`{(.type): .data}`:         false, // a computed key
		`{a: .data.x?}`:            false,
		`{a: .data.lines[0]}`:      false,
		`{a: .data.lines[]}`:       false,
		`{a: (.data.x // 0)}`:      false,
		`{a: .data.x | tostring}`:  false,
		`{a: "\(.id)"}`:            false,
		`{a: .data.x} | .a`:        false,
		`def f: .data; {a: f}`:     false,
		`{a: .data.x, b: now}`:     false,
		`.`:                        false,
		`{a: [.data.x]}`:           false,
		`{a: {b: .data.x}}`:        false,
		`{a: -1}`:                  false, // a unary: left to gojq
		`{a: .data.x, b: .data.x}`: true,
	} {
		p, err := CompileProjection(expr)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if got := p.direct != nil; got != want {
			t.Errorf("%s: direct %v, want %v", expr, got, want)
		}
	}
}

// FuzzDirectProjection checks that a direct projection gives exactly what
// gojq gives on the envelope object, or hands the event back to gojq.
func FuzzDirectProjection(f *testing.F) {
	exprs := []string{
		`{customer_id: .data.customerId, status: .data.status, total: .data.total}`,
		`{status: "shipped", carrier: .data.carrier, n: 1.50, big: 12345678901234567890, x: null, ok: false}`,
		`{"a b": .data["x y"], id: .id, s: .streamId, c: .category, t: .type, v: .version, at: .position, w: .time, m: .metadata.user, no: .nope}`,
		`.data`, `.data.a.b`, `.metadata`, `.id`, `.id.x`, `{a: .data.a.b.c}`, `{a: .data.a, b: 1, a: .data.customerId}`,
	}
	for i := range exprs {
		for _, data := range []string{`{"customerId":"c-1","status":"placed","total":12.50,"lines":[1,2]}`,
			`{"a":{"b":{"c":[1,{"d":null}]}},"a":{"b":2}}`, `{"x y":"\u00e9\n","a":null}`, `[1,2]`, `"s"`, `{"a":1,}`,
			`{"a":{"b":1e400}}`, `{"customerId":"ünï","carrier":{"n":-0.0}}`, ``, ` {"a" : { "b" : [ ] } } `} {
			f.Add(uint8(i), data, `{"user":"u-1"}`)
			f.Add(uint8(i), data, ``)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data, meta string) {
		expr := exprs[int(which)%len(exprs)]
		p, err := CompileProjection(expr)
		if err != nil || p.direct == nil {
			t.Fatalf("%s does not compile to a direct projection: %v", expr, err)
		}
		ev := &envelope.Event{ID: "e-1", StreamID: "o-1", Category: "order", Type: "T", Version: 2, Position: 9,
			Time: time.Date(2026, 12, 1, 0, 0, 0, 5, time.UTC), Data: json.RawMessage(data), Metadata: json.RawMessage(meta)}
		got, ok := p.direct.eval(ev)
		obj, err := EnvelopeObject(ev)
		if err != nil {
			if ok {
				t.Fatalf("%s on data %q: direct gave %v, but the envelope does not decode: %v", expr, data, got, err)
			}
			return
		}
		want, werr := p.RunValue(context.Background(), obj)
		if werr != nil {
			if ok {
				t.Fatalf("%s on data %q: direct gave %#v, gojq failed: %v", expr, data, got, werr)
			}
			return
		}
		if ok && !reflect.DeepEqual(got, want) {
			t.Fatalf("%s on data %q meta %q:\ndirect %#v\ngojq   %#v", expr, data, meta, got, want)
		}
		// RunObject gives the same members, or the same value that is not
		// an object.
		fields, out, isObj, err := p.RunObject(context.Background(), NewInput(ev), nil)
		if err != nil {
			t.Fatalf("%s on data %q: RunObject failed where gojq gave %#v: %v", expr, data, want, err)
		}
		if m, wantObj := want.(map[string]any); wantObj != isObj {
			t.Fatalf("%s on data %q: RunObject says object %v, gojq gave %#v", expr, data, isObj, want)
		} else if isObj {
			gotMap := make(map[string]any, len(fields))
			for _, f := range fields {
				if _, dup := gotMap[f.Key]; dup {
					t.Fatalf("%s on data %q: RunObject gave key %q twice", expr, data, f.Key)
				}
				gotMap[f.Key] = f.Value
			}
			if !reflect.DeepEqual(gotMap, m) {
				t.Fatalf("%s on data %q: RunObject %#v, gojq %#v", expr, data, gotMap, m)
			}
		} else if !reflect.DeepEqual(out, want) {
			t.Fatalf("%s on data %q: RunObject's value %#v, gojq %#v", expr, data, out, want)
		}
	})
}
