package deploy

import (
	parser2 "go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"golang.org/x/mod/modfile"
)

// parseDockerfile parses a Dockerfile into its stages the way BuildKit does
// and fails on parse errors and on BuildKit's lint warnings.
func parseDockerfile(t *testing.T, file string) []instructions.Stage {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s: %s", file, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		t.Errorf("%s:%d: lint %s: %s", file, line, rule, msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return stages
}

// dockerignore reads the repository's .dockerignore.
func dockerignore(t *testing.T, root string) *patternmatcher.PatternMatcher {
	t.Helper()
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatalf("the build context is the repository root, so it needs a .dockerignore: %v", err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

func TestDockerfiles(t *testing.T) {
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "services", "*", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for name := range jetsyncServices {
		if !slices.Contains(files, filepath.Join(root, "services", name, "Dockerfile")) {
			t.Errorf("services/%s has no Dockerfile", name)
		}
	}
	ignore := dockerignore(t, root)
	for _, file := range files {
		svc := filepath.Base(filepath.Dir(file))
		t.Run(svc, func(t *testing.T) {
			checkDockerfile(t, root, ignore, svc, parseDockerfile(t, file))
		})
	}
}

// copied is one COPY from the build context: repository path src landed at
// container path dest.
type copied struct{ src, dest string }

// builder follows a build stage's filesystem and environment.
type builder struct {
	workdir string
	env     map[string]string
	copies  []copied
}

// repoPath maps a container path to the repository path COPY put there.
func (b *builder) repoPath(p string) (string, bool) {
	for i := len(b.copies) - 1; i >= 0; i-- {
		c := b.copies[i]
		if p == c.dest || strings.HasPrefix(p, c.dest+"/") {
			return path.Join(c.src, strings.TrimPrefix(p, c.dest)), true
		}
	}
	return "", false
}

func (b *builder) abs(p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(b.workdir, p)
}

// followBuilder replays a build stage up to its first `go build` RUN and
// returns the state there and that RUN's command line ("" when none).
func followBuilder(root string, stage instructions.Stage) (*builder, string) {
	b := &builder{workdir: "/", env: map[string]string{}}
	for _, cmd := range stage.Commands {
		switch c := cmd.(type) {
		case *instructions.WorkdirCommand:
			b.workdir = b.abs(c.Path)
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				b.env[kv.Key] = kv.Value
			}
		case *instructions.CopyCommand:
			if c.From != "" {
				continue
			}
			intoDir := strings.HasSuffix(c.DestPath, "/") || len(c.SourcePaths) > 1
			for _, src := range c.SourcePaths {
				cp := copied{src: path.Clean(src), dest: b.abs(c.DestPath)}
				// A directory's contents land in dest; a file lands in
				// dest when dest names a directory.
				fi, err := os.Stat(filepath.Join(root, filepath.FromSlash(cp.src)))
				if err == nil && !fi.IsDir() && intoDir {
					cp.dest = path.Join(cp.dest, path.Base(cp.src))
				}
				b.copies = append(b.copies, cp)
			}
		case *instructions.RunCommand:
			if line := strings.Join(c.CmdLine, " "); strings.Contains(line, "go build") {
				return b, line
			}
		}
	}
	return b, ""
}

func checkDockerfile(t *testing.T, root string, ignore *patternmatcher.PatternMatcher, svc string, stages []instructions.Stage) {
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build (Go builder, then a small runtime image), got %d stage(s)", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.BaseName, "golang:1.26") {
		t.Errorf("builder stage FROM %s, want golang:1.26", build.BaseName)
	}
	if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") && !strings.HasPrefix(final.BaseName, "alpine") {
		t.Errorf("runtime stage FROM %s, want distroless static or alpine", final.BaseName)
	}

	b, line := followBuilder(root, build)
	if line == "" {
		t.Fatal("the builder stage runs no `go build`")
	}
	for _, c := range b.copies {
		checkContextSource(t, root, ignore, c.src)
	}
	out := checkGoBuild(t, root, b, line) // the binary go build writes

	// The runtime stage: the binary, its port, its entrypoint.
	var bin string
	var exposed []string
	var entrypoint *instructions.EntrypointCommand
	var command *instructions.CmdCommand
	for _, cmd := range final.Commands {
		switch c := cmd.(type) {
		case *instructions.CopyCommand:
			if c.From == "" {
				for _, src := range c.SourcePaths {
					checkContextSource(t, root, ignore, src)
				}
				continue
			}
			if c.From == build.Name && slices.Contains(c.SourcePaths, out) {
				bin = c.DestPath
				if strings.HasSuffix(bin, "/") {
					bin += path.Base(out)
				}
			}
		case *instructions.ExposeCommand:
			exposed = append(exposed, c.Ports...)
		case *instructions.EntrypointCommand:
			entrypoint = c
		case *instructions.CmdCommand:
			command = c
		}
	}
	if bin == "" {
		t.Errorf("the runtime stage does not COPY --from=%s %s", build.Name, out)
	}
	if port, ok := jetsyncServices[svc]; ok && !slices.Contains(exposed, port) && !slices.Contains(exposed, port+"/tcp") {
		t.Errorf("EXPOSE %v, want %s", exposed, port)
	}
	// What the container runs by default: ENTRYPOINT, then CMD.
	if entrypoint == nil {
		t.Fatal("no ENTRYPOINT")
	}
	argv := entrypoint.CmdLine
	for _, c := range []*instructions.ShellDependantCmdLine{&entrypoint.ShellDependantCmdLine, cmdLine(command)} {
		if c != nil && c.PrependShell {
			t.Errorf("%v is in shell form; use the exec form (distroless has no shell, and signals must reach the binary)", c.CmdLine)
		}
	}
	if command != nil {
		argv = append(slices.Clip(argv), command.CmdLine...)
	}
	want := append(append([]string{bin}, subcommand[svc]...), "-config", configPath(svc))
	if !slices.Equal(argv, want) {
		t.Errorf("the container runs %q, want %q", argv, want)
	}
	if len(entrypoint.CmdLine) == 0 || entrypoint.CmdLine[0] != bin {
		t.Errorf("ENTRYPOINT %q does not start with the binary %s", entrypoint.CmdLine, bin)
	}
}

