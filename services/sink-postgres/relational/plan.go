package relational

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// action is a compiled mapping action.
type action struct {
	where   string // its config key, for errors
	op      string
	table   string
	keyCols []string // sorted
	keyTmpl []*mapping.Template
	project *mapping.Projection
	raw     *rawSQL // a raw SQL action (op "sql")
}

// rowOp is one row write an event asks for.
type rowOp struct {
	op      string
	where   string // the action's config key
	ev      int    // index of the event in the batch
	table   string
	keyCols []string
	key     []string
	cols    []colVal // upsert, patch: sorted by name, each once
	pos     uint64
	raw     *rawSQL // op "sql"
	args    []any   // op "sql": the parameters
}

// colVal is a column a row write sets: the text PostgreSQL casts to the
// column's type, or NULL.
type colVal struct {
	name string
	val  string
	null bool
}

// ptr is the value as a statement's array holds it: nil for NULL.
func (c *colVal) ptr() *string {
	if c.null {
		return nil
	}
	return &c.val
}

// stmt is one multi-row statement: every row of it touches another key.
type stmt struct {
	op      string
	raw     *rawSQL // op "sql": one statement for one event
	args    []any
	table   string
	keyCols []string
	cols    []string // the non-key columns written (upsert, patch)
	rows    []stmtRow
	vals    []*string // row after row, each by cols
}

type stmtRow struct {
	key []string
	pos uint64
}

// opsBuilder maps a batch's events to row writes. The writes' keys and
// columns are cut from slices it reuses, not allocated one by one: this is
// the sink's work per event (BENCHMARKS.md, sink-postgres).
type opsBuilder struct {
	ctx     context.Context
	columns func(table string) map[string]bool
	fields  []mapping.Field // one projection's output, reused
	keys    []string
	cols    []colVal
}

// buildOps maps a batch's events to row writes, in event order. Events the
// mappings refuse (a projection error, no object, an unknown column) are
// returned as failures and write nothing. columns says which columns a
// table has (besides _position); nil means any.
func buildOps(ctx context.Context, b *sink.Batch, maps map[string][]action, unknownErr bool, columns func(table string) map[string]bool) ([]rowOp, []sink.EventFailure) {
	ob := &opsBuilder{ctx: ctx, columns: columns, keys: make([]string, 0, len(b.Events)), cols: make([]colVal, 0, 4*len(b.Events))}
	ops := make([]rowOp, 0, len(b.Events))
	var failures []sink.EventFailure
	for i := range b.Events {
		ev := &b.Events[i]
		acts, ok := maps[ev.Type]
		if !ok {
			if unknownErr {
				failures = append(failures, sink.EventFailure{Index: i, Err: fmt.Errorf("%w %q", ErrUnknownType, ev.Type)})
			}
			continue
		}
		start := len(ops)
		var err error
		if ops, err = ob.eventOps(ops, ev, acts); err != nil {
			failures = append(failures, sink.EventFailure{Index: i, Err: err})
			ops = ops[:start] // the event writes nothing
			continue
		}
		for j := start; j < len(ops); j++ {
			ops[j].ev = i
		}
	}
	return ops, failures
}

// eventOps appends ev's row writes to out. On an error out comes back
// with what was appended so far, for the caller to cut back.
func (ob *opsBuilder) eventOps(out []rowOp, ev *envelope.Event, acts []action) ([]rowOp, error) {
	in := mapping.NewInput(ev) // shared by the event's projections
	for _, a := range acts {
		if a.raw != nil {
			op, err := rawOp(ob.ctx, a, in)
			if err != nil {
				return out, err
			}
			out = append(out, op)
			continue
		}
		op := rowOp{op: a.op, where: a.where, table: a.table, keyCols: a.keyCols, pos: ev.Position}
		k := len(ob.keys)
		for _, t := range a.keyTmpl {
			ob.keys = append(ob.keys, t.Render(ev))
		}
		op.key = ob.keys[k:len(ob.keys):len(ob.keys)]
		if a.op != ActionDelete {
			cols, err := ob.rowCols(a, in)
			if err != nil {
				return out, err
			}
			op.cols = cols
		}
		out = append(out, op)
	}
	return out, nil
}

