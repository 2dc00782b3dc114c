package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
)

// ImportOptions tunes Import. The zero value works.
type ImportOptions struct {
	Stream       string        // JetStream stream; default natsutil.DefaultStream
	Window       int           // publishes awaiting their ack at most; default 4096
	MaxLineBytes int           // longest line accepted; default 8 MiB
	AckTimeout   time.Duration // longest wait for one ack or one read; default 30s
	// Progress, when set, is called now and then with the number of lines
	// handled so far, and once at the end.
	Progress func(lines int64)
	// Metrics, when set, counts the events stored
	// (jetsync_bridge_import_events_total).
	Metrics *Metrics
}

// ImportResult counts what an import did.
type ImportResult struct {
	Lines      int64         // lines read, blank ones included
	Published  int64         // events stored by this import
	Skipped    int64         // events whose stream already had their version
	Duplicates int64         // events JetStream deduplicated by id
	Elapsed    time.Duration // wall time
}

// Present is the number of events that were already stored.
func (r ImportResult) Present() int64 { return r.Skipped + r.Duplicates }

// Import publishes the NDJSON events of r (one complete event per line, in
// version order per stream) with asynchronous publishes, at most
// opts.Window awaiting their ack.
//
// It is idempotent: an event whose stream is already at or past its version
// is skipped, so importing a file again publishes nothing, even after the
// duplicate window. An event that is not the next version of its stream is
// an error. On the first bad line or failed publish Import stops reading,
// waits for what it already published, and returns the counts so far with an
// error naming the line (an *envelope.FieldError for bad input).
//
// Three goroutines share the work, so both cores are busy: one reads and
// decodes lines in chunks of up to chunkLines, one looks up the versions of
// a chunk's new streams in one batched direct get and publishes the chunk,
// and one collects the acks.
//
// Streams must not be appended to by others while they are imported.
func Import(ctx context.Context, js jetstream.JetStream, r io.Reader, opts ImportOptions) (ImportResult, error) {
	opts.defaults()
	start := time.Now()
	imp := &importer{js: js, opts: opts, versions: map[string]uint64{}, heads: map[string]*subjectHead{},
		deferred: map[string][]lineEvent{}, wake: make(chan struct{}, 1)}
	var err error
	if imp.stream, err = js.Stream(ctx, opts.Stream); err != nil {
		return ImportResult{}, fmt.Errorf("stream %s: %w", opts.Stream, classify(err))
	}

	pending := make(chan *pendingPub, opts.Window)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		imp.collect(ctx, pending)
	}()
	readCtx, stopReading := context.WithCancel(ctx)
	chunks := make(chan chunk, 2)
	go imp.read(readCtx, r, chunks)

	pubErr := imp.publish(ctx, chunks, pending)
	stopReading() // the reader returns at its next chunk, or when r ends
	close(pending)
	<-collected // bounded: the collector gives up after AckTimeout without an ack

	imp.mu.Lock()
	res := imp.res
	ackErr := imp.pubErr
	imp.mu.Unlock()
	res.Elapsed = time.Since(start)
	if opts.Progress != nil {
		opts.Progress(res.Lines)
	}
	// The first failed publish came before the line the publisher stopped at.
	if ackErr != nil {
		return res, ackErr
	}
	return res, pubErr
}

func (o *ImportOptions) defaults() {
	if o.Stream == "" {
		o.Stream = natsutil.DefaultStream
	}
	if o.Window <= 0 {
		o.Window = 4096
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = 8 << 20
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 30 * time.Second
	}
}

// chunkLines is the most events in a chunk. It is also the most subjects
// one batched direct get may ask for: the server answers at most 1024
// messages per request.
const chunkLines = 1024

type importer struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	opts     ImportOptions
	versions map[string]uint64 // subject -> version after what was queued; the publisher's
	// heads chains each stream's publishes: subject -> its last publish
	// (or the last stored event, read at the start); the publisher's.
	heads map[string]*subjectHead
	// deferred holds, per stream, the events waiting for their
	// predecessor's ack, in order (the publisher's); ndeferred counts them.
	deferred  map[string][]lineEvent
	ndeferred int

	// completed lists streams whose awaited publish has its outcome, from
	// the collector to the publisher; wake tells a waiting publisher.
	compMu    sync.Mutex
	completed []string
	wake      chan struct{}

	mu     sync.Mutex
	res    ImportResult
	pubErr error // the first failed publish
}

