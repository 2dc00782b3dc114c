package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// fuzzConfig has every kind of field a service config uses: scalars,
// durations, sizes, lists, maps, nested and inline structs, lists of
// structs and a pointer.
type fuzzConfig struct {
	FuzzShared `yaml:",inline"`
	Port       int               `yaml:"port"`
	Count      uint64            `yaml:"count"`
	Enabled    bool              `yaml:"enabled"`
	Timeout    time.Duration     `yaml:"timeout"`
	Size       ByteSize          `yaml:"size"`
	Tags       []string          `yaml:"tags"`
	Limits     map[string]int    `yaml:"limits"`
	Labels     map[string]string `yaml:"labels"`
	Nested     struct {
		URL   string `yaml:"url"`
		Retry struct {
			Max time.Duration `yaml:"max"`
		} `yaml:"retry"`
	} `yaml:"nested"`
	Items []struct {
		Op  string        `yaml:"op"`
		TTL time.Duration `yaml:"ttl"`
	} `yaml:"items"`
	Mappings map[string][]struct {
		Key string `yaml:"key"`
	} `yaml:"mappings"`
	Ptr *struct {
		A int `yaml:"a"`
	} `yaml:"ptr"`
	Skipped string `yaml:"-"`
}

type FuzzShared struct {
	Name string `yaml:"name"`
}

// FuzzDecode feeds arbitrary YAML to Decode: it must never panic, and every
// error must wrap ErrInvalid (a bad file, exit code 2), with an unknown or
// malformed key named by its path.
//
//	go test -run='^$' -fuzz='^FuzzDecode$' -fuzztime=10s ./pkg/config
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"name: cache\nport: 8080\ncount: 3\nenabled: true\ntimeout: 1.5s\nsize: 4MiB\ntags: [a, b]\nlimits: {x: 1}\nnested: {url: nats://x, retry: {max: 5s}}\nitems: [{op: set, ttl: 1m}]\nmappings: {T: [{key: 'k:{id}'}]}\nptr: {a: 1}\n",
		"",
		"---\n",
		"size: 1048576\ntimeout: 0\n",
		"nmae: cache\n",
		"nested: {urll: x}\n",
		"items: [{op: set, tll: 1m}]\n",
		"timeout: 5\n",
		"timeout: soon\n",
		"size: lots\n",
		"size: -1\n",
		"port: eighty\n",
		"count: -3\n",
		"enabled: yes please\n",
		"tags: a\n",
		"nested: 3\n",
		"limits: [1, 2]\n",
		"a: &x {b: 1}\nc: *x\n",
		"nested: &n {url: u}\nitems: [*n]\n",
		"{{{",
		"key: [unclosed\n",
		"\t- tab\n",
		"ptr: ~\nnested: null\n",
		"!!binary xyz",
		"?",
		"'': 1\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var cfg fuzzConfig
		err := Decode(raw, &cfg)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("Decode error %q does not wrap ErrInvalid", err)
		}
		for _, e := range leaves(err) {
			var ke *KeyError
			// A key is named by its path; a key that is itself empty or
			// null in the YAML ("?", "'': 1") by its line.
			if errors.As(e, &ke) && (ke.Reason == "" || ke.Key == "" && !strings.Contains(ke.Reason, "(line ")) {
				t.Fatalf("problem %q does not name its key or say why", e)
			}
		}
	})
}

// leaves flattens errors.Join trees.
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

// FuzzParseByteSize: sizes as users write them never panic and are never
// negative or absurd.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"4MiB", "512kB", "1048576", "1.5MB", "0", "", "-1", "1e400", "9999999999999999999999", "1 GiB", "MiB", "2PiB", "NaN"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseByteSize(s)
		if err != nil {
			if !strings.Contains(err.Error(), "size") && !strings.Contains(err.Error(), "too large") {
				t.Fatalf("error %q does not say what is wrong", err)
			}
			return
		}
		if b < 0 || b > 1<<50 {
			t.Fatalf("ParseByteSize(%q) = %d", s, b)
		}
	})
}
