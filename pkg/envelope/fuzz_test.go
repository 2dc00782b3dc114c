package envelope

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// Fuzz targets (seed corpora in testdata/fuzz; `go test` runs the seeds):
//
//	go test -run='^$' -fuzz='^FuzzFromMsg$' -fuzztime=10s ./pkg/envelope

// checkFieldError fails unless err says which field is wrong (field is
// the name, or with a trailing '.' the prefix of the name) and why, and
// wraps ErrInvalid, so callers can answer 400 or dead-letter the message.
func checkFieldError(t *testing.T, err error, field string) {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("error %q (%T) is not a *FieldError wrapping ErrInvalid", err, err)
	}
	ok := fe.Field == field
	if prefix, isPrefix := strings.CutSuffix(field, "."); isPrefix || field == "" {
		ok = strings.HasPrefix(fe.Field, prefix) && len(fe.Field) > len(field)
	}
	if fe.Reason == "" || !ok {
		t.Fatalf("error %q names field %q and reason %q; want field %q and a reason", err, fe.Field, fe.Reason, field)
	}
}

// FuzzFromMsg decodes arbitrary stored messages: a foreign or damaged
// message must give a FieldError, never a panic; a message it accepts must
// survive ToMsg and FromMsg again unchanged.
func FuzzFromMsg(f *testing.F) {
	f.Add("events.order.order-42", "ev-1", "OrderPlaced", "3", "2026-11-25T10:00:00.123456789Z", `{"correlationId":"c1"}`, []byte(`{"total":12}`))
	f.Add("events.order.order-42", "ev-1", "OrderPlaced", "1", "", "", []byte(`{}`))
	f.Add("orders.c.s", "1", "T", "1", "", "", []byte(nil))
	f.Add("events.c", "1", "T", "1", "", "", []byte(nil))
	f.Add("events.c.s.x", "1", "T", "1", "", "", []byte(nil))
	f.Add("events..s", "1", "T", "1", "", "", []byte(nil))
	f.Add("events.c.s", "", "T", "1", "", "", []byte(nil))
	f.Add("events.c.s", "1", "", "1", "", "", []byte(nil))
	f.Add("events.c.s", "1", "T", "0", "", "", []byte(nil))
	f.Add("events.c.s", "1", "T", "-1", "", "", []byte(nil))
	f.Add("events.c.s", "1", "T", "18446744073709551616", "", "", []byte(nil))
	f.Add("events.c.s", "1", "T", "1", "yesterday", "", []byte(nil))
	f.Add("events.c.s", "1", "T", "1", "2026-11-25T10:00:00+02:00", "null", []byte(`[1,2]`))
	f.Fuzz(func(t *testing.T, subject, id, typ, version, ts, metadata string, data []byte) {
		hdr := nats.Header{}
		for k, v := range map[string]string{HeaderID: id, HeaderType: typ, HeaderVersion: version, HeaderTime: ts, HeaderMetadata: metadata} {
			if v != "" {
				hdr[k] = []string{v}
			}
		}
		ev, err := FromMsg(subject, hdr, data, 7)
		if err != nil {
			checkFieldError(t, err, "")
			return
		}
		if ev.Subject() != subject || ev.ID != id || ev.Type != typ || ev.Version == 0 || ev.Position != 7 || !bytes.Equal(ev.Data, data) {
			t.Fatalf("FromMsg(%q) = %+v: does not hold what the message held", subject, ev)
		}
		m := ev.ToMsg()
		again, err := FromMsg(m.Subject, m.Header, m.Data, 7)
		if err != nil {
			t.Fatalf("an accepted event does not decode after ToMsg: %v", err)
		}
		if string(ev.Metadata) == "null" { // ToMsg leaves a null metadata out
			ev.Metadata = nil
		}
		if again.Subject() != ev.Subject() || again.ID != ev.ID || again.Type != ev.Type || again.Version != ev.Version ||
			!again.Time.Equal(ev.Time) || !bytes.Equal(again.Data, ev.Data) || !bytes.Equal(again.Metadata, ev.Metadata) {
			t.Fatalf("round trip changed the event:\n%+v\n%+v", ev, again)
		}
	})
}

