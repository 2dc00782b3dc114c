package deploy

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// jetsyncServices are the compose services built from this repository, with
// the port their image exposes.
var jetsyncServices = map[string]string{
	"bridge":        "8080",
	"sink-cache":    "9090",
	"sink-es":       "9091",
	"sink-kinesis":  "9092",
	"sink-postgres": "9093",
}

// subcommand is what a service's binary is run with before its flags.
var subcommand = map[string][]string{
	"bridge": {"serve"},
}

// repoRoot walks up from the working directory to the one holding go.work.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.work in any parent of the working directory: cannot find the repository root")
		}
		dir = parent
	}
}

// loadCompose loads docker-compose.yml the way `docker compose` does: schema
// validation, interpolation, path resolution and consistency checks. env is
// the whole environment seen by interpolation (not the test's own, so the
// result does not depend on the shell the tests run in).
func loadCompose(t testing.TB, env ...string) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(env),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

// service returns the named service or fails the test.
func service(t testing.TB, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return s
}
