package main

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"
)

// holdGroups stops the committer from publishing until the returned
// release is called with the number of appends that must be queued by then,
// so a test decides what one group holds.
func holdGroups(t *testing.T, e *apiEnv) (release func(queued int)) {
	t.Helper()
	c := e.app.group
	c.mu.Lock()
	c.maxInflight = 0
	c.mu.Unlock()
	return func(queued int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			c.mu.Lock()
			n := len(c.queue)
			if n >= queued {
				c.maxInflight = groupsInFlight
				c.start()
				c.mu.Unlock()
				return
			}
			c.mu.Unlock()
			if time.Now().After(deadline) {
				t.Fatalf("%d appends queued for the group commit, want %d", n, queued)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// Multi-event appends to different streams waiting together are stored as
// one atomic batch: contiguous positions per append, in queue order, each
// append's versions its own stream's.
func TestGroupCommitStoresWaitingAppendsTogether(t *testing.T) {
	e := newEnv(t)
	const n = 6
	wantStatus(t, e.post(t, "grp", "s0", newEvents("s0-first", 2)), http.StatusOK)
	before := e.app.Stats()
	release := holdGroups(t, e)
	answers := make([]apiResp, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			answers[i] = e.post(t, "grp", fmt.Sprintf("s%d", i), newEvents(fmt.Sprintf("s%d-grouped", i), 3))
		})
	}
	release(n)
	wg.Wait()
	if s := e.app.Stats(); s.Groups-before.Groups != 1 || s.Grouped-before.Grouped != n {
		t.Fatalf("stats %+v, want 1 group of %d appends", s, n)
	}
	seen := map[uint64]bool{}
	for i, r := range answers {
		wantStatus(t, r, http.StatusOK)
		stream := fmt.Sprintf("s%d", i)
		wantVersion := uint64(3)
		if i == 0 {
			wantVersion = 5 // after its first append's 2 events
		}
		if r.Version != wantVersion || len(r.Positions) != 3 {
			t.Fatalf("%s answered %+v, want version %d and 3 positions", stream, r, wantVersion)
		}
		got := readSubject(t, e.js, "events.grp."+stream)
		tail := got[len(got)-3:]
		for k, ev := range tail {
			if ev.Position != r.Positions[k] || ev.Version != wantVersion-2+uint64(k) || ev.ID != fmt.Sprintf("%s-grouped-%d", stream, k) {
				t.Fatalf("%s event %d stored as %s v%d at %d; answer %+v", stream, k, ev.ID, ev.Version, ev.Position, r)
			}
			if seen[ev.Position] {
				t.Fatalf("position %d answered twice", ev.Position)
			}
			seen[ev.Position] = true
			if k > 0 && ev.Position != tail[k-1].Position+1 {
				t.Fatalf("%s positions %d, %d are not contiguous", stream, tail[k-1].Position, ev.Position)
			}
		}
	}
}

// A group the server refuses because one member's stream moved stores
// nothing; every member is then published on its own: the others are
// stored, the stale one is read afresh and answered by its own state.
func TestGroupCommitRefusedGroupFallsBackToEachAppend(t *testing.T) {
	e := newEnv(t)
	other := newEnvOn(t, e.ns)
	// This bridge knows the heads of b and c from its own appends; then
	// another bridge moves b and c behind its back.
	for _, s := range []string{"b", "c"} {
		wantStatus(t, e.post(t, "fb", s, newEvents(s+"-mine", 2)), http.StatusOK)
		wantStatus(t, other.post(t, "fb", s, newEvents(s+"-other", 2)), http.StatusOK)
	}
	before := e.app.Stats()
	release := holdGroups(t, e)
	var a, b, c apiResp
	var wg sync.WaitGroup
	wg.Go(func() { a = e.post(t, "fb", "a", newEvents("a-grouped", 2)) })
	wg.Go(func() { b = e.post(t, "fb", "b", newEvents("b-grouped", 2)) })                             // no expected version: retried
	wg.Go(func() { c = e.post(t, "fb", "c", newEvents("c-grouped", 2), HeaderExpectedVersion, "2") }) // expects what this bridge saw
	release(3)
	wg.Wait()

	s := e.app.Stats()
	if s.GroupsRefused-before.GroupsRefused != 1 {
		t.Fatalf("stats %+v, want 1 refused group", s)
	}
	wantStatus(t, a, http.StatusOK)
	if a.Version != 2 {
		t.Fatalf("a answered %+v, want version 2", a)
	}
	wantStatus(t, b, http.StatusOK)
	if b.Version != 6 {
		t.Fatalf("b answered %+v, want version 6 (after the other bridge's events)", b)
	}
	wantStatus(t, c, http.StatusConflict)
	if c.CurrentVersion == nil || *c.CurrentVersion != 4 {
		t.Fatalf("c answered %+v, want 409 with currentVersion 4", c)
	}
	for stream, want := range map[string][]string{
		"a": {"a-grouped-0", "a-grouped-1"},
		"b": {"b-mine-0", "b-mine-1", "b-other-0", "b-other-1", "b-grouped-0", "b-grouped-1"},
		"c": {"c-mine-0", "c-mine-1", "c-other-0", "c-other-1"},
	} {
		got := readSubject(t, e.js, "events.fb."+stream)
		if len(got) != len(want) {
			t.Fatalf("stream %s holds %d events, want %v", stream, len(got), want)
		}
		for i, ev := range got {
			if ev.ID != want[i] || ev.Version != uint64(i+1) {
				t.Fatalf("stream %s event %d is %s v%d, want %s v%d", stream, i, ev.ID, ev.Version, want[i], i+1)
			}
		}
	}
}
