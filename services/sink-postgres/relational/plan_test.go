package relational

import (
	"fmt"
	"strings"
	"testing"
)

func s(v string) *string { return &v }

// cv is a row's columns as rowOp holds them, sorted by name.
func cv(m map[string]*string) []colVal {
	var out []colVal
	for _, name := range sortedKeys(m) {
		if m[name] == nil {
			out = append(out, colVal{name: name, null: true})
		} else {
			out = append(out, colVal{name: name, val: *m[name]})
		}
	}
	return out
}

func show(stmts []stmt) string {
	var b strings.Builder
	for _, st := range stmts {
		fmt.Fprintf(&b, "%s %s %v:", st.op, st.table, st.cols)
		for i, r := range st.rows {
			fmt.Fprintf(&b, " %v@%d", r.key, r.pos)
			for _, v := range st.vals[i*len(st.cols) : (i+1)*len(st.cols)] {
				if v == nil {
					b.WriteString(" NULL")
				} else {
					b.WriteString(" " + *v)
				}
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// TestPlanFoldsKeysAndKeepsRunsInOrder: repeated keys within a run of one
// table fold into one write per row equal to the writes in order; a write
// to another table starts a new run.
func TestPlanFoldsKeysAndKeepsRunsInOrder(t *testing.T) {
	k := []string{"id"}
	ops := []rowOp{
		{op: ActionUpsert, table: "a", keyCols: k, key: []string{"1"}, cols: cv(map[string]*string{"x": s("1")}), pos: 1},
		{op: ActionPatch, table: "a", keyCols: k, key: []string{"1"}, cols: cv(map[string]*string{"y": s("2")}), pos: 2},
		{op: ActionPatch, table: "a", keyCols: k, key: []string{"2"}, cols: cv(map[string]*string{"y": s("3")}), pos: 3},
		{op: ActionDelete, table: "a", keyCols: k, key: []string{"3"}, pos: 4},
		{op: ActionPatch, table: "a", keyCols: k, key: []string{"3"}, cols: cv(map[string]*string{"x": s("5")}), pos: 5},
		{op: ActionUpsert, table: "a", keyCols: k, key: []string{"4"}, cols: cv(map[string]*string{"x": s("6")}), pos: 6},
		{op: ActionDelete, table: "a", keyCols: k, key: []string{"4"}, pos: 7},
		{op: ActionUpsert, table: "b", keyCols: k, key: []string{"1"}, cols: cv(map[string]*string{}), pos: 8},
		{op: ActionDelete, table: "a", keyCols: k, key: []string{"1"}, pos: 9},
	}
	got := show(plan(ops, func(string, []string) []string { return []string{"x", "y"} }))
	want := "" +
		"delete a []: [4]@7\n" +
		"upsert a [x y]: [1]@2 1 2 [3]@5 5 NULL\n" +
		"patch a [y]: [2]@3 3\n" +
		"upsert b [x y]: [1]@8 NULL NULL\n" +
		"delete a []: [1]@9\n"
	if got != want {
		t.Errorf("got\n%swant\n%s", got, want)
	}
}

// TestPlanPatchesGroupedByColumns: patches of different column sets are
// separate statements; rows with the same set share one.
func TestPlanPatchesGroupedByColumns(t *testing.T) {
	k := []string{"id"}
	ops := []rowOp{
		{op: ActionPatch, table: "a", keyCols: k, key: []string{"1"}, cols: cv(map[string]*string{"x": s("1")}), pos: 1},
		{op: ActionPatch, table: "a", keyCols: k, key: []string{"2"}, cols: cv(map[string]*string{"y": nil}), pos: 2},
		{op: ActionPatch, table: "a", keyCols: k, key: []string{"3"}, cols: cv(map[string]*string{"x": s("3")}), pos: 3},
	}
	got := show(plan(ops, nil))
	want := "patch a [x]: [1]@1 1 [3]@3 3\npatch a [y]: [2]@2 NULL\n"
	if got != want {
		t.Errorf("got\n%swant\n%s", got, want)
	}
}