// chunk is a run of decoded lines, handed from the reader to the publisher.
type chunk struct {
	events []lineEvent
	lines  int64 // lines read up to the end of the chunk, blank ones included
	err    error // what stopped the reading after events, at line lines
}

type lineEvent struct {
	line int64
	ev   envelope.Event
}

// pendingPub is a publish awaiting its ack.
type pendingPub struct {
	f    jetstream.PubAckFuture
	line int64
	ev   envelope.Event
	head *subjectHead // its outcome, for the next event of its stream
}

// subjectHead is where a stream stands for its next event's publish: the
// position of its last event once that is known (stored, or acknowledged),
// or the publish still awaiting its ack (done open).
//
// Each publish expects the stream's last position to be the previous
// event's (Nats-Expected-Last-Subject-Sequence), so an event is stored only
// right after its predecessor. Without it, an event lost in flight (a
// stream leader change drops what reaches no leader) and the next event of
// its stream stored by the new leader left a gap that a second import run
// could not see: it resumes after the last stored version.
type subjectHead struct {
	seq    uint64
	err    error         // the publish failed or its outcome is unknown
	done   chan struct{} // closed once seq or err is set; nil when known from the start
	waited atomic.Bool   // an event of the stream waits for it: the collector tells the publisher
}

// read decodes and checks line by line until EOF or a bad line, and sends
// the events in chunks. It closes chunks when done.
func (imp *importer) read(ctx context.Context, r io.Reader, chunks chan<- chunk) {
	defer close(chunks)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), imp.opts.MaxLineBytes)
	var line int64
	c := chunk{events: make([]lineEvent, 0, chunkLines)}
	send := func() bool {
		c.lines = line
		select {
		case chunks <- c:
			c = chunk{events: make([]lineEvent, 0, chunkLines)}
			return true
		case <-ctx.Done():
			return false
		}
	}
	for sc.Scan() {
		line++
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		ev, err := decodeLine(line, raw)
		if err != nil {
			c.err = err
			send()
			return
		}
		c.events = append(c.events, lineEvent{line: line, ev: ev})
		if len(c.events) == chunkLines && !send() {
			return
		}
	}
	if err := sc.Err(); err != nil {
		line++
		if errors.Is(err, bufio.ErrTooLong) {
			c.err = &envelope.FieldError{Field: "line " + strconv.FormatInt(line, 10), Reason: fmt.Sprintf("is longer than %d bytes", imp.opts.MaxLineBytes)}
		} else {
			c.err = fmt.Errorf("reading line %d: %w", line, err)
		}
	}
	send()
}

// decodeLine decodes and checks one non-blank line.
func decodeLine(line int64, raw []byte) (envelope.Event, error) {
	prefix := "line " + strconv.FormatInt(line, 10) + ": "
	ev, err := decodeEvent(raw, prefix, importFields)
	if err != nil {
		return ev, err
	}
	if err := ev.Validate(prefix); err != nil {
		return ev, err
	}
	if ev.Time.IsZero() {
		return ev, &envelope.FieldError{Field: prefix + "time", Reason: "is required: when the event happened, RFC 3339"}
	}
	return ev, nil
}

// publish publishes the chunks' events in order until the chunks end, a
// line is bad or a publish fails.
func (imp *importer) publish(ctx context.Context, chunks <-chan chunk, pending chan<- *pendingPub) error {
	for c := range chunks {
		if err := imp.lookUpVersions(ctx, c.events); err != nil {
			return err
		}
		for _, le := range c.events {
			imp.mu.Lock()
			imp.res.Lines = le.line
			failed := imp.pubErr != nil
			imp.mu.Unlock()
			if failed {
				return nil
			}
			err := imp.publishEvent(ctx, le, pending)
			if err == nil {
				err = imp.publishReady(ctx, pending, false)
			}
			if errors.Is(err, errPredecessorFailed) {
				return nil // the collector reports the predecessor's failure
			} else if err != nil {
				// A bad line: what came before it is still published.
				return errors.Join(err, imp.finishDeferred(ctx, pending))
			}
		}
		imp.mu.Lock()
		imp.res.Lines = c.lines
		imp.mu.Unlock()
		if imp.opts.Progress != nil {
			imp.opts.Progress(c.lines)
		}
		if c.err != nil {
			return errors.Join(c.err, imp.finishDeferred(ctx, pending))
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("import interrupted at line %d: %w", c.lines, err)
		}
	}
	return imp.finishDeferred(ctx, pending)
}

