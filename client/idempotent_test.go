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

// TestTopicInFlightCap: a Client has at most maxTopicInFlight sends in
// flight to one topic, and their sequences span less than that, so a
// retry stays inside the windows the topic keeps; other topics are not
// held up; a send whose context ends while it waits for a slot takes no
// sequence.
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
	require.Eventually(t, func() bool { return inFlightOf("t") == maxTopicInFlight && inFlightOf("u") == 5 },
		10*time.Second, time.Millisecond, "32 sends to t and the 5 to u reach the node")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := c.SendMessagesContext(ctx, "t", msgs, true)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "waiting for a slot ends with the context")

	close(release)
	wg.Wait()
	assert.Equal(t, maxTopicInFlight, maxT)
	assert.Less(t, maxSpan, uint64(maxTopicInFlight), "sequences in flight span less than the cap")
	assert.Equal(t, uint64(51), c.NextSequence("t"), "the send that gave up took no sequence")
}
