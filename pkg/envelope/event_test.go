package envelope

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateToken(t *testing.T) {
	for _, bad := range []string{"", "a.b", "a b", "a*", ">", "tab\there", "nl\n", strings.Repeat("x", MaxTokenLen+1), "\xff"} {
		err := ValidateToken("streamId", bad)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "streamId" || !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateToken(%q) = %v, want a FieldError naming streamId", bad, err)
		}
	}
	for _, good := range []string{"order-42", "Order_42", "ünïcode", "a:b"} {
		if err := ValidateToken("streamId", good); err != nil {
			t.Errorf("ValidateToken(%q) = %v", good, err)
		}
	}
}

func TestValidateNamesTheField(t *testing.T) {
	base := Event{ID: "1", StreamID: "order-1", Category: "order", Type: "OrderPlaced", Version: 1, Data: json.RawMessage(`{}`)}
	cases := map[string]func(*Event){
		"events[0].id":       func(e *Event) { e.ID = "" },
		"events[0].category": func(e *Event) { e.Category = "a.b" },
		"events[0].streamId": func(e *Event) { e.StreamID = "x y" },
		"events[0].type":     func(e *Event) { e.Type = "" },
		"events[0].data":     func(e *Event) { e.Data = json.RawMessage(`{bad`) },
		"events[0].metadata": func(e *Event) { e.Metadata = json.RawMessage(`[1]`) },
		"events[0].version":  func(e *Event) { e.Version = 0 },
	}
	for field, mutate := range cases {
		e := base
		mutate(&e)
		err := e.Validate("events[0].")
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: got %v", field, err)
		}
	}
	if err := base.Validate(""); err != nil {
		t.Fatal(err)
	}
}

func TestMsgRoundTrip(t *testing.T) {
	in := Event{ID: "ev-1", StreamID: "order-42", Category: "order", Type: "OrderPlaced", Version: 3,
		Time: time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.UTC), Data: json.RawMessage(`{"total":12}`),
		Metadata: json.RawMessage(`{"correlationId":"c1","causationId":"c0"}`)}
	m := in.ToMsg()
	if m.Subject != "events.order.order-42" || m.Header.Get("Nats-Msg-Id") != "ev-1" {
		t.Fatalf("subject %q, msg id %q", m.Subject, m.Header.Get("Nats-Msg-Id"))
	}
	out, err := FromMsg(m.Subject, m.Header, m.Data, 99)
	if err != nil {
		t.Fatal(err)
	}
	in.Position = 99
	if out.ID != in.ID || out.StreamID != in.StreamID || out.Category != in.Category || out.Type != in.Type ||
		out.Version != in.Version || !out.Time.Equal(in.Time) || string(out.Data) != string(in.Data) ||
		string(out.Metadata) != string(in.Metadata) || out.Position != 99 {
		t.Fatalf("round trip changed the event:\n in %+v\nout %+v", in, out)
	}
}

func TestFromMsgRejectsForeignMessages(t *testing.T) {
	good := (&Event{ID: "1", StreamID: "s", Category: "c", Type: "T", Version: 1, Data: json.RawMessage(`{}`)}).ToMsg()
	for subject, hdrMod := range map[string]func(){
		"orders.c.s":   func() {},
		"events.c":     func() {},
		"events.c.s.x": func() {},
		"events.c.s":   func() { good.Header.Del(HeaderVersion) },
	} {
		hdrMod()
		if _, err := FromMsg(subject, good.Header, nil, 1); !errors.Is(err, ErrInvalid) {
			t.Errorf("FromMsg(%s) = %v, want ErrInvalid", subject, err)
		}
	}
}

func TestPrincipalRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name, principal, metadata, want string
	}{
		{"no principal", "", `{"a":1}`, `{"a":1}`},
		{"no metadata", "orders", ``, `{"principal":"orders"}`},
		{"null metadata", "orders", `null`, `{"principal":"orders"}`},
		{"merged first", "CN=svc,O=acme", `{"a":1,"b":{"c":[1,2]}}`, `{"principal":"CN=svc,O=acme","a":1,"b":{"c":[1,2]}}`},
		{"replaces a stored one", "orders", `{"principal":"forged","a":"x"}`, `{"principal":"orders","a":"x"}`},
		{"escaped key replaced", "orders", `{"princip\u0061l":"forged"}`, `{"principal":"orders"}`},
		{"quotes escaped", `a"b`, `{}`, `{"principal":"a\"b"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ev := Event{ID: "e1", Category: "order", StreamID: "o1", Type: "T", Version: 1, Data: []byte(`{}`), Metadata: json.RawMessage(tt.metadata), Principal: tt.principal}
			m := ev.ToMsg()
			if got := m.Header.Get(HeaderPrincipal); got != tt.principal {
				t.Fatalf("header %q", got)
			}
			back, err := FromMsg(m.Subject, m.Header, m.Data, 7)
			if err != nil {
				t.Fatal(err)
			}
			if back.Principal != tt.principal {
				t.Errorf("Principal %q", back.Principal)
			}
			if string(back.Metadata) != tt.want && !(tt.want == "" && len(back.Metadata) == 0) {
				t.Errorf("metadata %s, want %s", back.Metadata, tt.want)
			}
			if len(back.Metadata) > 0 && string(back.Metadata) != "null" && !json.Valid(back.Metadata) {
				t.Errorf("metadata is not JSON: %s", back.Metadata)
			}
		})
	}
}

func TestHasMetadataKey(t *testing.T) {
	for md, want := range map[string]bool{
		`{"principal":"x"}`:       true,
		`{"princip\u0061l":"x"}`:  true,
		`{"a":{"principal":"x"}}`: false,
		`{"a":"principal"}`:       false,
		`null`:                    false,
		``:                        false,
	} {
		if got := HasMetadataKey([]byte(md), MetadataPrincipal); got != want {
			t.Errorf("%s: %v", md, got)
		}
	}
}
