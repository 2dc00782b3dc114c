// Package lease elects the one active instance of a sink among the
// processes started with the same sink name (hot standby).
//
// The lease is a key in a NATS KV bucket ("active.<sink>") written with a
// per-message TTL: the active instance creates it, renews it every third
// of its TTL with a compare-and-set on its revision, and the server removes
// it when the TTL passes without a renewal (the holder died, froze or lost
// NATS). Standbys register under "standby.<sink>.<id>" (same TTL), watch the
// active key and create it once it is gone: the create's revision is the
// new holder's epoch. Revisions of a stream only grow, so a later holder's
// epoch is always higher; the target's fence (sink.Fencer) refuses writes
// carrying a lower one.
//
// The server's TTL is the truth for the standbys; the holder itself keeps a
// local deadline on the monotonic clock, shorter than the TTL and counted
// from before each renewal was sent, and stops writing when it passes even
// if it could not hear from NATS (Valid).
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsync/jetsync/pkg/natsutil"
)

// DefaultBucket is the KV bucket holding the sinks' leases.
const DefaultBucket = "jetsync-leases"

// DefaultTTL is a lease's default time to live: a standby takes over at
// most this long after the active instance stopped renewing.
const DefaultTTL = 10 * time.Second

// MinTTL is the shortest lease: NATS message TTLs count whole seconds, and
// a renewal every third of the TTL must fit.
const MinTTL = 2 * time.Second

// Instance identifies one process running a sink.
type Instance struct {
	ID    string    `json:"id"` // host-pid, the standby key's last token
	Host  string    `json:"host"`
	PID   int       `json:"pid"`
	Admin string    `json:"admin,omitempty"` // its admin HTTP address
	Since time.Time `json:"since"`           // active: since when; standby: since when it waits
	// Epoch is the revision the active instance created the lease with
	// (0 in a standby's record).
	Epoch uint64 `json:"epoch,omitempty"`
}

// Self describes this process; admin is its admin HTTP address.
func Self(admin string) Instance {
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown"
	}
	pid := os.Getpid()
	return Instance{ID: keyToken(host) + "-" + strconv.Itoa(pid), Host: host, PID: pid, Admin: admin}
}

// String is "host pid N".
func (i Instance) String() string { return fmt.Sprintf("%s pid %d", i.Host, i.PID) }

// keyToken keeps the characters a KV key token may hold.
func keyToken(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

func activeKey(sink string) string         { return "active." + sink }
func standbyKey(sink, id string) string    { return "standby." + sink + "." + id }
func standbyPrefix(sink string) string     { return "standby." + sink + "." }
func (s *Store) subject(key string) string { return "$KV." + s.bucket + "." + key }

// Store is the lease bucket.
type Store struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	bucket string
}

// Open opens (creating when missing) the lease bucket. Its limit markers
// make the server tell watchers when a lease expired, so a standby takes
// over as soon as the TTL passed rather than at its next poll.
func Open(ctx context.Context, js jetstream.JetStream, bucket string) (*Store, error) {
	cfg := BucketConfig(bucket, 1)
	bucket = cfg.Bucket
	// As it is: on a cluster the bridge provisioned it with
	// stream.replicas (Provision), which a sink must not scale down.
	kv, err := natsutil.OpenKV(ctx, js, cfg, "stream.replicas")
	if err != nil {
		return nil, fmt.Errorf("opening lease bucket %s: %w", bucket, err)
	}
	return &Store{js: js, kv: kv, bucket: bucket}, nil
}

// BucketConfig is the lease bucket's configuration.
func BucketConfig(bucket string, replicas int) jetstream.KeyValueConfig {
	if bucket == "" {
		bucket = DefaultBucket
	}
	return jetstream.KeyValueConfig{
		Bucket:         bucket,
		Description:    "jetsync sink leases: the active instance of each sink and its standbys",
		History:        1,
		Storage:        jetstream.FileStorage,
		LimitMarkerTTL: time.Minute,
		Replicas:       max(replicas, 1),
	}
}

// Provision creates the default lease bucket or updates it to replicas
// (the bridge, with stream.replicas: on a cluster a lease bucket on one
// node would end every sink's tenure with that node).
func Provision(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := natsutil.ProvisionKV(ctx, js, BucketConfig(DefaultBucket, replicas), "stream.replicas")
	return err
}

// Look opens the lease bucket if it exists (jetsyncctl: reading must not
// create it); ok is false when no sink has made it yet.
func Look(ctx context.Context, js jetstream.JetStream, bucket string) (s *Store, ok bool, err error) {
	if bucket == "" {
		bucket = DefaultBucket
	}
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("opening lease bucket %s: %w", bucket, err)
	}
	return &Store{js: js, kv: kv, bucket: bucket}, true, nil
}

// Bucket is the store's KV bucket.
func (s *Store) Bucket() string { return s.bucket }

