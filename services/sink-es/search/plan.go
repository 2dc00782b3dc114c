package search

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// opKind is what an action does to a document.
type opKind uint8

const (
	opIndex opKind = iota + 1
	opMerge
	opDelete
	opScript
)

func (k opKind) String() string {
	switch k {
	case opIndex:
		return ActionIndex
	case opMerge:
		return ActionMerge
	case opDelete:
		return ActionDelete
	case opScript:
		return ActionScript
	}
	return "?"
}

// op is one action of one event on one document.
type op struct {
	kind opKind
	ev   int    // index of the event in the batch
	pos  uint64 // the event's position
	// data is, for index and merge, the JSON object to write or merge (one
	// line); for script, the whole update body.
	data []byte
}

// docKey names a document: the index (alias, concrete index or rendered
// template) and the id.
type docKey struct{ index, id string }

// docState is what a document holds, as far as the writer knows.
type docState struct {
	known  bool // false: not known, mget it before merging into it
	exists bool
	src    []byte // the document's JSON (position field included)
	pos    uint64 // position of the last event applied to it; 0 for none
}

// chain is every op of one batch on one document, in stream order. A batch
// becomes one item per chain (its ops folded), except around scripts, which
// Elasticsearch runs: those are one item each, in later rounds.
type chain struct {
	key   docKey
	alias bool // the index is an alias the sink manages: require_alias
	first int  // first event of the chain, to keep items in stream order
	ops   []op // not yet applied

	state   docState
	unfold  bool  // a folded item was refused: one event per item, to find which
	pending *item // sent and to be sent again (a retryable refusal)
	failed  bool  // an event was refused for good: the rest waits for the next WriteBatch
}

// item is one bulk action (and source line) covering one or more ops.
type item struct {
	c      *chain
	kind   opKind // opIndex (index and merge write the whole document), opDelete or opScript
	pos    uint64 // the external version: position of the last op folded in
	src    []byte // index: the document; script: the update body
	events []int  // the batch's events it covers, ascending
	n      int    // ops of the chain it covers
	after  docState
}

// planner turns events into chains of ops without doing any I/O.
type planner struct {
	byType     map[string][]action
	unknownErr bool
	pf         string            // position field
	targets    map[string]string // declared alias -> concrete index (a rebuild writes there)
}

// build computes every op of events, grouped by document. Events that can
// never be written are returned as failures; the error is only ever ctx's.
func (pl *planner) build(ctx context.Context, events []envelope.Event) ([]*chain, []sink.EventFailure, error) {
	byDoc := make(map[docKey]*chain, len(events))
	chains := make([]*chain, 0, len(events))
	var failures []sink.EventFailure
	for i := range events {
		ev := &events[i]
		acts, ok := pl.byType[ev.Type]
		if !ok {
			if pl.unknownErr {
				failures = append(failures, sink.EventFailure{Index: i,
					Err: fmt.Errorf("%w %q (position %d): add it under mappings or set unknown_types: ignore", ErrUnknownType, ev.Type, ev.Position)})
			}
			continue
		}
		in := mapping.NewInput(ev) // shared by the event's projections
		for ai := range acts {
			a := &acts[ai]
			key, alias, o, err := pl.op(ctx, a, in, i)
			if err != nil {
				if ctx.Err() != nil {
					return nil, nil, ctx.Err()
				}
				failures = append(failures, sink.EventFailure{Index: i, Err: err})
				break
			}
			c := byDoc[key]
			if c == nil {
				c = &chain{key: key, alias: alias, first: i}
				byDoc[key] = c
				chains = append(chains, c)
			}
			c.ops = append(c.ops, o)
		}
	}
	return chains, failures, nil
}

