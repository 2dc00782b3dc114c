package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/lease"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// The hot-standby drills (docs/ha.md): the same sink started two times
// (same name, own admin port), one active, one standing by. SIGKILL the
// active one again and again while events are appended: the standby takes
// over each time within the lease, and the read model ends equal to the
// fold, nothing applied twice. SIGSTOP the active one past its lease, let
// the standby take over and write more, SIGCONT it: the former active
// ("zombie") writes nothing after the takeover.

// haLease is the drills' ha.lease: short, so a drill of many takeovers
// stays within the CI budget; takeover times scale with it.
// JETSYNC_DRILL_LEASE (e.g. 10s, the default of ha.lease) changes it.
var haLease = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("JETSYNC_DRILL_LEASE")); err == nil && d >= 2*time.Second {
		return d.Truncate(time.Second)
	}
	return 3 * time.Second
}()

var adminListen = regexp.MustCompile(`listen: "127\.0\.0\.1:\d+"`)

// haGroup is the instances of one sink.
type haGroup struct {
	t      *testing.T
	sink   string
	binary string
	procs  []*proc
	leases *lease.Store
	kills  []uint64 // the checkpoint at each SIGKILL or SIGSTOP of an active instance
}

// newHAGroup starts n instances of binary with config (YAML), each with
// its own admin port and ha.lease = haLease, and waits until one is active
// and the others stand by.
func newHAGroup(t *testing.T, s *stack, sinkName, binary, config string, n int) *haGroup {
	t.Helper()
	_, js := s.nats.Connect(t)
	g := &haGroup{t: t, sink: sinkName, binary: binary}
	for i := range n {
		cfg := adminListen.ReplaceAllString(config, fmt.Sprintf(`listen: "127.0.0.1:%d"`, testenv.FreePort(t)))
		cfg += fmt.Sprintf("ha: {lease: %s}\n", haLease)
		path := writeFile(t, fmt.Sprintf("%s-%d.yaml", binary, i), cfg)
		g.procs = append(g.procs, startProc(t, binary, "-config", path))
		if i == 0 {
			// The first one is active before the others start, so that
			// the drills know who to kill first.
			testenv.Eventually(t, 30*time.Second, func() bool {
				if g.leases == nil {
					st, ok, err := lease.Look(context.Background(), js, "")
					if err != nil || !ok {
						return false
					}
					g.leases = st
				}
				h := g.holders()
				return h.Active != nil
			}, "the first instance of %s never became active", sinkName)
		}
	}
	g.waitStandbys(n - 1)
	return g
}

func (g *haGroup) holders() lease.Holders {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	h, err := g.leases.Holders(ctx, g.sink)
	if err != nil {
		return lease.Holders{}
	}
	return h
}

// waitStandbys waits until n instances stand by.
func (g *haGroup) waitStandbys(n int) {
	g.t.Helper()
	testenv.Eventually(g.t, 30*time.Second, func() bool {
		h := g.holders()
		return h.Active != nil && len(h.Standbys) >= n
	}, "%s: %d standbys never registered", g.sink, n)
}