// put writes key with a TTL; expect, when not nil, is the revision the key
// must be at (0: must not exist).
func (s *Store) put(ctx context.Context, key string, val []byte, ttl time.Duration, expect *uint64) (uint64, error) {
	opts := []jetstream.PublishOpt{jetstream.WithMsgTTL(ttl.Truncate(time.Second))}
	if expect != nil {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(*expect))
	}
	ack, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: s.subject(key), Data: val}, opts...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// Holders is who runs a sink: the active instance (nil when none holds the
// lease) and the standbys waiting for it.
type Holders struct {
	Active   *Instance
	Standbys []Instance
}

// Holders reads a sink's lease and standbys.
func (s *Store) Holders(ctx context.Context, sink string) (Holders, error) {
	var h Holders
	e, err := s.kv.Get(ctx, activeKey(sink))
	switch {
	case err == nil:
		var in Instance
		if json.Unmarshal(e.Value(), &in) == nil {
			if in.Epoch == 0 {
				// The create, not renewed yet: its revision is the epoch.
				in.Epoch = e.Revision()
			}
			h.Active = &in
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted):
		return h, fmt.Errorf("reading the lease of %s: %w", sink, err)
	}
	lister, err := s.kv.ListKeysFiltered(ctx, standbyPrefix(sink)+"*")
	if err != nil {
		return h, fmt.Errorf("listing the standbys of %s: %w", sink, err)
	}
	for k := range lister.Keys() {
		e, err := s.kv.Get(ctx, k)
		if err != nil {
			continue // expired or deleted meanwhile
		}
		var in Instance
		if json.Unmarshal(e.Value(), &in) == nil {
			h.Standbys = append(h.Standbys, in)
		}
	}
	return h, nil
}

