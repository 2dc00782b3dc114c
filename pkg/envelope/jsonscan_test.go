package envelope

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzSplitObject checks the single-pass scanner against encoding/json:
// the same inputs are valid objects, with the same members.
func FuzzSplitObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"a":1}`, `{"a":1,}`, `{"a" 1}`, `{"a":01}`, `{"a":-0.5e+3}`, `{"a":1.}`, `{"a":.5}`,
		`{"a":"x\u00e9\n"}`, `{"a":"\x"}`, `{"a":"\u12"}`, "{\"a\":\"\x01\"}", `{"a\"b":[1,[2,{"c":null}],true,false]}`,
		`{"a":tru}`, `{"a":nulls}`, `{"a":{}}{}`, `[1]`, `"x"`, `{"a":[}`, `{"id":"1","id":"2"}`, "{\"a\":\"\xff\"}", "{\"\xff\":{}}",
		`{"id":"e1","type":"T","category":"c","streamId":"s","version":1,"time":"2024-01-01T00:00:00Z","data":{"x":[1,2]},"metadata":{"k":"v"}}`,
		`{"a":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
		`{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		members, ok := SplitObject(nil, b)
		var want map[string]json.RawMessage
		wantOK := json.Unmarshal(b, &want) == nil && want != nil
		if ok != wantOK {
			t.Fatalf("SplitObject(%q) ok = %v, encoding/json says %v", b, ok, wantOK)
		}
		if !ok {
			return
		}
		got := map[string]json.RawMessage{}
		for _, m := range members {
			if !json.Valid(m.Val) {
				t.Fatalf("member %q = %q is not valid JSON", m.Key, m.Val)
			}
			got[string(m.Key)] = m.Val // the last one wins, as in encoding/json
		}
		if len(got) != len(want) {
			t.Fatalf("SplitObject(%q) has keys %v, want %v", b, got, want)
		}
		for k, v := range want {
			if !bytes.Equal(got[k], v) {
				t.Fatalf("member %q = %q, want %q", k, got[k], v)
			}
		}
	})
}

// FuzzValidJSON checks ValidJSON against json.Valid.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{``, ` `, `1`, `-`, `-0`, `01`, `1.5e-3`, `"a\u00e9"`, `"\q"`, `[1,2,]`, `{"a":[true,false,null]}`, `{} {}`, "\"\x01\"", `nul`, ` null `,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000), strings.Repeat("[", 10001) + strings.Repeat("]", 10001)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := ValidJSON(b), json.Valid(b); got != want {
			t.Fatalf("ValidJSON(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}
