package mapping

import (
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// reference renders a template the slow, obvious way: left to right, "{{"
// and "}}" are braces, {name} is the event field.
var refToken = regexp.MustCompile(`\{\{|\}\}|\{[^{}]*\}`)

func reference(s, sink string, ev *envelope.Event) string {
	return refToken.ReplaceAllStringFunc(s, func(tok string) string {
		switch tok {
		case "{{":
			return "{"
		case "}}":
			return "}"
		case "{sink}":
			return sink
		case "{id}":
			return ev.ID
		case "{streamId}":
			return ev.StreamID
		case "{category}":
			return ev.Category
		case "{type}":
			return ev.Type
		case "{version}":
			return strconv.FormatUint(ev.Version, 10)
		case "{position}":
			return strconv.FormatUint(ev.Position, 10)
		}
		panic("unexpected token " + tok)
	})
}

// FuzzTemplate compiles arbitrary key templates: a refused one gets an
// error quoting the template; an accepted one renders like the reference.
//
//	go test -run='^$' -fuzz='^FuzzTemplate$' -fuzztime=10s ./pkg/mapping
func FuzzTemplate(f *testing.F) {
	for _, s := range []string{"order:{streamId}", "{category}:{streamId}:v{version}@{position}", "{id}/{type}", "plain", "{sink}:x",
		"{{{streamId}}}", "a{{b}}c", "", "{", "}", "{}", "{nope}", "{id", "id}", "{{", "}}}", "{{id}}", "{sink}{sink}", "{ÿ}", "{\x00}"} {
		f.Add(s, "cache", true)
		f.Add(s, "c{x}", false)
	}
	ev := &envelope.Event{ID: "e-1", StreamID: "42", Category: "order", Type: "OrderPlaced", Version: 7, Position: 1234}
	f.Fuzz(func(t *testing.T, s, sink string, eventFields bool) {
		tmpl, err := CompileTemplate(s, sink, eventFields)
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", s)) {
				t.Fatalf("error %q does not quote the template %q", err, s)
			}
			return
		}
		got := tmpl.Render(ev)
		if want := reference(s, sink, ev); got != want {
			t.Fatalf("template %q (sink %q) rendered %q, want %q", s, sink, got, want)
		}
		if tmpl.Constant() {
			if tmpl.Render(nil) != got {
				t.Fatalf("constant template %q renders differently without an event", s)
			}
		} else if !eventFields {
			t.Fatalf("template %q has event placeholders although they are not allowed", s)
		}
	})
}

// FuzzCompileProjection compiles arbitrary jq expressions: no panic, and a
// refused one gets an error quoting the expression (so the config error
// points at it). They are not run: an arbitrary program may not end.
func FuzzCompileProjection(f *testing.F) {
	for _, s := range []string{"{id: .streamId, lines: .data.lines | length}", ".data", ".", "[.data[] | select(.x > 1)]",
		"$ENV.PATH", "env", "input", "$__loc__", "def f: f; f", ".data |", "{", "..", "@base64d", "include \"x\";", "import \"a\" as b; .", "$undefined", "limit(1; repeat(.))", "`", "\"\\(1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		p, err := CompileProjection(expr)
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", expr)) {
				t.Fatalf("error %q does not quote the expression %q", err, expr)
			}
			return
		}
		if p.String() != expr {
			t.Fatalf("String() = %q, want %q", p.String(), expr)
		}
	})
}

// FuzzDecodeJSON: whatever decodeFast accepts, encoding/json decodes to
// the same value; DecodeJSON and encoding/json agree on every input.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{
		`{"orderId":"o-1","total":12.50,"items":[{"sku":"A","qty":2}],"ok":true,"n":null}`,
		`[1, -0, 0.5e-3, 1E+2, "x\u00e9\n", "\ud800", "caf\xc3\xa9"]`, `  "plain"  `, `{"a":1,"a":2}`, `-`, `01`, `1.`, `{"a" 1}`, `[1,]`, `"\x01"`, `nul`, `{} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want, wantErr := decodeStd(b)
		got, ok := decodeFast(b)
		if ok && (wantErr != nil || !reflect.DeepEqual(got, want)) {
			t.Fatalf("decodeFast(%q) = %#v, encoding/json: %#v, %v", b, got, want, wantErr)
		}
		v, err := DecodeJSON(b)
		if (err != nil) != (wantErr != nil) || err == nil && !reflect.DeepEqual(v, want) {
			t.Fatalf("DecodeJSON(%q) = %#v, %v; encoding/json: %#v, %v", b, v, err, want, wantErr)
		}
	})
}