// finishDeferred publishes the events still waiting for their
// predecessors, as their acks come in.
func (imp *importer) finishDeferred(ctx context.Context, pending chan<- *pendingPub) error {
	err := imp.publishReady(ctx, pending, true)
	if errors.Is(err, errPredecessorFailed) {
		return nil // the collector reports the predecessor's failure
	}
	return err
}

// publishReady publishes the deferred events whose predecessor is now
// acknowledged; with all, it waits until none is left.
func (imp *importer) publishReady(ctx context.Context, pending chan<- *pendingPub, all bool) error {
	for imp.ndeferred > 0 {
		select {
		case <-imp.wake:
		default:
			if !all {
				return nil
			}
			select {
			case <-imp.wake:
			case <-ctx.Done():
				return fmt.Errorf("import interrupted: %w", ctx.Err())
			}
		}
		imp.mu.Lock()
		failed := imp.pubErr != nil
		imp.mu.Unlock()
		if failed {
			return errPredecessorFailed
		}
		imp.compMu.Lock()
		ready := imp.completed
		imp.completed = nil
		imp.compMu.Unlock()
		for len(ready) > 0 {
			subject := ready[0]
			ready = ready[1:]
			q := imp.deferred[subject]
			if len(q) == 0 {
				continue
			}
			h := imp.heads[subject]
			select {
			case <-h.done:
			default:
				continue // told twice; its outcome is still to come
			}
			if h.err != nil {
				return errPredecessorFailed
			}
			if len(q) == 1 {
				delete(imp.deferred, subject)
			} else {
				imp.deferred[subject] = q[1:]
			}
			imp.ndeferred--
			next, err := imp.send(ctx, q[0], h, pending)
			if err != nil {
				return err
			}
			if len(q) > 1 && imp.waitFor(next) {
				ready = append(ready, subject) // acknowledged already
			}
		}
	}
	return nil
}

// waitFor marks h as awaited and reports whether its outcome is in
// already (then the collector may not tell).
func (imp *importer) waitFor(h *subjectHead) bool {
	h.waited.Store(true)
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// publishEvent publishes one event if it is the next of its stream, or
// defers it while its predecessor awaits its ack.
func (imp *importer) publishEvent(ctx context.Context, le lineEvent, pending chan<- *pendingPub) error {
	ev, line := le.ev, le.line
	subject := ev.Subject()
	current := imp.versions[subject]
	switch {
	case ev.Version <= current:
		imp.mu.Lock()
		imp.res.Skipped++
		imp.mu.Unlock()
		return nil
	case ev.Version != current+1:
		prefix := "line " + strconv.FormatInt(line, 10) + ": "
		return fmt.Errorf("%w: %w", ErrVersionGap, &envelope.FieldError{
			Field:  prefix + "version",
			Reason: fmt.Sprintf("is %d but stream %s/%s is at version %d; the next event must have version %d (events of a stream must be in order, without gaps)", ev.Version, ev.Category, ev.StreamID, current, current+1),
		})
	}
	imp.versions[subject] = ev.Version
	// The stream's previous event must be stored first. While its ack is
	// awaited the event waits in line, and events of other streams go on:
	// an interleaved file keeps the window full.
	if q, waiting := imp.deferred[subject]; waiting {
		imp.deferred[subject] = append(q, le)
		imp.ndeferred++
		return nil
	}
	h := imp.heads[subject]
	if h != nil && h.done != nil && !imp.waitFor(h) {
		imp.deferred[subject] = []lineEvent{le}
		imp.ndeferred++
		return nil
	}
	if h != nil && h.err != nil {
		return errPredecessorFailed
	}
	_, err := imp.send(ctx, le, h, pending)
	return err
}

// send publishes an event expecting its stream's last position to be h's
// (none when h is nil) and queues it for the collector; it returns the
// stream's new head.
func (imp *importer) send(ctx context.Context, le lineEvent, h *subjectHead, pending chan<- *pendingPub) (*subjectHead, error) {
	ev, line := le.ev, le.line
	var expect uint64 // 0: the stream has no event yet
	if h != nil {
		expect = h.seq
	}
	f, err := imp.js.PublishMsgAsync(ev.ToMsg(), jetstream.WithStallWait(imp.opts.AckTimeout), jetstream.WithExpectLastSequencePerSubject(expect))
	if err != nil {
		return nil, fmt.Errorf("line %d: publishing event %q: %w", line, ev.ID, classify(err))
	}
	next := &subjectHead{done: make(chan struct{})}
	imp.heads[ev.Subject()] = next
	ev.Data, ev.Metadata = nil, nil // the collector needs no payload
	select {
	case pending <- &pendingPub{f: f, line: line, ev: ev, head: next}:
	case <-ctx.Done():
		return nil, fmt.Errorf("import interrupted at line %d: %w", line, ctx.Err())
	}
	return next, nil
}

// lookUpVersions reads the current version of every stream of events not
// seen before, in one batched direct get for the whole chunk (a round trip
// per stream made a file with many streams import at a fraction of the
// publish rate).
func (imp *importer) lookUpVersions(ctx context.Context, events []lineEvent) error {
	var subjects []string
	first := map[string]int64{} // subject -> its first line, for errors
	for _, le := range events {
		s := le.ev.Subject()
		if _, seen := imp.versions[s]; seen {
			continue
		}
		if _, dup := first[s]; !dup {
			first[s] = le.line
			subjects = append(subjects, s)
		}
	}
	if len(subjects) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, imp.opts.AckTimeout)
	defer cancel()
	found, err := imp.lastVersions(ctx, subjects)
	if err != nil {
		return fmt.Errorf("line %d: reading the versions of %d streams: %w", events[0].line, len(subjects), err)
	}
	for _, s := range subjects {
		last := found[s] // zero for a new stream
		imp.versions[s] = last.version
		if last.seq > 0 {
			imp.heads[s] = &subjectHead{seq: last.seq}
		}
	}
	return nil
}

