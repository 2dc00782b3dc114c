package envelope

import (
	"encoding/json"
	"unicode/utf8"
)

// A single-pass JSON scanner: the bridge decodes every imported or appended
// event with SplitObject, and ValidateNew checks data with ValidJSON. It
// accepts exactly what encoding/json accepts (FuzzSplitObject and
// FuzzValidJSON check it against encoding/json) in one pass, where
// json.Unmarshal scans twice and allocates.

// maxDepth is encoding/json's nesting limit.
const maxDepth = 10000

// Member is one "key": value of a JSON object.
type Member struct {
	Key []byte // unescaped
	Val []byte // raw JSON
}

// SplitObject checks that b is one valid JSON object (surrounded by
// optional whitespace) and appends its members in order to dst, keys and
// values aliasing b. ok is false if b is anything else.
func SplitObject(dst []Member, b []byte) (members []Member, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	members = dst
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return members, skipSpace(b, i+1) == len(b)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return nil, false
		}
		end, escaped := scanString(b, i)
		if end < 0 {
			return nil, false
		}
		key := b[i+1 : end-1]
		if escaped || !utf8.Valid(key) { // as encoding/json decodes keys
			var s string
			if json.Unmarshal(b[i:end], &s) != nil {
				return nil, false
			}
			key = []byte(s)
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return nil, false
		}
		i = skipSpace(b, i+1)
		end = scanValue(b, i, 2) // the object is depth 1
		if end < 0 {
			return nil, false
		}
		members = append(members, Member{Key: key, Val: b[i:end]})
		i = skipSpace(b, end)
		if i >= len(b) {
			return nil, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return members, skipSpace(b, i+1) == len(b)
		default:
			return nil, false
		}
	}
}

// ValidJSON reports whether b is one valid JSON value, as json.Valid does.
func ValidJSON(b []byte) bool {
	i := skipSpace(b, 0)
	end := scanValue(b, i, 1)
	return end >= 0 && skipSpace(b, end) == len(b)
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanValue returns the end of the JSON value starting at b[i], or -1 if
// there is no valid value there. depth counts the enclosing arrays and
// objects, the value's own included.
func scanValue(b []byte, i, depth int) int {
	if i >= len(b) {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		end, _ := scanString(b, i)
		return end
	case c == '{' || c == '[':
		return scanComposite(b, i, depth)
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	}
	return -1
}

// scanComposite scans the object or array starting at b[i].
func scanComposite(b []byte, i, depth int) int {
	if depth > maxDepth {
		return -1
	}
	object := b[i] == '{'
	closer := byte(']')
	if object {
		closer = '}'
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == closer {
		return i + 1
	}
	for {
		if object {
			if i >= len(b) || b[i] != '"' {
				return -1
			}
			end, _ := scanString(b, i)
			if end < 0 {
				return -1
			}
			i = skipSpace(b, end)
			if i >= len(b) || b[i] != ':' {
				return -1
			}
			i = skipSpace(b, i+1)
		}
		end := scanValue(b, i, depth+1)
		if end < 0 {
			return -1
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return -1
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case closer:
			return i + 1
		default:
			return -1
		}
	}
}

// scanString scans the string starting at the quote b[i]. It returns the
// end (after the closing quote), or -1, and whether it has escapes. Like
// encoding/json it refuses control characters and accepts any other byte.
func scanString(b []byte, i int) (end int, escaped bool) {
	for i++; i < len(b); i++ {
		for i < len(b) && plainStringByte[b[i]] { // the usual run of plain bytes
			i++
		}
		if i >= len(b) {
			break
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1, escaped
		case c == '\\':
			escaped = true
			i++
			if i >= len(b) {
				return -1, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) {
					return -1, false
				}
				for _, h := range b[i+1 : i+5] {
					if !isHex(h) {
						return -1, false
					}
				}
				i += 4
			default:
				return -1, false
			}
		case c < 0x20:
			return -1, false
		}
	}
	return -1, false
}

// plainStringByte tells the bytes a JSON string holds as they are: not a
// quote, a backslash or a control character.
var plainStringByte = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// scanNumber scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if j := digits(b, i+1); j > i+1 {
			i = j
		} else {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if j := digits(b, i); j > i {
			i = j
		} else {
			return -1
		}
	}
	return i
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

func scanLiteral(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}
