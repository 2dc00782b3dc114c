package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// The appends phase: the bridge's append API (`bridge serve` with its
// embedded NATS, as a user runs it) against raw JetStream publishes doing
// the same work on the same server, each row for a fixed time.

const (
	appendsClients   = 32   // concurrent appenders of the multi-client rows
	contendedClients = 8    // appenders sharing one stream in the contended rows
	groupInflight    = 1    // group batches in flight at once (grouped row)
	maxGroupMsgs     = 1000 // nats-server's default limit of messages in one atomic batch
)

// appendMode is how a row appends.
type appendMode int

const (
	modeHTTP    appendMode = iota // POST /streams/{category}/{id}/events?expectedVersion=N
	modeRaw                       // js.PublishMsg, one message per event (1-event rows)
	modeBatch                     // one jetstreamext.PublishMsgBatch per append
	modeGrouped                   // appends of several clients gathered into one atomic batch
	modePacked                    // one message per append, the events as a JSON array
	modeFloor                     // HTTP to floorFront: HTTP plus one publish, nothing else
)

// appendsRow is one line of the table.
type appendsRow struct {
	label     string
	category  string // distinct per row, so rows never share a subject
	mode      appendMode
	events    int // per append
	clients   int
	contended bool // every client appends to the same stream
	r3        bool // raw rows: against an R3 stream on a 3-node cluster in this process
	pair      int  // rows of a pair run together; HTTP and raw order alternates per repetition
	vs        int  // HTTP rows: the raw row compared with (index), -1 for none
}

func appendsRows() []appendsRow {
	return []appendsRow{
		{label: "HTTP, 1 event, 32 clients, own stream each, expectedVersion", category: "httpone", mode: modeHTTP, events: 1, clients: appendsClients, pair: 0, vs: 1},
		{label: "raw: sync PublishMsg, 1 event, 32 clients, expected last subject seq", category: "rawone", mode: modeRaw, events: 1, clients: appendsClients, pair: 0, vs: -1},
		{label: "HTTP floor: a front that only reads the body, publishes it (PublishMsg, expected last subject seq) and answers; 1 event, 32 clients", category: "floorone", mode: modeFloor, events: 1, clients: appendsClients, pair: 0, vs: 1},
		{label: "HTTP, 5 events, 32 clients, own stream each, expectedVersion", category: "httpfive", mode: modeHTTP, events: 5, clients: appendsClients, pair: 1, vs: 4},
		{label: "raw: atomic batch of 5 (PublishMsgBatch), 32 clients: the per-batch floor", category: "rawfive", mode: modeBatch, events: 5, clients: appendsClients, pair: 1, vs: -1},
		{label: "raw probe: group commit, 5 events, 32 clients, pending appends in one atomic batch, 1 in flight", category: "rawgroup", mode: modeGrouped, events: 5, clients: appendsClients, pair: 1, vs: -1},
		{label: "raw probe: 5 events packed in one message (JSON array), 32 clients, sync PublishMsg", category: "rawpacked", mode: modePacked, events: 5, clients: appendsClients, pair: 1, vs: -1},
		{label: "raw: atomic batches of 1000 (the most one may hold), 4 clients: the events/s ceiling of one message per event through atomic batches", category: "rawthousand", mode: modeBatch, events: 1000, clients: 4, pair: 1, vs: -1},
		{label: "HTTP, 1 event, 1 client", category: "httpsolo", mode: modeHTTP, events: 1, clients: 1, pair: 2, vs: 9},
		{label: "raw: sync PublishMsg, 1 event, 1 client", category: "rawsolo", mode: modeRaw, events: 1, clients: 1, pair: 2, vs: -1},
		{label: "HTTP contended: 1 event, 8 clients on one stream, 409 → re-read version, retry", category: "httpcontone", mode: modeHTTP, events: 1, clients: contendedClients, contended: true, pair: 3, vs: -1},
		{label: "HTTP contended: 5 events, 8 clients on one stream, 409 → re-read version, retry", category: "httpcontfive", mode: modeHTTP, events: 5, clients: contendedClients, contended: true, pair: 4, vs: -1},
		{label: "raw R3 (3-node cluster in this process): sync PublishMsg, 1 event, 32 clients", category: "rthreeone", mode: modeRaw, events: 1, clients: appendsClients, r3: true, pair: 5, vs: -1},
		{label: "raw R3: atomic batch of 5 per append, 32 clients (batches staged in memory)", category: "rthreefive", mode: modeBatch, events: 5, clients: appendsClients, r3: true, pair: 5, vs: -1},
		{label: "raw R3 probe: group commit, 5 events, 32 clients, 1 in flight", category: "rthreegroup", mode: modeGrouped, events: 5, clients: appendsClients, r3: true, pair: 5, vs: -1},
	}
}