// op computes one action's op for ev and the document it targets.
func (pl *planner) op(ctx context.Context, a *action, in *mapping.Input, i int) (docKey, bool, op, error) {
	ev := in.Event
	index, alias := a.index.Render(ev), a.alias
	if !alias {
		if err := validIndexName(index, false); err != nil {
			return docKey{}, false, op{}, fmt.Errorf("%w: %s.index at position %d: %v", ErrBadTarget, a.where, ev.Position, err)
		}
	}
	if concrete, ok := pl.targets[index]; ok {
		index, alias = concrete, false
	}
	id := a.id.Render(ev)
	if id == "" || len(id) > 512 {
		return docKey{}, false, op{}, fmt.Errorf("%w: %s.id at position %d renders %q; an id is 1..512 bytes", ErrBadTarget, a.where, ev.Position, id)
	}
	o := op{kind: a.kind, ev: i, pos: ev.Position}
	var err error
	switch a.kind {
	case opIndex, opMerge:
		data := []byte(ev.Data)
		if a.project != nil {
			if data, err = project(ctx, a.project, in); err != nil {
				return docKey{}, false, op{}, fmt.Errorf("%s.project at position %d: %w", a.where, ev.Position, err)
			}
		}
		if o.data, err = objectLine(data, a.kind == opMerge); err != nil {
			return docKey{}, false, op{}, fmt.Errorf("%s (action %s) at position %d: %w", a.where, a.kind, ev.Position, err)
		}
	case opScript:
		if o.data, err = pl.scriptBody(ctx, a, in); err != nil {
			return docKey{}, false, op{}, fmt.Errorf("%s at position %d: %w", a.where, ev.Position, err)
		}
	}
	return docKey{index, id}, alias, o, nil
}

// objectLine checks that data is a JSON object and returns it on one line
// (a bulk body is newline-delimited). Data that is already one line is not
// copied; validate also checks it is well-formed JSON (merge decodes it).
func objectLine(data []byte, validate bool) ([]byte, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: the document is %s; index and merge need an object such as {\"status\":\"paid\"}", ErrNotObject, describe(trimmed))
	}
	if bytes.IndexByte(data, '\n') < 0 && bytes.IndexByte(data, '\r') < 0 {
		if validate && !json.Valid(data) {
			return nil, fmt.Errorf("%w: the document is not valid JSON", ErrNotObject)
		}
		return data, nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, data); err != nil {
		return nil, fmt.Errorf("%w: the document is not valid JSON: %v", ErrNotObject, err)
	}
	return b.Bytes(), nil
}

// scriptBody is the update body of a script action: the user's painless
// source inside the position guard, the event as params.
func (pl *planner) scriptBody(ctx context.Context, a *action, in *mapping.Input) ([]byte, error) {
	env, err := in.Object()
	if err != nil {
		return nil, err
	}
	params := map[string]any{"position": in.Event.Position, "event": env}
	if a.project != nil {
		doc, err := project(ctx, a.project, in)
		if err != nil {
			return nil, err
		}
		params["doc"] = json.RawMessage(doc)
	}
	return json.Marshal(map[string]any{
		"script":          map[string]any{"source": guardScript(pl.pf, a.script), "lang": "painless", "params": params},
		"scripted_upsert": true,
		"upsert":          map[string]any{},
	})
}

// guardScript wraps a script so that an event at or below the position the
// document records is a no-op, and a script that ran records its position.
func guardScript(pf, user string) string {
	f := "ctx._source['" + pf + "']"
	return "if (" + f + " != null && " + f + " >= params.position) { ctx.op = 'noop'; } else {\n" +
		user + "\n;\nif (ctx.op != 'noop' && ctx.op != 'delete') { " + f + " = params.position; } }"
}

// project runs a projection on ev and returns its output as JSON.
func project(ctx context.Context, p *mapping.Projection, in *mapping.Input) ([]byte, error) {
	v, err := p.Run(ctx, in)
	if err != nil {
		return nil, err
	}
	return mapping.Marshal(v)
}

// describe shortens a JSON text for an error message.
func describe(b []byte) string {
	switch {
	case len(b) == 0:
		return "empty"
	case len(b) > 40:
		return string(b[:40]) + "..."
	}
	return string(b)
}

// dropApplied removes the ops the document already holds (its position is
// at or past theirs): the guard that makes merge idempotent.
func (c *chain) dropApplied() {
	n := 0
	for n < len(c.ops) && c.ops[n].pos <= c.state.pos {
		n++
	}
	c.ops = c.ops[n:]
}

