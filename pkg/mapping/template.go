// Package mapping is what every sink's declarative mapping is made of:
// templates ("order:{streamId}") for keys, ids, index names and partition
// keys, and jq projections (gojq) that shape a document from the event. Both
// are compiled once at start, so a bad one fails there with its key named,
// and are cheap per event.
package mapping

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// placeholder is an event field a template can insert.
type placeholder uint8

const (
	phLiteral placeholder = iota
	phID
	phStreamID
	phCategory
	phType
	phVersion
	phPosition
)

// placeholders maps the names allowed between braces. {sink} is not here:
// it is constant and folded into the literal text when compiling.
var placeholders = map[string]placeholder{
	"id":       phID,
	"streamId": phStreamID,
	"category": phCategory,
	"type":     phType,
	"version":  phVersion,
	"position": phPosition,
}

// PlaceholderNames lists what may appear between braces, for error messages.
const PlaceholderNames = "{id} {streamId} {category} {type} {version} {position} {sink}"

// part is a literal run of text or one placeholder.
type part struct {
	ph  placeholder
	lit string
}

// Template is a pattern such as "order:{streamId}" (a key, a field, an id),
// compiled once into literal and placeholder parts so that rendering it per
// event is a few appends. "{{" and "}}" stand for literal braces, e.g.
// "{{{streamId}}}" renders a Redis Cluster hash tag "{42}".
type Template struct {
	parts   []part
	litSize int // bytes of literal text, to size the builder
}

// CompileTemplate parses s. sinkName replaces {sink}; eventFields says
// whether event placeholders are allowed (the checkpoint key allows only
// {sink}).
func CompileTemplate(s, sinkName string, eventFields bool) (*Template, error) {
	t := &Template{}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, part{lit: lit.String()})
			t.litSize += lit.Len()
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '{':
			if i+1 < len(s) && s[i+1] == '{' {
				lit.WriteByte('{')
				i++
				continue
			}
			end := strings.IndexAny(s[i+1:], "{}")
			if end < 0 || s[i+1+end] == '{' {
				return nil, fmt.Errorf("unbalanced '{' at offset %d in %q; write {{ for a literal brace", i, s)
			}
			name := s[i+1 : i+1+end]
			i += 1 + end
			if name == "sink" {
				lit.WriteString(sinkName)
				continue
			}
			ph, ok := placeholders[name]
			if !ok || !eventFields {
				allowed := PlaceholderNames
				if !eventFields {
					allowed = "{sink}"
				}
				return nil, fmt.Errorf("unknown placeholder {%s} in %q; use %s", name, s, allowed)
			}
			flush()
			t.parts = append(t.parts, part{ph: ph})
		case '}':
			if i+1 < len(s) && s[i+1] == '}' {
				lit.WriteByte('}')
				i++
				continue
			}
			return nil, fmt.Errorf("unbalanced '}' at offset %d in %q; write }} for a literal brace", i, s)
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	return t, nil
}

// Constant reports whether the template has no event placeholder.
func (t *Template) Constant() bool {
	return len(t.parts) == 0 || len(t.parts) == 1 && t.parts[0].ph == phLiteral
}

// Render fills the template in for ev.
func (t *Template) Render(ev *envelope.Event) string {
	switch {
	case len(t.parts) == 0:
		return ""
	case len(t.parts) == 1 && t.parts[0].ph == phLiteral:
		return t.parts[0].lit
	case len(t.parts) == 1 && t.parts[0].ph == phStreamID:
		return ev.StreamID // the usual default: no copy
	}
	var b strings.Builder
	b.Grow(t.litSize + 48)
	var num [20]byte
	for _, p := range t.parts {
		switch p.ph {
		case phLiteral:
			b.WriteString(p.lit)
		case phID:
			b.WriteString(ev.ID)
		case phStreamID:
			b.WriteString(ev.StreamID)
		case phCategory:
			b.WriteString(ev.Category)
		case phType:
			b.WriteString(ev.Type)
		case phVersion:
			b.Write(strconv.AppendUint(num[:0], ev.Version, 10))
		case phPosition:
			b.Write(strconv.AppendUint(num[:0], ev.Position, 10))
		}
	}
	return b.String()
}
