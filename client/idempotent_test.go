package client

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

type producerPair struct{ id, seq uint64 }

// dedupNode is a fake leader that stores batches idempotently and fails the
// first attempt of the first batch after storing it.
type dedupNode struct {
	mu       sync.Mutex
	attempts []producerPair
	stored   map[string]int64 // topic/producer/sequence -> first id
	next     int64
	failed   bool
}

func (d *dedupNode) send(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := producerPair{req.GetProducerId(), req.GetSequence()}
	d.attempts = append(d.attempts, p)
	key := fmt.Sprint(req.GetTopic(), "/", p.id, "/", p.seq)
	first, ok := d.stored[key]
	if !ok {
		first = d.next
		d.stored[key] = first
		d.next += int64(len(req.GetMessages()))
	}
	if !d.failed {
		d.failed = true
		return nil, status.Error(codes.Unavailable, "fake: stored, then lost the answer")
	}
	return &forestbusv1.SendMessagesResponse{FirstId: first, Count: int32(len(req.GetMessages()))}, nil
}

func TestSendRetryCarriesSameProducerSequence(t *testing.T) {
	for _, twoNodes := range []bool{false, true} {
		d := &dedupNode{stored: map[string]int64{}, next: 1}
		n := startNode(t)
		n.send = d.send
		nodes := []string{n.addr}
		if twoNodes {
			// Fail over to a second node that reaches the same leader.
			m := startNode(t)
			m.send = d.send
			nodes = append(nodes, m.addr)
		}
		c := New("", nodes)
		defer c.Close()
		require.NotZero(t, c.ProducerID())

		ids, err := c.SendMessages("t", msgs, false)
		require.NoError(t, err)
		assert.Equal(t, []int64{1, 2, 3}, ids, "the retry is answered with the first copy's ids")
		ids, err = c.SendMessages("t", msgs[:1], false)
		require.NoError(t, err)
		assert.Equal(t, []int64{4}, ids)
		_, err = c.SendMessages("other", msgs[:1], false)
		require.NoError(t, err)

		d.mu.Lock()
		at := d.attempts
		d.mu.Unlock()
		require.Len(t, at, 4)
		pid := c.ProducerID()
		assert.Equal(t, producerPair{pid, 1}, at[0])
		assert.Equal(t, at[0], at[1], "a retry resends the same producer id and sequence")
		assert.Equal(t, producerPair{pid, 2}, at[2], "the next call takes the next sequence")
		assert.Equal(t, producerPair{pid, 1}, at[3], "sequences are per topic")
		assert.Len(t, d.stored, 3, "the retried batch was stored once")
	}
}

func TestProducerSequencesConcurrent(t *testing.T) {
	n := startNode(t)
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var pids []uint64
	n.send = func(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		seen[req.GetSequence()] = true
		pids = append(pids, req.GetProducerId())
		return &forestbusv1.SendMessagesResponse{FirstId: 1, Count: int32(len(req.GetMessages()))}, nil
	}
	c := New("", []string{n.addr})
	defer c.Close()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				_, err := c.SendMessages("t", msgs, false)
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	assert.Len(t, seen, 200, "every call has its own sequence")
	for s := uint64(1); s <= 200; s++ {
		assert.True(t, seen[s], "sequence %d", s)
	}
	for _, p := range pids {
		assert.Equal(t, c.ProducerID(), p)
	}
	c2 := New("", []string{n.addr})
	assert.NotEqual(t, c.ProducerID(), c2.ProducerID(), "producer ids are random per Client")
}

// TestTopicInFlightCap: a Client has at most maxSeqSpan sends in
// flight to one topic, and their sequences span less than that, so a
// retry stays inside the windows the topic keeps; other topics are not
// held up; a send whose context ends while it waits takes no sequence.
func TestTopicInFlightCap(t *testing.T) {
	n := startNode(t)
	var mu sync.Mutex
	inFlight := map[string]map[uint64]bool{"t": {}, "u": {}}
	maxSpan, maxT := uint64(0), 0
	release := make(chan struct{})
	n.send = func(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		f := inFlight[req.GetTopic()]
		f[req.GetSequence()] = true
		if req.GetTopic() == "t" {
			maxT = max(maxT, len(f))
			lo, hi := uint64(1<<63), uint64(0)
			for s := range f {
				lo, hi = min(lo, s), max(hi, s)
			}
			maxSpan = max(maxSpan, hi-lo)
		}
		mu.Unlock()
		<-release
		mu.Lock()
		delete(f, req.GetSequence())
		mu.Unlock()
		return &forestbusv1.SendMessagesResponse{FirstId: 1, Count: int32(len(req.GetMessages()))}, nil
	}
	c := New("", []string{n.addr})
	defer c.Close()
	inFlightOf := func(topic string) int {
		mu.Lock()
		defer mu.Unlock()
		return len(inFlight[topic])
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			_, err := c.SendMessages("t", msgs, true)
			assert.NoError(t, err)
		})
	}
	for range 5 {
		wg.Go(func() {
			_, err := c.SendMessages("u", msgs, true)
			assert.NoError(t, err)
		})
	}
	require.Eventually(t, func() bool { return inFlightOf("t") == maxSeqSpan && inFlightOf("u") == 5 },
		10*time.Second, time.Millisecond, "32 sends to t and the 5 to u reach the node")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := c.SendMessagesContext(ctx, "t", msgs, true)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "waiting for a slot ends with the context")

	close(release)
	wg.Wait()
	assert.Equal(t, maxSeqSpan, maxT)
	assert.Less(t, maxSpan, uint64(maxSeqSpan), "sequences in flight span less than the cap")
	assert.Equal(t, uint64(51), c.NextSequence("t"), "the send that gave up took no sequence")
}

