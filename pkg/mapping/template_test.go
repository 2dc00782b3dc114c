package mapping

import (
	"strings"
	"testing"

	"github.com/jetsync/jetsync/pkg/envelope"
)

func TestTemplateRender(t *testing.T) {
	ev := &envelope.Event{ID: "e-1", StreamID: "42", Category: "order", Type: "OrderPlaced", Version: 7, Position: 1234}
	for _, tc := range []struct{ in, want string }{
		{"order:{streamId}", "order:42"},
		{"{category}:{streamId}:v{version}@{position}", "order:42:v7@1234"},
		{"{id}/{type}", "e-1/OrderPlaced"},
		{"plain", "plain"},
		{"{sink}:x", "cache:x"},
		{"{{{streamId}}}", "{42}"},
		{"a{{b}}c", "a{b}c"},
		{"", ""},
	} {
		tmpl, err := CompileTemplate(tc.in, "cache", true)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if got := tmpl.Render(ev); got != tc.want {
			t.Errorf("%q rendered %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestTemplateConstantFoldsSink(t *testing.T) {
	tmpl, err := CompileTemplate("jetsync:checkpoint:{sink}", "orders", false)
	if err != nil {
		t.Fatal(err)
	}
	if !tmpl.Constant() || tmpl.Render(nil) != "jetsync:checkpoint:orders" {
		t.Fatalf("constant=%v render=%q", tmpl.Constant(), tmpl.Render(nil))
	}
}

func TestTemplateErrors(t *testing.T) {
	for _, tc := range []struct {
		in          string
		eventFields bool
		want        string
	}{
		{"order:{streamid}", true, "unknown placeholder {streamid}"},
		{"order:{}", true, "unknown placeholder {}"},
		{"order:{streamId", true, "unbalanced '{'"},
		{"order:{a{streamId}", true, "unbalanced '{'"},
		{"order:streamId}", true, "unbalanced '}'"},
		{"cp:{streamId}", false, "use {sink}"},
	} {
		_, err := CompileTemplate(tc.in, "cache", tc.eventFields)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func BenchmarkTemplateRender(b *testing.B) {
	tmpl, _ := CompileTemplate("order:{streamId}:{position}", "cache", true)
	ev := &envelope.Event{StreamID: "0b8f6c1e-5a0f-4c1f-9d0e", Position: 123456789}
	b.ReportAllocs()
	for b.Loop() {
		_ = tmpl.Render(ev)
	}
}
