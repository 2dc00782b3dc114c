package relational

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/itchyny/gojq"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jetsync/jetsync/pkg/config"
	"github.com/jetsync/jetsync/pkg/mapping"
	"github.com/jetsync/jetsync/pkg/sink"
)

// opSQL is the op of a raw SQL mapping action (an Action with sql: set).
const opSQL = "sql"

// rawSQL is a compiled raw SQL statement: the user's SQL with its :name
// parameters rewritten to $1, $2, ... (names[i] is $i+1), and the jq
// program producing the parameters object.
type rawSQL struct {
	text   string
	names  []string
	params *mapping.Projection // nil: the event data
}

// compileRaw checks a raw SQL action and rewrites its parameters. When
// params is a literal object ({amount: .data.amount, id: .streamId}), the
// parameter names are checked against its keys here; otherwise at run time.
func compileRaw(key string, a Action, act *action, p *config.Problems) {
	for _, k := range []struct{ name, val string }{{"action", a.Action}, {"table", a.Table}, {"project", a.Project}} {
		if k.val != "" {
			p.Addf(key+"."+k.name, "is not allowed with sql: a raw SQL action writes what its statement says")
		}
	}
	if len(a.Key) > 0 {
		p.Addf(key+".key", "is not allowed with sql: a raw SQL action writes what its statement says")
	}
	text, names, err := rewriteParams(a.SQL)
	if err != nil {
		p.Addf(key+".sql", "%v", err)
		return
	}
	raw := &rawSQL{text: text, names: names}
	if a.Params != "" {
		code, err := mapping.CompileProjection(a.Params)
		if err != nil {
			p.Addf(key+".params", "%v", err)
			return
		}
		raw.params = code
		if keys, ok := literalKeys(a.Params); ok {
			for _, n := range names {
				if !slices.Contains(keys, n) {
					p.Addf(key+".params", "does not give :%s, which the sql uses", n)
				}
			}
			for _, k := range keys {
				if !slices.Contains(names, k) {
					p.Addf(key+".params", "gives %q, which the sql does not use (write :%s in it)", k, k)
				}
			}
		}
	}
	act.op, act.raw = opSQL, raw
}

// literalKeys returns the keys of a jq program that is one object
// construction with literal keys, such as {amount: .data.amount, id: .streamId}.
func literalKeys(expr string) ([]string, bool) {
	q, err := gojq.Parse(expr)
	if err != nil || q.Term == nil || q.Left != nil || q.Right != nil || len(q.FuncDefs) > 0 ||
		q.Term.Type != gojq.TermTypeObject || len(q.Term.SuffixList) > 0 {
		return nil, false
	}
	var keys []string
	for _, kv := range q.Term.Object.KeyVals {
		switch {
		case kv.Key != "" && !strings.HasPrefix(kv.Key, "$"):
			keys = append(keys, kv.Key)
		case kv.KeyString != nil && len(kv.KeyString.Queries) == 0:
			keys = append(keys, kv.KeyString.Str)
		default:
			return nil, false
		}
	}
	return keys, true
}