func cmdLine(c *instructions.CmdCommand) *instructions.ShellDependantCmdLine {
	if c == nil {
		return nil
	}
	return &c.ShellDependantCmdLine
}

// checkGoBuild checks the `go build` RUN line against the builder's state and
// returns the output path it writes.
func checkGoBuild(t *testing.T, root string, b *builder, line string) string {
	t.Helper()
	for k, v := range map[string]string{"GOWORK": "off", "CGO_ENABLED": "0"} {
		if b.env[k] != v {
			t.Errorf("go build runs with %s=%q, want ENV %s=%s", k, b.env[k], k, v)
		}
	}
	mod, ok := b.repoPath(b.workdir)
	if !ok {
		t.Fatalf("go build runs in %s, which no COPY from the repository filled", b.workdir)
	}
	gomod := filepath.Join(root, filepath.FromSlash(mod), "go.mod")
	raw, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatalf("go build runs in %s (repository %s), which has no go.mod: %v", b.workdir, mod, err)
	}
	mf, err := modfile.Parse(gomod, raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	// With GOWORK=off, each local replace target must be in the image too.
	for _, r := range mf.Replace {
		if !modfile.IsDirectoryPath(r.New.Path) {
			continue
		}
		target := b.abs(r.New.Path)
		repo, ok := b.repoPath(target)
		if !ok {
			t.Errorf("%s replaces %s with %s (%s in the image), which no COPY provides", mod+"/go.mod", r.Old.Path, r.New.Path, target)
			continue
		}
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(repo), "go.mod")); err != nil {
			t.Errorf("%s replaces %s with %s, but %s has no go.mod", mod+"/go.mod", r.Old.Path, r.New.Path, repo)
		}
	}
	for _, flag := range []string{"-trimpath", "-o "} {
		if !strings.Contains(line, flag) {
			t.Errorf("go build line %q lacks %s", line, strings.TrimSpace(flag))
		}
	}
	fields := strings.Fields(line)
	if i := slices.Index(fields, "-o"); i >= 0 && i+1 < len(fields) {
		return b.abs(fields[i+1])
	}
	return ""
}

