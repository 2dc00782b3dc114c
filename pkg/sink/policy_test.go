package sink_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsync/jetsync/pkg/checkpoint"
	"github.com/jetsync/jetsync/pkg/envelope"
	"github.com/jetsync/jetsync/pkg/natsutil"
	"github.com/jetsync/jetsync/pkg/sink"
	"github.com/jetsync/jetsync/pkg/testenv"
)

// poisonWriter refuses events of type "Poison" for good and records the
// positions of everything else it applied.
type poisonWriter struct {
	mu      sync.Mutex
	applied []uint64
}

func (p *poisonWriter) Connect(context.Context) error { return nil }
func (p *poisonWriter) Close(context.Context) error   { return nil }
func (p *poisonWriter) WriteBatch(_ context.Context, b *sink.Batch) error {
	var be sink.BatchError
	for i, ev := range b.Events {
		if ev.Type == "Poison" {
			be.Failures = append(be.Failures, sink.EventFailure{Index: i, Err: errors.New("mapping: data is not an object")})
		}
	}
	if len(be.Failures) > 0 {
		return &be // nothing written: the engine decides what to write next
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ev := range b.Events {
		p.applied = append(p.applied, ev.Position)
	}
	return nil
}

func (p *poisonWriter) positions() []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]uint64(nil), p.applied...)
}

// publishMix appends 20 good events, a bad one at position 11 (a poison
// event, or a message that is not a jetsync event at all), and returns the
// bad position.
func publishMix(t *testing.T, malformed bool) (*testenv.NATSServer, uint64) {
	srv := testenv.NATS(t)
	nc, js := srv.Connect(t)
	if _, err := natsutil.EnsureStream(context.Background(), js, natsutil.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 21; i++ {
		ev := envelope.Event{ID: fmt.Sprint("e", i), StreamID: "s1", Category: "c", Type: "Ok", Version: uint64(i), Time: time.Now(), Data: json.RawMessage(`{}`)}
		msg := ev.ToMsg()
		if i == 11 {
			if malformed {
				msg = &nats.Msg{Subject: "events.c.s1", Data: []byte("no headers"), Header: nats.Header{}}
			} else {
				msg.Header.Set(envelope.HeaderType, "Poison")
			}
		}
		if _, err := js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	_ = nc
	return srv, 11
}

func TestErrorPolicy(t *testing.T) {
	for _, malformed := range []bool{false, true} {
		for _, policy := range []string{sink.OnErrorSkip, sink.OnErrorStop} {
			t.Run(fmt.Sprintf("malformed=%v/%s", malformed, policy), func(t *testing.T) {
				srv, bad := publishMix(t, malformed)
				_, js := srv.Connect(t)
				store, err := checkpoint.NewKV(context.Background(), js, "")
				if err != nil {
					t.Fatal(err)
				}
				cfg := sink.DefaultConfig("policy")
				cfg.OnError = policy
				cfg.Batch.MaxEvents = 4 // the bad event sits inside a batch
				w := &poisonWriter{}
				eng, err := sink.New(cfg, js, w, store, slog.New(slog.NewTextHandler(io.Discard, nil)))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				done := make(chan error, 1)
				go func() { done <- eng.Run(ctx) }()

				if policy == sink.OnErrorStop {
					select {
					case err := <-done:
						if !errors.Is(err, sink.ErrStopped) {
							t.Fatalf("Run = %v, want ErrStopped", err)
						}
					case <-time.After(20 * time.Second):
						t.Fatal("sink did not stop at the bad event")
					}
					cp, err := store.Load(context.Background(), "policy")
					if err != nil || cp != bad-1 {
						t.Fatalf("checkpoint = %d (%v), want %d: just before the bad event", cp, err, bad-1)
					}
					if got := w.positions(); len(got) != int(bad-1) || got[len(got)-1] != bad-1 {
						t.Fatalf("applied %v, want 1..%d", got, bad-1)
					}
					return
				}
				testenv.Eventually(t, 20*time.Second, func() bool { return eng.Stats().Checkpoint == 21 }, "checkpoint never reached 21")
				cancel()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				got := w.positions()
				if len(got) != 20 {
					t.Fatalf("applied %d events, want 20 (all but the bad one): %v", len(got), got)
				}
				for i, pos := range got {
					want := uint64(i + 1)
					if want >= bad {
						want++
					}
					if pos != want {
						t.Fatalf("applied[%d] = %d, want %d (in order, without %d)", i, pos, want, bad)
					}
				}
				if s := eng.Stats(); s.Skipped != 1 {
					t.Fatalf("skipped = %d, want 1", s.Skipped)
				}
			})
		}
	}
}
