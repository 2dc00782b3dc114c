package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/jetsync/jetsync/pkg/config"
)

// FuzzConfig loads arbitrary sink-cache config files the way the service
// does (config.Decode over the defaults, then Validate): never a panic;
// every problem wraps config.ErrInvalid and names its key; and a config
// that validates must build a writer (Validate and NewWriter agree).
//
//	go test -run='^$' -fuzz='^FuzzConfig$' -fuzztime=10s ./services/sink-cache/cache
func FuzzConfig(f *testing.F) {
	if example, err := os.ReadFile("../sink-cache.example.yaml"); err == nil {
		f.Add(example)
	}
	for _, s := range []string{
		"mappings: {OrderPlaced: [{op: set, key: \"order:{streamId}\"}]}\n",
		"name: c\nredis: {addr: 127.0.0.1:6379, db: 2, checkpoint_key: \"cp:{sink}\"}\nmappings: {T: [{op: del, key: k}]}\n",
		"mappings: {T: [{op: incr, key: \"s:{category}\", field: \"{type}\"}]}\n",
		"mappings: {T: [{op: append, key: \"l:{streamId}\", value: \"{position}\"}]}\n",
		"mappings: {T: [{op: set, key: k, project: '{a: .data.x}', ttl: 1h}]}\n",
		"mappings: {T: [{op: hset, key: \"{{{streamId}}}\"}]}\n",
		"mappings: {}\n",
		"mappings: {T: []}\n",
		"mappings: {T: [{op: upsert, key: k}]}\n",
		"mappings: {T: [{op: set}]}\n",
		"mappings: {T: [{op: set, key: \"order:{stream}\"}]}\n",
		"mappings: {T: [{op: set, key: \"order:{streamId\"}]}\n",
		"mappings: {T: [{op: set, key: k, project: '.data |'}]}\n",
		"mappings: {T: [{op: set, key: k, project: '$ENV.PATH'}]}\n",
		"mappings: {T: [{op: del, key: k, ttl: 1m}]}\n",
		"mappings: {T: [{op: set, key: k, ttl: 1us}]}\n",
		"mappings: {T: [{op: incr, key: k}]}\n",
		"mappings: {T: [{op: set, key: k, field: f, value: v}]}\n",
		"mappings: {T: [{op: append, key: k, value: v, project: .data}]}\n",
		"mappings: {\"\": [{op: set, key: k}]}\n",
		"name: a.b\nredis: {addr: nowhere, db: -1, checkpoint_key: \"{id}\"}\nunknown_types: explode\nmappings: {T: [{op: set, key: k}]}\n",
		"batch: {max_evnts: 10}\n",
		"redis: {adr: x}\n",
		"filters: [orders.>]\nmappings: {T: [{op: set, key: k}]}\n",
		"on_error: retry\nmappings: {T: [{op: set, key: k}]}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg := DefaultConfig()
		err := config.Decode(raw, &cfg)
		if err == nil {
			err = cfg.Validate()
			if err == nil {
				if _, err := NewWriter(cfg, nil); err != nil {
					t.Fatalf("Validate accepted the config but NewWriter refuses it: %v", err)
				}
				return
			}
		}
		if !errors.Is(err, config.ErrInvalid) {
			t.Fatalf("error %q does not wrap config.ErrInvalid", err)
		}
		for _, e := range leaves(err) {
			var ke *config.KeyError
			if errors.As(e, &ke) && ke.Key == "" && ke.Reason == "" {
				t.Fatalf("problem %q names no key and no reason", e)
			}
		}
	})
}

func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, leaves(e)...)
		}
		return out
	}
	return []error{err}
}

// hashArgsReference is how merge and hset decoded the data before the
// single-pass hashArgsFromObject: into a map, then each string value.
func hashArgsReference(key string, data []byte) (map[string]string, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for f, raw := range fields {
		if len(raw) > 0 && raw[0] == '"' {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return nil, err
			}
			out[f] = s
			continue
		}
		out[f] = string(raw)
	}
	return out, nil
}

// FuzzHashArgs checks the fast path of merge and hset against decoding
// with encoding/json: the same error, or the same fields and values once
// HSET applied them in order (a repeated field keeps its last value).
//
//	go test -run='^$' -fuzz='^FuzzHashArgs$' -fuzztime=10s ./services/sink-cache/cache
func FuzzHashArgs(f *testing.F) {
	for _, s := range []string{
		`{"status":"paid","total":12.5,"items":[1,2,{"a":"]"}],"ok":true,"none":null}`,
		`{}`, ` { "a" : "b" , "c" : { "d" : [ "}" ] } } `, `{"a":1,"a":2}`, `{"esc\"aped":"new\nline \u00e9 \ud83d\ude00"}`,
		`{"bad utf8":"` + "\xff" + `"}`, `{"` + "\xfe" + `":1}`, `{"a":-1e-7,"b":"","c":[]}`, "{\"t\":\"\t\"}",
		`[1,2]`, `"str"`, `null`, `{bad`, `{"a":1`, `{"a":1}x`, ``, ` `, `{"a" 1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		args, err := hashArgsFromJSON("k", data)
		want, refErr := hashArgsReference("k", data)
		rest := trimLeft(data)
		object := len(rest) > 0 && rest[0] == '{' // else the reference may decode what merge refuses (null)
		switch {
		case err != nil && (refErr != nil || !object):
			if !errors.Is(err, ErrNotObject) {
				t.Fatalf("error %q does not wrap ErrNotObject", err)
			}
			return
		case err != nil:
			t.Fatalf("hashArgsFromJSON(%q) failed (%v) where decoding gives %v", data, err, want)
		case refErr != nil:
			t.Fatalf("hashArgsFromJSON(%q) = %q where decoding fails: %v", data, args, refErr)
		}
		if len(args) < 2 || args[0] != "hset" || args[1] != "k" || len(args)%2 != 0 {
			t.Fatalf("args %q", args)
		}
		got := map[string]string{}
		for i := 2; i < len(args); i += 2 {
			f, ok := args[i].(string)
			if !ok {
				t.Fatalf("field %v is a %T", args[i], args[i])
			}
			switch v := args[i+1].(type) {
			case string:
				got[f] = v
			case []byte:
				got[f] = string(v)
			default:
				t.Fatalf("value %v is a %T", v, v)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("hashArgsFromJSON(%q):\n got %q\nwant %q", data, got, want)
		}
	})
}

func trimLeft(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r' || b[0] == '\n') {
		b = b[1:]
	}
	return b
}
