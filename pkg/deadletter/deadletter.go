// Package deadletter keeps the events a sink gave up on in the JetStream
// stream DLQ, one subject per sink (dlq.<sink>), with the original subject,
// position, sink, error and time as headers, so an operator can list,
// inspect, retry or discard them (jetsyncctl dlq).
package deadletter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
)

// Stream is the JetStream stream of dead letters.
const Stream = "DLQ"

// Headers added to a dead letter; the original message's headers are kept.
const (
	HeaderSubject  = "Jetsync-Dlq-Subject"
	HeaderPosition = "Jetsync-Dlq-Position"
	HeaderSink     = "Jetsync-Dlq-Sink"
	HeaderError    = "Jetsync-Dlq-Error"
	HeaderTime     = "Jetsync-Dlq-Time"
	// HeaderParkedBehind is set on an event parked without being
	// attempted (on_error: park): the position of the earlier event of
	// its stream that parked it.
	HeaderParkedBehind = "Jetsync-Dlq-Parked-Behind"
)

// ErrNotFound means no such dead letter exists for the sink.
var ErrNotFound = errors.New("no such dead letter")

// Subject is where sink's dead letters go.
func Subject(sinkName string) string { return "dlq." + sinkName }

// Queue is the DLQ stream.
type Queue struct {
	js     jetstream.JetStream
	stream jetstream.Stream
}

var _ sink.DeadLetterStore = (*Queue)(nil)

// streamConfig is the DLQ stream's configuration. Unlike the event log,
// dead letters may be deleted: that is what discard and a successful retry
// do.
func streamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        Stream,
		Description: "jetsync dead letters: dlq.<sink>",
		Subjects:    []string{"dlq.>"},
		Storage:     jetstream.FileStorage,
		AllowDirect: true,
		Duplicates:  10 * time.Minute,
		Replicas:    max(replicas, 1),
	}
}

// Provision creates the DLQ stream or updates it to replicas (the bridge).
func Provision(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := natsutil.ProvisionStream(ctx, js, streamConfig(replicas), "stream.replicas")
	return err
}

// Open opens the DLQ stream as it is, creating it (one replica; the bridge
// scales it to its stream.replicas) when missing.
func Open(ctx context.Context, js jetstream.JetStream) (*Queue, error) {
	s, err := natsutil.OpenStream(ctx, js, streamConfig(1), "stream.replicas")
	if err != nil {
		return nil, fmt.Errorf("opening dead-letter stream %s: %w", Stream, err)
	}
	return &Queue{js: js, stream: s}, nil
}

// DeadLetter stores dl for sinkName. Storing the same position twice (a
// crash before the checkpoint moved past it) keeps one copy.
func (q *Queue) DeadLetter(ctx context.Context, sinkName string, dl sink.DeadLetter) error {
	hdr := nats.Header{}
	for k, v := range dl.Header {
		hdr[k] = v
	}
	hdr.Set(HeaderSubject, dl.Subject)
	hdr.Set(HeaderPosition, strconv.FormatUint(dl.Position, 10))
	hdr.Set(HeaderSink, sinkName)
	hdr.Set(HeaderError, dl.Err.Error())
	hdr.Set(HeaderTime, time.Now().UTC().Format(time.RFC3339Nano))
	if dl.ParkedBehind != 0 {
		hdr.Set(HeaderParkedBehind, strconv.FormatUint(dl.ParkedBehind, 10))
	} else {
		hdr.Del(HeaderParkedBehind)
	}
	// The original Nats-Msg-Id would collide with the event's own id across
	// sinks; the dead letter's identity is (sink, position).
	hdr.Set(nats.MsgIdHdr, sinkName+":"+strconv.FormatUint(dl.Position, 10))
	_, err := q.js.PublishMsg(ctx, &nats.Msg{Subject: Subject(sinkName), Header: hdr, Data: dl.Data})
	return err
}