// appendRun is one row run once.
type appendRun struct {
	appends, events, conflicts int
	failed                     int   // raw rows: publishes that failed (then resynced)
	groups                     int64 // group batches (grouped row)
	elapsed                    time.Duration
	p50, p99                   time.Duration // per append, request sent → answer
	server, driver             time.Duration // CPU of the bridge process (HTTP + embedded NATS) and of this one
	verified                   verifyResult  // contended rows
}

func (r appendRun) rate() float64      { return float64(r.appends) / r.elapsed.Seconds() }
func (r appendRun) eventRate() float64 { return float64(r.events) / r.elapsed.Seconds() }

// clientStats is what one appender saw.
type clientStats struct {
	appends, events, conflicts int
	failed                     int
	lat                        []time.Duration
	acked                      map[string]uint64 // contended rows: event id → position answered
}

// appendsEnv is the phase's own `bridge serve`, its embedded NATS server,
// and the raw loaders' connection to that server.
type appendsEnv struct {
	b        *bench
	p        *proc
	url      string // the bridge's HTTP API
	nc       *nats.Conn
	js       jetstream.JetStream
	c        *http.Client
	floor    *proc // the floor front's process
	floorURL string
	cluster  *natsCluster // R3 rows, started with the first of them
	ncR3     *nats.Conn
	jsR3     jetstream.JetStream
	run      string       // prefix of every stream id and event id: unique to this run
	ids      atomic.Int64 // event ids handed out
	once     sync.Once
}

// appendsPhase measures the append rows, -reps times each, and prints the
// table.
func (b *bench) appendsPhase(ctx context.Context, dur time.Duration) {
	b.logf("appends: bridge serve with its embedded NATS")
	a := b.startAppendsEnv(ctx)
	rows := appendsRows()
	runs := make([][]appendRun, len(rows))
	pairs := 0
	for _, r := range rows {
		pairs = max(pairs, r.pair+1)
	}
	for rep := range b.reps {
		for pair := range pairs {
			var h, r []int
			for i, row := range rows {
				switch {
				case row.pair != pair:
				case row.mode == modeHTTP:
					h = append(h, i)
				default:
					r = append(r, i)
				}
			}
			order := slices.Concat(h, r)
			if rep%2 == 1 {
				order = slices.Concat(r, h)
			}
			for _, i := range order {
				b.logf("rep %d: appends %d/%d: %s for %s", rep+1, i+1, len(rows), rows[i].label, dur)
				runs[i] = append(runs[i], a.runRow(ctx, rows[i], rep, dur))
			}
		}
	}
	a.close()
	b.appendsTable(rows, runs, dur)
}

// startAppendsEnv starts `bridge serve` with an embedded NATS server on
// free ports and connects the raw loaders to that server.
func (b *bench) startAppendsEnv(ctx context.Context) *appendsEnv {
	natsPort, httpPort := freePort(), freePort()
	for httpPort == natsPort {
		httpPort = freePort()
	}
	cfg := filepath.Join(b.dir, "bridge-appends.yaml")
	b.writeFile(cfg, fmt.Sprintf("nats: {url: \"\", embedded: {host: 127.0.0.1, port: %d, store_dir: %q}}\nstream: {name: EVENTS}\nhttp: {listen: \"127.0.0.1:%d\", max_body_bytes: 4MiB}\n",
		natsPort, filepath.Join(b.dir, "appends-nats"), httpPort))
	p, err := startProc(filepath.Join(b.bin, "bridge"), "serve", "-config", cfg)
	if err != nil {
		b.fatalf("appends: %v", err)
	}
	a := &appendsEnv{b: b, p: p, url: fmt.Sprintf("http://127.0.0.1:%d", httpPort), c: httpClient(appendsClients),
		run: strconv.FormatInt(time.Now().UnixNano(), 36)}
	b.cleanup = append(b.cleanup, a.close)
	if err := waitHTTP(a.url+"/readyz", 30*time.Second, p); err != nil {
		b.fatalf("appends: %v", err)
	}
	if a.nc, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", natsPort), nats.Name("jetbench raw appends")); err != nil {
		b.fatalf("appends: connecting to the bridge's embedded NATS: %v", err)
	}
	a.js, _ = jetstream.New(a.nc)
	a.floor, a.floorURL = b.startFloorFront(fmt.Sprintf("nats://127.0.0.1:%d", natsPort))
	if _, err := a.js.Stream(ctx, natsutil.DefaultStream); err != nil {
		b.fatalf("appends: the bridge's stream %s: %v", natsutil.DefaultStream, err)
	}
	return a
}

