package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestReloadDiffNamesChangedKeys(t *testing.T) {
	load := func(body string) testConfig {
		t.Helper()
		var c testConfig
		if err := Load(write(t, body), "", &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	base := "name: a\nnats: {url: x, timeout: 1s}\nsize: 4KiB\nfilters: [f]\nmap:\n  A: [{url: a}]\n  B: [{url: b}]\ntags: {k: v}\n"
	a := load(base)
	if d := Diff(a, load(base)); len(d) != 0 {
		t.Fatalf("the same file differs in %v", d)
	}
	b := load("name: b\nnats: {url: x, timeout: 2s}\nsize: 4KiB\nfilters: [f, g]\nmap:\n  A: [{url: a2}]\n  C: [{url: c}]\ntags: {k: v}\n")
	got := Diff(a, b)
	want := []string{"filters", "map.A", "map.B", "map.C", "name", "nats.timeout"}
	if !slices.Equal(got, want) {
		t.Fatalf("Diff = %v, want %v", got, want)
	}
	live, rest := SplitKeys(got, "map", "name")
	if !slices.Equal(live, []string{"map.A", "map.B", "map.C", "name"}) || !slices.Equal(rest, []string{"filters", "nats.timeout"}) {
		t.Fatalf("SplitKeys = %v, %v", live, rest)
	}
	// A key that merely starts like a live one is not under it.
	if live, _ := SplitKeys([]string{"mapping", "map[0]"}, "map"); !slices.Equal(live, []string{"map[0]"}) {
		t.Fatalf("SplitKeys(mapping, map[0]) live = %v", live)
	}
	err := NeedsRestart(rest)
	if !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), "filters, nats.timeout") {
		t.Fatalf("NeedsRestart = %v", err)
	}
	// Nested untyped values (maps of any) are compared entry by entry.
	x := map[string]any{"m": map[string]any{"p": map[string]any{"t": "double"}, "q": 1}}
	y := map[string]any{"m": map[string]any{"p": map[string]any{"t": "keyword"}, "q": 1}}
	if d := Diff(x, y); !slices.Equal(d, []string{"m.p.t"}) {
		t.Fatalf("Diff of nested maps = %v", d)
	}
}
