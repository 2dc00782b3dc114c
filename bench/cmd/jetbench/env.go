package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNATS runs nats-server in this process with JetStream on a file store.
func startNATS(dir string) (*server.Server, string, error) {
	s, err := natsutil.RunEmbedded(natsutil.EmbeddedConfig{Host: "127.0.0.1", Port: -1, StoreDir: dir})
	if err != nil {
		return nil, "", err
	}
	return s, s.ClientURL(), nil
}

// redisServer is a redis-server process with persistence off (--save "",
// --appendonly no): the benchmark measures the sink, not the disk.
type redisServer struct {
	addr string
	cmd  *exec.Cmd
}

func startRedis(dir string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found: apt-get install -y redis-server (make test installs it)")
	}
	port := freePort()
	r := &redisServer{addr: "127.0.0.1:" + strconv.Itoa(port)}
	r.cmd = exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--logfile", filepath.Join(dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", r.addr, 200*time.Millisecond); err == nil {
			c.Close()
			return r, nil
		}
	}
	r.stop()
	return nil, fmt.Errorf("redis-server did not start on %s", r.addr)
}

func (r *redisServer) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		_ = r.cmd.Wait()
	}
}

// cpu is the CPU time redis-server has used so far.
func (r *redisServer) cpu() time.Duration { return testenv.ProcessCPU(r.cmd.Process.Pid) }

// selfCPU is this process's CPU time (the benchmark driver and the
// in-process NATS server together).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// delayProxy forwards TCP connections to target, delaying every chunk of
// bytes by delay in each direction (a delay line: latency is added,
// bandwidth is not taken away). 0.5ms each way adds 1ms of round trip.
type delayProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startProxy(target string, delay time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &delayProxy{ln: ln, target: target, delay: delay}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *delayProxy) addr() string { return p.ln.Addr().String() }

func (p *delayProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

type chunk struct {
	b  []byte
	at time.Time
}

func (p *delayProxy) pipe(src, dst net.Conn) {
	ch := make(chan chunk, 4096)
	go func() {
		defer dst.Close()
		for c := range ch {
			if d := time.Until(c.at); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(c.b); err != nil {
				for range ch {
				}
				return
			}
		}
	}()
	defer close(ch)
	for {
		buf := make([]byte, 64<<10)
		n, err := src.Read(buf)
		if n > 0 {
			ch <- chunk{buf[:n], time.Now().Add(p.delay)}
		}
		if err != nil {
			return
		}
	}
}

func (p *delayProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// proc is a jetsync binary run as a child process.
type proc struct {
	name  string
	cmd   *exec.Cmd
	out   lockedBuf
	done  chan struct{}
	start time.Time
}

// lockedBuf keeps the first and the last 64 KiB of a process's output and
// counts its slow-consumer reports.
type lockedBuf struct {
	mu         sync.Mutex
	head, tail bytes.Buffer
	slow       int
}

func (b *lockedBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.slow += bytes.Count(p, []byte("slow consumer"))
	if n := min(len(p), 64<<10-b.head.Len()); n > 0 {
		b.head.Write(p[:n])
		return len(p), nil
	}
	if b.tail.Len() > 64<<10 {
		rest := b.tail.Bytes()[32<<10:]
		b.tail.Reset()
		b.tail.Write(rest)
	}
	return b.tail.Write(p)
}

func (b *lockedBuf) slowConsumers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.slow
}

func (b *lockedBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tail.Len() == 0 {
		return b.head.String()
	}
	return b.head.String() + "\n...\n" + b.tail.String()
}

func startProc(bin string, args ...string) (*proc, error) { return startProcEnv(bin, nil, args...) }

// startProcEnv runs bin with this process's environment plus env.
func startProcEnv(bin string, env []string, args ...string) (*proc, error) {
	p := &proc{name: filepath.Base(bin), cmd: exec.Command(bin, args...), done: make(chan struct{})}
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// usage is what the kernel counted for a finished process.
type usage struct {
	maxRSS int64 // bytes
	cpu    time.Duration
	wall   time.Duration
}

// stop sends SIGTERM, waits and returns the process's rusage, with its
// peak RSS read from /proc just before the signal (see usage).
func (p *proc) stop() (usage, error) {
	hwm := procStatus(p.cmd.Process.Pid, "VmHWM:")
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	u := p.usage()
	u.maxRSS = hwm
	return u, nil
}

// usage reads the rusage of the finished process. Its CPU time is right,
// but its Maxrss is not the child's own: Go starts children with
// clone(CLONE_VM|CLONE_VFORK), so until exec the child shares this
// process's memory, and Linux carries that mm's high-water mark into
// ru_maxrss at exec. A benchmark driver holding a million rendered events
// would be charged to the sink. The child's own peak is VmHWM in
// /proc/PID/status (per mm, fresh after exec), read by stop; for a process
// that exited by itself, ru_maxrss is all there is.
func (p *proc) usage() usage {
	u := usage{wall: time.Since(p.start)}
	if ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		u.maxRSS = ru.Maxrss * 1024 // kilobytes on Linux
		u.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return u
}

// exited reports whether the process ended by itself.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// procStatus reads a size field (VmRSS:, VmHWM:) of a running process.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// waitHTTP polls url until it answers 200.
func waitHTTP(url string, timeout time.Duration, p *proc) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, p.out.String())
		}
		if resp, err := http.Get(url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200 within %s", url, timeout)
}

