package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// Diff returns the keys (dotted YAML paths, sorted) whose values differ
// between a and b, two values of the same config type: a struct by its
// YAML keys (those of an inline struct at its own level), a map by entry
// (added, removed or changed, as "mappings.OrderPlaced"), anything else
// (lists, scalars) as a whole. A service reloading its file compares the
// running config with the new one this way, then applies what it can.
func Diff(a, b any) []string {
	var out []string
	diff(reflect.ValueOf(a), reflect.ValueOf(b), "", &out)
	sort.Strings(out)
	return out
}

func diff(a, b reflect.Value, path string, out *[]string) {
	for a.IsValid() && b.IsValid() && (a.Kind() == reflect.Pointer || a.Kind() == reflect.Interface) && a.Kind() == b.Kind() {
		if a.IsNil() || b.IsNil() {
			break
		}
		a, b = a.Elem(), b.Elem()
	}
	switch {
	case !a.IsValid() || !b.IsValid() || a.Type() != b.Type():
		if a.IsValid() != b.IsValid() || !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
	case a.Kind() == reflect.Struct && a.Type() != durationType:
		fields := yamlFields(a.Type())
		for _, name := range sortedKeys(fields) {
			f := fields[name]
			diff(a.FieldByIndex(f.Index), b.FieldByIndex(f.Index), join(path, name), out)
		}
	case a.Kind() == reflect.Map && a.Type().Key().Kind() == reflect.String:
		keys := map[string]reflect.Value{}
		for _, k := range a.MapKeys() {
			keys[k.String()] = k
		}
		for _, k := range b.MapKeys() {
			keys[k.String()] = k
		}
		for name, k := range keys {
			diff(a.MapIndex(k), b.MapIndex(k), join(path, name), out)
		}
	case !reflect.DeepEqual(a.Interface(), b.Interface()):
		*out = append(*out, path)
	}
}

// SplitKeys separates keys (as Diff returns them) into those at or under
// one of live (keys a running service can apply) and the rest.
func SplitKeys(keys []string, live ...string) (applied, rest []string) {
	for _, k := range keys {
		if under(k, live) {
			applied = append(applied, k)
		} else {
			rest = append(rest, k)
		}
	}
	return applied, rest
}

func under(key string, prefixes []string) bool {
	for _, p := range prefixes {
		if key == p || strings.HasPrefix(key, p+".") || strings.HasPrefix(key, p+"[") {
			return true
		}
	}
	return false
}

// NeedsRestart is the error for keys a running service cannot apply: it
// wraps ErrNeedsRestart and names them.
func NeedsRestart(keys []string) error {
	return fmt.Errorf("%w: %s; restart to apply them, or undo them to reload the rest",
		ErrNeedsRestart, strings.Join(keys, ", "))
}

// Changes compares a running config with next, the same file loaded again:
// it returns the keys at or under live that changed, or, when other keys
// changed too, an error naming those (wrapping ErrNeedsRestart).
func Changes(running, next any, live ...string) ([]string, error) {
	applied, rest := SplitKeys(Diff(running, next), live...)
	if len(rest) > 0 {
		return nil, NeedsRestart(rest)
	}
	return applied, nil
}