// rewriteParams turns :name parameters into $n, the same name into the same
// $n. It leaves alone what is not a parameter: :: casts, string literals
// ('...', E'...', $tag$...$tag$), quoted identifiers and comments.
// Positional $1 parameters are refused: they would collide with the
// rewritten ones.
func rewriteParams(sql string) (string, []string, error) {
	if strings.TrimSpace(sql) == "" {
		return "", nil, fmt.Errorf("is empty")
	}
	var b strings.Builder
	var names []string
	isStart := func(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '\'': // string literal; '' inside; backslash escapes after E
			escapes := i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e') && (i == 1 || !isPart(sql[i-2]))
			j := i + 1
			for ; j < len(sql); j++ {
				if escapes && sql[j] == '\\' {
					j++
					continue
				}
				if sql[j] == '\'' {
					if j+1 < len(sql) && sql[j+1] == '\'' {
						j++
						continue
					}
					break
				}
			}
			if j >= len(sql) {
				return "", nil, fmt.Errorf("has an unterminated string literal")
			}
			b.WriteString(sql[i : j+1])
			i = j + 1
		case c == '"':
			j := strings.IndexByte(sql[i+1:], '"')
			if j < 0 {
				return "", nil, fmt.Errorf("has an unterminated quoted identifier")
			}
			b.WriteString(sql[i : i+j+2])
			i += j + 2
		case c == '-' && strings.HasPrefix(sql[i:], "--"):
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			b.WriteString(sql[i : i+j])
			i += j
		case c == '/' && strings.HasPrefix(sql[i:], "/*"):
			depth, j := 0, i
			for j < len(sql) {
				if strings.HasPrefix(sql[j:], "/*") {
					depth, j = depth+1, j+2
				} else if strings.HasPrefix(sql[j:], "*/") {
					depth, j = depth-1, j+2
					if depth == 0 {
						break
					}
				} else {
					j++
				}
			}
			if depth != 0 {
				return "", nil, fmt.Errorf("has an unterminated /* comment")
			}
			b.WriteString(sql[i:j])
			i = j
		case c == '$' && (i == 0 || !isPart(sql[i-1])):
			j := i + 1
			for j < len(sql) && isPart(sql[j]) {
				j++
			}
			if j < len(sql) && sql[j] == '$' && (j == i+1 || isStart(sql[i+1])) { // $tag$ ... $tag$
				tag := sql[i : j+1]
				end := strings.Index(sql[j+1:], tag)
				if end < 0 {
					return "", nil, fmt.Errorf("has an unterminated %s string", tag)
				}
				stop := j + 1 + end + len(tag)
				b.WriteString(sql[i:stop])
				i = stop
				continue
			}
			if i+1 < len(sql) && sql[i+1] >= '0' && sql[i+1] <= '9' {
				return "", nil, fmt.Errorf("uses a positional parameter ($%c...): name it instead, e.g. :amount, and give it in params", sql[i+1])
			}
			b.WriteByte(c)
			i++
		case c == ':' && i+1 < len(sql) && sql[i+1] == ':': // a cast
			b.WriteString("::")
			i += 2
		case c == ':' && i+1 < len(sql) && isStart(sql[i+1]):
			j := i + 1
			for j < len(sql) && isPart(sql[j]) {
				j++
			}
			name := sql[i+1 : j]
			n := slices.Index(names, name)
			if n < 0 {
				names = append(names, name)
				n = len(names) - 1
			}
			fmt.Fprintf(&b, "$%d", n+1)
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), names, nil
}

// rawOp maps one event through a raw SQL action: its parameters, as the
// text PostgreSQL casts to each parameter's type (nil is NULL).
func rawOp(ctx context.Context, a action, in *mapping.Input) (rowOp, error) {
	ev := in.Event
	v, err := projectOrData(ctx, a.raw.params, in)
	if err != nil {
		return rowOp{}, fmt.Errorf("%s.params: %w", a.where, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return rowOp{}, fmt.Errorf("%s.params: %w: the parameters must be an object, got %s", a.where, ErrNotObject, typeName(v))
	}
	args := make([]any, len(a.raw.names))
	for i, n := range a.raw.names {
		val, ok := m[n]
		if !ok {
			return rowOp{}, fmt.Errorf("%s.params: %w :%s (it gave %s)", a.where, ErrMissingParam, n, strings.Join(sortedKeys(m), ", "))
		}
		s, err := toParam(val)
		if err != nil {
			return rowOp{}, fmt.Errorf("%s.params: :%s: %w", a.where, n, err)
		}
		args[i] = s
	}
	for k := range m {
		if !slices.Contains(a.raw.names, k) {
			return rowOp{}, fmt.Errorf("%s.params: %w %q", a.where, ErrUnusedParam, k)
		}
	}
	return rowOp{op: opSQL, where: a.where, raw: a.raw, args: args, pos: ev.Position}, nil
}

// checkRawSQL prepares every raw SQL statement of maps once, so that a
// statement PostgreSQL refuses (a syntax error, a missing table or column)
// stops the sink at start, naming its key.
func checkRawSQL(ctx context.Context, pool *pgxpool.Pool, maps map[string][]action) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return classify(err, "checking the sql mappings")
	}
	defer conn.Release()
	for _, typ := range sortedKeys(maps) {
		for _, a := range maps[typ] {
			if a.raw == nil {
				continue
			}
			if _, err := conn.Conn().Prepare(ctx, "", a.raw.text); err != nil {
				if refused(err) || isPermanentSQL(err) {
					return sink.Permanent(fmt.Errorf("%w: %s.sql: postgres refuses the statement: %w", ErrSchema, a.where, err))
				}
				return classify(err, "checking "+a.where+".sql")
			}
		}
	}
	return nil
}

// refused tells a value PostgreSQL refuses for good (SQLSTATE classes 22
// data exception and 23 integrity constraint violation): the fault of an
// event, not of the database.
func refused(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23"))
}

// isPermanentSQL tells a statement PostgreSQL refuses whatever the data
// (class 42: syntax error, undefined table or column, wrong types).
func isPermanentSQL(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "42")
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