// r3 starts the 3-node cluster and its R3 stream the first time a row
// needs them.
func (a *appendsEnv) r3(ctx context.Context) jetstream.JetStream {
	if a.jsR3 == nil {
		a.b.logf("appends: starting a 3-node JetStream cluster for the R3 rows")
		c, err := startCluster(filepath.Join(a.b.dir, "appends-cluster"))
		if err != nil {
			a.b.fatalf("appends: %v", err)
		}
		a.cluster = c
		if a.ncR3, a.jsR3, err = connectR3(ctx, c); err != nil {
			a.b.fatalf("appends: %v", err)
		}
	}
	return a.jsR3
}

// close disconnects and stops the bridge; safe to call twice.
func (a *appendsEnv) close() {
	a.once.Do(func() {
		if a.ncR3 != nil {
			a.ncR3.Close()
		}
		if a.cluster != nil {
			a.cluster.stop()
		}
		if a.floor != nil && !a.floor.exited() {
			_, _ = a.floor.stop()
		}
		if a.nc != nil {
			a.nc.Close()
		}
		if !a.p.exited() {
			_, _ = a.p.stop()
		}
	})
}

// events are the next n events of a stream at version, with fresh ids and
// the workload's payloads.
func (a *appendsEnv) events(category, stream string, version uint64, n int) []envelope.Event {
	evs := make([]envelope.Event, n)
	now := time.Now()
	for j := range evs {
		k := int(a.ids.Add(1))
		i := k % len(a.b.rd.data)
		evs[j] = envelope.Event{
			ID: a.run + "-" + strconv.Itoa(k), Category: category, StreamID: stream, Type: typeNames[a.b.wl.specs[i].typ],
			Version: version + uint64(j) + 1, Time: now, Data: a.b.rd.data[i], Metadata: a.b.rd.meta[i],
		}
	}
	return evs
}

// appendBody is the JSON array the append API takes.
func appendBody(evs []envelope.Event) []byte {
	var body bytes.Buffer
	body.WriteByte('[')
	for i, ev := range evs {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"id":%q,"type":%q,"data":%s`, ev.ID, ev.Type, ev.Data)
		if len(ev.Metadata) > 0 {
			fmt.Fprintf(&body, `,"metadata":%s`, ev.Metadata)
		}
		body.WriteByte('}')
	}
	body.WriteByte(']')
	return body.Bytes()
}

// appendAnswer is the append API's 200 answer.
type appendAnswer struct {
	Positions []uint64 `json:"positions"`
	Version   uint64   `json:"version"`
	Duplicate bool     `json:"duplicate"`
}

// post appends body at expectedVersion. The error is set for a failed
// request and for every answer but 200; the status code is 0 when there
// was no answer.
func (a *appendsEnv) post(category, stream string, expected uint64, body []byte) (appendAnswer, int, error) {
	return a.postTo(a.url, category, stream, expected, body)
}

// postTo is post to another front with the same API (floorFront).
func (a *appendsEnv) postTo(base, category, stream string, expected uint64, body []byte) (appendAnswer, int, error) {
	url := fmt.Sprintf("%s/streams/%s/%s/events?expectedVersion=%d", base, category, stream, expected)
	resp, err := a.c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return appendAnswer{}, 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return appendAnswer{}, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return appendAnswer{}, resp.StatusCode, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	var ans appendAnswer
	if err := json.Unmarshal(raw, &ans); err != nil {
		return ans, resp.StatusCode, fmt.Errorf("append answer %q: %w", raw, err)
	}
	return ans, resp.StatusCode, nil
}

// version reads a stream's version: GET /streams/{category}/{id}.
func (a *appendsEnv) version(category, stream string) uint64 {
	resp, err := a.c.Get(fmt.Sprintf("%s/streams/%s/%s", a.url, category, stream))
	if err != nil {
		a.b.fatalf("appends: reading the version of %s/%s: %v", category, stream, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var st struct {
		Version uint64 `json:"version"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &st) != nil {
		a.b.fatalf("appends: reading the version of %s/%s: %s: %s", category, stream, resp.Status, raw)
	}
	return st.Version
}