// storedHead is a stream's last stored event: its version and position.
type storedHead struct{ version, seq uint64 }

// lastVersions is the version and position of the last stored event of
// each subject that has one.
func (imp *importer) lastVersions(ctx context.Context, subjects []string) (map[string]storedHead, error) {
	found := make(map[string]storedHead, len(subjects))
	err := lastMsgs(ctx, imp.js, imp.stream, subjects, func(subject string, seq uint64, h nats.Header) error {
		v, err := storedVersion(subject, seq, h)
		found[subject] = storedHead{version: v, seq: seq}
		return err
	})
	return found, err
}

// lastMsgs calls found with the last stored message of each subject that
// has one, in one batched direct get per call when the stream allows direct
// gets (the server answers at most 1024 per request: pass no more
// subjects), else one request per subject.
func lastMsgs(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, subjects []string, found func(subject string, seq uint64, h nats.Header) error) error {
	if !stream.CachedInfo().Config.AllowDirect {
		// Batched gets are direct gets; without them, one request each.
		for _, s := range subjects {
			m, err := stream.GetLastMsgForSubject(ctx, s)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				return classify(err)
			}
			if err := found(m.Subject, m.Sequence, m.Header); err != nil {
				return err
			}
		}
		return nil
	}
	msgs, err := jetstreamext.GetLastMsgsFor(ctx, js, stream.CachedInfo().Config.Name, subjects)
	if err != nil {
		return classify(err)
	}
	for m, err := range msgs {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			break // none of the subjects has a message
		}
		if err != nil {
			return classify(err)
		}
		if err := found(m.Subject, m.Sequence, m.Header); err != nil {
			return err
		}
	}
	return nil
}

// storedVersion reads the version header of a stored event.
func storedVersion(subject string, seq uint64, h nats.Header) (uint64, error) {
	v, err := strconv.ParseUint(h.Get(envelope.HeaderVersion), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s at position %d has no valid %s header", ErrNotJetsync, subject, seq, envelope.HeaderVersion)
	}
	return v, nil
}

