package sinktest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/control"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/sinkd"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// The events of RunReload: category ReloadCategory, type ReloadType, data
// {"n": N}.
const (
	ReloadCategory = "reload"
	ReloadType     = "Placed"
)

// ReloadTarget describes a sink for RunReload: its mappings in two
// variants, "a" and "b", that write each event so that the target shows
// which variant wrote it (a key template, a projection).
type ReloadTarget struct {
	// Config is the sink's own keys of its config file, with its mappings
	// in variant "a" or "b"; the suite writes the shared keys (name, nats,
	// filters, batch, ...) before them.
	Config func(variant string) string
	// NewWriter loads the config file at path as the service does
	// (config.Load(path, "", &cfg)) and builds the writer.
	NewWriter func(t *testing.T, path string) (sink.Config, sink.Writer)
	// Written lists every event write the target holds: its position and
	// the variant that wrote it.
	Written func(t *testing.T) []Written
	// Refused are configs a reload must refuse, naming Key: the sink's own
	// keys, as Config (an unknown key under the mappings, an invalid jq
	// program, a changed target setting). The suite adds a YAML syntax
	// error and a changed shared key.
	Refused []RefusedConfig
}

// Written is one event write found in the target.
type Written struct {
	Position uint64
	Variant  string
}

// RefusedConfig is a config a reload must refuse (the sink's own keys),
// with the key its error must name.
type RefusedConfig struct {
	Name, Config, Key string
}

