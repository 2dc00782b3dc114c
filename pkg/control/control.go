// Package control is how operators and sinks talk: a NATS KV bucket where
// every running sink publishes its status, and where jetsyncctl leaves reset
// requests that the sink picks up by itself, whether it is running now or
// starts later; and actions that only a running sink can take, asked over
// NATS request/reply (actions.go).
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
)

// Bucket is the KV bucket of the control plane.
const Bucket = "jetsync-sinks"

// Status is what a sink reports about itself about once a second.
type Status struct {
	Name       string    `json:"name"`
	State      string    `json:"state"` // starting, catching-up, live, retrying, stopped, exited, failed
	Checkpoint uint64    `json:"checkpoint"`
	Head       uint64    `json:"head"`       // last position in the stream matching the sink's filters
	LagEvents  uint64    `json:"lagEvents"`  // positions between checkpoint and head
	LagSeconds float64   `json:"lagSeconds"` // age of the oldest event not applied yet
	Rate       float64   `json:"rate"`       // events applied per second, recent
	Applied    uint64    `json:"applied"`    // events applied by this process
	LastError  string    `json:"lastError,omitempty"`
	Filters    []string  `json:"filters"`
	Admin      string    `json:"admin,omitempty"` // the sink's HTTP address (metrics, wait)
	Updated    time.Time `json:"updated"`
	// Stopped is the event the error policy "stop" holds the sink before
	// (state stopped), waiting for jetsyncctl skip, resume or reset.
	Stopped *Stop `json:"stopped,omitempty"`
	// CheckpointBucket is the NATS KV bucket holding the sink's checkpoint
	// (key: the sink's name), so jetsyncctl can read where a sink that is
	// down will resume; empty when the target keeps the checkpoint.
	CheckpointBucket string `json:"checkpointBucket,omitempty"`
	// LeaseBucket is the NATS KV bucket of the sink's lease (hot standby:
	// key active.<sink> names the active instance, standby.<sink>.* the
	// standbys); Instance is the active instance that published this
	// status, "host pid N".
	LeaseBucket string `json:"leaseBucket,omitempty"`
	Instance    string `json:"instance,omitempty"`
	// Parked are streams the error policy "park" holds in the dead-letter
	// store, oldest hole first (at most MaxParkedInStatus of them);
	// ParkedStreams and ParkedEvents count them all.
	Parked        []Parked `json:"parked,omitempty"`
	ParkedStreams int      `json:"parkedStreams,omitempty"`
	ParkedEvents  int      `json:"parkedEvents,omitempty"`
}

// MaxParkedInStatus bounds the parked streams a status lists.
const MaxParkedInStatus = 20

// Parked is one stream a sink parks (on_error: park): its events from
// Position on are in the dead-letter store, waiting for jetsyncctl dlq
// retry or discard --stream.
type Parked struct {
	Stream   string    `json:"stream"` // category/streamId
	Position uint64    `json:"position"`
	Events   int       `json:"events"`
	Error    string    `json:"error,omitempty"` // why the event at Position was refused
	Since    time.Time `json:"since"`
}

// Stop is the event a sink's error policy stopped it at, and why.
type Stop struct {
	Position uint64    `json:"position"` // the checkpoint stays just before it
	ID       string    `json:"id,omitempty"`
	Type     string    `json:"type,omitempty"`
	Subject  string    `json:"subject"`
	Error    string    `json:"error"` // the target's reason
	Since    time.Time `json:"since"`
}

// Stale reports whether the status is too old to describe a running sink.
func (s Status) Stale(now time.Time) bool { return now.Sub(s.Updated) > 5*time.Second }

// ResetRequest asks sink to continue from just after Position.
type ResetRequest struct {
	Position    uint64    `json:"position"`
	RequestedAt time.Time `json:"requestedAt"`
	revision    uint64
}

// Store is the control bucket.
type Store struct{ kv jetstream.KeyValue }

func bucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "jetsync sink status and reset requests",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// Provision creates the control bucket or updates it to replicas (the
// bridge).
func Provision(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := natsutil.ProvisionKV(ctx, js, bucketConfig(replicas), "stream.replicas")
	return err
}

// Open opens the control bucket as it is, creating it (one replica; the
// bridge scales it to its stream.replicas) when missing.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := natsutil.OpenKV(ctx, js, bucketConfig(1), "stream.replicas")
	if err != nil {
		return nil, fmt.Errorf("opening control bucket %s: %w", Bucket, err)
	}
	return &Store{kv: kv}, nil
}

func statusKey(sink string) string { return "status." + sink }
func resetKey(sink string) string  { return "reset." + sink }

// PublishStatus stores a sink's status.
func (s *Store) PublishStatus(ctx context.Context, st Status) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = s.kv.Put(ctx, statusKey(st.Name), b)
	return err
}

// Status returns one sink's last status, ErrUnknownSink if it never reported.
func (s *Store) Status(ctx context.Context, sink string) (Status, error) {
	if err := envelope.ValidateToken("sink", sink); err != nil {
		return Status{}, err
	}
	e, err := s.kv.Get(ctx, statusKey(sink))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		known, _ := s.Statuses(ctx)
		names := make([]string, 0, len(known))
		for _, k := range known {
			names = append(names, k.Name)
		}
		return Status{}, fmt.Errorf("%w %q; known sinks: %s", ErrUnknownSink, sink, orNone(names))
	}
	if err != nil {
		return Status{}, err
	}
	var st Status
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return Status{}, fmt.Errorf("status of %s is not valid JSON: %w", sink, err)
	}
	return st, nil
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "(none has reported yet)"
	}
	return strings.Join(names, ", ")
}

// Statuses returns every sink's last status, sorted by name.
func (s *Store) Statuses(ctx context.Context) ([]Status, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []Status
	for k := range lister.Keys() {
		name, ok := strings.CutPrefix(k, "status.")
		if !ok {
			continue
		}
		st, err := s.Status(ctx, name)
		if err != nil {
			continue
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RequestReset leaves a reset request for sink. A running sink applies it
// within moments; a stopped one when it starts.
func (s *Store) RequestReset(ctx context.Context, sink string, pos uint64) error {
	b, _ := json.Marshal(ResetRequest{Position: pos, RequestedAt: time.Now().UTC()})
	_, err := s.kv.Put(ctx, resetKey(sink), b)
	return err
}

// PendingReset returns a reset request waiting for sink, if any.
func (s *Store) PendingReset(ctx context.Context, sink string) (*ResetRequest, error) {
	e, err := s.kv.Get(ctx, resetKey(sink))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return decodeReset(e)
}

func decodeReset(e jetstream.KeyValueEntry) (*ResetRequest, error) {
	var r ResetRequest
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("reset request %s is not valid JSON: %w", e.Key(), err)
	}
	r.revision = e.Revision()
	return &r, nil
}

// WatchResets delivers sink's reset requests as they are made, until ctx ends.
func (s *Store) WatchResets(ctx context.Context, sink string) (<-chan *ResetRequest, error) {
	w, err := s.kv.Watch(ctx, resetKey(sink), jetstream.UpdatesOnly())
	if err != nil {
		return nil, err
	}
	out := make(chan *ResetRequest, 1)
	go func() {
		defer close(out)
		defer w.Stop()
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			r, err := decodeReset(e)
			if err != nil {
				continue
			}
			select {
			case out <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// DoneReset removes an applied request, unless a newer one replaced it.
func (s *Store) DoneReset(ctx context.Context, sink string, r *ResetRequest) error {
	err := s.kv.Delete(ctx, resetKey(sink), jetstream.LastRevision(r.revision))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return nil // a newer request arrived; it will be applied next
	}
	return err
}
