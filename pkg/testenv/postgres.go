package testenv

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgInstallHint is how to get what StartPostgres needs.
const pgInstallHint = "run `make test` (it installs it), or `apt-get install -y postgresql`, " +
	"or set PG_URL to a running PostgreSQL server"

// PostgresServer is a PostgreSQL server of its own (initdb + pg_ctl in a
// temp dir, listening on a free 127.0.0.1 port with trust authentication),
// which can be stopped and started again on the same data, like a real
// restart; or, when PG_URL is set, that running server (External), which
// Stop and Start leave alone.
type PostgresServer struct {
	// URL is a pgx connection string for the server's "postgres" database.
	URL string
	// External says the server is PG_URL's: it cannot be stopped.
	External bool

	bin  string // directory holding initdb, pg_ctl
	dir  string // owns data/ and the log
	port int
	run  []string // prefix that runs a command as the unprivileged owner
}

// Postgres starts a PostgreSQL server for this test (or uses PG_URL); it is
// stopped and its data deleted when the test ends. A server that cannot be
// started fails the test: nothing is skipped, with or without CI=true.
func Postgres(t testing.TB) *PostgresServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "jetsync-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartPostgres(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatalf("starting the test PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		_ = os.RemoveAll(dir)
	})
	return s
}

// StartPostgres is Postgres for a program that is not a test (a benchmark):
// the server at PG_URL when that is set, otherwise a new cluster in dir
// (which must be empty or missing) started on a free port. The caller stops
// it with Stop. As root, initdb and postgres run as the "postgres" user
// (initdb refuses root), so dir is handed to that user.
func StartPostgres(dir string) (*PostgresServer, error) {
	if u := os.Getenv("PG_URL"); u != "" {
		return &PostgresServer{URL: u, External: true}, nil
	}
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("no free port for PostgreSQL: %w", err)
	}
	s := &PostgresServer{bin: bin, dir: dir, port: port}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, initdb needs an unprivileged user and there is no \"postgres\" user (%v): %s", err, pgInstallHint)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
		s.run = []string{"runuser", "-u", "postgres", "--"}
	}
	data := filepath.Join(dir, "data")
	if out, err := s.cmd(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// postgresBin finds the newest /usr/lib/postgresql/*/bin holding initdb,
// or initdb on PATH.
func postgresBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("initdb not found in /usr/lib/postgresql/*/bin nor on PATH: %s", pgInstallHint)
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func (s *PostgresServer) cmd(name string, args ...string) *exec.Cmd {
	argv := append(append(append([]string{}, s.run...), name), args...)
	c := exec.Command(argv[0], argv[1:]...)
	c.Dir = s.dir
	// postgres must not die with the test's process group on Ctrl-C before
	// Stop runs; Stop and the cleanup stop it.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return c
}

func (s *PostgresServer) start() error {
	logf := filepath.Join(s.dir, "postgres.log")
	opts := strings.Join([]string{
		"-p " + strconv.Itoa(s.port),
		"-k " + s.dir,
		"-c listen_addresses=127.0.0.1",
		"-c fsync=off", // test data: a clean stop still flushes everything
		"-c max_connections=50",
	}, " ")
	out, err := s.cmd(filepath.Join(s.bin, "pg_ctl"), "start", "-w", "-t", "30",
		"-D", filepath.Join(s.dir, "data"), "-l", logf, "-o", opts).CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(logf)
		return fmt.Errorf("pg_ctl start: %v\n%s\nits log:\n%s", err, out, log)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("postgres did not accept connections on %s within 10s", s.Addr())
}

// Addr is host:port of a local server ("" for PG_URL's).
func (s *PostgresServer) Addr() string {
	if s.External {
		u, err := url.Parse(s.URL)
		if err != nil {
			return ""
		}
		return u.Host
	}
	return "127.0.0.1:" + strconv.Itoa(s.port)
}

// Start starts a stopped local server again on its port and data; it
// panics for PG_URL's server, which tests cannot restart.
func (s *PostgresServer) Start() {
	if s.External {
		panic("testenv: PG_URL's server cannot be restarted by a test")
	}
	if err := s.start(); err != nil {
		panic(err)
	}
}

// Stop shuts a local server down (fast mode: connections are cut, data
// flushed); safe to call twice; does nothing for PG_URL's server.
func (s *PostgresServer) Stop() {
	if s.External || s.bin == "" {
		return
	}
	data := filepath.Join(s.dir, "data")
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err != nil {
		return
	}
	_ = s.cmd(filepath.Join(s.bin, "pg_ctl"), "stop", "-w", "-m", "fast", "-D", data).Run()
}

// CPU is the CPU time (user and system) the local server's processes have
// used so far: the postmaster's, its ended children's, and its running
// children's (the backends). It reads Linux's /proc; ok is false elsewhere
// and for PG_URL's server. Benchmarks use it to account for the server's
// share of the machine.
func (s *PostgresServer) CPU() (cpu time.Duration, ok bool) {
	if s.External || s.dir == "" {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(s.dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, false
	}
	f, ok := procStat(pm)
	if !ok {
		return 0, false
	}
	ticks := f[11] + f[12] + f[13] + f[14] // utime, stime, and its reaped children's
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pm {
			continue
		}
		if f, ok := procStat(pid); ok && f[1] == pm { // a child: utime, stime
			ticks += f[11] + f[12]
		}
	}
	return time.Duration(ticks) * time.Second / userHZ, true
}