// checkContextSource checks that a COPY source exists in the repository and
// that .dockerignore sends every file a Go build needs from it.
func checkContextSource(t *testing.T, root string, ignore *patternmatcher.PatternMatcher, src string) {
	t.Helper()
	if filepath.IsAbs(src) || strings.HasPrefix(path.Clean(src), "..") {
		t.Errorf("COPY %s: sources must be inside the build context", src)
		return
	}
	full := filepath.Join(root, filepath.FromSlash(src))
	if _, err := os.Stat(full); err != nil {
		t.Errorf("COPY %s: not in the repository: %v", src, err)
		return
	}
	sent := 0
	err := filepath.WalkDir(full, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !neededForBuild(d.Name()) {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		excluded, err := ignore.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if excluded {
			t.Errorf("COPY %s: .dockerignore leaves out %s, which go build needs", src, rel)
		}
		sent++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sent == 0 {
		t.Errorf("COPY %s: holds no go.mod or Go source", src)
	}
}

func neededForBuild(name string) bool {
	return name == "go.mod" || name == "go.sum" ||
		(strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go"))
}

// The .dockerignore check must be able to fail.
func TestDockerignoreMatcher(t *testing.T) {
	ignore := dockerignore(t, repoRoot(t))
	for file, want := range map[string]bool{
		"pkg/config/load.go":      false,
		"services/bridge/go.mod":  false,
		"pkg/config/load_test.go": true,
		"tests/e2e/go.mod":        true,
		"go.work":                 true,
		".git/HEAD":               true,
	} {
		got, err := ignore.MatchesOrParentMatches(file)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf(".dockerignore excludes %s = %v, want %v", file, got, want)
		}
	}
}

// TestDockerfileGoBuild runs each builder stage's `go build` outside Docker:
// the files the Dockerfile COPYs (less what .dockerignore leaves out) are laid
// out as in the image, and the binary is built there with the stage's ENV.
// This catches what the workspace build hides, e.g. a service go.sum missing
// entries that only go.work.sum has.
func TestDockerfileGoBuild(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("no go command on PATH: install Go 1.26 (see README)")
	}
	root := repoRoot(t)
	ignore := dockerignore(t, root)
	files, err := filepath.Glob(filepath.Join(root, "services", "*", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		svc := filepath.Base(filepath.Dir(file))
		t.Run(svc, func(t *testing.T) {
			stages := parseDockerfile(t, file)
			b, line := followBuilder(root, stages[0])
			if line == "" {
				t.Fatal("the builder stage runs no `go build`")
			}
			image := t.TempDir()
			for _, c := range b.copies {
				copyContext(t, root, ignore, c, image)
			}
			dir := filepath.Join(image, filepath.FromSlash(b.workdir))
			if !hasMainPackage(t, dir) {
				t.Fatalf("services/%s has a Dockerfile but no main package to build", svc)
			}
			cmd := exec.Command(goBin, "build", "-trimpath", "-o", filepath.Join(t.TempDir(), svc), ".")
			cmd.Dir = dir
			for _, kv := range os.Environ() {
				if k, _, _ := strings.Cut(kv, "="); k != "GOWORK" && k != "GOFLAGS" {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			for k, v := range b.env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("go build in %s (as the image's %s) failed: %v\n%s", dir, b.workdir, err, out)
			}
		})
	}
}

// copyContext copies what COPY c sends from the build context into the
// image directory, leaving out what .dockerignore excludes.
func copyContext(t *testing.T, root string, ignore *patternmatcher.PatternMatcher, c copied, image string) {
	t.Helper()
	src := filepath.Join(root, filepath.FromSlash(c.src))
	dest := filepath.Join(image, filepath.FromSlash(c.dest))
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if excluded, err := ignore.MatchesOrParentMatches(filepath.ToSlash(rel)); err != nil || excluded {
			return err
		}
		inner, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dest, inner)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, raw, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// hasMainPackage reports whether dir holds a non-test Go file of package main.
func hasMainPackage(t *testing.T, dir string) bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		pf, err := parser2.ParseFile(token.NewFileSet(), f, nil, parser2.PackageClauseOnly)
		if err == nil && pf.Name.Name == "main" {
			return true
		}
	}
	return false
}