func pid(p *proc) int {
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// active is the active instance's process and lease record.
func (g *haGroup) active() (*proc, lease.Instance) {
	g.t.Helper()
	var p *proc
	var in lease.Instance
	testenv.Eventually(g.t, 30*time.Second, func() bool {
		h := g.holders()
		if h.Active == nil {
			return false
		}
		for _, q := range g.procs {
			if pid(q) == h.Active.PID {
				p, in = q, *h.Active
				return true
			}
		}
		return false
	}, "%s: no instance is active", g.sink)
	return p, in
}

// waitTakeover waits until an instance other than pid holds the lease and
// returns its record.
func (g *haGroup) waitTakeover(old int, timeout time.Duration) lease.Instance {
	g.t.Helper()
	var in lease.Instance
	testenv.Eventually(g.t, timeout, func() bool {
		h := g.holders()
		if h.Active != nil && h.Active.PID != old {
			in = *h.Active
			return true
		}
		return false
	}, "%s: no standby took over from pid %d within %s", g.sink, old, timeout)
	return in
}

// haKills SIGKILLs the active instance kills times at random moments, each
// time with a standby running, measures how long the standby takes to hold
// the lease, and restarts the killed one (a standby now). It returns the
// takeover times and how many kills fell while appends were running.
func (g *haGroup) haKills(kills int, appending func() bool, checkpoint func() uint64) (takeovers []time.Duration, whileAppending int) {
	t := g.t
	t.Helper()
	for k := 1; k <= kills; k++ {
		time.Sleep(time.Duration(200+rand.IntN(400)) * time.Millisecond)
		g.waitStandbys(1)
		p, in := g.active()
		if appending() {
			whileAppending++
		}
		killed := time.Now()
		p.kill()
		cp := checkpoint() // stable: the active is dead, the standby not active yet
		g.kills = append(g.kills, cp)
		next := g.waitTakeover(in.PID, 4*haLease)
		took := time.Since(killed)
		takeovers = append(takeovers, took)
		t.Logf("kill %d: active pid %d (epoch %d) SIGKILLed at checkpoint %d; pid %d took over in %s (epoch %d)",
			k, in.PID, in.Epoch, cp, next.PID, took.Round(time.Millisecond), next.Epoch)
		if next.Epoch <= in.Epoch {
			t.Errorf("epoch went from %d to %d: it must grow", in.Epoch, next.Epoch)
		}
		p.start()
	}
	return takeovers, whileAppending
}

// percentiles is "p50 X, max Y" of ds.
func percentiles(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("p50 %s, max %s", s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

// checkTakeovers fails when a takeover took much longer than the lease: a
// standby must take over once the lease expired (it is renewed every third
// of it), not at some later poll.
func checkTakeovers(t *testing.T, ds []time.Duration) {
	t.Helper()
	for i, d := range ds {
		if d > haLease+2*time.Second {
			t.Errorf("takeover %d took %s, more than ha.lease %s (+2s)", i+1, d, haLease)
		}
	}
}

// appendSpan appends events [lo, hi) of every stream (expectedVersion lo),
// like appendAll.
func (w *workload) appendSpan(s *stack, lo, hi, perRequest, workers int) error {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for wk := range workers {
		wg.Go(func() {
			for i, sid := range w.streams {
				if i%workers != wk {
					continue
				}
				evs := w.events[sid]
				for a := lo; a < min(hi, len(evs)); a += perRequest {
					b := min(a+perRequest, hi, len(evs))
					body, _ := json.Marshal(evs[a:b])
					code, resp := s.postRetrying("/streams/order/"+sid+"/events?expectedVersion="+strconv.Itoa(a), body)
					var ar appendResp
					if (code != 200 && code != 201) || json.Unmarshal(resp, &ar) != nil || len(ar.Positions) != b-a {
						errs <- fmt.Errorf("append to %s: %d %s", sid, code, resp)
						return
					}
					w.mu.Lock()
					w.positions[sid] = append(w.positions[sid], ar.Positions...)
					w.mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// appendPaced appends the workload (perStream events per stream) in ten
// spans spread over about d, so that the kills of a drill fall while the
// sink has work: each takeover finds a backlog to catch up on. It sends
// its result to done.
func (w *workload) appendPaced(s *stack, perStream int, d time.Duration, done chan<- error) {
	const spans = 10
	for i := range spans {
		if err := w.appendSpan(s, i*perStream/spans, (i+1)*perStream/spans, 5, 4); err != nil {
			done <- err
			return
		}
		if i < spans-1 {
			time.Sleep(d / spans)
		}
	}
	done <- nil
}

// killsDuration is about how long haKills takes for kills kills.
func killsDuration(kills int) time.Duration {
	return time.Duration(kills) * (haLease + 400*time.Millisecond)
}

var lostLine = regexp.MustCompile(`msg="lease lost: stopped writing, standing by".*`)
var lastBatchThrough = regexp.MustCompile(`last_batch_through=(\d+)`)

// wakeZombie sends a frozen instance SIGCONT and returns the line it logs
// on finding it lost the lease.
func wakeZombie(t *testing.T, z *proc) string {
	t.Helper()
	before := len(z.output())
	if err := z.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	var line string
	testenv.Eventually(t, 30*time.Second, func() bool {
		line = lostLine.FindString(z.output()[before:])
		return line != ""
	}, "the zombie never logged that it lost the lease:\n%s", lastLines(z.output(), 20))
	t.Logf("zombie's log after SIGCONT: %s", line)
	return line
}

// settledCheckpoint is the checkpoint a just-SIGSTOPped sink froze at: the
// value once it stopped moving for 300ms. A batch it had sent whole may
// still commit without it (PostgreSQL and Redis run a sent pipeline to its
// end), and SIGSTOP takes effect asynchronously: on a busy machine the
// process may read an answer and send one more batch before it stops. The
// lease runs out 2s after the freeze at the earliest, so no new active
// moves it meanwhile.
func settledCheckpoint(checkpoint func() uint64) uint64 {
	cp := checkpoint()
	for settled := time.Now(); time.Since(settled) < 300*time.Millisecond; time.Sleep(20 * time.Millisecond) {
		if now := checkpoint(); now != cp {
			cp, settled = now, time.Now()
		}
	}
	return cp
}

// zombie runs the zombie drill on g: the active instance is SIGSTOPped
// past its lease while the first half of the workload is applied, the
// standby takes over and applies the second half, then the zombie gets
// SIGCONT. Its own log must say it lost the lease, with its last batch
// one the target held before the takeover, and it must stand by again. The
// caller checks the target's content.
func (g *haGroup) zombie(s *stack, w *workload, perStream int, checkpoint func() uint64) {
	t := g.t
	t.Helper()
	if err := w.appendSpan(s, 0, perStream/2, 5, 4); err != nil {
		t.Fatal(err)
	}
	g.waitStandbys(1)
	z, in := g.active()
	testenv.Eventually(t, 60*time.Second, func() bool { return checkpoint() > 0 }, "%s never applied anything", g.sink)
	// Freeze it mid-stream: appends keep coming while it is stopped.
	more := make(chan error, 1)
	go func() { more <- w.appendSpan(s, perStream/2, perStream*3/4, 5, 4) }()
	time.Sleep(time.Duration(100+rand.IntN(200)) * time.Millisecond)
	if err := z.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	cpStopped := settledCheckpoint(checkpoint)
	g.kills = append(g.kills, cpStopped)
	next := g.waitTakeover(in.PID, 4*haLease)
	t.Logf("zombie: pid %d (epoch %d) SIGSTOPped at checkpoint %d; pid %d took over after %s (epoch %d, at %s)",
		in.PID, in.Epoch, cpStopped, next.PID, time.Since(stopped).Round(time.Millisecond), next.Epoch, next.Since.Format(time.RFC3339Nano))
	if err := <-more; err != nil {
		t.Fatal(err)
	}
	if err := w.appendSpan(s, perStream*3/4, perStream, 5, 4); err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return checkpoint() >= head },
		"the new active never caught up (checkpoint %d, head %d)", checkpoint(), head)
	if cp := checkpoint(); cp <= cpStopped {
		t.Fatalf("the new active wrote nothing (checkpoint %d)", cp)
	}
	t.Logf("zombie: the new active applied through %d while the zombie was stopped", head)

	line := wakeZombie(t, z)
	// Its last batch is one the target held when it froze. (Its log's
	// last_batch_at is when it learned so, on waking: a batch committed
	// while it was frozen is logged after the takeover.)
	if m := lastBatchThrough.FindStringSubmatch(line); m != nil {
		through, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			t.Fatalf("last_batch_through %q: %v", m[1], err)
		}
		if through > cpStopped {
			t.Errorf("the zombie's last batch reaches %d, past the checkpoint %d the target held when it froze", through, cpStopped)
		}
	}
	// It stands by again, and the active one is still the new one.
	testenv.Eventually(t, 30*time.Second, func() bool {
		h := g.holders()
		for _, sb := range h.Standbys {
			if sb.PID == in.PID {
				return h.Active != nil && h.Active.PID == next.PID
			}
		}
		return false
	}, "the zombie never stood by again")
	if cp := checkpoint(); cp != head {
		t.Errorf("checkpoint %d after the zombie woke up, head %d", cp, head)
	}
	t.Logf("zombie: woke up, wrote nothing (its last batch before the takeover), stands by; pid %d stays active", next.PID)
}

// TestDrillStandbyCacheKilled: sink-cache with a standby, the active one
// SIGKILLed 5 times (x JETSYNC_DRILL_SCALE) while events are appended.
func TestDrillStandbyCacheKilled(t *testing.T) {
	s := newStack(t)
	cfg := strings.Replace(sinkYAML(s.nats.URL(), s.redis.Addr(), 0), "max_events: 500", "max_events: 20", 1)
	g := newHAGroup(t, s, sinkName, "sink-cache", cfg, 2)
	w := newWorkload(200*drillScale(), 100)
	kills := 5 * drillScale()
	appendDone := make(chan error, 1)
	go w.appendPaced(s, 100, killsDuration(kills), appendDone)
	takeovers, during := g.haKills(kills, func() bool { return len(appendDone) == 0 }, s.checkpoint)
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink-cache never caught up")
	w.verify(t, s)
	checkTakeovers(t, takeovers)
	t.Logf("drill standby cache killed: %d events, %d SIGKILLs of the active instance (%d while appending), takeover %s (ha.lease %s); Redis = fold, every position applied once",
		w.total(), len(takeovers), during, percentiles(takeovers), haLease)
}

// TestDrillStandbyCacheZombie: the zombie drill on sink-cache: after the
// takeover the fence key holds the new epoch, and Redis equals the fold
// with every position applied once.
func TestDrillStandbyCacheZombie(t *testing.T) {
	s := newStack(t)
	cfg := strings.Replace(sinkYAML(s.nats.URL(), s.redis.Addr(), 0), "max_events: 500", "max_events: 20", 1)
	g := newHAGroup(t, s, sinkName, "sink-cache", cfg, 2)
	w := newWorkload(100*drillScale(), 100)
	g.zombie(s, w, 100, s.checkpoint)
	w.verify(t, s)
	_, active := g.active()
	fence, err := s.rdb.Get(context.Background(), "jetsync:checkpoint:"+sinkName+":fence").Result()
	if err != nil || fence != strconv.FormatUint(active.Epoch, 10) {
		t.Errorf("fence %q (%v), want the active epoch %d", fence, err, active.Epoch)
	}
	t.Logf("drill standby cache zombie: %d events; Redis = fold, every position applied once, fence at epoch %s", w.total(), fence)
}

// pgHAStack is a pgStack whose sink runs as a standby group.
func pgHA(t *testing.T, maxEvents int) (*pgStack, string) {
	s := newPGStack(t, maxEvents, true)
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	return s, string(cfg)
}

// checkCounters checks the raw SQL counters: each stream's equals its
// number of events (nothing lost, nothing applied twice).
func (s *pgStack) checkCounters(t *testing.T, w *workload, perStream int) {
	t.Helper()
	counters := s.counters(t)
	lost, twice := 0, 0
	for _, sid := range w.streams {
		switch n := counters[sid]; {
		case n < perStream:
			lost += perStream - n
		case n > perStream:
			twice += n - perStream
		}
	}
	if lost != 0 || twice != 0 || len(counters) != len(w.streams) {
		t.Fatalf("raw SQL counters: %d events lost, %d applied twice over %d counters (want %d, each %d)", lost, twice, len(counters), len(w.streams), perStream)
	}
}

// TestDrillStandbyPostgresKilled: sink-postgres with a standby, the active
// one SIGKILLed 5 times (x JETSYNC_DRILL_SCALE) while events are appended;
// the orders table equals the fold and the non-idempotent raw SQL counters
// are exact.
func TestDrillStandbyPostgresKilled(t *testing.T) {
	s, cfg := pgHA(t, 20)
	g := newHAGroup(t, s.stack, pgSinkName, "sink-postgres", cfg, 2)
	const perStream = 100
	w := newPGWorkload(150*drillScale(), perStream)
	kills := 5 * drillScale()
	appendDone := make(chan error, 1)
	go w.appendPaced(s.stack, perStream, killsDuration(kills), appendDone)
	takeovers, during := g.haKills(kills, func() bool { return len(appendDone) == 0 }, s.checkpoint)
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink-postgres never caught up")
	s.verifyOrders(t, w)
	s.checkCounters(t, w, perStream)
	checkTakeovers(t, takeovers)
	t.Logf("drill standby postgres killed: %d events, %d SIGKILLs of the active instance (%d while appending), takeover %s (ha.lease %s); orders = fold, raw SQL counters exact",
		w.total(), len(takeovers), during, percentiles(takeovers), haLease)
}

// TestDrillStandbyPostgresZombie: the zombie drill on sink-postgres: the
// checkpoint row holds the new epoch, the orders table equals the fold and
// the raw SQL counters are exact.
func TestDrillStandbyPostgresZombie(t *testing.T) {
	s, cfg := pgHA(t, 20)
	g := newHAGroup(t, s.stack, pgSinkName, "sink-postgres", cfg, 2)
	const perStream = 100
	w := newPGWorkload(100*drillScale(), perStream)
	g.zombie(s.stack, w, perStream, s.checkpoint)
	s.verifyOrders(t, w)
	s.checkCounters(t, w, perStream)
	_, active := g.active()
	var epoch int64
	if err := s.db.QueryRow(context.Background(), `SELECT epoch FROM jetsync_checkpoints WHERE sink = $1`, pgSinkName).Scan(&epoch); err != nil || uint64(epoch) != active.Epoch {
		t.Errorf("checkpoint row epoch %d (%v), want the active epoch %d", epoch, err, active.Epoch)
	}
	t.Logf("drill standby postgres zombie: %d events; orders = fold, raw SQL counters exact, epoch %d", w.total(), epoch)
}

// TestDrillStandbyESKilled: sink-es with a standby, the active one
// SIGKILLed 5 times (x JETSYNC_DRILL_SCALE) while events are appended; the
// documents equal the fold (external versions: a batch written again after
// a kill changes nothing).
func TestDrillStandbyESKilled(t *testing.T) {
	s := newESStack(t, 20)
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	g := newHAGroup(t, s.stack, s.name, "sink-es", string(cfg), 2)
	w := newESWorkload(100*drillScale(), 100)
	kills := 5 * drillScale()
	appendDone := make(chan error, 1)
	go w.appendPaced(s.stack, 100, killsDuration(kills), appendDone)
	takeovers, during := g.haKills(kills, func() bool { return len(appendDone) == 0 }, s.checkpoint)
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "sink-es never caught up")
	w.verifyES(t, s.docs(t))
	checkTakeovers(t, takeovers)
	t.Logf("drill standby es killed: %d events, %d SIGKILLs of the active instance (%d while appending), takeover %s (ha.lease %s); documents = fold, _version = position",
		w.total(), len(takeovers), during, percentiles(takeovers), haLease)
}

// TestDrillStandbyESZombie: the zombie drill on sink-es. Elasticsearch has
// no transaction to fence in (docs/ha.md): the zombie stops on its own
// lease check; the documents equal the fold.
func TestDrillStandbyESZombie(t *testing.T) {
	s := newESStack(t, 20)
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	g := newHAGroup(t, s.stack, s.name, "sink-es", string(cfg), 2)
	w := newESWorkload(60*drillScale(), 100)
	g.zombie(s.stack, w, 100, s.checkpoint)
	w.verifyES(t, s.docs(t))
	t.Logf("drill standby es zombie: %d events; documents = fold", w.total())
}

// kinesisDupOK allows a position read back twice only within the batch
// after a checkpoint where an active instance died or froze.
func kinesisDupOK(cps []uint64, maxEvents int) func(uint64) bool {
	return func(pos uint64) bool {
		for _, cp := range cps {
			if pos > cp && pos <= cp+uint64(maxEvents) {
				return true
			}
		}
		return false
	}
}

// TestDrillStandbyKinesisKilled: sink-kinesis with a standby, the active
// one SIGKILLed 5 times (x JETSYNC_DRILL_SCALE) while events are appended;
// every event is read back in order, a duplicate only within the batch
// after a kill (at least once, as without a standby).
func TestDrillStandbyKinesisKilled(t *testing.T) {
	const maxEvents = 50
	k := newKinesisStack(t, maxEvents)
	cfg, err := os.ReadFile(k.config)
	if err != nil {
		t.Fatal(err)
	}
	g := newHAGroup(t, k.stack, kinesisSinkName, "sink-kinesis", string(cfg), 2)
	w := newWorkload(60*drillScale(), 100)
	kills := 5 * drillScale()
	appendDone := make(chan error, 1)
	go w.appendPaced(k.stack, 100, killsDuration(kills), appendDone)
	takeovers, during := g.haKills(kills, func() bool { return len(appendDone) == 0 }, k.checkpoint)
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return k.checkpoint() >= head }, "sink-kinesis never caught up")
	dups := k.verifyKinesis(w, kinesisDupOK(g.kills, maxEvents), false)
	checkTakeovers(t, takeovers)
	t.Logf("drill standby kinesis killed: %d events, %d SIGKILLs of the active instance (%d while appending), takeover %s (ha.lease %s); all read back in order, %d positions twice (each within the batch after a kill)",
		w.total(), len(takeovers), during, percentiles(takeovers), haLease, dups)
}

// TestDrillStandbyKinesisZombie: the zombie drill on sink-kinesis. Kinesis
// has no transaction to fence in (docs/ha.md): the zombie stops on its own
// lease check; every event is read back in order, a duplicate only within
// the batch after the freeze.
func TestDrillStandbyKinesisZombie(t *testing.T) {
	const maxEvents = 50
	k := newKinesisStack(t, maxEvents)
	cfg, err := os.ReadFile(k.config)
	if err != nil {
		t.Fatal(err)
	}
	g := newHAGroup(t, k.stack, kinesisSinkName, "sink-kinesis", string(cfg), 2)
	w := newWorkload(40*drillScale(), 100)
	g.zombie(k.stack, w, 100, k.checkpoint)
	dups := k.verifyKinesis(w, kinesisDupOK(g.kills, maxEvents), true)
	t.Logf("drill standby kinesis zombie: %d events; all read back in order, %d positions twice (within the batch after the freeze)", w.total(), dups)
}

// TestStandbyStatusAndFailover: jetsyncctl status shows the active
// instance (host, pid, epoch) and the standby; /readyz and /metrics tell
// them apart; jetsyncctl failover hands the lease to the standby, which
// applies what follows, and the former active stands by; with no standby
// running, failover is refused and nothing changes.
func TestStandbyStatusAndFailover(t *testing.T) {
	s := newStack(t)
	g := newHAGroup(t, s, sinkName, "sink-cache", sinkYAML(s.nats.URL(), s.redis.Addr(), 0), 2)
	w := newWorkload(20, 40)
	if err := w.appendSpan(s, 0, 20, 10, 2); err != nil {
		t.Fatal(err)
	}
	first, in := g.active()
	h := g.holders()
	sb := h.Standbys[0]
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() >= w.head() }, "never caught up")

	var out string
	testenv.Eventually(t, 10*time.Second, func() bool {
		out, _ = s.ctl("status")
		return strings.Contains(out, fmt.Sprintf("pid %d", in.PID)) && strings.Contains(out, fmt.Sprintf("pid %d", sb.PID)) &&
			regexp.MustCompile(`(?m)^cache\s+live\s`).MatchString(out)
	}, "status never listed both instances of the live sink:\n%s", out)
	t.Logf("jetsyncctl status:\n%s", out)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(fmt.Sprintf(`(?m)^cache\s+active\s+\S+ pid %d\s+%d\s`, in.PID, in.Epoch)),
		regexp.MustCompile(fmt.Sprintf(`(?m)^cache\s+standby\s+\S+ pid %d\s+-\s`, sb.PID)),
	} {
		if !want.MatchString(out) {
			t.Errorf("status does not match %s:\n%s", want, out)
		}
	}
	code, body := get("http://" + sb.Admin + "/readyz")
	if code != 503 || !strings.Contains(body, `"role":"standby"`) || !strings.Contains(body, fmt.Sprintf("pid %d is active", in.PID)) {
		t.Errorf("standby /readyz: %d %s", code, body)
	}
	if code, body := get("http://" + in.Admin + "/readyz"); code != 200 || !strings.Contains(body, `"role":"active"`) {
		t.Errorf("active /readyz: %d %s", code, body)
	}
	if _, body := get("http://" + sb.Admin + "/metrics"); !regexp.MustCompile(`(?m)^jetsync_sink_active\{sink="cache"\} 0$`).MatchString(body) {
		t.Errorf("standby metrics without jetsync_sink_active 0")
	}
	if _, body := get("http://" + in.Admin + "/metrics"); !regexp.MustCompile(`(?m)^jetsync_sink_active\{sink="cache"\} 1$`).MatchString(body) ||
		!regexp.MustCompile(`(?m)^jetsync_sink_takeovers_total\{sink="cache"\} 1$`).MatchString(body) {
		t.Errorf("active metrics without jetsync_sink_active 1 and takeovers 1")
	}

	out, code = s.ctl("failover", sinkName)
	if code != 0 {
		t.Fatalf("failover: exit %d: %s", code, out)
	}
	t.Logf("jetsyncctl failover: %s", strings.TrimSpace(out))
	if !strings.Contains(out, fmt.Sprintf("pid %d is active", sb.PID)) {
		t.Errorf("failover did not name the standby as active: %s", out)
	}
	h = g.holders()
	if h.Active == nil || h.Active.PID != sb.PID || h.Active.Epoch <= in.Epoch {
		t.Fatalf("after failover the active is %+v, want pid %d with an epoch above %d", h.Active, sb.PID, in.Epoch)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, x := range g.holders().Standbys {
			if x.PID == in.PID {
				return true
			}
		}
		return false
	}, "the former active never stood by")
	if err := w.appendSpan(s, 20, 40, 10, 2); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return s.checkpoint() >= w.head() }, "the new active never applied the rest")
	w.verify(t, s)
	if !strings.Contains(first.output(), `msg="lease handed over: standing by"`) {
		t.Errorf("the former active did not log the hand-over:\n%s", lastLines(first.output(), 10))
	}

	// Alone: nothing to hand over to.
	first.kill()
	testenv.Eventually(t, 10*time.Second, func() bool { return len(g.holders().Standbys) == 0 }, "the killed standby stayed registered")
	out, code = s.ctl("failover", sinkName)
	if code != 2 || !strings.Contains(out, "no standby") {
		t.Errorf("failover with no standby: exit %d: %s", code, out)
	}
	if h := g.holders(); h.Active == nil || h.Active.PID != sb.PID {
		t.Errorf("a refused failover changed the active instance: %+v", h.Active)
	}
}