// Letter is one stored dead letter.
type Letter struct {
	Seq      uint64 // its sequence in the DLQ stream: the id operators use
	Sink     string
	Subject  string // the event's original subject
	Position uint64 // the event's position in the event stream
	Error    string
	Time     time.Time
	// ParkedBehind is, for an event parked without being attempted
	// (on_error: park), the position of the event of its stream that
	// parked it; 0 for an event the sink refused itself.
	ParkedBehind uint64
	Header       nats.Header
	Data         []byte
}

// Event decodes the original event, as the sink saw it.
func (l Letter) Event() (envelope.Event, error) {
	return envelope.FromMsg(l.Subject, l.Header, l.Data, l.Position)
}

// List returns sinkName's dead letters in position order.
func (q *Queue) List(ctx context.Context, sinkName string) ([]Letter, error) {
	info, err := q.stream.Info(ctx, jetstream.WithSubjectFilter(Subject(sinkName)))
	if err != nil {
		return nil, err
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	cons, err := q.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{Subject(sinkName)}})
	if err != nil {
		return nil, err
	}
	var out []Letter
	for uint64(len(out)) < info.State.Msgs {
		// No more than are left: a fetch waits for its whole batch.
		batch, err := cons.Fetch(min(500, int(info.State.Msgs)-len(out)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			out = append(out, letter(md.Sequence.Stream, m.Headers(), m.Data()))
		}
		if n == 0 {
			break // deleted meanwhile
		}
	}
	// Retries must go in the events' order; after a reset and replay the
	// stream order of dead letters need not be that.
	slices.SortStableFunc(out, func(a, b Letter) int { return cmp.Compare(a.Position, b.Position) })
	return out, nil
}

// StoredLetters implements sink.DeadLetterStore: List for the engine.
func (q *Queue) StoredLetters(ctx context.Context, sinkName string) ([]sink.StoredLetter, error) {
	letters, err := q.List(ctx, sinkName)
	if err != nil {
		return nil, err
	}
	out := make([]sink.StoredLetter, len(letters))
	for i, l := range letters {
		out[i] = sink.StoredLetter{Seq: l.Seq, Reason: l.Error, Time: l.Time,
			DeadLetter: sink.DeadLetter{Subject: l.Subject, Position: l.Position, Header: l.Header, Data: l.Data, ParkedBehind: l.ParkedBehind}}
	}
	return out, nil
}

// DeleteLetter implements sink.DeadLetterStore: Delete, where a dead
// letter already gone is no error.
func (q *Queue) DeleteLetter(ctx context.Context, seq uint64) error {
	err := q.Delete(ctx, seq)
	if err != nil {
		// The server says "no message found" only in the error's text:
		// ask whether it is still there instead.
		if _, gerr := q.stream.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return nil
		}
	}
	return err
}

// Get returns one dead letter of sinkName by its DLQ sequence.
func (q *Queue) Get(ctx context.Context, sinkName string, seq uint64) (Letter, error) {
	m, err := q.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) || err == nil && m.Subject != Subject(sinkName) {
		return Letter{}, fmt.Errorf("%w: %d for sink %s (see jetsyncctl dlq list %s)", ErrNotFound, seq, sinkName, sinkName)
	}
	if err != nil {
		return Letter{}, err
	}
	return letter(seq, m.Header, m.Data), nil
}

// Delete removes one dead letter (after a successful retry, or a discard).
func (q *Queue) Delete(ctx context.Context, seq uint64) error {
	return q.stream.DeleteMsg(ctx, seq)
}

func letter(seq uint64, hdr nats.Header, data []byte) Letter {
	pos, _ := strconv.ParseUint(hdr.Get(HeaderPosition), 10, 64)
	t, _ := time.Parse(time.RFC3339Nano, hdr.Get(HeaderTime))
	behind, _ := strconv.ParseUint(hdr.Get(HeaderParkedBehind), 10, 64)
	return Letter{Seq: seq, Sink: hdr.Get(HeaderSink), Subject: hdr.Get(HeaderSubject), Position: pos,
		Error: hdr.Get(HeaderError), Time: t, ParkedBehind: behind, Header: hdr, Data: data}
}