// RunReload runs a sink as a service (pkg/sinkd) with variant "a" of its
// mappings, reloads variant "b" through jetsyncctl's request while events
// are being appended, then tries the refused configs, and checks that:
// every event is written exactly once (nothing replayed, nothing lost) and
// in order, the ones applied before the reload with "a", every one appended
// after its answer with "b", never "a" after "b"; each refused reload names
// its key and leaves "b" writing.
func RunReload(t *testing.T, target ReloadTarget) {
	ctx := t.Context()
	srv := testenv.NATS(t)
	nc, js := srv.Connect(t)
	if _, err := natsutil.EnsureStream(ctx, js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("reload%d", time.Now().UnixNano()%1e9)
	shared := func(maxEvents int) string {
		return fmt.Sprintf(`name: %s
nats: {url: %q}
http: {listen: ""}
filters: ["events.%s.>"]
batch: {max_events: %d, max_bytes: 64KiB, max_interval: 5ms}
retry: {initial: 10ms, max: 200ms}
shutdown_timeout: 5s
`, name, srv.URL(), ReloadCategory, maxEvents)
	}
	path := filepath.Join(t.TempDir(), "sink.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reload := func() (string, error) {
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return control.RequestReload(rctx, nc, name)
	}

	write(shared(20) + target.Config("a"))
	cfg, w := target.NewWriter(t, path)
	out := io.Discard
	if testing.Verbose() {
		out = os.Stderr
	}
	svc, err := sinkd.New(ctx, cfg, w, slog.New(slog.NewTextHandler(out, nil)), sinkd.WithConfigFile(path, ""))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- svc.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-runErr:
		case <-time.After(30 * time.Second):
			t.Error("sink did not stop within 30s")
		}
	})
	eng := svc.Engine()
	pub := &reloadPublisher{js: js}
	applied := func(what string) {
		t.Helper()
		head := pub.head()
		testenv.Eventually(t, 30*time.Second, func() bool {
			select {
			case err := <-runErr:
				t.Fatalf("sink stopped: %v", err)
			default:
			}
			return eng.Stats().Checkpoint >= head
		}, "%s: sink at %d, head %d", what, eng.Stats().Checkpoint, head)
	}

	pub.publish(t, 30)
	applied("variant a")
	if done, err := reload(); err != nil || !strings.Contains(done, "nothing to apply") {
		t.Fatalf("reload of the same file = %q, %v; want nothing to apply", done, err)
	}

	// Reload variant b while events are appended.
	write(shared(20) + target.Config("b"))
	start := pub.head()
	appending := make(chan struct{})
	go func() {
		defer close(appending)
		for range 60 {
			pub.publish(t, 5)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	testenv.Eventually(t, 30*time.Second, func() bool { return eng.Stats().Checkpoint > start+40 }, "sink not writing under load")
	beforeReload := eng.Stats().Checkpoint
	done, err := reload()
	if err != nil {
		t.Fatalf("reload of variant b: %v", err)
	}
	afterReply := pub.head()
	t.Logf("reload at checkpoint %d: %s", beforeReload, done)
	if !strings.Contains(done, "applied") {
		t.Errorf("reload answer %q does not say it applied", done)
	}
	<-appending
	pub.publish(t, 10)
	applied("variant b")

	refused := []RefusedConfig{
		{"yaml syntax error", shared(20) + target.Config("b") + "broken: [unclosed\n", "line"},
		{"changed batch size", shared(21) + target.Config("b"), "batch.max_events"},
	}
	for _, r := range target.Refused {
		refused = append(refused, RefusedConfig{r.Name, shared(20) + r.Config, r.Key})
	}
	var afterRefused []uint64
	for _, r := range refused {
		write(r.Config)
		done, err := reload()
		switch {
		case !errors.Is(err, control.ErrReloadRefused):
			t.Errorf("%s: reload = %q, %v; want it refused", r.Name, done, err)
		case !strings.Contains(err.Error(), r.Key):
			t.Errorf("%s: refusal does not name %s: %v", r.Name, r.Key, err)
		default:
			t.Logf("%s: %v", r.Name, err)
		}
		pub.publish(t, 5)
		afterRefused = append(afterRefused, pub.head())
		applied("after " + r.Name)
	}

	// Every event once, in position order: a, then b from some batch on.
	events := pub.all()
	if got := eng.Stats().Applied; got != uint64(len(events)) {
		t.Errorf("the sink applied %d events, %d were appended: a reload must neither replay nor lose any", got, len(events))
	}
	if cp := eng.Stats().Checkpoint; cp != pub.head() {
		t.Errorf("checkpoint %d, head %d", cp, pub.head())
	}
	variant := map[uint64]string{}
	for _, wr := range target.Written(t) {
		if v, dup := variant[wr.Position]; dup {
			t.Errorf("position %d written twice (%s, then %s)", wr.Position, v, wr.Variant)
		}
		variant[wr.Position] = wr.Variant
	}
	switched := uint64(0)
	for _, ev := range events {
		v, ok := variant[ev.Position]
		switch {
		case !ok:
			t.Errorf("event at position %d was never written", ev.Position)
		case v == "b" && switched == 0:
			switched = ev.Position
		case v == "a" && switched > 0:
			t.Errorf("event at position %d written with variant a after %d was written with b", ev.Position, switched)
		case v != "a" && v != "b":
			t.Errorf("event at position %d written with variant %q", ev.Position, v)
		}
		if ev.Position <= beforeReload && v != "a" {
			t.Errorf("event at position %d, applied before the reload, was rewritten with variant %s", ev.Position, v)
		}
		if ev.Position > afterReply && v != "b" {
			t.Errorf("event at position %d, appended after the reload was answered, written with variant %s", ev.Position, v)
		}
	}
	if len(variant) != len(events) {
		t.Errorf("%d positions written, %d events appended", len(variant), len(events))
	}
	t.Logf("%d events: variant a through %d, b from %d (reload asked at checkpoint %d, answered by head %d); %d refused reloads, b kept writing through %v",
		len(events), switched-1, switched, beforeReload, afterReply, len(refused), afterRefused)
}

// reloadPublisher appends RunReload's events and remembers them.
type reloadPublisher struct {
	js     jetstream.JetStream
	mu     sync.Mutex
	events []envelope.Event
}

func (p *reloadPublisher) publish(t *testing.T, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range n {
		i := len(p.events)
		data, _ := json.Marshal(map[string]int{"n": i})
		ev := envelope.Event{ID: fmt.Sprintf("ev-%d", i), StreamID: fmt.Sprintf("r%d", i%5), Category: ReloadCategory,
			Type: ReloadType, Version: uint64(i/5 + 1), Time: time.Now(), Data: data}
		ack, err := p.js.PublishMsg(ctx, ev.ToMsg())
		if err != nil {
			t.Errorf("publish: %v", err)
			return
		}
		ev.Position = ack.Sequence
		p.events = append(p.events, ev)
	}
}

func (p *reloadPublisher) head() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.events) == 0 {
		return 0
	}
	return p.events[len(p.events)-1].Position
}

func (p *reloadPublisher) all() []envelope.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]envelope.Event(nil), p.events...)
}
