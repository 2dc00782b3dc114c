package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type inner struct {
	URL     string        `yaml:"url"`
	Timeout time.Duration `yaml:"timeout"`
}

type Shared struct {
	Name string `yaml:"name"`
}

type testConfig struct {
	Shared  `yaml:",inline"`
	NATS    inner              `yaml:"nats"`
	Size    ByteSize           `yaml:"size"`
	Filters []string           `yaml:"filters"`
	Map     map[string][]inner `yaml:"map"`
	Tags    map[string]string  `yaml:"tags"`
}

func (c *testConfig) Validate() error {
	var p Problems
	if c.Size < 1024 {
		p.Addf("size", "must be at least 1KiB, got %d", c.Size)
	}
	if c.NATS.URL == "" {
		p.Addf("nats.url", "is required")
	}
	return p.Err()
}

func write(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadUnknownKeysNamedWithPath(t *testing.T) {
	c := &testConfig{}
	err := Load(write(t, "name: x\nnats:\n  url: a\n  timout: 1s\nmap:\n  A:\n    - {url: b, bogus: 1}\nsize: 4KiB\n"), "", c)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"nats.timout: unknown key (line 4)", "valid keys here: timeout, url", "map.A[0].bogus: unknown key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestLoadValuesEnvAndValidate(t *testing.T) {
	c := &testConfig{}
	t.Setenv("JS_NATS_URL", "nats://env:4222")
	t.Setenv("JS_NAME", "from-env")
	t.Setenv("JS_FILTERS", "events.a.>, events.b.>")
	if err := Load(write(t, "name: x\nnats: {url: a, timeout: 2s}\nsize: 4MiB\n"), "JS", c); err != nil {
		t.Fatal(err)
	}
	if c.NATS.URL != "nats://env:4222" || c.Name != "from-env" || c.Size != 4<<20 || c.NATS.Timeout != 2*time.Second ||
		len(c.Filters) != 2 || c.Filters[1] != "events.b.>" {
		t.Fatalf("loaded %+v", c)
	}

	zero := &testConfig{}
	if err := Load(write(t, "nats: {url: a, timeout: 0}\nsize: 4KiB\n"), "", zero); err != nil || zero.NATS.Timeout != 0 {
		t.Fatalf("timeout: 0 should mean no duration: %v", err)
	}

	t.Setenv("JS_NATS_TIMEOUT", "soon")
	err := Load(write(t, "size: 4KiB\nnats: {url: a}\n"), "JS", &testConfig{})
	if err == nil || !strings.Contains(err.Error(), "nats.timeout: environment variable JS_NATS_TIMEOUT") {
		t.Fatalf("bad env value: %v", err)
	}
}

func TestLoadBadValuesAndValidate(t *testing.T) {
	for body, want := range map[string]string{
		"size: lots\nnats: {url: a}\n":             "not a size",
		"nats: {url: a, timeout: 3}\n":             "nats.timeout: \"3\" is not a duration",
		"size: 10\n":                               "size: must be at least 1KiB",
		"size: 4KiB\n":                             "nats.url: is required",
		"nats: [1, 2]\n":                           "nats: expects a mapping",
		"nats: {url: a}\nsize: 4KiB\nfilters: x\n": "filters: expects a list",
		"a: [unclosed":                             "invalid configuration",
	} {
		err := Load(write(t, body), "", &testConfig{})
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an ErrInvalid mentioning %q", body, err, want)
		}
	}
}
