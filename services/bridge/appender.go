package main

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/jetsync/jetsync/pkg/envelope"
)

// MaxAppendEvents is the most events one append may hold: nats-server's
// default limit for one atomic batch.
const MaxAppendEvents = 1000

const (
	// lockStripes serialises appends to one stream inside this process, so
	// they do not fail each other's expected-sequence check for nothing,
	// and a stream is in at most one group commit at a time. Enough of them
	// that concurrent appends to different streams seldom share one.
	lockStripes = 4096
	// headsPerStripe bounds the cache of stream heads (lockStripes times
	// this many streams, ~100 B each).
	headsPerStripe = 64
	// maxInflightBatches stays below nats-server's 50 atomic batches in
	// flight per stream, leaving room for other bridges.
	maxInflightBatches = 32
	// dupScanLimit bounds the messages read to name an already-stored id.
	dupScanLimit = 10_000
	// codeDuplicateInProcess is nats-server's JSStreamDuplicateMessageConflict:
	// a message id is in a batch being committed.
	codeDuplicateInProcess jetstream.ErrorCode = 10158
)

// AppendRequest is one append: events for one stream, all or none.
type AppendRequest struct {
	Category string
	StreamID string
	Events   []envelope.Event // Category and StreamID may be empty; Version must be
	// ExpectedVersion, when set, makes the append fail with *VersionError
	// unless the stream is at exactly this version (0: it must not exist).
	ExpectedVersion *uint64
	// Principal is who appends (the authenticated token name or client
	// certificate subject), stored with each event; "" without auth.
	Principal string
}

// AppendResult says where the events were stored.
type AppendResult struct {
	Positions []uint64 `json:"positions"` // stream sequences, contiguous
	Version   uint64   `json:"version"`   // the stream's version after the append
	// Duplicate is true when these events had been stored by an earlier
	// identical append (a client retry); nothing new was stored.
	Duplicate bool `json:"duplicate,omitempty"`
}

// StreamState is where one event stream stands.
type StreamState struct {
	Version      uint64 `json:"version"`      // 0: no events yet
	LastPosition uint64 `json:"lastPosition"` // sequence of its last event, 0 if none
}

// Appender appends events to event streams, each append as one JetStream
// atomic batch guarded by the stream's last sequence: all of it is stored or
// none, and never interleaved with another append to the same stream.
type Appender struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	name     string
	window   time.Duration // the stream's duplicate window
	seed     maphash.Seed
	stripes  [lockStripes]stripe
	inflight chan struct{}
	group    *committer // nil: one atomic batch per multi-event append
	now      func() time.Time
	stats    struct{ appends, duplicates, retries, stale atomic.Uint64 }

	// beforePublish, when set by a test, runs after the stream's state was
	// read and before the batch is sent.
	beforePublish func()
}

// stripe is the lock of the streams that hash to it and the heads of those
// appended to last, both used only under the lock.
type stripe struct {
	lock  chan struct{}
	heads map[string]head
}

// head is where a stream stood after this process last appended to it. It
// saves reading the stream's last event before each append: the publish
// carries the head's position as the expected last subject sequence, so a
// head made stale by another writer is refused by the server, not trusted.
type head struct {
	StreamState
	lastID string // the id of the event at LastPosition
}

// NewAppender appends to stream, as provisioned by natsutil.EnsureStream.
func NewAppender(js jetstream.JetStream, stream jetstream.Stream) *Appender {
	info := stream.CachedInfo()
	a := &Appender{
		js:       js,
		stream:   stream,
		name:     info.Config.Name,
		window:   info.Config.Duplicates,
		seed:     maphash.MakeSeed(),
		inflight: make(chan struct{}, maxInflightBatches),
		group:    newCommitter(js, info.Config.Name),
		now:      time.Now,
	}
	for i := range a.stripes {
		a.stripes[i].lock = make(chan struct{}, 1)
	}
	return a
}

// Wait returns once no group commit is in flight. Appends that returned
// are never waited for; it matters only to a caller closing the connection.
func (a *Appender) Wait() {
	if a.group != nil {
		a.group.wait()
	}
}

