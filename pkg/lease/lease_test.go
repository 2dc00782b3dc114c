package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jetsync/jetsync/pkg/lease"
	"github.com/jetsync/jetsync/pkg/testenv"
)

func open(t *testing.T) *lease.Store {
	t.Helper()
	srv := testenv.NATS(t)
	_, js := srv.Connect(t)
	s, err := lease.Open(context.Background(), js, "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func inst(id string) lease.Instance {
	return lease.Instance{ID: id, Host: "host-" + id, PID: len(id)}
}

// acquireAsync runs Acquire in the background.
func acquireAsync(ctx context.Context, s *lease.Store, me lease.Instance, ttl, holdOff time.Duration) <-chan *lease.Lease {
	ch := make(chan *lease.Lease, 1)
	go func() {
		l, err := s.Acquire(ctx, "orders", ttl, me, holdOff)
		if err != nil {
			close(ch)
			return
		}
		ch <- l
	}()
	return ch
}

// TestOneHolderStandbyTakesOverAfterExpiry: the first instance holds the
// lease and renews it past several TTLs while the second waits as a
// standby; once the holder stops renewing (a crash), the standby gets the
// lease within about one TTL, with a higher epoch, and the old holder's
// Check fails.
func TestOneHolderStandbyTakesOverAfterExpiry(t *testing.T) {
	s := open(t)
	ctx := t.Context()
	ttl := 2 * time.Second
	a, err := s.Acquire(ctx, "orders", ttl, inst("a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	bCh := acquireAsync(ctx, s, inst("b"), ttl, 0)

	// Renewals keep a's lease over 3 TTLs; b registers as a standby.
	testenv.Eventually(t, 5*time.Second, func() bool {
		h, err := s.Holders(ctx, "orders")
		return err == nil && h.Active != nil && h.Active.ID == "a" && len(h.Standbys) == 1 && h.Standbys[0].ID == "b"
	}, "holders never showed a active and b standing by")
	deadline := time.Now().Add(3 * ttl)
	for time.Now().Before(deadline) {
		select {
		case <-bCh:
			t.Fatal("the standby took a lease that is being renewed")
		case <-time.After(100 * time.Millisecond):
		}
		if err := a.Check(); err != nil {
			t.Fatalf("holder lost its lease while renewing: %v", err)
		}
	}
	h, err := s.Holders(ctx, "orders")
	if err != nil || h.Active == nil || h.Active.Epoch != a.Epoch() {
		t.Fatalf("holders %+v (%v), want active with epoch %d", h, err, a.Epoch())
	}

	// a "crashes": it stops renewing without releasing.
	lease.StopRenewing(a)
	crashed := time.Now()
	var b *lease.Lease
	select {
	case b = <-bCh:
	case <-time.After(4 * ttl):
		t.Fatal("the standby did not take over an expired lease")
	}
	took := time.Since(crashed)
	t.Logf("takeover %s after the holder stopped renewing (ttl %s)", took.Round(time.Millisecond), ttl)
	if took > ttl+2*time.Second {
		t.Errorf("takeover took %s, want about the TTL %s", took, ttl)
	}
	if b.Epoch() <= a.Epoch() {
		t.Errorf("new epoch %d not above the old %d", b.Epoch(), a.Epoch())
	}
	if err := a.Check(); !errors.Is(err, lease.ErrLost) {
		t.Errorf("old holder's Check = %v, want ErrLost", err)
	}
	if err := b.Check(); err != nil {
		t.Errorf("new holder's Check = %v", err)
	}
	h, err = s.Holders(ctx, "orders")
	if err != nil || h.Active == nil || h.Active.ID != "b" || len(h.Standbys) != 0 {
		t.Errorf("holders after takeover: %+v (%v)", h, err)
	}
}

// TestReleaseHandsOver: a released lease goes to the standby at once, and
// the releasing instance, holding off, does not take it back.
func TestReleaseHandsOver(t *testing.T) {
	s := open(t)
	ctx := t.Context()
	ttl := 10 * time.Second
	a, err := s.Acquire(ctx, "orders", ttl, inst("a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	bCh := acquireAsync(ctx, s, inst("b"), ttl, 0)
	testenv.Eventually(t, 5*time.Second, func() bool {
		h, _ := s.Holders(ctx, "orders")
		return len(h.Standbys) == 1
	}, "b never registered as a standby")

	start := time.Now()
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	aCh := acquireAsync(ctx, s, inst("a"), ttl, ttl) // a becomes a standby, holding off
	var b *lease.Lease
	select {
	case b = <-bCh:
	case <-time.After(ttl / 2):
		t.Fatal("the standby did not take a released lease well within its TTL")
	}
	t.Logf("hand-over took %s", time.Since(start).Round(time.Millisecond))
	if err := a.Check(); !errors.Is(err, lease.ErrLost) {
		t.Errorf("released lease's Check = %v, want ErrLost", err)
	}
	if b.Epoch() <= a.Epoch() {
		t.Errorf("epoch did not grow: %d then %d", a.Epoch(), b.Epoch())
	}
	select {
	case <-aCh:
		t.Fatal("the releasing instance took the lease back")
	case <-time.After(time.Second):
	}
	// Now b releases: a takes it (it is the standby now).
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case a2 := <-aCh:
		if a2.Epoch() <= b.Epoch() {
			t.Errorf("epoch did not grow: %d then %d", b.Epoch(), a2.Epoch())
		}
	case <-time.After(ttl / 2):
		t.Fatal("a did not take the lease b released")
	}
}

// TestFrozenHolderStopsBeforeTheServerExpires: a holder that cannot renew
// (NATS gone) fails Check before the server's TTL passes, so it stops
// writing before a standby can take over.
func TestFrozenHolderStopsBeforeTheServerExpires(t *testing.T) {
	srv := testenv.NATS(t)
	_, js := srv.Connect(t)
	s, err := lease.Open(t.Context(), js, "")
	if err != nil {
		t.Fatal(err)
	}
	ttl := 3 * time.Second
	a, err := s.Acquire(t.Context(), "orders", ttl, inst("a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	stopped := time.Now()
	select {
	case <-a.Lost():
	case <-time.After(2 * ttl):
		t.Fatal("holder still trusts its lease long after NATS went away")
	}
	if d := time.Since(stopped); d >= ttl {
		t.Errorf("holder noticed after %s, not before the TTL %s", d, ttl)
	}
	if err := a.Check(); !errors.Is(err, lease.ErrLost) {
		t.Errorf("Check = %v, want ErrLost", err)
	}
}

// TestEpochsGrowAcrossHolders: each new tenure's epoch is above every
// earlier one, whoever holds it.
func TestEpochsGrowAcrossHolders(t *testing.T) {
	s := open(t)
	ctx := t.Context()
	var last uint64
	for i, id := range []string{"a", "b", "a", "c"} {
		l, err := s.Acquire(ctx, "orders", 2*time.Second, inst(id), 0)
		if err != nil {
			t.Fatal(err)
		}
		if l.Epoch() <= last {
			t.Fatalf("tenure %d: epoch %d not above %d", i, l.Epoch(), last)
		}
		last = l.Epoch()
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRestartReclaimsItsOwnLease: a process restarted after a crash on the
// same host and admin address takes its predecessor's lease at once (no
// live process can listen there), with a higher epoch; an instance on
// another address waits.
func TestRestartReclaimsItsOwnLease(t *testing.T) {
	s := open(t)
	ctx := t.Context()
	ttl := 10 * time.Second
	crashed := lease.Instance{ID: "h-1", Host: "h", PID: 1, Admin: "127.0.0.1:9090"}
	a, err := s.Acquire(ctx, "orders", ttl, crashed, 0)
	if err != nil {
		t.Fatal(err)
	}
	lease.StopRenewing(a)

	other := lease.Instance{ID: "h-3", Host: "h", PID: 3, Admin: "127.0.0.1:9191"}
	octx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := s.Acquire(octx, "orders", ttl, other, 0); err == nil {
		t.Fatal("an instance on another address took a live lease")
	}

	restarted := lease.Instance{ID: "h-2", Host: "h", PID: 2, Admin: "127.0.0.1:9090"}
	start := time.Now()
	b, err := s.Acquire(ctx, "orders", ttl, restarted, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > ttl/2 {
		t.Errorf("restart waited %s for its own lease", d)
	}
	if b.Epoch() <= a.Epoch() {
		t.Errorf("epoch %d not above %d", b.Epoch(), a.Epoch())
	}
}
