package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// Group commit: multi-event appends to different streams that arrive while
// a batch is being committed are published together, as one JetStream atomic
// batch.
//
// Why: nats-server stages every atomic batch of an R1 file stream in a new
// on-disk store that it fsyncs and deletes at commit, on the stream's single
// ingest goroutine: ~2 ms per batch whatever its size. One batch per append
// caps a stream at ~500 multi-event appends/s; one batch per group shares
// that cost among every append waiting, so throughput grows with
// concurrency instead (BENCHMARKS.md, "Appends").
//
// What stays true: each member's first message carries its own stream's
// Nats-Expected-Last-Subject-Sequence, so the server checks every member,
// and the batch is atomic, so a group is stored whole or not at all (a
// crash mid-group leaves none of it). A stream is in at most one group at a
// time (the appender's per-stream lock), so members never interleave. When
// the server refuses a group (one member's stream moved, a retried id),
// nothing was stored and every member is published again on its own, where
// its own error decides its answer.
//
// No timer: a group is whatever queued while the previous groups were in
// flight, so a lone append is never delayed.

const (
	// maxGroupMessages keeps a group within nats-server's default limit of
	// 1000 messages per atomic batch.
	maxGroupMessages = MaxAppendEvents
	// groupsInFlight is how many groups are published at once: the next one
	// fills while the server commits the current one.
	groupsInFlight = 1
)

// groupMember is one append waiting for its group.
type groupMember struct {
	msgs []*nats.Msg
	done chan groupResult // buffered: the committer never blocks on it
}

// groupResult is a member's outcome. With alone set the group was refused
// and nothing of it stored: the member must be published on its own.
type groupResult struct {
	last  uint64 // stream sequence of the member's last message
	err   error
	alone bool
}

// committer publishes queued appends in groups. Its goroutines exist only
// while there is work; wait returns when none is left.
type committer struct {
	js          jetstream.JetStream
	stream      string
	timeout     time.Duration // a group's ack timeout
	maxInflight int

	mu       sync.Mutex
	queue    []*groupMember
	inflight int
	wg       sync.WaitGroup

	stats struct{ groups, grouped, refused atomic.Uint64 }
}

func newCommitter(js jetstream.JetStream, stream string) *committer {
	return &committer{js: js, stream: stream, timeout: js.Options().DefaultTimeout, maxInflight: groupsInFlight}
}

// commit queues msgs (one append, first message carrying its expected
// subject sequence) and waits for its group's outcome or for ctx. When ctx
// ends first the outcome is unknown, as for any publish that timed out.
func (c *committer) commit(ctx context.Context, msgs []*nats.Msg) groupResult {
	m := &groupMember{msgs: msgs, done: make(chan groupResult, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, m)
	if c.inflight < c.maxInflight {
		c.start()
	}
	c.mu.Unlock()
	select {
	case r := <-m.done:
		return r
	case <-ctx.Done():
		return groupResult{err: fmt.Errorf("%w: waiting for the group commit: %w", ErrUnavailable, ctx.Err())}
	}
}

// start runs one more publisher. c.mu must be held.
func (c *committer) start() {
	c.inflight++
	c.wg.Add(1)
	go c.run()
}

// run publishes groups until the queue is empty.
func (c *committer) run() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		group := c.take()
		if len(group) == 0 {
			c.inflight--
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.publish(group)
	}
}

// take removes the next group from the queue: members in arrival order up
// to maxGroupMessages messages (at least one member). c.mu must be held.
func (c *committer) take() []*groupMember {
	n, k := 0, 0
	for k < len(c.queue) && (k == 0 || n+len(c.queue[k].msgs) <= maxGroupMessages) {
		n += len(c.queue[k].msgs)
		k++
	}
	group := make([]*groupMember, k)
	copy(group, c.queue)
	rest := copy(c.queue, c.queue[k:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	return group
}

// publish sends one group as one atomic batch and tells every member.
func (c *committer) publish(group []*groupMember) {
	var msgs []*nats.Msg
	for _, m := range group {
		msgs = append(msgs, m.msgs...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	ack, err := jetstreamext.PublishMsgBatch(ctx, c.js, msgs, jetstreamext.BatchFlowControl{AckFirst: true, AckTimeout: c.timeout})
	if err == nil && (ack.Stream != c.stream || ack.BatchSize != uint64(len(msgs)) || ack.Sequence < uint64(len(msgs))) {
		err = fmt.Errorf("unexpected batch ack %+v for %d messages to stream %s", *ack, len(msgs), c.stream)
	}
	switch {
	case err == nil:
		c.stats.groups.Add(1)
		c.stats.grouped.Add(uint64(len(group)))
		// The batch's messages have contiguous sequences, in group order.
		last := ack.Sequence - uint64(len(msgs))
		for _, m := range group {
			last += uint64(len(m.msgs))
			m.done <- groupResult{last: last}
		}
		return
	case len(group) > 1 && refusedWhole(err):
		// Nothing was stored: let each member find its own answer.
		c.stats.refused.Add(1)
		for _, m := range group {
			m.done <- groupResult{alone: true}
		}
		return
	}
	// A group of one, a busy server, a lost connection or no answer: each
	// member handles it as it would for a batch of its own.
	for _, m := range group {
		m.done <- groupResult{err: err}
	}
}

// refusedWhole reports whether the server refused a batch because of what
// one of its messages says (a stream that moved, an id already stored): an
// answer that means nothing of the batch was stored and that the members
// alone may fare differently. Overload and abandoned batches are not that:
// every member would meet them again.
func refusedWhole(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.Code >= 500 || apiErr.Code == 429 {
		return false
	}
	return !errors.Is(err, jetstreamext.ErrBatchPublishIncomplete)
}

// wait returns once no group is being published.
func (c *committer) wait() { c.wg.Wait() }
