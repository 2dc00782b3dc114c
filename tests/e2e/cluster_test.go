package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// natsCluster is a 3-node JetStream cluster of `bridge nats` processes on
// loopback, so a node can be SIGKILLed like a machine that dies.
type natsCluster struct {
	t     *testing.T
	cfgs  []natsutil.EmbeddedConfig
	nodes []*proc
	nc    *nats.Conn // the test's own client, to every node
	js    jetstream.JetStream
}

func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, cfgs: testenv.ClusterConfigs(t, 3, t.TempDir())}
	for _, cfg := range c.cfgs {
		routes, _ := json.Marshal(cfg.Cluster.Routes)
		yaml := fmt.Sprintf("nats:\n  embedded:\n    host: 127.0.0.1\n    port: %d\n    store_dir: %q\n    server_name: %s\n    cluster: {name: %s, listen: %q, routes: %s}\n",
			cfg.Port, cfg.StoreDir, cfg.ServerName, cfg.Cluster.Name, cfg.Cluster.Listen, routes)
		c.nodes = append(c.nodes, startProc(t, "bridge", "nats", "-config", writeFile(t, cfg.ServerName+".yaml", yaml)))
	}
	var err error
	if c.nc, err = nats.Connect(c.urls(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond)); err != nil {
		// The nodes may still be binding their ports.
		testenv.Eventually(t, 30*time.Second, func() bool {
			c.nc, err = nats.Connect(c.urls(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
			return err == nil
		}, "no node of the cluster accepted a connection: %v", err)
	}
	t.Cleanup(c.nc.Close)
	c.js, _ = jetstream.New(c.nc)
	testenv.Eventually(t, 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := c.js.AccountInfo(ctx)
		return err == nil
	}, "the cluster's JetStream never answered")
	return c
}

func (c *natsCluster) urls() string {
	var u []string
	for _, cfg := range c.cfgs {
		u = append(u, fmt.Sprintf("nats://127.0.0.1:%d", cfg.Port))
	}
	return strings.Join(u, ",")
}