// rowCols is the columns an upsert or patch sets: its projection's
// fields but the key's and _position, sorted by name.
func (ob *opsBuilder) rowCols(a action, in *mapping.Input) ([]colVal, error) {
	var fields []mapping.Field
	var got any
	isObj := true
	var err error
	if a.project != nil {
		fields, got, isObj, err = a.project.RunObject(ob.ctx, in, ob.fields[:0])
		ob.fields = fields
	} else {
		fields, got, isObj, err = dataFields(in, ob.fields[:0])
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", a.where, err)
	}
	if !isObj {
		return nil, fmt.Errorf("%s: %w: the row must be an object of columns, got %s", a.where, ErrNotObject, typeName(got))
	}
	var known map[string]bool
	if ob.columns != nil {
		known = ob.columns(a.table)
	}
	start := len(ob.cols)
	for _, f := range fields {
		if slices.Contains(a.keyCols, f.Key) || f.Key == PositionColumn {
			continue // the key comes from the key templates
		}
		if known != nil && !known[f.Key] {
			return nil, fmt.Errorf("%s: %w %q in table %s", a.where, ErrUnknownColumn, f.Key, a.table)
		}
		s, null, err := toText(f.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: column %s: %w", a.where, f.Key, err)
		}
		ob.cols = append(ob.cols, colVal{name: f.Key, val: s, null: null})
	}
	cols := ob.cols[start:len(ob.cols):len(ob.cols)]
	// Insertion sort: a row has a handful of columns, often in order.
	for i := 1; i < len(cols); i++ {
		for j := i; j > 0 && cols[j].name < cols[j-1].name; j-- {
			cols[j], cols[j-1] = cols[j-1], cols[j]
		}
	}
	return cols, nil
}

// dataFields is the event's data as a row's fields, for an action without
// a projection.
func dataFields(in *mapping.Input, dst []mapping.Field) ([]mapping.Field, any, bool, error) {
	obj, err := in.Object()
	if err != nil {
		return dst, nil, false, err
	}
	m, ok := obj["data"].(map[string]any)
	if !ok {
		return dst, obj["data"], false, nil
	}
	for k, v := range m {
		dst = append(dst, mapping.Field{Key: k, Value: v})
	}
	return dst, nil, true, nil
}

// toText is a JSON value as the text PostgreSQL casts to a column type:
// strings as they are, numbers and booleans as literals, objects and
// arrays as JSON (for json/jsonb columns), null as NULL.
func toText(v any) (s string, null bool, err error) {
	switch x := v.(type) {
	case nil:
		return "", true, nil
	case string:
		return x, false, nil
	case json.Number:
		return x.String(), false, nil
	case bool:
		return strconv.FormatBool(x), false, nil
	case int, int64, float64:
		return fmt.Sprint(x), false, nil
	default:
		b, err := mapping.Marshal(x)
		if err != nil {
			return "", false, err
		}
		return string(b), false, nil
	}
}

// toParam is toText for a raw SQL parameter: nil for NULL.
func toParam(v any) (*string, error) {
	s, null, err := toText(v)
	if null || err != nil {
		return nil, err
	}
	return &s, nil
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	default:
		return "a number"
	}
}

// folded is what one key's writes within a run come to.
type folded struct {
	op   string // upsert, patch or delete
	key  []string
	cols []colVal
	pos  uint64
}