// resync reads where a raw row's subject stands: its last sequence and the
// version header of its last message (0, 0 when it has none).
func (a *appendsEnv) resync(ctx context.Context, js jetstream.JetStream, subject string) (last, version uint64) {
	for try := 0; ; try++ {
		s, err := js.Stream(ctx, natsutil.DefaultStream)
		var m *jetstream.RawStreamMsg
		if err == nil {
			m, err = s.GetLastMsgForSubject(ctx, subject)
		}
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, 0
		}
		if err == nil {
			v, _ := strconv.ParseUint(m.Header.Get(envelope.HeaderVersion), 10, 64)
			return m.Sequence, v
		}
		if try == 20 {
			a.b.fatalf("appends: reading the last message of %s: %v", subject, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// drive runs clients appenders until dur has passed and sums what they saw.
func drive(clients int, dur time.Duration, f func(cl int, deadline time.Time, st *clientStats)) (appendRun, []clientStats) {
	sts := make([]clientStats, clients)
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for cl := range clients {
		wg.Go(func() { f(cl, deadline, &sts[cl]) })
	}
	wg.Wait()
	r := appendRun{elapsed: time.Since(start)}
	var lat []time.Duration
	for _, s := range sts {
		r.appends, r.events, r.conflicts, r.failed = r.appends+s.appends, r.events+s.events, r.conflicts+s.conflicts, r.failed+s.failed
		lat = append(lat, s.lat...)
	}
	slices.Sort(lat)
	r.p50, r.p99 = pct(lat, .50), pct(lat, .99)
	return r, sts
}

// runRow runs a row once, on streams of its own for this repetition.
func (a *appendsEnv) runRow(ctx context.Context, row appendsRow, rep int, dur time.Duration) appendRun {
	stream := func(cl int) string { return fmt.Sprintf("%s-r%d-c%d", a.run, rep, cl) }
	shared := fmt.Sprintf("%s-r%d", a.run, rep)
	js := a.js
	if row.r3 {
		js = a.r3(ctx)
	}
	var gc *groupCommitter
	if row.mode == modeGrouped {
		gc = startGroupCommitter(js, row.clients)
	}
	pids := []int{a.p.cmd.Process.Pid}
	if row.mode == modeFloor {
		pids = append(pids, a.floor.cmd.Process.Pid)
	}
	serverCPU := func() (d time.Duration) {
		for _, pid := range pids {
			d += testenv.ProcessCPU(pid)
		}
		return d
	}
	server0, driver0 := serverCPU(), selfCPU()
	r, sts := drive(row.clients, dur, func(cl int, deadline time.Time, st *clientStats) {
		switch {
		case row.contended:
			a.contendedAppender(row, shared, deadline, st)
		case row.mode == modeHTTP:
			a.httpAppender(row, a.url, stream(cl), deadline, st)
		case row.mode == modeFloor:
			a.httpAppender(row, a.floorURL, stream(cl), deadline, st)
		default:
			a.rawAppender(ctx, js, row, stream(cl), gc, deadline, st)
		}
	})
	r.server, r.driver = serverCPU()-server0, selfCPU()-driver0
	if gc != nil {
		gc.stop()
		r.groups = gc.groups.Load()
	}
	if row.contended {
		v, err := a.verify(ctx, envelope.StreamSubject(row.category, shared), sts)
		if err != nil {
			a.b.fatalf("appends: %s: %v", row.label, err)
		}
		r.verified = v
	}
	return r
}

// httpAppender appends to its own stream, tracking the version from the
// answers.
func (a *appendsEnv) httpAppender(row appendsRow, base, stream string, deadline time.Time, st *clientStats) {
	var version uint64
	for time.Now().Before(deadline) {
		body := appendBody(a.events(row.category, stream, version, row.events))
		t0 := time.Now()
		ans, _, err := a.postTo(base, row.category, stream, version, body)
		lat := time.Since(t0)
		if err != nil {
			a.b.fatalf("appends: %s: append to %s at version %d: %v", row.label, stream, version, err)
		}
		if ans.Duplicate || ans.Version != version+uint64(row.events) || len(ans.Positions) != row.events {
			a.b.fatalf("appends: %s: append to %s at version %d of %d events answered %+v", row.label, stream, version, row.events, ans)
		}
		version = ans.Version
		st.appends, st.events, st.lat = st.appends+1, st.events+row.events, append(st.lat, lat)
	}
}

// contendedAppender appends to the stream every client of the row shares:
// on 409 it re-reads the version and retries with fresh event ids.
func (a *appendsEnv) contendedAppender(row appendsRow, stream string, deadline time.Time, st *clientStats) {
	st.acked = map[string]uint64{}
	version := a.version(row.category, stream)
	for time.Now().Before(deadline) {
		evs := a.events(row.category, stream, version, row.events)
		body := appendBody(evs)
		t0 := time.Now()
		ans, code, err := a.post(row.category, stream, version, body)
		lat := time.Since(t0)
		if code == http.StatusConflict {
			st.conflicts++
			version = a.version(row.category, stream)
			continue
		}
		if err != nil {
			a.b.fatalf("appends: %s: append at version %d: %v", row.label, version, err)
		}
		if ans.Duplicate || ans.Version != version+uint64(row.events) || len(ans.Positions) != row.events {
			a.b.fatalf("appends: %s: append at version %d of %d events answered %+v", row.label, version, row.events, ans)
		}
		for j, ev := range evs {
			st.acked[ev.ID] = ans.Positions[j]
		}
		version = ans.Version
		st.appends, st.events, st.lat = st.appends+1, st.events+row.events, append(st.lat, lat)
	}
}

// rawAppender appends to its own subject straight to JetStream, each append
// guarded by the subject's last sequence as the bridge's are.
func (a *appendsEnv) rawAppender(ctx context.Context, js jetstream.JetStream, row appendsRow, stream string, gc *groupCommitter, deadline time.Time, st *clientStats) {
	var version, last uint64 // the stream's version and its subject's last sequence
	for time.Now().Before(deadline) {
		evs := a.events(row.category, stream, version, row.events)
		msgs := make([]*nats.Msg, len(evs))
		for j := range evs {
			msgs[j] = evs[j].ToMsg()
		}
		if row.mode == modePacked {
			msgs[0].Data = appendBody(evs)
			msgs[0].Header[envelope.HeaderVersion] = []string{strconv.FormatUint(evs[len(evs)-1].Version, 10)}
			msgs = msgs[:1]
		}
		msgs[0].Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
		t0 := time.Now()
		var err error
		switch row.mode {
		case modeRaw, modePacked:
			if len(msgs) != 1 {
				a.b.fatalf("appends: %s: %d messages for one publish", row.label, len(msgs))
			}
			var ack *jetstream.PubAck
			if ack, err = js.PublishMsg(ctx, msgs[0]); err == nil {
				last = ack.Sequence
			}
		case modeBatch:
			var ack *jetstreamext.BatchAck
			if ack, err = jetstreamext.PublishMsgBatch(ctx, js, msgs); err == nil {
				last = ack.Sequence
			}
		case modeGrouped:
			done := make(chan groupAck, 1)
			gc.in <- groupReq{msgs: msgs, done: done}
			ga := <-done
			last, err = ga.last, ga.err
		}
		lat := time.Since(t0)
		if err != nil {
			// A publish that timed out on a loaded machine may have been
			// stored (or an R3 leader may have changed): count it, learn
			// where the subject stands, go on. Too many is a broken run.
			if st.failed++; st.failed > 100 {
				a.b.fatalf("appends: %s: publish to %s after sequence %d: %v (and 100 failures before)", row.label, msgs[0].Subject, last, err)
			}
			last, version = a.resync(ctx, js, msgs[0].Subject)
			continue
		}
		version += uint64(row.events)
		st.appends, st.events, st.lat = st.appends+1, st.events+row.events, append(st.lat, lat)
	}
}

// groupReq is one append handed to the group committer: its messages, the
// first carrying its subject's expected last sequence.
type groupReq struct {
	msgs []*nats.Msg
	done chan groupAck // buffered: the committer never waits for a client
}

// groupAck answers a groupReq: the sequence of its last message.
type groupAck struct {
	last uint64
	err  error
}

// groupCommitter is the design probe for group commit: one loop gathers
// whatever appends are waiting (from different subjects) and publishes
// them as one atomic batch, at most groupInflight batches at once.
type groupCommitter struct {
	js     jetstream.JetStream
	in     chan groupReq
	done   chan struct{}
	groups atomic.Int64
}

func startGroupCommitter(js jetstream.JetStream, clients int) *groupCommitter {
	g := &groupCommitter{js: js, in: make(chan groupReq, clients), done: make(chan struct{})}
	go g.loop()
	return g
}

// stop waits for the batches in flight; every client must have returned.
func (g *groupCommitter) stop() {
	close(g.in)
	<-g.done
}

func (g *groupCommitter) loop() {
	defer close(g.done)
	slots := make(chan struct{}, groupInflight)
	var carry *groupReq // did not fit in the previous group
	for {
		var first groupReq
		if carry != nil {
			first, carry = *carry, nil
		} else {
			r, ok := <-g.in
			if !ok {
				break
			}
			first = r
		}
		slots <- struct{}{} // appends keep queueing while the batches in flight commit
		group, n := []groupReq{first}, len(first.msgs)
	gather:
		for {
			select {
			case r, ok := <-g.in:
				if !ok {
					break gather
				}
				if n+len(r.msgs) > maxGroupMsgs {
					carry = &r
					break gather
				}
				group, n = append(group, r), n+len(r.msgs)
			default:
				break gather
			}
		}
		go func() {
			defer func() { <-slots }()
			g.publish(group, n)
		}()
	}
	for range groupInflight {
		slots <- struct{}{}
	}
}

// publish commits one group and answers each member with the sequence of
// its last message: the batch is stored contiguously, in order.
func (g *groupCommitter) publish(group []groupReq, n int) {
	msgs := make([]*nats.Msg, 0, n)
	for _, r := range group {
		msgs = append(msgs, r.msgs...)
	}
	ack, err := jetstreamext.PublishMsgBatch(context.Background(), g.js, msgs)
	g.groups.Add(1)
	if err != nil {
		for _, r := range group {
			r.done <- groupAck{err: fmt.Errorf("group of %d appends: %w", len(group), err)}
		}
		return
	}
	seq := ack.Sequence - uint64(n) // before the group's first message
	for _, r := range group {
		seq += uint64(len(r.msgs))
		r.done <- groupAck{last: seq}
	}
}

// verifyResult is what reading a contended stream back found.
type verifyResult struct {
	events, lost, doubled, gaps, unacked, moved int
}

// verify reads every event stored under subject and checks it against the
// appends the clients saw acknowledged: versions 1..N without a gap, each
// acknowledged event present once at the position it was answered with, no
// event id twice, nothing stored that was not acknowledged (a 409 stores
// nothing).
func (a *appendsEnv) verify(ctx context.Context, subject string, sts []clientStats) (verifyResult, error) {
	acked := map[string]uint64{}
	for _, s := range sts {
		for id, pos := range s.acked {
			acked[id] = pos
		}
	}
	var v verifyResult
	var first []string // the first few problems, for the message
	note := func(format string, args ...any) {
		if len(first) < 3 {
			first = append(first, fmt.Sprintf(format, args...))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	seen := map[string]bool{}
	var version uint64
	opts := []jetstreamext.GetBatchOpt{jetstreamext.GetBatchSubject(subject)}
	for {
		it, err := jetstreamext.GetBatch(ctx, a.js, natsutil.DefaultStream, 500, opts...)
		if err != nil {
			return v, fmt.Errorf("reading %s back: %w", subject, err)
		}
		var last uint64
		for m, err := range it {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				break
			}
			if err != nil {
				return v, fmt.Errorf("reading %s back: %w", subject, err)
			}
			last = m.Sequence
			ev, err := envelope.FromMsg(m.Subject, m.Header, m.Data, m.Sequence)
			if err != nil {
				return v, fmt.Errorf("position %d: %w", m.Sequence, err)
			}
			v.events++
			if ev.Version != version+1 {
				v.gaps++
				note("position %d has version %d after version %d", m.Sequence, ev.Version, version)
			}
			version = ev.Version
			if seen[ev.ID] {
				v.doubled++
				note("event %s stored twice (again at position %d)", ev.ID, m.Sequence)
			}
			seen[ev.ID] = true
			switch pos, ok := acked[ev.ID]; {
			case !ok:
				v.unacked++
				note("event %s at position %d was never acknowledged", ev.ID, m.Sequence)
			case pos != m.Sequence:
				v.moved++
				note("event %s answered with position %d is at %d", ev.ID, pos, m.Sequence)
			}
		}
		if last == 0 {
			break
		}
		opts = []jetstreamext.GetBatchOpt{jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchSeq(last + 1)}
	}
	for id := range acked {
		if !seen[id] {
			v.lost++
			note("acknowledged event %s is not stored", id)
		}
	}
	if v.lost+v.doubled+v.gaps+v.unacked+v.moved > 0 {
		return v, fmt.Errorf("%s: %d events read back, %d acknowledged: %d lost, %d doubled, %d version gaps, %d stored without an acknowledgement, %d at another position than answered; %s",
			subject, v.events, len(acked), v.lost, v.doubled, v.gaps, v.unacked, v.moved, strings.Join(first, "; "))
	}
	return v, nil
}

// --- report ---------------------------------------------------------------

func runValues(rs []appendRun, f func(appendRun) float64) []float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return xs
}

// spreadOf is "median [min–max]", or the value alone for one repetition.
func spreadOf(xs []float64, format string) string {
	if len(xs) == 1 {
		return fmt.Sprintf(format, xs[0])
	}
	return fmt.Sprintf(format+" ["+format+"–"+format+"]", median(xs), slices.Min(xs), slices.Max(xs))
}

func medianDur(rs []appendRun, f func(appendRun) time.Duration) time.Duration {
	return time.Duration(median(runValues(rs, func(r appendRun) float64 { return float64(f(r)) })))
}

func (b *bench) appendsTable(rows []appendsRow, runs [][]appendRun, dur time.Duration) {
	w := b.out
	rate := func(r appendRun) float64 { return r.rate() }
	evRate := func(r appendRun) float64 { return r.eventRate() }
	p50 := func(r appendRun) time.Duration { return r.p50 }
	p99 := func(r appendRun) time.Duration { return r.p99 }
	fmt.Fprintf(w, "\n## Appends: the bridge's append API against raw JetStream (`bridge serve` with its embedded NATS; %s per row)\n\n", dur)
	fmt.Fprintf(w, "Every row appends ~%d B events (the workload's data and metadata) to the EVENTS stream of the bridge's embedded server, each append guarded by its stream's version (HTTP: ?expectedVersion=N; raw: Nats-Expected-Last-Subject-Sequence on its first message). Latency: per append, from sending the request to its answer. HTTP / raw: per-repetition ratio of appends/s, median. CPU in %% of one core: the bridge process (HTTP and embedded nats-server; for raw rows the server alone; for the floor row the server plus the floor front's process), and this process (the load).\n\n",
		b.rd.dataBytes[len(b.rd.data)]/int64(len(b.rd.data)))
	fmt.Fprintln(w, "| | appends/s | events/s | p50 | p99 | HTTP / raw | CPU bridge proc + driver | notes |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---|")
	for i, row := range rows {
		rs := runs[i]
		vs := "–"
		if row.vs >= 0 {
			vs = fmt.Sprintf("%.2f (÷ row %d)", ratio(runValues(rs, rate), runValues(runs[row.vs], rate)), row.vs+1)
		}
		var notes []string
		if row.r3 {
			notes = append(notes, "the cluster runs in this process: its CPU is in the driver's")
		}
		if f := runValues(rs, func(r appendRun) float64 { return float64(r.failed) }); slices.Max(f) > 0 {
			notes = append(notes, fmt.Sprintf("failed publishes (resynced): %s", spreadOf(f, "%.0f")))
		}
		if row.mode == modeGrouped {
			notes = append(notes, fmt.Sprintf("%.1f appends per group batch", median(runValues(rs, func(r appendRun) float64 { return float64(r.appends) / float64(max(r.groups, 1)) }))))
		}
		if row.contended {
			notes = append(notes, fmt.Sprintf("409s/s %s (successful appends/s in the first columns); latency of the request that succeeded",
				spreadOf(runValues(rs, func(r appendRun) float64 { return float64(r.conflicts) / r.elapsed.Seconds() }), "%.0f")))
		}
		cpu := fmt.Sprintf("%.0f%% + %.0f%%", median(runValues(rs, func(r appendRun) float64 { return 100 * r.server.Seconds() / r.elapsed.Seconds() })),
			median(runValues(rs, func(r appendRun) float64 { return 100 * r.driver.Seconds() / r.elapsed.Seconds() })))
		fmt.Fprintf(w, "| %d. %s | %s | %s | %s | %s | %s | %s | %s |\n", i+1, row.label, spreadOf(runValues(rs, rate), "%.0f"), spreadOf(runValues(rs, evRate), "%.0f"),
			ms(medianDur(rs, p50)), ms(medianDur(rs, p99)), vs, cpu, strings.Join(notes, "; "))
	}
	fmt.Fprintln(w)
	for i, row := range rows {
		if !row.contended {
			continue
		}
		var v verifyResult
		for _, r := range runs[i] {
			v.events, v.lost, v.doubled = v.events+r.verified.events, v.lost+r.verified.lost, v.doubled+r.verified.doubled
		}
		fmt.Fprintf(w, "row %d, verified: %d events, %d lost, %d doubled (versions 1..N without a gap, each at the position its append was answered with; repetitions: %d)\n",
			i+1, v.events, v.lost, v.doubled, len(runs[i]))
	}

	// The targets, from the medians. Rows by their role, not by number.
	find := func(mode appendMode, events, clients int) int {
		for i, r := range rows {
			if r.mode == mode && r.events == events && r.clients == clients && !r.contended {
				return i
			}
		}
		panic("appends: no such row")
	}
	h1, h5 := find(modeHTTP, 1, appendsClients), find(modeHTTP, 5, appendsClients)
	met := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "**missed**"
	}
	h5rate, h5p99 := median(runValues(runs[h5], rate)), medianDur(runs[h5], p99)
	h1ratio, h1p99 := ratio(runValues(runs[h1], rate), runValues(runs[rows[h1].vs], rate)), medianDur(runs[h1], p99)
	h5events, h1rate := median(runValues(runs[h5], evRate)), median(runValues(runs[h1], rate))
	fmt.Fprintf(w, "\ntargets (computed from the medians above):\n\n")
	fmt.Fprintf(w, "- 5-event appends ≥ 10k/s, p99 ≤ 10 ms: row %d %.0f appends/s, p99 %s: %s\n", h5+1, h5rate, ms(h5p99), met(h5rate >= 10_000 && h5p99 <= 10*time.Millisecond))
	fmt.Fprintf(w, "- 1-event HTTP ≥ 0.5 of raw, p99 ≤ 5 ms: row %d / row %d = %.2f, p99 %s: %s\n", h1+1, rows[h1].vs+1, h1ratio, ms(h1p99), met(h1ratio >= 0.5 && h1p99 <= 5*time.Millisecond))
	fmt.Fprintf(w, "- 5-event events/s ≥ 1-event appends/s: row %d %.0f events/s, row %d %.0f appends/s: %s\n", h5+1, h5events, h1+1, h1rate, met(h5events >= h1rate))
	fl, th := find(modeFloor, 1, appendsClients), find(modeBatch, 1000, 4)
	fmt.Fprintf(w, "\nbounds on this machine (same run): HTTP floor / raw = %.2f (row %d / row %d): the most any HTTP front reaches here against raw publishing; bridge / HTTP floor = %.2f (row %d / row %d): what the bridge's own work (decoding, validation, versions, ids, answers) costs.\n",
		ratio(runValues(runs[fl], rate), runValues(runs[rows[fl].vs], rate)), fl+1, rows[fl].vs+1, ratio(runValues(runs[h1], rate), runValues(runs[fl], rate)), h1+1, fl+1)
	fmt.Fprintf(w, "atomic batches on this stream carry at most %.0f events/s (row %d): 5-event appends at 10k/s need 50k.\n", median(runValues(runs[th], evRate)), th+1)
}