// buildBinaries builds the bridge and the given sinks' binaries (sink-cache,
// sink-es, ...) into dir from the repository at root, as `make build` does.
func buildBinaries(root, dir string, sinks []string) error {
	args := []string{"build", "-o", dir + "/", "./services/bridge"}
	for _, s := range sinks {
		args = append(args, "./services/"+s)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// cpLog records when each checkpoint value of a sink became visible, fed
// by a watcher of wherever the sink keeps its checkpoint (Redis for
// sink-cache, NATS KV for sink-es and sink-kinesis). Catch-ups wait on it;
// live runs ask it when each appended position became visible.
type cpLog struct {
	last atomic.Uint64
	mu   sync.Mutex
	gen  int // bumped by reset
	log  []visible
}

type visible struct {
	at time.Time
	cp uint64
}

// generation is what record needs to drop a value seen before a reset.
func (l *cpLog) generation() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gen
}

// record notes that cp was visible at at, unless a reset came in between
// (a late notification of the previous phase).
func (l *cpLog) record(gen int, at time.Time, cp uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gen == gen {
		l.log = append(l.log, visible{at, cp})
		l.last.Store(cp)
	}
}

// reset forgets what was seen (a new phase).
func (l *cpLog) reset() {
	l.mu.Lock()
	l.gen++
	l.log = nil
	l.last.Store(0)
	l.mu.Unlock()
}

// waitFor waits until the checkpoint reaches pos and returns when it
// became visible.
func (l *cpLog) waitFor(pos uint64, timeout time.Duration, alive func() error) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for l.last.Load() < pos {
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("checkpoint %d did not reach %d within %s", l.last.Load(), pos, timeout)
		}
		if alive != nil {
			if err := alive(); err != nil {
				return time.Time{}, err
			}
		}
		time.Sleep(time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, v := range l.log {
		if v.cp >= pos {
			return v.at, nil
		}
	}
	return time.Now(), nil
}

// visibleAt returns, for each position, when it became visible (zero when
// never), given positions sorted ascending.
func (l *cpLog) visibleAt(positions []uint64) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]time.Time, len(positions))
	j := 0
	for i, p := range positions {
		for j < len(l.log) && l.log[j].cp < p {
			j++
		}
		if j < len(l.log) {
			out[i] = l.log[j].at
		}
	}
	return out
}

// watcher sees when a sink's checkpoint moves in Redis, through keyspace
// notifications on the checkpoint key: the moment a batch and its
// checkpoint become visible to readers (they commit in one MULTI/EXEC).
type watcher struct {
	cpLog
	rdb  *redis.Client
	key  string
	ps   *redis.PubSub
	done chan struct{}
}

func newWatcher(ctx context.Context, rdb *redis.Client, key string) (*watcher, error) {
	if err := rdb.ConfigSet(ctx, "notify-keyspace-events", "K$").Err(); err != nil {
		return nil, err
	}
	w := &watcher{rdb: rdb, key: key, done: make(chan struct{})}
	w.ps = rdb.Subscribe(ctx, "__keyspace@0__:"+key)
	if _, err := w.ps.Receive(ctx); err != nil {
		return nil, err
	}
	ch := w.ps.Channel(redis.WithChannelSize(1 << 16))
	go func() {
		defer close(w.done)
		for range ch {
			at := time.Now()
			for drained := false; !drained; { // one GET for every notification already queued
				select {
				case _, ok := <-ch:
					if !ok {
						return
					}
				default:
					drained = true
				}
			}
			gen := w.generation()
			s, err := rdb.Get(context.Background(), key).Result()
			if err != nil {
				continue
			}
			cp, _ := strconv.ParseUint(s, 10, 64)
			w.record(gen, at, cp)
		}
	}()
	return w, nil
}

func (w *watcher) close() {
	_ = w.ps.Close()
	<-w.done
}