// leader is the name of the node leading stream ("" when none does).
func (c *natsCluster) leader(stream string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.js.Stream(ctx, stream)
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

// healthy reports whether stream has a leader and every replica is
// online and current.
func (c *natsCluster) healthy(stream string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.js.Stream(ctx, stream)
	if err != nil {
		return false
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != len(c.cfgs)-1 {
		return false
	}
	for _, r := range info.Cluster.Replicas {
		if !r.Current || r.Offline {
			return false
		}
	}
	return true
}

func (c *natsCluster) node(name string) *proc {
	for i, cfg := range c.cfgs {
		if cfg.ServerName == name {
			return c.nodes[i]
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// clusterStack is the pipeline on the cluster: an R3 bridge and
// sink-cache given every node's URL.
func newClusterStack(t *testing.T, c *natsCluster) (s *stack, bridgeCfg string) {
	t.Helper()
	s = &stack{t: t, redis: testenv.Redis(t)}
	s.rdb = redis.NewClient(&redis.Options{Addr: s.redis.Addr(), MaxRetries: -1})
	t.Cleanup(func() { s.rdb.Close() })
	port := testenv.FreePort(t)
	s.bridgeURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	bridgeCfg = writeFile(t, "bridge.yaml", fmt.Sprintf("http: {listen: \"127.0.0.1:%d\"}\nnats: {url: %q}\nstream: {replicas: 3}\nappend: {timeout: 3s}\n", port, c.urls()))
	s.bridge = startProc(t, "bridge", "serve", "-config", bridgeCfg)
	testenv.Eventually(t, 60*time.Second, func() bool {
		code, _ := get(s.bridgeURL + "/readyz")
		return code == http.StatusOK
	}, "the bridge never became ready on the cluster")
	adminPort := testenv.FreePort(t)
	s.sinkAdmin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	yaml := sinkYAML(c.urls(), s.redis.Addr(), adminPort) + "stall_timeout: 5s\n"
	s.sinkConfig = writeFile(t, "sink-cache.yaml", strings.Replace(yaml, "max_events: 500", "max_events: 100", 1))
	return s, bridgeCfg
}

// logWorkload is an independent fold's input: every event of the EVENTS
// stream, read back from the cluster, per stream in position order.
func logWorkload(t *testing.T, js jetstream.JetStream) (*workload, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	str, err := js.Stream(ctx, natsutil.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	w := &workload{events: map[string][]appendReq{}, positions: map[string][]uint64{}}
	n := uint64(0)
	for n < info.State.Msgs {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("reading the log at %d of %d: %v", n, info.State.Msgs, err)
		}
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			ev, err := envelope.FromMsg(m.Subject(), m.Headers(), m.Data(), meta.Sequence.Stream)
			if err != nil {
				t.Fatalf("event at %d: %v", meta.Sequence.Stream, err)
			}
			if _, ok := w.events[ev.StreamID]; !ok {
				w.streams = append(w.streams, ev.StreamID)
			}
			w.events[ev.StreamID] = append(w.events[ev.StreamID], appendReq{ID: ev.ID, Type: ev.Type, Data: ev.Data})
			w.positions[ev.StreamID] = append(w.positions[ev.StreamID], ev.Position)
			n++
		}
		if err := batch.Error(); err != nil && ctx.Err() != nil {
			t.Fatalf("reading the log: %v", err)
		}
	}
	return w, int(n)
}

// checkLogHolds checks the log holds each sent event exactly once, in
// each stream's order: nothing lost or stored twice on the way in.
func checkLogHolds(t *testing.T, log *workload, sent map[string][]string) {
	t.Helper()
	bad := 0
	for sid, ids := range sent {
		var got []string
		for _, ev := range log.events[sid] {
			got = append(got, ev.ID)
		}
		if strings.Join(got, ",") != strings.Join(ids, ",") {
			t.Errorf("stream %s: the log holds %d events %v..., sent %d", sid, len(got), got[:min(len(got), 5)], len(ids))
			if bad++; bad > 10 {
				t.FailNow()
			}
		}
	}
}

// importFile writes streams×perStream OrderPlaced/OrderUpdated events as
// NDJSON for `bridge import` and returns the ids per stream.
func importFile(t *testing.T, streams, perStream int) (string, map[string][]string) {
	t.Helper()
	ids := map[string][]string{}
	path := filepath.Join(t.TempDir(), "import.ndjson")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for v := 1; v <= perStream; v++ {
		for i := range streams {
			sid := fmt.Sprintf("imp-%04d", i)
			typ := "OrderUpdated"
			if v == 1 {
				typ = "OrderPlaced"
			}
			id := fmt.Sprintf("%s-%d", sid, v)
			fmt.Fprintf(f, `{"id":%q,"category":"order","streamId":%q,"type":%q,"version":%d,"time":"2026-01-01T00:00:00Z","data":{"v":%d,"s":%q}}`+"\n", id, sid, typ, v, v, sid)
			ids[sid] = append(ids[sid], id)
		}
	}
	return path, ids
}

// runImport runs `bridge import` until it succeeds, as an operator would:
// it is idempotent, so a run cut short by a node loss is simply run again.
// It returns how many runs it took.
func runImport(t *testing.T, bridgeCfg, file string, firstRunDone *atomic.Bool) (int, error) {
	deadline := time.Now().Add(10 * time.Minute)
	for run := 1; time.Now().Before(deadline); run++ {
		p := startProc(t, "bridge", "import", "-config", bridgeCfg, "-progress=false", file)
		code := p.waitExit(5 * time.Minute)
		firstRunDone.Store(true)
		if code == 0 {
			return run, nil
		}
		t.Logf("import run %d exited %d (run again: imports are idempotent): %s", run, code, lastLine(p.output()))
		time.Sleep(time.Duration(min(run, 5)) * time.Second)
	}
	return 0, fmt.Errorf("bridge import did not succeed in 10 minutes of runs")
}

// clusterLoad is a cluster drill's traffic: the NDJSON import, run again
// until it completes, beside the workload's appends through the bridge.
type clusterLoad struct {
	importDone, appendDone chan error
	importRuns             int         // read after importDone
	firstRunDone           atomic.Bool // the first import run ended
}

func startClusterLoad(t *testing.T, s *stack, bridgeCfg, file string, w *workload) *clusterLoad {
	l := &clusterLoad{importDone: make(chan error, 1), appendDone: make(chan error, 1)}
	go func() {
		var err error
		l.importRuns, err = runImport(t, bridgeCfg, file, &l.firstRunDone)
		l.importDone <- err
	}()
	go func() { l.appendDone <- w.appendAll(s, 5, 4) }()
	return l
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// foldEquals waits until the sink has applied the whole log, then checks
// Redis against an independent fold of it: each order document, its
// merged shipping hash and its applied-positions list (every position
// once, in order).
func foldEquals(t *testing.T, c *natsCluster, s *stack, pg *pgStack, sent map[string][]string) int {
	t.Helper()
	log, n := logWorkload(t, c.js)
	checkLogHolds(t, log, sent)
	head := log.head()
	testenv.Eventually(t, 2*time.Minute, func() bool { return s.checkpoint() >= head }, "sink-cache never reached the head %d (at %d)", head, s.checkpoint())
	log.verifyIn(t, s.rdb, true)
	if pg != nil {
		testenv.Eventually(t, 2*time.Minute, func() bool { return pg.checkpoint() >= head }, "sink-postgres never reached the head %d (at %d)", head, pg.checkpoint())
		pg.verifyOrders(t, log)
		// The counter mapping is not idempotent: a batch applied twice
		// would count twice.
		counters := pg.counters(t)
		for _, sid := range log.streams {
			if got, want := counters[sid], len(log.events[sid]); got != want {
				t.Errorf("counters[%s] = %d, want %d: events of the stream applied %s", sid, got, want, map[bool]string{true: "twice", false: "never"}[got > want])
			}
		}
	}
	return n
}

// startClusterPG runs sink-postgres on the cluster next to sink-cache,
// into a PostgreSQL of its own, with the non-idempotent counter mapping.
func startClusterPG(t *testing.T, c *natsCluster, s *stack) *pgStack {
	t.Helper()
	p := &pgStack{stack: s, pg: testenv.Postgres(t), name: pgSinkName}
	pc, err := pgxpool.ParseConfig(p.pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 2
	if p.db, err = pgxpool.NewWithConfig(context.Background(), pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.db.Close)
	if _, err := p.db.Exec(context.Background(), `CREATE TABLE counters (order_id text PRIMARY KEY, n bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	p.config = writeFile(t, "sink-postgres.yaml", pgSinkYAML(c.urls(), p.pg.URL, 100, testenv.FreePort(t), true)+"stall_timeout: 5s\n")
	p.startSinkPG()
	return p
}

// sentIDs is the ids per stream of a workload sent through the bridge.
func sentIDs(w *workload, into map[string][]string) {
	for sid, evs := range w.events {
		for _, ev := range evs {
			into[sid] = append(into[sid], ev.ID)
		}
	}
}

// TestDrillClusterLeaderKilled: on a 3-node cluster (R3), SIGKILL the
// node leading EVENTS while `bridge import` and live appends run and
// sink-cache catches up; restart it later. The bridge answers 503 only
// while no leader exists, the sink resumes from its checkpoint by itself,
// and Redis ends equal to an independent fold of the log, each event
// applied once.
func TestDrillClusterLeaderKilled(t *testing.T) {
	c := startNATSCluster(t)
	s, bridgeCfg := newClusterStack(t, c)
	s.startSink()
	pg := startClusterPG(t, c, s)
	scale := drillScale()
	file, sent := importFile(t, 200*scale, 100)
	w := newWorkload(30*scale, 100)
	sentIDs(w, sent)

	load := startClusterLoad(t, s, bridgeCfg, file, w)

	kills := 2
	var importing, appending atomic.Bool
	importing.Store(true)
	appending.Store(true)
	go func() { err := <-load.importDone; importing.Store(false); load.importDone <- err }()
	go func() { err := <-load.appendDone; appending.Store(false); load.appendDone <- err }()
	from := uint64(0)
	for k := 1; k <= kills; k++ {
		testenv.Eventually(t, 2*time.Minute, func() bool { return s.checkpoint() > from+1000 }, "no progress before kill %d", k)
		leader := c.leader(natsutil.DefaultStream)
		if leader == "" {
			t.Fatalf("kill %d: EVENTS has no leader", k)
		}
		node := c.node(leader)
		node.kill()
		t.Logf("kill %d: SIGKILLed stream leader %s at sink checkpoint %d (import running: %v, live appends running: %v)",
			k, leader, s.checkpoint(), importing.Load(), appending.Load())
		testenv.Eventually(t, 60*time.Second, func() bool {
			l := c.leader(natsutil.DefaultStream)
			return l != "" && l != leader
		}, "no new leader after %s was killed", leader)
		t.Logf("kill %d: new leader %s", k, c.leader(natsutil.DefaultStream))
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
		node.start()
		from = s.checkpoint()
		t.Logf("kill %d: %s restarted", k, leader)
		// The next kill waits for the cluster to heal: two nodes lost at
		// once is beyond what R3 survives.
		testenv.Eventually(t, 2*time.Minute, func() bool { return c.healthy(natsutil.DefaultStream) }, "EVENTS never had three current replicas again after %s restarted", leader)
	}
	if err := <-load.importDone; err != nil {
		t.Fatal(err)
	}
	if err := <-load.appendDone; err != nil {
		t.Fatal(err)
	}
	n := foldEquals(t, c, s, pg, sent)
	code, metrics := get(s.sinkAdmin + "/metrics")
	if code != 200 {
		t.Fatalf("sink metrics: %d", code)
	}
	t.Logf("drill cluster leader SIGKILL: %d events (%d imported in %d import runs, %d appended live), %d leader kills, %d client retries of 503s; Redis and PostgreSQL equal the fold of the log, 0 lost, 0 applied twice; sink-cache %s",
		n, 200*scale*100, load.importRuns, w.total(), kills, s.retries.Load(), metricLine(metrics, "jetsync_sink_consumer_recreated_total"))
}

// TestDrillClusterStepDownStorm: stream, consumer and meta leader
// step-downs, again and again, while `bridge import` and live appends run
// and sink-cache and sink-postgres apply them; the log holds every event
// once, in order, and both read models end equal to its fold.
func TestDrillClusterStepDownStorm(t *testing.T) {
	c := startNATSCluster(t)
	s, bridgeCfg := newClusterStack(t, c)
	s.startSink()
	pg := startClusterPG(t, c, s)
	w := newWorkload(40*drillScale(), 99) // 99: the last event of a stream is no cancellation, so sink-postgres keeps rows to compare
	file, sent := importFile(t, 200*drillScale(), 100)
	sentIDs(w, sent)
	load := startClusterLoad(t, s, bridgeCfg, file, w)

	var stepDowns, refused atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(300+rand.IntN(500)) * time.Millisecond):
			}
			subjects := []string{"$JS.API.STREAM.LEADER.STEPDOWN." + natsutil.DefaultStream}
			if i%3 == 1 {
				subjects = append(subjects, "$JS.API.STREAM.LEADER.STEPDOWN.KV_jetsync-sinks")
			}
			if i%5 == 4 {
				subjects = append(subjects, "$JS.API.META.LEADER.STEPDOWN")
			}
			// Every consumer of the stream: the sink's ordered consumer
			// is R1, so its step-down is refused; those of other
			// consumers (the bridge's, none today) are real.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if str, err := c.js.Stream(ctx, natsutil.DefaultStream); err == nil {
				names := str.ConsumerNames(ctx)
				for n := range names.Name() {
					subjects = append(subjects, "$JS.API.CONSUMER.LEADER.STEPDOWN."+natsutil.DefaultStream+"."+n)
				}
			}
			cancel()
			for _, subj := range subjects {
				msg, err := c.nc.Request(subj, nil, 2*time.Second)
				var resp struct {
					Success bool `json:"success"`
				}
				if err == nil && json.Unmarshal(msg.Data, &resp) == nil && resp.Success {
					stepDowns.Add(1)
				} else {
					refused.Add(1)
				}
			}
		}
	})
	err := <-load.appendDone
	if err == nil {
		// The storm goes on over the whole first import run and while the
		// sinks catch up, to a minimum size.
		testenv.Eventually(t, 5*time.Minute, func() bool { return load.firstRunDone.Load() && stepDowns.Load() >= int64(15*drillScale()) },
			"only %d step-downs succeeded: the storm did not happen", stepDowns.Load())
	}
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	// Each step-down during the import costs it a run (an ack that never
	// comes, 30s); the rest of it runs after the storm.
	if err := <-load.importDone; err != nil {
		t.Fatal(err)
	}
	n := foldEquals(t, c, s, pg, sent)
	_, metrics := get(s.sinkAdmin + "/metrics")
	t.Logf("drill step-down storm: %d events (%d imported in %d import runs, %d appended live), %d leader step-downs (%d refused), %d client retries of 503s; Redis and PostgreSQL equal the fold of the log, 0 lost, 0 applied twice; sink-cache %s",
		n, 200*drillScale()*100, load.importRuns, w.total(), stepDowns.Load(), refused.Load(), s.retries.Load(), metricLine(metrics, "jetsync_sink_consumer_recreated_total"))
}

// metricLine sums a counter's series in a /metrics page, per label set.
func metricLine(page, name string) string {
	var out []string
	for _, l := range strings.Split(page, "\n") {
		if strings.HasPrefix(l, name+"{") {
			out = append(out, strings.TrimPrefix(l, name))
		}
	}
	return name + " " + strings.Join(out, " ")
}