// collect waits for each publish's ack in order and counts it. When no ack
// comes for opts.AckTimeout, or ctx ends, it gives up waiting: the rest are
// counted only if already acked, and the reader stops at its next line.
func (imp *importer) collect(ctx context.Context, pending <-chan *pendingPub) {
	timer := time.NewTimer(imp.opts.AckTimeout)
	defer timer.Stop()
	gaveUp := false
	for p := range pending {
		var ack *jetstream.PubAck
		var err error
		if gaveUp {
			select {
			case ack = <-p.f.Ok():
			case err = <-p.f.Err():
				err = classify(err)
			default:
				p.head.err = errGaveUp
				imp.settled(p)
				continue
			}
		} else {
			timer.Reset(imp.opts.AckTimeout)
			select {
			case ack = <-p.f.Ok():
			case err = <-p.f.Err():
				err = imp.explain(p, err)
			case <-timer.C:
				gaveUp = true
				err = fmt.Errorf("%w: no ack within %s", ErrUnavailable, imp.opts.AckTimeout)
			case <-ctx.Done():
				gaveUp = true
				err = fmt.Errorf("interrupted: %w", ctx.Err())
			}
			if ack != nil && ack.Duplicate {
				err = imp.checkDuplicate(ctx, p, ack.Sequence)
			}
		}
		imp.mu.Lock()
		switch {
		case err != nil:
			if imp.pubErr == nil {
				imp.pubErr = fmt.Errorf("line %d: publishing event %q: %w", p.line, p.ev.ID, err)
			}
		case ack.Duplicate:
			imp.res.Duplicates++
		default:
			imp.res.Published++
			imp.opts.Metrics.eventImported()
		}
		imp.mu.Unlock()
		// The error is recorded before the stream's next event learns of it.
		if err != nil {
			p.head.err = err
		} else {
			p.head.seq = ack.Sequence
		}
		imp.settled(p)
	}
}

// settled publishes p's outcome to the next event of its stream, and tells
// the publisher when that event waits for it.
func (imp *importer) settled(p *pendingPub) {
	close(p.head.done)
	if !p.head.waited.Load() {
		return
	}
	imp.compMu.Lock()
	imp.completed = append(imp.completed, p.ev.Subject())
	imp.compMu.Unlock()
	select {
	case imp.wake <- struct{}{}:
	default:
	}
}

// errPredecessorFailed stops the publisher at an event whose stream's
// previous event was not acknowledged: the collector reports why.
var errPredecessorFailed = errors.New("the stream's previous event was not stored")

// errGaveUp is the outcome of the publishes the collector stopped waiting
// for.
var errGaveUp = errors.New("gave up waiting for the ack")

// explain classifies a refused publish, saying what a refusal of the
// stream's expected last position means.
func (imp *importer) explain(p *pendingPub, err error) error {
	if isAPIError(err, jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return fmt.Errorf("%w: stream %s/%s changed during the import (another writer appended to it, or an event of an earlier, interrupted run was stored late); nothing of it was stored after version %d; run the import again: %w",
			ErrConflict, p.ev.Category, p.ev.StreamID, p.ev.Version-1, err)
	}
	if isAPIError(err, codeDuplicateInProcess) {
		// The cluster still holds an earlier copy of this event (a run cut
		// short by a leader change) in its commit queue: it will be stored
		// or dropped, and a later run either skips it or publishes it.
		return fmt.Errorf("%w: an earlier copy of event %q is still being committed by the cluster; run the import again in a moment: %w",
			ErrUnavailable, p.ev.ID, err)
	}
	return classify(err)
}

// checkDuplicate makes sure a deduplicated event is the one stored under its
// id: the same id on another event means this event was not stored, and its
// stream would go on with a gap.
func (imp *importer) checkDuplicate(ctx context.Context, p *pendingPub, seq uint64) error {
	ctx, cancel := context.WithTimeout(ctx, imp.opts.AckTimeout)
	defer cancel()
	m, err := imp.stream.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("checking the stored event with the same id at position %d: %w", seq, classify(err))
	}
	if m.Subject != p.ev.Subject() || m.Header.Get(envelope.HeaderVersion) != strconv.FormatUint(p.ev.Version, 10) {
		return &envelope.FieldError{
			Field:  "line " + strconv.FormatInt(p.line, 10) + ": id",
			Reason: fmt.Sprintf("%q is already the id of another event (position %d, %s version %s), so this one was not stored; event ids must be unique", p.ev.ID, seq, m.Subject, m.Header.Get(envelope.HeaderVersion)),
		}
	}
	return nil
}
