// Package config loads a service's YAML file strictly (unknown keys are
// errors that name the key), applies environment overrides and validates.
package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Validator is implemented by every service's config struct. Validate reports
// every problem at once, as KeyErrors joined with errors.Join.
type Validator interface {
	Validate() error
}

// Load fills cfg (already holding its defaults) from the YAML file at path
// (skipped when path is empty), then from environment variables named
// envPrefix + "_" + the upper-cased key path with "_" between levels
// (JETSYNC_NATS_URL for nats.url), then validates it.
func Load(path, envPrefix string, cfg Validator) error {
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%w: reading config file: %v", ErrInvalid, err)
		}
		if err := Decode(raw, cfg); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	if envPrefix != "" {
		if err := ApplyEnv(envPrefix, cfg); err != nil {
			return err
		}
	}
	return cfg.Validate()
}

// Decode reads YAML into cfg, rejecting unknown keys by their full path.
func Decode(raw []byte, cfg any) error {
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(root.Content) == 0 { // empty file: keep the defaults
		return nil
	}
	var p Problems
	budget := maxNodes
	checkKeys(root.Content[0], reflect.TypeOf(cfg), "", &p, &budget)
	if err := p.Err(); err != nil {
		return err
	}
	// Decode the checked tree: checkKeys rejected unknown keys and
	// normalised values it understands.
	if err := root.Decode(cfg); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalid, strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  "))
	}
	return nil
}

// maxNodes bounds how many YAML values checkKeys visits: aliases can make a
// small file expand exponentially.
const maxNodes = 1_000_000

// checkKeys walks the YAML tree next to the Go type and reports every mapping
// key the type does not have, with its dotted path, line and the valid keys.
func checkKeys(n *yaml.Node, t reflect.Type, path string, p *Problems, budget *int) {
	if *budget--; *budget == 0 {
		p.Addf(path, "the document expands to more than %d values (aliases of aliases?); write it out plainly", maxNodes)
	}
	if *budget <= 0 {
		return
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		if err := checkScalar(n, t); err != nil {
			p.Addf(path, "%v (line %d)", err, n.Line)
		}
		return
	}
	if _, custom := reflect.New(t).Interface().(yaml.Unmarshaler); custom {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			p.Addf(path, "expects a mapping of keys (line %d)", n.Line)
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			if !ok {
				p.Addf(join(path, k.Value), "unknown key (line %d); valid keys here: %s", k.Line, strings.Join(sortedKeys(fields), ", "))
				continue
			}
			checkKeys(v, f.Type, join(path, k.Value), p, budget)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			p.Addf(path, "expects a mapping (line %d)", n.Line)
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			checkKeys(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), p, budget)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			p.Addf(path, "expects a list (line %d)", n.Line)
			return
		}
		for i, c := range n.Content {
			checkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), p, budget)
		}
	}
}

// checkScalar checks a scalar against the Go type it will fill, so that a
// wrong value is reported with its key rather than as a bare type error.
func checkScalar(n *yaml.Node, t reflect.Type) error {
	switch {
	case t == durationType:
		if n.Tag == "!!int" && n.Value == "0" {
			// "max_age: 0" means no duration; yaml cannot put an integer
			// into a time.Duration, so read it as "0s".
			n.Tag, n.Value = "!!str", "0s"
			return nil
		}
		if _, err := time.ParseDuration(n.Value); err != nil {
			return fmt.Errorf("%q is not a duration; write it like 500ms, 10s or 2m", n.Value)
		}
		return nil
	case t == byteSizeType:
		if n.Tag == "!!int" {
			return nil
		}
		_, err := ParseByteSize(n.Value)
		return err
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		if _, err := strconv.ParseInt(n.Value, 0, 64); err != nil {
			return fmt.Errorf("%q is not an integer", n.Value)
		}
	case reflect.Uint, reflect.Uint64, reflect.Uint32:
		if _, err := strconv.ParseUint(n.Value, 0, 64); err != nil {
			return fmt.Errorf("%q is not a non-negative integer", n.Value)
		}
	case reflect.Bool:
		if n.Tag != "!!bool" {
			return fmt.Errorf("%q is not a boolean; use true or false", n.Value)
		}
	case reflect.Struct, reflect.Map, reflect.Slice:
		return fmt.Errorf("expects a %s, got the single value %q", map[reflect.Kind]string{reflect.Struct: "mapping of keys", reflect.Map: "mapping", reflect.Slice: "list"}[t.Kind()], n.Value)
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields maps each YAML key of struct type t to its field; the fields
// of an embedded `yaml:",inline"` struct count as the outer struct's own.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if opts == "inline" && f.Type.Kind() == reflect.Struct {
			for k, inner := range yamlFields(f.Type) {
				inner.Index = append([]int{i}, inner.Index...)
				out[k] = inner
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f
	}
	return out
}

func sortedKeys(m map[string]reflect.StructField) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	byteSizeType = reflect.TypeOf(ByteSize(0))
)

// ApplyEnv overrides scalar fields (and string lists, comma-separated) from
// the environment. Maps and lists of structs are left to the file.
func ApplyEnv(prefix string, cfg any) error {
	var p Problems
	applyEnv(reflect.ValueOf(cfg).Elem(), prefix, "", &p)
	return p.Err()
}

func applyEnv(v reflect.Value, env, key string, p *Problems) {
	if v.Kind() == reflect.Struct && v.Type() != durationType {
		for name, f := range yamlFields(v.Type()) {
			applyEnv(v.FieldByIndex(f.Index), env+"_"+strings.ToUpper(name), join(key, name), p)
		}
		return
	}
	raw, ok := os.LookupEnv(env)
	if !ok {
		return
	}
	if err := setScalar(v, raw); err != nil {
		p.Addf(key, "environment variable %s=%q: %v", env, raw, err)
	}
}

func setScalar(v reflect.Value, raw string) error {
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(raw)
		if err != nil {
			return errors.New("not a duration; write it like 500ms, 10s or 2m")
		}
		v.SetInt(int64(d))
		return nil
	case v.Type() == byteSizeType:
		b, err := ParseByteSize(raw)
		if err != nil {
			return err
		}
		v.SetInt(int64(b))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return errors.New("not a boolean; use true or false")
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		i, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return errors.New("not an integer")
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint64, reflect.Uint32:
		i, err := strconv.ParseUint(raw, 10, 64)
		if err != nil {
			return errors.New("not a non-negative integer")
		}
		v.SetUint(i)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return errors.New("this key can only be set in the config file")
		}
		parts := strings.Split(raw, ",")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		v.Set(reflect.ValueOf(parts))
	default:
		return errors.New("this key can only be set in the config file")
	}
	return nil
}