// AppenderStats counts what an Appender did since it was made.
type AppenderStats struct {
	Appends    uint64 // appends stored
	Duplicates uint64 // appends answered as retries of stored ones
	Retries    uint64 // batches refused because another writer got in first, then retried
	// StaleHeads counts cached stream heads the server refused because
	// another writer had appended since (then read afresh).
	StaleHeads uint64
	Groups     uint64 // group commits stored (atomic batches of several appends)
	Grouped    uint64 // appends stored by those group commits
	// GroupsRefused counts groups refused whole (nothing stored), whose
	// members were then published one by one.
	GroupsRefused uint64
}

// Stats returns the counters.
func (a *Appender) Stats() AppenderStats {
	s := AppenderStats{Appends: a.stats.appends.Load(), Duplicates: a.stats.duplicates.Load(),
		Retries: a.stats.retries.Load(), StaleHeads: a.stats.stale.Load()}
	if a.group != nil {
		s.Groups, s.Grouped, s.GroupsRefused = a.group.stats.groups.Load(), a.group.stats.grouped.Load(), a.group.stats.refused.Load()
	}
	return s
}

// State reads where a stream stands with one direct get of its last event.
func (a *Appender) State(ctx context.Context, category, streamID string) (StreamState, error) {
	if err := envelope.ValidateToken("category", category); err != nil {
		return StreamState{}, err
	}
	if err := envelope.ValidateToken("streamId", streamID); err != nil {
		return StreamState{}, err
	}
	if err := a.connected(); err != nil {
		return StreamState{}, err
	}
	st, _, err := a.state(ctx, envelope.StreamSubject(category, streamID))
	return st, err
}