// Acquire waits, as a standby, until this instance holds the sink's lease,
// and returns it; holdOff, when positive, is how long it lets other
// standbys take the lease first (after a hand-over). While it waits it is
// registered as a standby (Holders).
func (s *Store) Acquire(ctx context.Context, sink string, ttl time.Duration, me Instance, holdOff time.Duration) (*Lease, error) {
	if ttl < MinTTL {
		ttl = MinTTL
	}
	skey := standbyKey(sink, me.ID)
	// The watch only wakes a standby sooner; polling (below) acquires the
	// lease without it. While the bucket has no leader (a cluster node
	// lost) it cannot be set up, and a standby must wait, not fail.
	var updates <-chan jetstream.KeyValueEntry
	if w, err := s.kv.Watch(ctx, activeKey(sink), jetstream.UpdatesOnly()); err == nil {
		defer func() { _ = w.Stop() }()
		updates = w.Updates()
	}

	waitFrom := time.Now()
	tryAfter := waitFrom.Add(holdOff)
	registered := time.Time{}
	poll := time.NewTicker(min(ttl/5, time.Second))
	defer poll.Stop()
	for {
		if now := time.Now(); !now.Before(tryAfter) {
			l, err := s.tryCreate(ctx, sink, ttl, me)
			if err == nil {
				if !registered.IsZero() {
					_ = s.kv.Delete(context.WithoutCancel(ctx), skey)
				}
				return l, nil
			}
			// ErrKeyExists: someone holds it. Anything else (NATS
			// unreachable): wait and try again all the same.
		}
		if time.Since(registered) > ttl/3 {
			st := me
			st.Since = waitFrom
			b, _ := json.Marshal(st)
			if _, err := s.put(ctx, skey, b, ttl, nil); err == nil {
				registered = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			if !registered.IsZero() {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				_ = s.kv.Delete(dctx, skey)
				cancel()
			}
			return nil, ctx.Err()
		case e := <-updates:
			if e != nil && e.Operation() == jetstream.KeyValuePut && holdOff > 0 {
				tryAfter = time.Time{} // someone took it: compete normally from now on
			}
		case <-poll.C:
		}
	}
}

// reclaims tells whether the holder h is this process after it lost the
// lease, or an earlier incarnation that died without releasing it: same
// host and the same admin address, which this process listens on now, so
// no other live process on this host can (a restart after a crash, or NATS
// back after an outage, then need not wait for the TTL). Without an admin
// address nothing is reclaimed.
func (me Instance) reclaims(h Instance) bool {
	if me.Admin == "" || strings.HasSuffix(me.Admin, ":0") {
		return false
	}
	return h.Host == me.Host && h.Admin == me.Admin
}

// tryCreate creates the lease key; ErrKeyExists while someone holds it.
func (s *Store) tryCreate(ctx context.Context, sink string, ttl time.Duration, me Instance) (*Lease, error) {
	me.Since = time.Now().UTC()
	b, _ := json.Marshal(me)
	cctx, cancel := context.WithTimeout(ctx, ttl/3)
	defer cancel()
	sent := time.Now()
	rev, err := s.kv.Create(cctx, activeKey(sink), b, jetstream.KeyTTL(ttl.Truncate(time.Second)))
	if errors.Is(err, jetstream.ErrKeyExists) {
		// Held: by this process's crashed predecessor, it is ours at once
		// (a compare-and-set on the revision seen, so a real holder
		// renewing meanwhile wins).
		if e, gerr := s.kv.Get(cctx, activeKey(sink)); gerr == nil {
			var h Instance
			if json.Unmarshal(e.Value(), &h) == nil && me.reclaims(h) {
				want := e.Revision()
				sent = time.Now()
				if rev, err = s.put(cctx, activeKey(sink), b, ttl, &want); err != nil {
					err = fmt.Errorf("%w: %w", jetstream.ErrKeyExists, err)
				}
			}
		}
	}
	if err != nil {
		return nil, err
	}
	me.Epoch = rev
	l := &Lease{s: s, key: activeKey(sink), ttl: ttl, me: me, epoch: rev, rev: rev,
		deadline: localDeadline(sent, ttl), lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	// The record names its epoch; written with the same CAS as a renewal.
	l.renew(ctx)
	go l.keep()
	return l, nil
}

// localDeadline is when the holder stops trusting a lease renewed by a
// request sent at sent: the server counts the TTL from when it received
// the request, later; a fifth of the TTL more covers clock rate drift and
// a renewal answer still in flight.
func localDeadline(sent time.Time, ttl time.Duration) time.Time {
	return sent.Add(ttl - ttl/5)
}

// Lease is a lease this instance holds.
type Lease struct {
	s     *Store
	key   string
	ttl   time.Duration
	me    Instance
	epoch uint64

	mu       sync.Mutex
	rev      uint64
	deadline time.Time // monotonic
	err      error

	lostOnce sync.Once
	lost     chan struct{}
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// Epoch is the fencing token of this tenure: the revision the lease was
// created with. A later holder's is higher.
func (l *Lease) Epoch() uint64 { return l.epoch }

// TTL is the lease's time to live.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Holder is this instance as the lease records it.
func (l *Lease) Holder() Instance { return l.me }

// Lost is closed once the lease is lost or released.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Check returns nil while the lease is held and its local deadline has not
// passed, an error wrapping ErrLost otherwise. Call it before every write.
func (l *Lease) Check() error {
	l.mu.Lock()
	err, deadline := l.err, l.deadline
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if time.Now().After(deadline) {
		err := fmt.Errorf("%w: not renewed in time (epoch %d, lease %s)", ErrLost, l.epoch, l.ttl)
		l.lose(err)
		return err
	}
	return nil
}

func (l *Lease) deadlineNow() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

func (l *Lease) lose(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
	l.lostOnce.Do(func() { close(l.lost) })
}

// keep renews the lease every third of its TTL until it is released or
// lost; a failed renewal is retried sooner, until the local deadline.
func (l *Lease) keep() {
	defer close(l.done)
	every := l.ttl / 3
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		l.mu.Lock()
		untilDeadline := time.Until(l.deadline)
		l.mu.Unlock()
		expire := time.NewTimer(max(untilDeadline, 0))
		select {
		case <-l.stop:
			expire.Stop()
			return
		case <-l.lost:
			expire.Stop()
			return
		case <-expire.C:
			_ = l.Check() // past the deadline: lost
			return
		case <-t.C:
		}
		expire.Stop()
		// A renewal answered after the local deadline is no use: the
		// lease is lost by then. Waiting longer only delays Lost.
		l.mu.Lock()
		ctx, cancel := context.WithDeadline(context.Background(), l.deadline)
		l.mu.Unlock()
		err := l.renew(ctx)
		if err != nil && time.Now().After(l.deadlineNow()) {
			_ = l.Check()
			cancel()
			return
		}
		cancel()
		switch {
		case err == nil:
			t.Reset(every)
		case errors.Is(err, ErrLost):
			return
		default:
			t.Reset(max(l.ttl/10, 100*time.Millisecond))
		}
	}
}

// renew moves the lease's TTL forward with a compare-and-set on the
// revision this instance last wrote; a mismatch means someone else holds it
// (or it expired and the server marked it): lost.
func (l *Lease) renew(ctx context.Context) error {
	if err := l.Check(); err != nil {
		return err
	}
	l.mu.Lock()
	rev := l.rev
	l.mu.Unlock()
	b, _ := json.Marshal(l.me)
	sent := time.Now()
	newRev, err := l.s.put(ctx, l.key, b, l.ttl, &rev)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == 10164) {
			err = fmt.Errorf("%w: the lease key changed (epoch %d is over: another instance took it, or it expired)", ErrLost, l.epoch)
			l.lose(err)
			return err
		}
		return err
	}
	l.mu.Lock()
	l.rev = newRev
	if l.err == nil {
		l.deadline = localDeadline(sent, l.ttl)
	}
	l.mu.Unlock()
	return nil
}

// Release stops renewing and deletes the lease (if it still holds it), so
// a standby takes over at once. Safe to call twice.
func (l *Lease) Release(ctx context.Context) error {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
	held := l.Check() == nil
	l.lose(fmt.Errorf("%w: released (epoch %d)", ErrLost, l.epoch))
	if !held {
		return nil
	}
	l.mu.Lock()
	rev := l.rev
	l.mu.Unlock()
	if err := l.s.kv.Delete(ctx, l.key, jetstream.LastRevision(rev)); err != nil {
		return fmt.Errorf("releasing the lease: %w", err)
	}
	return nil
}
