package search

import (
	"strconv"
	"unicode/utf8"
)

// appendItem appends the bulk lines of it: the action line and, except for
// delete, the source line. Index and delete carry the position as the
// external version, so Elasticsearch keeps a write only if it is newer than
// what the document holds.
func appendItem(buf []byte, it *item) []byte {
	switch it.kind {
	case opIndex:
		buf = append(buf, `{"index":{`...)
	case opDelete:
		buf = append(buf, `{"delete":{`...)
	case opScript:
		buf = append(buf, `{"update":{`...)
	}
	buf = append(buf, `"_index":`...)
	buf = appendJSONString(buf, it.c.key.index)
	buf = append(buf, `,"_id":`...)
	buf = appendJSONString(buf, it.c.key.id)
	if it.kind == opScript {
		// A conflict here is another writer between the script's read and
		// write; the guard makes running it again safe.
		buf = append(buf, `,"retry_on_conflict":3`...)
	} else {
		buf = append(buf, `,"version":`...)
		buf = strconv.AppendUint(buf, it.pos, 10)
		buf = append(buf, `,"version_type":"external"`...)
	}
	if it.c.alias && it.kind != opDelete {
		// Never let a missing alias turn into an auto-created concrete
		// index of the same name (rebuilds need the alias).
		buf = append(buf, `,"require_alias":true`...)
	}
	buf = append(buf, "}}\n"...)
	if it.kind != opDelete {
		buf = append(buf, it.src...)
		buf = append(buf, '\n')
	}
	return buf
}

// appendJSONString appends s as a JSON string.
func appendJSONString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				buf = append(buf, '\\', c)
			case c < 0x20:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}

// bulkResponse is the part of a bulk answer the writer reads (the request
// asks for only these fields with filter_path).
type bulkResponse struct {
	Errors bool                    `json:"errors"`
	Items  []map[string]bulkResult `json:"items"`
}

// bulkFilter keeps a bulk answer small: per item its status and error.
var bulkFilter = []string{"errors", "items.*.status", "items.*.result", "items.*.error.type", "items.*.error.reason",
	"items.*.error.caused_by.type", "items.*.error.caused_by.reason"}

type bulkResult struct {
	Status int      `json:"status"`
	Result string   `json:"result"`
	Error  *esError `json:"error"`
}

// esError is an error object of an Elasticsearch answer.
type esError struct {
	Type     string   `json:"type"`
	Reason   string   `json:"reason"`
	CausedBy *esError `json:"caused_by"`
}

func (e *esError) String() string {
	if e == nil {
		return ""
	}
	s := e.Type + ": " + e.Reason
	if e.CausedBy != nil {
		s += " (caused by " + e.CausedBy.String() + ")"
	}
	return s
}

// verdict is what an item's answer means for the writer.
type verdict uint8

const (
	applied verdict = iota // in Elasticsearch now, or already
	retry                  // refused for now: send it again later
	refused                // refused for good: the error policy decides
)

// classify reads one item's status.
func classify(kind opKind, r bulkResult) verdict {
	switch s := r.Status; {
	case s >= 200 && s < 300:
		return applied
	case s == 404 && kind == opDelete && (r.Error == nil || r.Error.Type == "index_not_found_exception"):
		return applied // nothing to delete; a tombstone keeps the version
	case s == 409 && kind != opScript:
		// version_conflict_engine_exception: the document is at this
		// position or past it; the event is applied already.
		return applied
	case s == 409, s == 408, s == 429, s >= 500:
		return retry
	case s == 403 && r.Error != nil && r.Error.Type == "cluster_block_exception":
		// A write block (index.blocks.write, read_only_allow_delete after
		// the flood-stage disk watermark) is lifted again.
		return retry
	}
	return refused
}