// Append stores the request's events as versions current+1..current+n of
// their stream. It fills in the events' Category, StreamID, Version and,
// when missing, Time. Errors: *envelope.FieldError for bad input, *VersionError,
// *DuplicateIDError, ErrConflict, ErrUnavailable, ErrTooLarge.
func (a *Appender) Append(ctx context.Context, req AppendRequest) (AppendResult, error) {
	if err := req.validate(a.now()); err != nil {
		return AppendResult{}, err
	}
	subject := envelope.StreamSubject(req.Category, req.StreamID)
	s, err := a.lock(ctx, subject)
	if err != nil {
		return AppendResult{}, fmt.Errorf("%w: waiting for another append to %s: %w", ErrUnavailable, subject, err)
	}
	defer func() { <-s.lock }()
	// The cached head is taken out: it goes back only with a stored append,
	// so any other outcome (an unknown one above all) reads the stream next.
	h, cached := s.heads[subject]
	delete(s.heads, subject)

	n := uint64(len(req.Events))
	lastID := req.Events[n-1].ID
	backoff := time.Millisecond
	for {
		if err := a.connected(); err != nil {
			return AppendResult{}, err
		}
		if !cached {
			if h.StreamState, h.lastID, err = a.state(ctx, subject); err != nil {
				return AppendResult{}, err
			}
		}
		st := h.StreamState
		// A retry of an append that was stored: answer as the first time.
		if h.lastID == lastID {
			return a.resolveDuplicate(ctx, subject, req.Events, st, h.lastID)
		}
		if req.ExpectedVersion != nil && *req.ExpectedVersion != st.Version {
			if cached { // another writer may have moved it: look
				cached = false
				continue
			}
			return AppendResult{}, &VersionError{Expected: *req.ExpectedVersion, Current: st.Version}
		}
		if a.beforePublish != nil {
			a.beforePublish()
		}

		msgs := make([]*nats.Msg, n)
		for i := range req.Events {
			req.Events[i].Version = st.Version + uint64(i) + 1
			msgs[i] = req.Events[i].ToMsg()
		}
		last, dup, err := a.publish(ctx, msgs, st.LastPosition)
		switch {
		case err == nil && !dup:
			res := AppendResult{Positions: make([]uint64, n), Version: st.Version + n}
			for i := range res.Positions {
				res.Positions[i] = last - n + 1 + uint64(i)
			}
			a.stats.appends.Add(1)
			s.remember(subject, head{StreamState{Version: res.Version, LastPosition: last}, lastID})
			return res, nil
		case cached && isAPIError(err, jetstream.JSErrCodeStreamWrongLastSequence):
			// Another writer appended since this process did: read afresh.
			a.stats.stale.Add(1)
			cached = false
			continue
		case isAPIError(err, jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant):
			// Another writer (another bridge) appended in between, or a
			// batch of this stream is still being committed (one whose
			// append gave up waiting for it).
			if req.ExpectedVersion != nil {
				now, _, err := a.state(ctx, subject)
				if err != nil {
					return AppendResult{}, err
				}
				if now.Version != *req.ExpectedVersion {
					return AppendResult{}, &VersionError{Expected: *req.ExpectedVersion, Current: now.Version}
				}
			}
			a.stats.retries.Add(1)
			err = ErrConflict
		case dup, errors.Is(err, jetstreamext.ErrBatchPublishDuplicateMsgID):
			// An id is stored already, and was not the stream's last event
			// when we looked: a retry racing its original, or a conflict.
			st, stLastID, err := a.state(ctx, subject)
			if err != nil {
				return AppendResult{}, err
			}
			return a.resolveDuplicate(ctx, subject, req.Events, st, stLastID)
		case isAPIError(err, codeDuplicateInProcess):
			// An id of ours is in another batch being committed right now
			// (a concurrent retry); once it is, this becomes a duplicate.
			err = ErrConflict
		case errors.Is(err, jetstreamext.ErrAtomicPublishTooManyInflight),
			errors.Is(err, jetstreamext.ErrBatchPublishIncomplete):
			// Nothing was stored; the server is busy or dropped the batch.
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		case errors.Is(err, jetstreamext.ErrBatchPublishExceedsLimit):
			return AppendResult{}, &envelope.FieldError{Field: "events", Reason: "holds more events than the server allows in one atomic batch; split the append"}
		default:
			return AppendResult{}, classify(err)
		}
		cached = false
		// Retry with a jittered backoff until the append's deadline.
		wait := backoff/2 + rand.N(backoff)
		backoff = min(2*backoff, 50*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return AppendResult{}, fmt.Errorf("%w (gave up after %v)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// validate checks the request and completes its events: category and
// stream id from the request, time now when missing.
func (r *AppendRequest) validate(now time.Time) error {
	if err := envelope.ValidateToken("category", r.Category); err != nil {
		return err
	}
	if err := envelope.ValidateToken("streamId", r.StreamID); err != nil {
		return err
	}
	switch {
	case len(r.Events) == 0:
		return &envelope.FieldError{Field: "events", Reason: "must hold at least one event"}
	case len(r.Events) > MaxAppendEvents:
		return &envelope.FieldError{Field: "events", Reason: fmt.Sprintf("holds %d events; one append takes at most %d (split it)", len(r.Events), MaxAppendEvents)}
	}
	seen := make(map[string]int, len(r.Events))
	for i := range r.Events {
		ev := &r.Events[i]
		prefix := "events[" + strconv.Itoa(i) + "]."
		if ev.Category == "" {
			ev.Category = r.Category
		} else if ev.Category != r.Category {
			return &envelope.FieldError{Field: prefix + "category", Reason: fmt.Sprintf("is %q but the path says %q; leave it out or make it match", ev.Category, r.Category)}
		}
		if ev.StreamID == "" {
			ev.StreamID = r.StreamID
		} else if ev.StreamID != r.StreamID {
			return &envelope.FieldError{Field: prefix + "streamId", Reason: fmt.Sprintf("is %q but the path says %q; leave it out or make it match", ev.StreamID, r.StreamID)}
		}
		if ev.Version != 0 {
			return &envelope.FieldError{Field: prefix + "version", Reason: appendFields.refused["version"]}
		}
		if envelope.HasMetadataKey(ev.Metadata, envelope.MetadataPrincipal) {
			return &envelope.FieldError{Field: prefix + "metadata." + envelope.MetadataPrincipal,
				Reason: "is set by the bridge to the authenticated principal (token name or certificate subject); remove it"}
		}
		ev.Principal = r.Principal
		defaultTime(ev, now)
		if err := ev.ValidateNew(prefix); err != nil {
			return err
		}
		if j, dup := seen[ev.ID]; dup {
			return &envelope.FieldError{Field: prefix + "id", Reason: fmt.Sprintf("%q is also the id of events[%d]; every event needs its own id", ev.ID, j)}
		}
		seen[ev.ID] = i
	}
	return nil
}

// lock takes the stripe of subject, or gives up when ctx ends. The caller
// unlocks with <-s.lock.
func (a *Appender) lock(ctx context.Context, subject string) (*stripe, error) {
	s := &a.stripes[maphash.String(a.seed, subject)%lockStripes]
	select {
	case s.lock <- struct{}{}:
		return s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// remember caches a stream's head, dropping another stream's when the
// stripe holds headsPerStripe already. The stripe must be locked.
func (s *stripe) remember(subject string, h head) {
	if s.heads == nil {
		s.heads = make(map[string]head)
	}
	if len(s.heads) >= headsPerStripe {
		for k := range s.heads {
			delete(s.heads, k)
			break
		}
	}
	s.heads[subject] = h
}

// connected fails fast while the connection is down: a request sent now
// would sit in the reconnect buffer and might go out after we answered.
func (a *Appender) connected() error {
	if nc := a.js.Conn(); !nc.IsConnected() {
		return fmt.Errorf("%w: connection is %s", ErrUnavailable, nc.Status())
	}
	return nil
}

// state reads the stream's version and last position, and its last event's id.
func (a *Appender) state(ctx context.Context, subject string) (StreamState, string, error) {
	m, err := a.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return StreamState{}, "", nil
	}
	if err != nil {
		return StreamState{}, "", fmt.Errorf("reading the last event of %s: %w", subject, classify(err))
	}
	v, err := strconv.ParseUint(m.Header.Get(envelope.HeaderVersion), 10, 64)
	if err != nil || v == 0 {
		return StreamState{}, "", fmt.Errorf("%w: %s at position %d has no valid %s header", ErrNotJetsync, subject, m.Sequence, envelope.HeaderVersion)
	}
	return StreamState{Version: v, LastPosition: m.Sequence}, m.Header.Get(envelope.HeaderID), nil
}

// publish stores msgs, all or none, only if the subject's last sequence is
// still lastSubjectSeq, and returns the sequence of the last one. Several
// messages go as one atomic batch; a single message is atomic by itself and
// goes as a plain publish, which costs the server far less than a batch
// (no staging store). Several messages join the group commit, which
// publishes them with other streams' appends in one batch (groupcommit.go),
// or on their own when the group is refused. dup reports that JetStream
// deduplicated a single message by its id; last is then the sequence of
// the stored one.
func (a *Appender) publish(ctx context.Context, msgs []*nats.Msg, lastSubjectSeq uint64) (last uint64, dup bool, err error) {
	msgs[0].Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(lastSubjectSeq, 10))
	msgs[0].Header.Set(jetstream.ExpectedStreamHeader, a.name)
	if len(msgs) == 1 {
		ack, err := a.js.PublishMsg(ctx, msgs[0])
		if err != nil {
			return 0, false, err
		}
		if ack.Stream != a.name {
			return 0, false, fmt.Errorf("unexpected ack from stream %s, want %s", ack.Stream, a.name)
		}
		return ack.Sequence, ack.Duplicate, nil
	}

	if a.group != nil {
		if r := a.group.commit(ctx, msgs); !r.alone {
			return r.last, false, r.err
		}
	}
	select {
	case a.inflight <- struct{}{}:
		defer func() { <-a.inflight }()
	case <-ctx.Done():
		return 0, false, ctx.Err()
	}
	fc := jetstreamext.BatchFlowControl{AckFirst: true, AckTimeout: a.js.Options().DefaultTimeout}
	if d, ok := ctx.Deadline(); ok {
		fc.AckTimeout = time.Until(d)
	}
	ack, err := jetstreamext.PublishMsgBatch(ctx, a.js, msgs, fc)
	if err != nil {
		return 0, false, err
	}
	if ack.Stream != a.name || ack.BatchSize != uint64(len(msgs)) || ack.Sequence < uint64(len(msgs)) {
		return 0, false, fmt.Errorf("unexpected batch ack %+v for %d messages to stream %s", *ack, len(msgs), a.name)
	}
	return ack.Sequence, false, nil
}

// resolveDuplicate handles an append whose ids are already stored. If the
// stream ends with exactly these events, it is a retry of an append that
// succeeded: the answer is that append's. Otherwise it names the id.
func (a *Appender) resolveDuplicate(ctx context.Context, subject string, events []envelope.Event, st StreamState, lastID string) (AppendResult, error) {
	n := uint64(len(events))
	if lastID == events[n-1].ID && st.LastPosition >= n {
		first := st.LastPosition - n + 1
		stored, err := a.getRange(ctx, first, int(n))
		if err != nil {
			return AppendResult{}, err
		}
		same := len(stored) == int(n)
		for i := 0; same && i < len(stored); i++ {
			same = stored[i].Subject == subject && stored[i].Header.Get(envelope.HeaderID) == events[i].ID
		}
		if same {
			res := AppendResult{Positions: make([]uint64, n), Version: st.Version, Duplicate: true}
			for i := range res.Positions {
				res.Positions[i] = first + uint64(i)
			}
			a.stats.duplicates.Add(1)
			return res, nil
		}
	}
	return AppendResult{}, a.findDuplicate(ctx, subject, events)
}

// getRange reads up to n messages from sequence first on.
func (a *Appender) getRange(ctx context.Context, first uint64, n int) ([]*jetstream.RawStreamMsg, error) {
	it, err := jetstreamext.GetBatch(ctx, a.js, a.name, n, jetstreamext.GetBatchSeq(first))
	if err != nil {
		return nil, classify(err)
	}
	var out []*jetstream.RawStreamMsg
	for m, err := range it {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			break
		}
		if err != nil {
			return nil, classify(err)
		}
		out = append(out, m)
	}
	return out, nil
}

// findDuplicate looks through the stream's events stored within the
// duplicate window for one of the ids and names it.
func (a *Appender) findDuplicate(ctx context.Context, subject string, events []envelope.Event) error {
	index := make(map[string]int, len(events))
	for i, ev := range events {
		index[ev.ID] = i
	}
	opts := []jetstreamext.GetBatchOpt{jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchStartTime(a.now().Add(-a.window - time.Second))}
	scanned := 0
	for scanned < dupScanLimit {
		it, err := jetstreamext.GetBatch(ctx, a.js, a.name, 256, opts...)
		if err != nil {
			return classify(err)
		}
		var last uint64
		for m, err := range it {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				break
			}
			if err != nil {
				return classify(err)
			}
			scanned++
			last = m.Sequence
			id := m.Header.Get(envelope.HeaderID)
			if i, ok := index[id]; ok {
				return &DuplicateIDError{
					Field: fmt.Sprintf("events[%d].id", i), ID: id, Position: m.Sequence,
					Reason: fmt.Sprintf("%q is already stored at position %d, and the stream does not end with this append's events, so this is not a retry; give a new event a new id", id, m.Sequence),
				}
			}
		}
		if last == 0 {
			break
		}
		opts = []jetstreamext.GetBatchOpt{jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchSeq(last + 1)}
	}
	return &DuplicateIDError{
		Field:  "events",
		Reason: fmt.Sprintf("an event id of this append was already used within the last %s by an event of another stream; event ids must be unique", a.window),
	}
}

// isAPIError reports whether err is a JetStream API error with one of codes.
func isAPIError(err error, codes ...jetstream.ErrorCode) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	for _, c := range codes {
		if apiErr.ErrorCode == c {
			return true
		}
	}
	return false
}

// classify wraps connection trouble with ErrUnavailable and oversized
// messages with ErrTooLarge.
func classify(err error) error {
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, nats.ErrMaxPayload),
		isAPIError(err, jetstream.JSErrCodeStreamMessageExceedsMaximum):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case errors.Is(err, nats.ErrTimeout),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, nats.ErrInvalidConnection),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled),
		// No stream leader answered in time (a cluster electing one):
		// nothing was stored, the client retries.
		errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.As(err, &apiErr) && apiErr.Code == 503:
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}