// plan turns row writes into multi-row statements. A run of consecutive
// writes to one table becomes at most one delete, one upsert and one
// patch per column set: keys repeated in the run are folded first
// (PostgreSQL refuses ON CONFLICT DO UPDATE touching a row twice), so each
// row gets one write equal to the run's writes applied in order, and rows
// of different keys do not depend on each other. Runs keep their order.
// upsertCols lists a table's non-key columns: an upsert writes them all
// (NULL where the row has no value).
func plan(ops []rowOp, upsertCols func(table string, keyCols []string) []string) []stmt {
	var out []stmt
	for start := 0; start < len(ops); {
		if o := ops[start]; o.op == opSQL { // raw SQL keeps its place
			out = append(out, stmt{op: opSQL, raw: o.raw, args: o.args})
			start++
			continue
		}
		end := start + 1
		for end < len(ops) && ops[end].op != opSQL && ops[end].table == ops[start].table && slices.Equal(ops[end].keyCols, ops[start].keyCols) {
			end++
		}
		out = append(out, planRun(ops[start:end], upsertCols)...)
		start = end
	}
	return out
}

func planRun(run []rowOp, upsertCols func(string, []string) []string) []stmt {
	table, keyCols := run[0].table, run[0].keyCols
	rows := make([]folded, 0, len(run)) // in the order keys first appear
	byKey := make(map[string]int, len(run))
	for i := range run {
		op := &run[i]
		k := op.key[0]
		if len(op.key) > 1 {
			k = strings.Join(op.key, "\x00")
		}
		j, seen := byKey[k]
		if !seen {
			byKey[k] = len(rows)
			rows = append(rows, folded{op: op.op, key: op.key, cols: op.cols, pos: op.pos})
			continue
		}
		prev := &rows[j]
		switch {
		case op.op == ActionUpsert || op.op == ActionDelete:
			*prev = folded{op: op.op, key: op.key, cols: op.cols, pos: op.pos}
		case prev.op == ActionDelete: // patch on a deleted row: the row is the patch
			*prev = folded{op: ActionUpsert, key: op.key, cols: op.cols, pos: op.pos}
		default: // patch on an upsert or a patch: merge, later columns win
			prev.cols, prev.pos = mergeCols(prev.cols, op.cols), op.pos
		}
	}

	var del, ups *stmt
	patches := map[string]*stmt{}
	var patchOrder []string
	var sig []byte
	for i := range rows {
		f := &rows[i]
		switch f.op {
		case ActionDelete:
			if del == nil {
				del = &stmt{op: ActionDelete, table: table, keyCols: keyCols}
			}
			del.rows = append(del.rows, stmtRow{key: f.key, pos: f.pos})
		case ActionUpsert:
			if ups == nil {
				ups = &stmt{op: ActionUpsert, table: table, keyCols: keyCols, cols: upsertCols(table, keyCols)}
			}
			ups.add(f)
		case ActionPatch:
			sig = sig[:0]
			for _, c := range f.cols {
				sig = append(append(sig, c.name...), 0)
			}
			s := patches[string(sig)] // no allocation for the lookup
			if s == nil {
				cols := make([]string, len(f.cols))
				for j, c := range f.cols {
					cols[j] = c.name
				}
				s = &stmt{op: ActionPatch, table: table, keyCols: keyCols, cols: cols}
				patches[string(sig)] = s
				patchOrder = append(patchOrder, string(sig))
			}
			s.add(f)
		}
	}
	var out []stmt
	if del != nil {
		out = append(out, *del)
	}
	if ups != nil {
		out = append(out, *ups)
	}
	for _, sig := range patchOrder {
		out = append(out, *patches[sig])
	}
	return out
}

// add appends f as a row of s: its value for each of s's columns, NULL
// where f has none. Both column lists are sorted.
func (s *stmt) add(f *folded) {
	s.rows = append(s.rows, stmtRow{key: f.key, pos: f.pos})
	j := 0
	for _, c := range s.cols {
		for j < len(f.cols) && f.cols[j].name < c {
			j++
		}
		if j < len(f.cols) && f.cols[j].name == c {
			s.vals = append(s.vals, f.cols[j].ptr())
		} else {
			s.vals = append(s.vals, nil)
		}
	}
}

// mergeCols is a's columns updated and extended by b's (both sorted).
func mergeCols(a, b []colVal) []colVal {
	out := make([]colVal, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].name < b[j].name):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j].name < a[i].name:
			out = append(out, b[j])
			j++
		default: // the same column: the later write wins
			out = append(out, b[j])
			i++
			j++
		}
	}
	return out
}
