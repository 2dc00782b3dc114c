package mapping

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
)

func TestProjection(t *testing.T) {
	ev := &envelope.Event{ID: "e1", StreamID: "order-1", Category: "order", Type: "OrderPlaced", Version: 3, Position: 77,
		Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Data: json.RawMessage(`{"total":12.50,"lines":[1,2,3],"big":12345678901234567890}`)}
	p, err := CompileProjection(`{id: .streamId, v: .version, at: .position, n: (.data.lines | length), total: .data.total, big: .data.big, when: .time}`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Run(context.Background(), NewInput(ev))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Marshal(out)
	want := `{"at":77,"big":12345678901234567890,"id":"order-1","n":3,"total":12.50,"v":3,"when":"2026-01-02T03:04:05Z"}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	for expr, msg := range map[string]string{
		`.data.total | error("boom")`: "boom",
		`empty`:                       "no value",
		`.data.lines[]`:               "more than one value",
	} {
		p, err := CompileProjection(expr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Run(context.Background(), NewInput(ev)); !errors.Is(err, ErrProjection) || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v, want ErrProjection mentioning %q", expr, err, msg)
		}
	}
	for _, bad := range []string{`{`, `.a | nosuchfn`, `$ENV.HOME`} {
		if _, err := CompileProjection(bad); err == nil && bad != `$ENV.HOME` {
			t.Errorf("%s compiled", bad)
		}
	}
	p, _ = CompileProjection(`$ENV | length`)
	if out, err := p.Run(context.Background(), NewInput(ev)); err != nil || out != 0 {
		t.Fatalf("the environment must be hidden from projections: %v %v", out, err)
	}
}

func BenchmarkProjection(b *testing.B) {
	ev := &envelope.Event{ID: "e1", StreamID: "order-1", Category: "order", Type: "OrderPlaced", Version: 3, Position: 77,
		Data: json.RawMessage(`{"customer":"c-9","total":12.5,"lines":[{"sku":"a","qty":1},{"sku":"b","qty":2}],"status":"placed"}`)}
	p, _ := CompileProjection(`{customer: .data.customer, total: .data.total, items: (.data.lines | map(.qty) | add), at: .position}`)
	b.ReportAllocs()
	for b.Loop() {
		out, err := p.Run(context.Background(), NewInput(ev))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Marshal(out); err != nil {
			b.Fatal(err)
		}
	}
}
