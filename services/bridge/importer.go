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
	"time"

	"github.com/nats-io/nats.go/jetstream"

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
// is skipped (one direct get per stream, the first time the stream is seen),
// so importing a file again publishes nothing, even after the duplicate
// window. An event that is not the next version of its stream is an error.
// On the first bad line or failed publish Import stops reading, waits for
// what it already published, and returns the counts so far with an error
// naming the line (an *envelope.FieldError for bad input).
//
// Streams must not be appended to by others while they are imported.
func Import(ctx context.Context, js jetstream.JetStream, r io.Reader, opts ImportOptions) (ImportResult, error) {
	opts.defaults()
	start := time.Now()
	imp := &importer{js: js, opts: opts, versions: map[string]uint64{}}
	var err error
	if imp.stream, err = js.Stream(ctx, opts.Stream); err != nil {
		return ImportResult{}, fmt.Errorf("stream %s: %w", opts.Stream, classify(err))
	}

	pending := make(chan pendingPub, opts.Window)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		imp.collect(ctx, pending)
	}()

	readErr := imp.read(ctx, r, pending)
	close(pending)
	<-collected // bounded: the collector gives up after AckTimeout without an ack

	imp.mu.Lock()
	res := imp.res
	pubErr := imp.pubErr
	imp.mu.Unlock()
	res.Elapsed = time.Since(start)
	if opts.Progress != nil {
		opts.Progress(res.Lines)
	}
	// The first publish failure came before the line the reader stopped at.
	if pubErr != nil {
		return res, pubErr
	}
	return res, readErr
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

type importer struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	opts     ImportOptions
	versions map[string]uint64 // subject -> version after what was queued

	mu     sync.Mutex
	res    ImportResult
	pubErr error // the first failed publish
}

// pendingPub is a publish awaiting its ack.
type pendingPub struct {
	f    jetstream.PubAckFuture
	line int64
	ev   envelope.Event
}

// read decodes, checks and publishes line by line until EOF or an error.
func (imp *importer) read(ctx context.Context, r io.Reader, pending chan<- pendingPub) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), imp.opts.MaxLineBytes)
	var line int64
	for sc.Scan() {
		line++
		if line%1024 == 0 {
			if imp.opts.Progress != nil {
				imp.opts.Progress(line)
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("import interrupted at line %d: %w", line, err)
			}
		}
		imp.mu.Lock()
		imp.res.Lines = line
		failed := imp.pubErr != nil
		imp.mu.Unlock()
		if failed {
			return nil
		}
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		if err := imp.line(ctx, line, raw, pending); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return &envelope.FieldError{Field: "line " + strconv.FormatInt(line+1, 10), Reason: fmt.Sprintf("is longer than %d bytes", imp.opts.MaxLineBytes)}
		}
		return fmt.Errorf("reading line %d: %w", line+1, err)
	}
	return nil
}

// line handles one non-blank line.
func (imp *importer) line(ctx context.Context, line int64, raw []byte, pending chan<- pendingPub) error {
	prefix := "line " + strconv.FormatInt(line, 10) + ": "
	ev, err := decodeEvent(raw, prefix, importFields)
	if err != nil {
		return err
	}
	if err := ev.Validate(prefix); err != nil {
		return err
	}
	if ev.Time.IsZero() {
		return &envelope.FieldError{Field: prefix + "time", Reason: "is required: when the event happened, RFC 3339"}
	}
	subject := ev.Subject()
	current, seen := imp.versions[subject]
	if !seen {
		if current, err = imp.lastVersion(ctx, subject); err != nil {
			return fmt.Errorf("%sreading the version of %s: %w", prefix, subject, err)
		}
		imp.versions[subject] = current
	}
	switch {
	case ev.Version <= current:
		imp.mu.Lock()
		imp.res.Skipped++
		imp.mu.Unlock()
		return nil
	case ev.Version != current+1:
		return fmt.Errorf("%w: %w", ErrVersionGap, &envelope.FieldError{
			Field:  prefix + "version",
			Reason: fmt.Sprintf("is %d but stream %s/%s is at version %d; the next event must have version %d (events of a stream must be in order, without gaps)", ev.Version, ev.Category, ev.StreamID, current, current+1),
		})
	}
	f, err := imp.js.PublishMsgAsync(ev.ToMsg(), jetstream.WithStallWait(imp.opts.AckTimeout))
	if err != nil {
		return fmt.Errorf("%spublishing event %q: %w", prefix, ev.ID, classify(err))
	}
	imp.versions[subject] = ev.Version
	ev.Data, ev.Metadata = nil, nil // the collector needs no payload
	select {
	case pending <- pendingPub{f: f, line: line, ev: ev}:
	case <-ctx.Done():
		return fmt.Errorf("import interrupted at line %d: %w", line, ctx.Err())
	}
	return nil
}

// lastVersion is the version of the stream's last stored event, 0 if none.
func (imp *importer) lastVersion(ctx context.Context, subject string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, imp.opts.AckTimeout)
	defer cancel()
	m, err := imp.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, classify(err)
	}
	v, err := strconv.ParseUint(m.Header.Get(envelope.HeaderVersion), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s at position %d has no valid %s header", ErrNotJetsync, subject, m.Sequence, envelope.HeaderVersion)
	}
	return v, nil
}

// collect waits for each publish's ack in order and counts it. When no ack
// comes for opts.AckTimeout, or ctx ends, it gives up waiting: the rest are
// counted only if already acked, and the reader stops at its next line.
func (imp *importer) collect(ctx context.Context, pending <-chan pendingPub) {
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
				continue
			}
		} else {
			timer.Reset(imp.opts.AckTimeout)
			select {
			case ack = <-p.f.Ok():
			case err = <-p.f.Err():
				err = classify(err)
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
	}
}

// checkDuplicate makes sure a deduplicated event is the one stored under its
// id: the same id on another event means this event was not stored, and its
// stream would go on with a gap.
func (imp *importer) checkDuplicate(ctx context.Context, p pendingPub, seq uint64) error {
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