// next returns the chain's next item: the pending one, or the fold of its
// ops up to the next script (one event's ops when unfolding). needBase says
// the fold starts with a merge into a document whose state is unknown:
// mget it first. nil, false: nothing left to do.
func (c *chain) next(pf string) (it *item, needBase bool, err error) {
	if c.pending != nil {
		return c.pending, false, nil
	}
	if c.failed || len(c.ops) == 0 {
		return nil, false, nil
	}
	if o := c.ops[0]; o.kind == opScript {
		return &item{c: c, kind: opScript, pos: o.pos, src: o.data, events: []int{o.ev}, n: 1}, false, nil
	}
	n := 0
	for n < len(c.ops) && c.ops[n].kind != opScript && (!c.unfold || c.ops[n].pos == c.ops[0].pos) {
		n++
	}
	run := c.ops[:n]
	if run[0].kind == opMerge && !c.state.known {
		return nil, true, nil
	}
	exists, raw := c.state.exists, c.state.src
	var doc map[string]any // the decoded document while merges apply
	it = &item{c: c, n: n, pos: run[n-1].pos}
	for _, o := range run {
		if len(it.events) == 0 || it.events[len(it.events)-1] != o.ev {
			it.events = append(it.events, o.ev)
		}
		switch o.kind {
		case opIndex:
			exists, raw, doc = true, o.data, nil
		case opDelete:
			exists, raw, doc = false, nil, nil
		case opMerge:
			if doc == nil {
				doc = map[string]any{}
				if exists {
					if doc, err = decodeObject(raw); err != nil {
						return nil, false, fmt.Errorf("document %s/%s: %w", c.key.index, c.key.id, err)
					}
				}
			}
			patch, err := decodeObject(o.data)
			if err != nil { // objectLine validated it
				return nil, false, err
			}
			mergeInto(doc, patch)
			exists = true
		}
	}
	if !exists {
		it.kind = opDelete
		it.after = docState{known: true, pos: it.pos}
		return it, false, nil
	}
	it.kind = opIndex
	if doc != nil {
		doc[pf] = json.Number(strconv.FormatUint(it.pos, 10))
		if it.src, err = marshalDoc(doc); err != nil {
			return nil, false, err
		}
	} else if it.src, err = withPosition(raw, pf, it.pos); err != nil {
		return nil, false, err
	}
	it.after = docState{known: true, exists: true, src: it.src, pos: it.pos}
	return it, false, nil
}

// applied records that it is in Elasticsearch (or was already).
func (c *chain) applied(it *item) {
	c.ops = c.ops[it.n:]
	c.pending = nil
	c.state = it.after // a script leaves the state unknown
}

// decodeObject decodes a JSON object keeping numbers exact.
func decodeObject(b []byte) (map[string]any, error) {
	v, err := mapping.DecodeJSON(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotObject, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotObject, describe(b))
	}
	return m, nil
}

// mergeInto merges patch into doc the way Elasticsearch's partial update
// does: objects merge recursively, every other value (arrays and null
// included) replaces.
func mergeInto(doc, patch map[string]any) {
	for k, v := range patch {
		if pm, ok := v.(map[string]any); ok {
			if dm, ok := doc[k].(map[string]any); ok {
				mergeInto(dm, pm)
				continue
			}
		}
		doc[k] = v
	}
}

// withPosition returns the JSON object raw with the position field set to
// pos. The common case, raw without that field, is a splice, not a decode.
func withPosition(raw []byte, pf string, pos uint64) ([]byte, error) {
	quoted := `"` + pf + `"`
	if !bytes.Contains(raw, []byte(quoted)) {
		body := bytes.TrimLeft(raw, " \t")
		if len(body) > 0 && body[0] == '{' {
			body = bytes.TrimLeft(body[1:], " \t")
			out := make([]byte, 0, len(raw)+len(quoted)+24)
			out = append(out, '{')
			out = append(out, quoted...)
			out = append(out, ':')
			out = strconv.AppendUint(out, pos, 10)
			if len(body) > 0 && body[0] != '}' {
				out = append(out, ',')
			}
			return append(out, body...), nil
		}
	}
	doc, err := decodeObject(raw)
	if err != nil {
		return nil, err
	}
	doc[pf] = json.Number(strconv.FormatUint(pos, 10))
	return marshalDoc(doc)
}

// marshalDoc encodes a document on one line, without escaping <, > and &.
func marshalDoc(doc map[string]any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