// wireHeaders encodes and decodes hdr the way a NATS client sends it and
// a sink receives it (nats.go writes each value with surrounding
// whitespace trimmed and CR/LF replaced by spaces).
func wireHeaders(t *testing.T, hdr nats.Header) nats.Header {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("NATS/1.0\r\n")
	for k, vs := range hdr {
		for _, v := range vs {
			v = strings.NewReplacer("\r", " ", "\n", " ").Replace(strings.Trim(v, " \t\r\n"))
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	out, err := nats.DecodeHeadersMsg(b.Bytes())
	if err != nil {
		t.Fatalf("headers of a valid event do not decode: %v\n%q", err, b.String())
	}
	return out
}

// FuzzValidateNew checks new events as the bridge does: a refused event
// gets a FieldError naming the field under the request's prefix; an
// accepted one must be storable, i.e. decode again from its message, with
// its headers sent over the wire, into the same event.
func FuzzValidateNew(f *testing.F) {
	f.Add("7f3c1c9e-0001", "order", "order-42", "OrderPlaced", []byte(`{"total":42}`), []byte(`{"correlationId":"c1"}`))
	f.Add("1", "c", "s", "T", []byte(`{}`), []byte(nil))
	f.Add("1", "c", "s", "T", []byte(`null`), []byte(`null`))
	f.Add("", "order", "o-1", "T", []byte(`{}`), []byte(nil))
	f.Add("id with space", "order", "o-1", "T", []byte(`{}`), []byte(nil))
	f.Add("1", "a.b", "o-1", "T", []byte(`{}`), []byte(nil))
	f.Add("1", "order", "x y", "T", []byte(`{}`), []byte(nil))
	f.Add("1", "order", "o>", "T", []byte(`{}`), []byte(nil))
	f.Add("1", "order", "o-1", "", []byte(`{}`), []byte(nil))
	f.Add("1", "order", "o-1", "two\nlines", []byte(`{}`), []byte(nil))
	f.Add("1", "order", "o-1", "T", []byte(`{bad`), []byte(nil))
	f.Add("1", "order", "o-1", "T", []byte(nil), []byte(nil))
	f.Add("1", "order", "o-1", "T", []byte(`{}`), []byte(`[1]`))
	f.Add("1", "order", "o-1", "T", []byte(`{}`), []byte("{\n  \"a\": \"b\"\n}"))
	f.Fuzz(func(t *testing.T, id, category, streamID, typ string, data, metadata []byte) {
		ev := Event{ID: id, Category: category, StreamID: streamID, Type: typ, Data: data, Metadata: metadata}
		if err := ev.ValidateNew("events[0]."); err != nil {
			checkFieldError(t, err, "events[0].")
			return
		}
		if err := ev.Validate("events[0]."); err == nil {
			t.Fatal("Validate accepted an event without a version")
		} else {
			checkFieldError(t, err, "events[0].version")
		}
		ev.Version, ev.Time = 1, time.Date(2026, 11, 25, 10, 0, 0, 1, time.UTC)
		m := ev.ToMsg()
		got, err := FromMsg(m.Subject, wireHeaders(t, m.Header), m.Data, 1)
		if err != nil {
			t.Fatalf("ValidateNew accepted %+v, but it does not decode once stored: %v", ev, err)
		}
		if got.ID != ev.ID || got.Category != ev.Category || got.StreamID != ev.StreamID || got.Type != ev.Type || !bytes.Equal(got.Data, ev.Data) || !got.Time.Equal(ev.Time) {
			t.Fatalf("stored event differs:\n%+v\n%+v", ev, got)
		}
		if len(ev.Metadata) > 0 && string(ev.Metadata) != "null" && !json.Valid(got.Metadata) {
			t.Fatalf("metadata %q came back as %q", ev.Metadata, got.Metadata)
		}
	})
}

// FuzzValidateToken: a refused token gets a FieldError naming the field;
// an accepted one is a single subject token that comes back out of an
// event subject unchanged.
func FuzzValidateToken(f *testing.F) {
	for _, s := range []string{"order-42", "Order_42", "ünïcode", "a:b", "", "a.b", "a b", "a*", ">", "tab\there", "nl\n", "\xff", "\x00", "\x7f", strings.Repeat("x", MaxTokenLen+1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := ValidateToken("streamId", s); err != nil {
			checkFieldError(t, err, "streamId")
			return
		}
		if s == "" || len(s) > MaxTokenLen || !utf8.ValidString(s) || strings.ContainsAny(s, ".*> \t\r\n") {
			t.Fatalf("ValidateToken accepted %q", s)
		}
		for _, r := range s {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("ValidateToken accepted the control character %U in %q", r, s)
			}
		}
		hdr := nats.Header{HeaderID: {"1"}, HeaderType: {"T"}, HeaderVersion: {"1"}}
		ev, err := FromMsg(StreamSubject("c", s), hdr, []byte(`{}`), 1)
		if err != nil || ev.StreamID != s || ev.Category != "c" {
			t.Fatalf("token %q does not come back out of its subject: %+v, %v", s, ev, err)
		}
	})
}

// FuzzMetadataCheck checks the metadata test of ValidateNew against what
// it stands for: decoding into a map succeeds.
func FuzzMetadataCheck(f *testing.F) {
	for _, s := range []string{`{}`, `{"correlationId":"c1"}`, ` {"a":[1,{"b":null}]} `, `null`, ` null`, `nul`, `nullx`, `[1]`, `"s"`, `1`, `true`,
		`{`, `{"a":1}}`, `{"a":1} x`, "{\"a\":\"\xff\"}", ``, ` `, `n`, `{"a":1,"a":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m map[string]json.RawMessage
		want := json.Unmarshal(b, &m) == nil
		if got := isJSONObjectOrNull(b); got != want {
			t.Fatalf("isJSONObjectOrNull(%q) = %v, decoding into a map says %v", b, got, want)
		}
	})
}
