package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// ndjson makes streams*perStream events, streams interleaved, versions
// from..perStream per stream.
func ndjson(streams, from, perStream int) []byte {
	var b bytes.Buffer
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for v := from; v <= perStream; v++ {
		for s := range streams {
			ev := envelope.Event{
				ID: fmt.Sprintf("imp-%d-%d", s, v), Category: "imp", StreamID: fmt.Sprintf("s%d", s),
				Type: "Imported", Version: uint64(v), Time: t0.Add(time.Duration(v) * time.Second),
				Data: json.RawMessage(fmt.Sprintf(`{"s":%d,"v":%d}`, s, v)), Metadata: json.RawMessage(`{"source":"test"}`),
			}
			line, _ := json.Marshal(ev)
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

func importEnv(t *testing.T) *apiEnv {
	t.Helper()
	return newEnvOn(t, testenv.NATS(t)) // provisions the stream
}

func TestImportIsIdempotent(t *testing.T) {
	e := importEnv(t)
	ctx := context.Background()

	// Half of it first, as if an earlier import had stopped there.
	res, err := Import(ctx, e.js, bytes.NewReader(ndjson(10, 1, 50)), ImportOptions{Window: 64})
	if err != nil || res.Published != 500 {
		t.Fatalf("first half: %+v, %v", res, err)
	}

	var progress []int64
	file := ndjson(10, 1, 100)
	res, err = Import(ctx, e.js, bytes.NewReader(file), ImportOptions{Progress: func(n int64) { progress = append(progress, n) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Published != 500 || res.Skipped != 500 || res.Duplicates != 0 || res.Lines != 1000 {
		t.Fatalf("whole file: %+v, want 500 published, 500 skipped", res)
	}
	if len(progress) == 0 || progress[len(progress)-1] != 1000 {
		t.Fatalf("progress %v, want it to end at 1000", progress)
	}
	if n := msgCount(t, e.js); n != 1000 {
		t.Fatalf("stream holds %d messages, want 1000", n)
	}

	// Again: nothing reaches the server at all, so it does not depend on
	// the duplicate window.
	res, err = Import(ctx, e.js, bytes.NewReader(file), ImportOptions{})
	if err != nil || res.Published != 0 || res.Skipped != 1000 || res.Duplicates != 0 {
		t.Fatalf("re-import: %+v, %v; want 0 published, 1000 skipped", res, err)
	}
	if n := msgCount(t, e.js); n != 1000 {
		t.Fatalf("stream holds %d messages after re-import, want 1000", n)
	}

	for s := range 10 {
		got := readSubject(t, e.js, fmt.Sprintf("events.imp.s%d", s))
		if len(got) != 100 {
			t.Fatalf("stream s%d has %d events", s, len(got))
		}
		for i, ev := range got {
			v := i + 1
			if ev.Version != uint64(v) || ev.ID != fmt.Sprintf("imp-%d-%d", s, v) || ev.Type != "Imported" ||
				string(ev.Data) != fmt.Sprintf(`{"s":%d,"v":%d}`, s, v) || string(ev.Metadata) != `{"source":"test"}` ||
				!ev.Time.Equal(time.Date(2024, 1, 1, 0, 0, v, 0, time.UTC)) {
				t.Fatalf("stream s%d event %d: %+v", s, i, ev)
			}
		}
	}
	// Appends continue after imported events.
	r := e.post(t, "imp", "s3", newEvents("live", 1), HeaderExpectedVersion, "100")
	wantStatus(t, r, 200)
}

func TestImportStopsAtTheFirstBadLine(t *testing.T) {
	good := string(ndjson(1, 1, 5)) // lines 1-5: versions 1..5 of imp/s0
	cases := []struct {
		name, bad, field string
		target           error
	}{
		{"malformed JSON", `{"id":"x",`, "line 6", envelope.ErrInvalid},
		{"missing type", `{"id":"x","category":"imp","streamId":"s0","version":6,"time":"2024-01-01T00:00:00Z","data":{}}`, "line 6: type", envelope.ErrInvalid},
		{"missing version", `{"id":"x","category":"imp","streamId":"s0","type":"T","time":"2024-01-01T00:00:00Z","data":{}}`, "line 6: version", envelope.ErrInvalid},
		{"missing time", `{"id":"x","category":"imp","streamId":"s0","type":"T","version":6,"data":{}}`, "line 6: time", envelope.ErrInvalid},
		{"bad category", `{"id":"x","category":"a.b","streamId":"s0","type":"T","version":6,"time":"2024-01-01T00:00:00Z","data":{}}`, "line 6: category", envelope.ErrInvalid},
		{"unknown field", `{"id":"x","category":"imp","streamId":"s0","type":"T","version":6,"time":"2024-01-01T00:00:00Z","data":{},"payload":1}`, "line 6: payload", envelope.ErrInvalid},
		{"gap", `{"id":"x","category":"imp","streamId":"s0","type":"T","version":8,"time":"2024-01-01T00:00:00Z","data":{}}`, "line 6: version", ErrVersionGap},
		{"new stream not at 1", `{"id":"x","category":"imp","streamId":"new","type":"T","version":2,"time":"2024-01-01T00:00:00Z","data":{}}`, "line 6: version", ErrVersionGap},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := importEnv(t)
			file := good + c.bad + "\n" + `{"id":"after","category":"imp","streamId":"s0","type":"T","version":6,"time":"2024-01-01T00:00:00Z","data":{}}` + "\n"
			res, err := Import(context.Background(), e.js, strings.NewReader(file), ImportOptions{})
			var fe *envelope.FieldError
			if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, c.target) {
				t.Fatalf("error %v (field %+v), want field %q and %v", err, fe, c.field, c.target)
			}
			if !strings.Contains(err.Error(), "line 6") {
				t.Fatalf("error %q does not name line 6", err)
			}
			// What came before the bad line is published, nothing after it.
			if res.Published != 5 {
				t.Fatalf("published %d, want the 5 lines before the bad one", res.Published)
			}
			if n := msgCount(t, e.js); n != 5 {
				t.Fatalf("stream holds %d, want 5", n)
			}
		})
	}
}

// An event whose id is already stored on another event is not silently
// counted as "already present": its stream would go on with a gap.
func TestImportIDUsedByAnotherEvent(t *testing.T) {
	e := importEnv(t)
	wantStatus(t, e.post(t, "other", "o", `[{"id":"imp-0-1","type":"T","data":{}}]`), 200)
	_, err := Import(context.Background(), e.js, bytes.NewReader(ndjson(1, 1, 3)), ImportOptions{})
	var fe *envelope.FieldError
	if !errors.As(err, &fe) || fe.Field != "line 1: id" {
		t.Fatalf("error %v, want one naming line 1: id", err)
	}
}

func TestImportCommand(t *testing.T) {
	ns := testenv.NATS(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "bridge.yaml")
	if err := os.WriteFile(cfgPath, []byte("nats:\n  url: "+ns.URL()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "events.ndjson")
	if err := os.WriteFile(file, ndjson(2, 1, 10), 0o600); err != nil {
		t.Fatal(err)
	}
	runImport := func(stdin string, args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), append([]string{"import", "-config", cfgPath}, args...), strings.NewReader(stdin), &out, &errOut)
		return code, out.String(), errOut.String()
	}

	code, out, errOut := runImport("", file)
	if code != 0 || !strings.HasPrefix(out, "imported 20 events (0 already present) in ") || !strings.Contains(out, "events/s") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = runImport(string(ndjson(2, 1, 10)), "-")
	if code != 0 || !strings.HasPrefix(out, "imported 0 events (20 already present)") {
		t.Fatalf("re-import from stdin: exit %d, stdout %q", code, out)
	}
	code, _, errOut = runImport(`{"id":"x"}`+"\n", "-")
	if code != exitFailed || !strings.Contains(errOut, "line 1: category") {
		t.Fatalf("bad line: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ = runImport(""); code != exitUsage {
		t.Fatalf("no file: exit %d, want %d", code, exitUsage)
	}
	if code, _, errOut = runImport("", filepath.Join(dir, "missing")); code != exitFailed || !strings.Contains(errOut, "missing") {
		t.Fatalf("missing file: exit %d, stderr %q", code, errOut)
	}
}

func TestCountLines(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "a": 1, "a\n": 1, "a\nb": 2, "a\nb\n": 2, "\n\n": 2} {
		if got, _ := countLines(strings.NewReader(in)); got != want {
			t.Errorf("countLines(%q) = %d, want %d", in, got, want)
		}
	}
}

// Versions are looked up a chunk at a time: more streams than one batched
// get may ask for, some already stored and some new, across chunks; and on
// a stream without direct gets, one lookup per stream.
func TestImportLooksUpVersionsInBatches(t *testing.T) {
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			e := importEnv(t)
			ctx := context.Background()
			if !direct {
				sc := natsutil.DefaultStreamConfig().JetStreamConfig()
				sc.AllowDirect = false
				if _, err := e.js.UpdateStream(ctx, sc); err != nil {
					t.Fatal(err)
				}
			}
			const streams = 1500 // more than chunkLines
			// Streams 0..999 already hold version 1 (and 0..9 version 2).
			if _, err := Import(ctx, e.js, bytes.NewReader(ndjson(1000, 1, 1)), ImportOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := Import(ctx, e.js, bytes.NewReader(ndjson(10, 2, 2)), ImportOptions{}); err != nil {
				t.Fatal(err)
			}
			res, err := Import(ctx, e.js, bytes.NewReader(ndjson(streams, 1, 3)), ImportOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Skipped != 1010 || res.Published != 3*streams-1010 || res.Lines != 3*streams {
				t.Fatalf("%+v, want 1010 skipped and %d published", res, 3*streams-1010)
			}
			if n := msgCount(t, e.js); n != 3*streams {
				t.Fatalf("stream holds %d messages, want %d", n, 3*streams)
			}
			if _, err := e.js.UpdateStream(ctx, natsutil.DefaultStreamConfig().JetStreamConfig()); err != nil {
				t.Fatal(err) // readSubject reads with direct gets
			}
			for _, s := range []int{0, 9, 10, 999, 1000, 1499} {
				got := readSubject(t, e.js, fmt.Sprintf("events.imp.s%d", s))
				if len(got) != 3 || got[0].Version != 1 || got[2].Version != 3 {
					t.Fatalf("stream s%d: %d events %+v", s, len(got), got)
				}
			}
		})
	}
}

// TestImportChainsEachStream: a file sorted by stream (every event's
// predecessor is still in flight when it is read) is stored whole and in
// order; each stored event follows its predecessor.
func TestImportChainsEachStream(t *testing.T) {
	e := importEnv(t)
	var b bytes.Buffer
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for s := range 5 {
		for v := 1; v <= 200; v++ {
			line, _ := json.Marshal(envelope.Event{ID: fmt.Sprintf("sorted-%d-%d", s, v), Category: "imp", StreamID: fmt.Sprintf("s%d", s),
				Type: "Imported", Version: uint64(v), Time: t0, Data: json.RawMessage(`{}`)})
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	res, err := Import(context.Background(), e.js, &b, ImportOptions{Window: 64})
	if err != nil || res.Published != 1000 {
		t.Fatalf("%+v, %v; want 1000 published", res, err)
	}
	for s := range 5 {
		got := readSubject(t, e.js, fmt.Sprintf("events.imp.s%d", s))
		if len(got) != 200 {
			t.Fatalf("stream s%d holds %d events, want 200", s, len(got))
		}
		for i, ev := range got {
			if ev.Version != uint64(i+1) {
				t.Fatalf("stream s%d: event %d has version %d", s, i, ev.Version)
			}
		}
	}
}

// TestImportRefusesAStreamThatMoved: when a stream's last position is not
// the one its next event expects (here another writer appended to it after
// the import read it), that event is refused with ErrConflict and nothing
// of the stream after it is stored: the stream never ends up out of order.
func TestImportRefusesAStreamThatMoved(t *testing.T) {
	e := importEnv(t)
	ctx := context.Background()
	if _, err := Import(ctx, e.js, bytes.NewReader(ndjson(1, 1, 2)), ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	// The import reads s0 at version 2; a foreign message on the subject
	// moves its last position before the import's next publish.
	imp := &importer{js: e.js, opts: ImportOptions{AckTimeout: 5 * time.Second}, versions: map[string]uint64{},
		heads: map[string]*subjectHead{}, deferred: map[string][]lineEvent{}, wake: make(chan struct{}, 1)}
	imp.opts.defaults()
	var err error
	if imp.stream, err = e.js.Stream(ctx, natsutil.DefaultStream); err != nil {
		t.Fatal(err)
	}
	evs := []lineEvent{}
	for v := 3; v <= 4; v++ {
		evs = append(evs, lineEvent{line: int64(v), ev: envelope.Event{ID: fmt.Sprintf("late-%d", v), Category: "imp", StreamID: "s0",
			Type: "Imported", Version: uint64(v), Time: time.Now(), Data: json.RawMessage(`{}`)}})
	}
	if err := imp.lookUpVersions(ctx, evs); err != nil {
		t.Fatal(err)
	}
	foreign := envelope.Event{ID: "foreign", Category: "imp", StreamID: "s0", Type: "Foreign", Version: 3, Time: time.Now(), Data: json.RawMessage(`{}`)}
	if _, err := e.js.PublishMsg(ctx, foreign.ToMsg()); err != nil {
		t.Fatal(err)
	}
	pending := make(chan *pendingPub, 8)
	done := make(chan struct{})
	go func() { defer close(done); imp.collect(ctx, pending) }()
	for _, le := range evs {
		if err := imp.publishEvent(ctx, le, pending); err != nil && !errors.Is(err, errPredecessorFailed) {
			t.Fatal(err)
		}
	}
	if err := imp.finishDeferred(ctx, pending); err != nil {
		t.Fatal(err)
	}
	close(pending)
	<-done
	if !errors.Is(imp.pubErr, ErrConflict) || !strings.Contains(imp.pubErr.Error(), "changed during the import") {
		t.Fatalf("want ErrConflict saying the stream changed, got %v", imp.pubErr)
	}
	got := readSubject(t, e.js, "events.imp.s0")
	var ids []string
	for _, ev := range got {
		ids = append(ids, ev.ID)
	}
	if strings.Join(ids, ",") != "imp-0-1,imp-0-2,foreign" {
		t.Fatalf("stream s0 holds %v, want the two imported events and the foreign one only", ids)
	}
}
