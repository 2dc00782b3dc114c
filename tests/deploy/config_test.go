package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// readConfig decodes one YAML document whose root is a mapping, refusing
// duplicate keys and trailing documents. The services' own loaders check
// the keys and values; this only proves the files are well-formed.
func readConfig(t *testing.T, file string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if len(doc) == 0 {
		t.Fatalf("%s: empty", file)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("%s: want exactly one YAML document (%v)", file, err)
	}
	return doc
}

// flatten maps a config's scalar keys to the environment variable that
// overrides each (pkg/config.ApplyEnv): nats.url -> JETSYNC_NATS_URL.
func flatten(prefix string, v any, out map[string]string) {
	m, ok := v.(map[string]any)
	if !ok {
		out[prefix] = fmt.Sprint(v)
		return
	}
	for k, child := range m {
		flatten(prefix+"_"+strings.ToUpper(k), child, out)
	}
}

func TestConfigFilesAreYAML(t *testing.T) {
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "deploy", "config", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no deploy/config/*.yaml")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) { readConfig(t, f) })
	}
}

// A service's mounted config and its environment overrides agree, and the
// addresses in the file name compose services.
func TestConfigFilesMatchCompose(t *testing.T) {
	p := loadCompose(t)
	for name := range jetsyncServices {
		s := service(t, p, name)
		src, ok := mountSource(s, configPath(name))
		if !ok {
			t.Errorf("%s: no config mounted at %s", name, configPath(name))
			continue
		}
		keys := map[string]string{}
		flatten("JETSYNC", readConfig(t, src), keys)
		for env, val := range keys {
			if strings.HasSuffix(env, "_URL") || strings.HasSuffix(env, "_ADDR") {
				checkAddressHost(t, p, name+": "+filepath.Base(src)+" "+env, val)
			}
			if over := s.Environment[env]; over != nil && *over != val {
				t.Errorf("%s: %s=%q overrides %q from %s; keep one or make them agree", name, env, *over, val, filepath.Base(src))
			}
		}
	}
}