// TestDrillStandbyPostgresZombieMidTransaction: the zombie is frozen in the
// middle of a batch's transaction, holding the checkpoint row: a lock on
// the orders table holds its batch there, it gets SIGSTOP, then the lock
// goes. A batch is one pipeline, its commit included (one Sync), so
// PostgreSQL runs it to the end without the frozen client: it commits
// before the standby's fence, which waits on the row for it, and the new
// active goes on from that batch's checkpoint. (A client frozen before its
// whole pipeline was sent leaves a transaction idle, which PostgreSQL ends
// after idle_in_transaction_session_timeout; relational's fence tests show
// that.) After SIGCONT the zombie writes nothing: the orders table equals
// the fold and the non-idempotent counters are exact.
func TestDrillStandbyPostgresZombieMidTransaction(t *testing.T) {
	s, cfg := pgHA(t, 20)
	g := newHAGroup(t, s.stack, pgSinkName, "sink-postgres", cfg, 2)
	const perStream = 40
	w := newPGWorkload(50, perStream)
	if err := w.appendSpan(s.stack, 0, perStream/2, 5, 4); err != nil {
		t.Fatal(err)
	}
	head := w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head }, "never caught up")
	z, in := g.active()
	ctx := context.Background()

	// Hold the active's next batch inside its transaction.
	lockTx, err := s.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockTx.Exec(ctx, `LOCK TABLE orders IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	if err := w.appendSpan(s.stack, perStream/2, perStream*3/4, 5, 4); err != nil {
		t.Fatal(err)
	}
	waiting := func() int {
		var n int
		_ = s.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()`).Scan(&n)
		return n
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return waiting() > 0 }, "the active's batch never waited on the lock")
	cpFrozen := s.checkpoint()
	if err := z.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if err := lockTx.Rollback(ctx); err != nil { // its batch runs on, up to the COMMIT
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return waiting() == 0 && s.checkpoint() > cpFrozen },
		"the frozen process's batch, sent whole, never committed (checkpoint %d)", s.checkpoint())
	cpCommitted := settledCheckpoint(s.checkpoint)
	t.Logf("zombie: pid %d (epoch %d) frozen at %s inside its batch's transaction at checkpoint %d; the batch committed without it, through %d",
		in.PID, in.Epoch, stopped.UTC().Format(time.RFC3339Nano), cpFrozen, cpCommitted)

	next := g.waitTakeover(in.PID, 4*haLease)
	t.Logf("zombie: pid %d took the lease after %s (epoch %d, at %s)", next.PID, time.Since(stopped).Round(time.Millisecond), next.Epoch, next.Since.Format(time.RFC3339Nano))
	if err := w.appendSpan(s.stack, perStream*3/4, perStream, 5, 4); err != nil {
		t.Fatal(err)
	}
	head = w.head()
	testenv.Eventually(t, 60*time.Second, func() bool { return s.checkpoint() >= head },
		"the new active never caught up (checkpoint %d, head %d)", s.checkpoint(), head)
	t.Logf("zombie: the new active fenced the row and applied through %d, %s after the freeze",
		head, time.Since(stopped).Round(time.Millisecond))

	line := wakeZombie(t, z)
	// Its last batch is the one that committed while it was frozen, before
	// the takeover (it learns so only on waking, so its log's time is
	// later): nothing of its own after that.
	if m := lastBatchThrough.FindStringSubmatch(line); m == nil || m[1] != strconv.FormatUint(cpCommitted, 10) {
		t.Errorf("the zombie's last batch is not the one committed while it was frozen (through %d): %s\n%s", cpCommitted, line, lastLines(z.output(), 30))
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		for _, sb := range g.holders().Standbys {
			if sb.PID == in.PID {
				return true
			}
		}
		return false
	}, "the zombie never stood by again")
	if cp := s.checkpoint(); cp != head {
		t.Errorf("checkpoint %d after the zombie woke up, head %d", cp, head)
	}
	s.verifyOrders(t, w)
	s.checkCounters(t, w, perStream)
	t.Logf("drill standby postgres zombie mid-transaction: %d events; the frozen batch committed before the fence, nothing after it; orders = fold, raw SQL counters exact", w.total())
}
