package relational

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
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

// rowOp is one row write an event asks for. Column values are the text
// PostgreSQL casts to the column's type; nil is NULL.
type rowOp struct {
	op      string
	where   string // the action's config key
	ev      int    // index of the event in the batch
	table   string
	keyCols []string
	key     []string
	cols    map[string]*string // upsert, patch
	pos     uint64
	raw     *rawSQL // op "sql"
	args    []any   // op "sql": the parameters
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
}

type stmtRow struct {
	key  []string
	vals []*string // by cols
	pos  uint64
}

// buildOps maps a batch's events to row writes, in event order. Events the
// mappings refuse (a projection error, no object, an unknown column) are
// returned as failures and write nothing. columns says which columns a
// table has (besides _position); nil means any.
func buildOps(ctx context.Context, b *sink.Batch, maps map[string][]action, unknownErr bool, columns func(table string) map[string]bool) ([]rowOp, []sink.EventFailure) {
	var ops []rowOp
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
		if ops, err = eventOps(ctx, ops, ev, acts, columns); err != nil {
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
func eventOps(ctx context.Context, out []rowOp, ev *envelope.Event, acts []action, columns func(string) map[string]bool) ([]rowOp, error) {
	in := mapping.NewInput(ev) // shared by the event's projections
	for _, a := range acts {
		if a.raw != nil {
			op, err := rawOp(ctx, a, in)
			if err != nil {
				return out, err
			}
			out = append(out, op)
			continue
		}
		op := rowOp{op: a.op, where: a.where, table: a.table, keyCols: a.keyCols, pos: ev.Position, key: make([]string, len(a.keyTmpl))}
		for i, t := range a.keyTmpl {
			op.key[i] = t.Render(ev)
		}
		if a.op != ActionDelete {
			v, err := projectOrData(ctx, a.project, in)
			if err != nil {
				return out, fmt.Errorf("%s: %w", a.where, err)
			}
			m, ok := v.(map[string]any)
			if !ok {
				return out, fmt.Errorf("%s: %w: the row must be an object of columns, got %s", a.where, ErrNotObject, typeName(v))
			}
			var known map[string]bool
			if columns != nil {
				known = columns(a.table)
			}
			op.cols = make(map[string]*string, len(m))
			for col, val := range m {
				if slices.Contains(a.keyCols, col) || col == PositionColumn {
					continue // the key comes from the key templates
				}
				if known != nil && !known[col] {
					return out, fmt.Errorf("%s: %w %q in table %s", a.where, ErrUnknownColumn, col, a.table)
				}
				s, err := toText(val)
				if err != nil {
					return out, fmt.Errorf("%s: column %s: %w", a.where, col, err)
				}
				op.cols[col] = s
			}
		}
		out = append(out, op)
	}
	return out, nil
}

// toText is a JSON value as the text PostgreSQL casts to a column type:
// strings as they are, numbers and booleans as literals, objects and
// arrays as JSON (for json/jsonb columns), null as NULL.
func toText(v any) (*string, error) {
	var s string
	switch x := v.(type) {
	case nil:
		return nil, nil
	case string:
		s = x
	case json.Number:
		s = x.String()
	case bool:
		s = fmt.Sprint(x)
	case int, int64, float64:
		s = fmt.Sprint(x)
	default:
		b, err := mapping.Marshal(x)
		if err != nil {
			return nil, err
		}
		s = string(b)
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
	cols map[string]*string
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
	var order []string
	byKey := map[string]*folded{}
	for _, op := range run {
		k := strings.Join(op.key, "\x00")
		prev := byKey[k]
		if prev == nil {
			order = append(order, k)
			f := &folded{op: op.op, key: op.key, cols: op.cols, pos: op.pos}
			byKey[k] = f
			continue
		}
		switch {
		case op.op == ActionUpsert || op.op == ActionDelete:
			*prev = folded{op: op.op, key: op.key, cols: op.cols, pos: op.pos}
		case prev.op == ActionDelete: // patch on a deleted row: the row is the patch
			*prev = folded{op: ActionUpsert, key: op.key, cols: op.cols, pos: op.pos}
		default: // patch on an upsert or a patch: merge, later columns win
			merged := make(map[string]*string, len(prev.cols)+len(op.cols))
			for c, v := range prev.cols {
				merged[c] = v
			}
			for c, v := range op.cols {
				merged[c] = v
			}
			prev.cols, prev.pos = merged, op.pos
		}
	}

	var del, ups *stmt
	patches := map[string]*stmt{}
	var patchOrder []string
	for _, k := range order {
		f := byKey[k]
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
			ups.rows = append(ups.rows, row(f, ups.cols))
		case ActionPatch:
			cols := sortedKeys(f.cols)
			sig := strings.Join(cols, ",")
			s := patches[sig]
			if s == nil {
				s = &stmt{op: ActionPatch, table: table, keyCols: keyCols, cols: cols}
				patches[sig] = s
				patchOrder = append(patchOrder, sig)
			}
			s.rows = append(s.rows, row(f, cols))
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

func row(f *folded, cols []string) stmtRow {
	r := stmtRow{key: f.key, pos: f.pos, vals: make([]*string, len(cols))}
	for i, c := range cols {
		r.vals[i] = f.cols[c]
	}
	return r
}

// projectOrData is p's output for the event, or its data without p.
func projectOrData(ctx context.Context, p *mapping.Projection, in *mapping.Input) (any, error) {
	if p != nil {
		return p.Run(ctx, in)
	}
	obj, err := in.Object()
	if err != nil {
		return nil, err
	}
	return obj["data"], nil
}