// TestReservedSequenceHoldsTheSpan: a sequence taken with ReserveSequence
// counts as a send in flight until released, also while no send of it is
// in flight (a Batcher backing off between retries), so later sends stay
// within 32 sequences of it; NextSequence holds nothing back.
func TestReservedSequenceHoldsTheSpan(t *testing.T) {
	n := startNode(t)
	var mu sync.Mutex
	var seen []uint64
	n.send = func(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		seen = append(seen, req.GetSequence())
		mu.Unlock()
		return &forestbusv1.SendMessagesResponse{FirstId: 1, Count: int32(len(req.GetMessages()))}, nil
	}
	c := New("", []string{n.addr})
	defer c.Close()
	ctx := context.Background()

	seq, release, err := c.ReserveSequence(ctx, "t")
	require.NoError(t, err)
	require.Equal(t, uint64(1), seq)
	_, err = c.SendMessagesSequence(ctx, "t", msgs, true, seq) // an attempt that fails leaves it reserved
	require.NoError(t, err)
	for range maxSeqSpan - 1 { // sequences 2 to 32
		_, err := c.SendMessagesContext(ctx, "t", msgs, true)
		require.NoError(t, err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, err = c.SendMessagesContext(short, "t", msgs, true)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "sequence 33 waits for the reserved 1")
	short, cancel = context.WithTimeout(ctx, 20*time.Millisecond)
	_, _, err = c.ReserveSequence(short, "t")
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "so does a reservation")
	_, err = c.SendMessagesContext(ctx, "u", msgs, true)
	require.NoError(t, err, "other topics do not wait")

	_, err = c.SendMessagesSequence(ctx, "t", msgs, true, seq) // the resend is still recognized
	require.NoError(t, err)
	release()
	release() // a second call does nothing
	_, err = c.SendMessagesContext(ctx, "t", msgs, true)
	require.NoError(t, err)
	mu.Lock()
	assert.Equal(t, uint64(33), seen[len(seen)-1], "the waiting sends took no sequence")
	mu.Unlock()

	// NextSequence reserves nothing.
	next := c.NextSequence("t")
	for range maxSeqSpan + 1 {
		_, err := c.SendMessagesContext(ctx, "t", msgs, true)
		require.NoError(t, err)
	}
	assert.Equal(t, uint64(34), next)
}

// TestSequencesWaitForARetryingSend: while a call retries (here its batch
// was stored, the answer lost, and the next attempts meet no leader),
// later calls may finish, but no sequence runs maxSeqSpan or more ahead
// of it: its retry is still a known duplicate when it lands, not stored a
// second time. Counting the sends in flight did not ensure this (a
// review's test: 70 later sends went through, and the retry was stored
// again).
func TestSequencesWaitForARetryingSend(t *testing.T) {
	const others = 70
	var mu sync.Mutex
	stored := map[uint64]int{} // sequence -> times stored
	var highest, highestBeforeRetry uint64
	othersDone, firstAttempts := 0, 0
	firstSent := make(chan struct{})
	n := startNode(t)
	n.send = func(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		s := req.GetSequence()
		ok := &forestbusv1.SendMessagesResponse{FirstId: 1, Count: int32(len(req.GetMessages()))}
		if s == 1 {
			firstAttempts++
			switch {
			case firstAttempts == 1:
				stored[1]++
				highest = max(highest, 1)
				close(firstSent)
				return nil, status.Error(codes.Unavailable, "fake: stored, then lost the answer")
			case othersDone < maxSeqSpan-1 && othersDone < others:
				return nil, status.Error(codes.Unavailable, "fake: no leader yet")
			}
			highestBeforeRetry = highest
			if highest-1 < 64 { // the topic's rule: a duplicate within the window
				return ok, nil
			}
			stored[1]++
			return ok, nil
		}
		stored[s]++
		highest = max(highest, s)
		othersDone++
		return ok, nil
	}
	c := New("", []string{n.addr}, WithUnarySends())
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.SendMessages("t", msgs, true)
		done <- err
	}()
	<-firstSent
	for range others {
		_, err := c.SendMessages("t", msgs, true)
		require.NoError(t, err)
	}
	require.NoError(t, <-done)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, 1, stored[1], "sequence 1 stored once")
	assert.Less(t, highestBeforeRetry, uint64(1+maxSeqSpan), "no sequence ran maxSeqSpan ahead of the retrying send")
	for s := uint64(2); s <= others+1; s++ {
		assert.Equal(t, 1, stored[s], "sequence %d", s)
	}
}
