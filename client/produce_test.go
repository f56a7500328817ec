package client

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// TestSendsShareOneProduceStream: every send of a Client to a node, also
// concurrent ones, goes over one Produce stream, which carries the cluster
// ID.
func TestSendsShareOneProduceStream(t *testing.T) {
	n := startNode(t)
	n.send = okSend(1)
	c := New("c1", []string{n.addr})
	defer c.Close()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5 {
				ids, err := c.SendMessages("t", msgs, true)
				assert.NoError(t, err)
				assert.Len(t, ids, len(msgs))
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 40, n.count("send"))
	assert.Equal(t, 1, n.count("produce"))
	assert.Equal(t, []string{"c1"}, n.lastClusterID())
}

// TestUnarySendsOption: WithUnarySends makes each batch a SendMessages call.
func TestUnarySendsOption(t *testing.T) {
	n := startNode(t)
	n.send = okSend(1)
	c := New("", []string{n.addr}, WithUnarySends())
	defer c.Close()
	for range 3 {
		_, err := c.SendMessages("t", msgs, true)
		require.NoError(t, err)
	}
	assert.Equal(t, 3, n.count("send"))
	assert.Zero(t, n.count("produce"))
}

// TestSendFallsBackToCalls: a node without Produce (UNIMPLEMENTED) gets
// SendMessages calls, and the Client stops opening streams to it.
func TestSendFallsBackToCalls(t *testing.T) {
	n := startNode(t)
	n.unaryOnly = true
	n.send = okSend(10)
	c := New("", []string{n.addr})
	defer c.Close()
	for i := range 3 {
		ids, err := c.SendMessages("t", msgs[:1], true)
		require.NoError(t, err)
		assert.Equal(t, []int64{int64(10 + i)}, ids)
	}
	assert.Equal(t, 3, n.count("send"))
	c.mu.Lock()
	defer c.mu.Unlock()
	assert.Len(t, c.noProduce, 1, "the node is remembered as unary-only")
	assert.Empty(t, c.streams)
}

// TestBrokenStreamFailsOver: a stream that breaks under a send fails the
// attempt like a failed call; the send goes to the next node with the same
// producer ID and sequence, and the broken stream is reopened later.
func TestBrokenStreamFailsOver(t *testing.T) {
	a, b := startNode(t), startNode(t)
	a.streamErr = status.Error(codes.Unavailable, "fake: stream broken")
	sends := recordSends(b, 1)
	c := New("", []string{a.addr, b.addr})
	defer c.Close()
	ids, err := c.SendMessages("t", msgs, true)
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 2, 3}, ids)
	assert.Equal(t, 1, a.count("produce"))
	assert.Equal(t, b.addr, c.leader("t"))
	got := sends()
	require.Len(t, got, 1)
	assert.Equal(t, c.ProducerID(), got[0].GetProducerId())
	assert.Equal(t, uint64(1), got[0].GetSequence())

	// The broken stream was forgotten: a send that starts at a again opens
	// a new stream there.
	a.mu.Lock()
	a.streamErr = nil
	a.mu.Unlock()
	a.send = okSend(50)
	c.forget(routeLeader, "t", b.addr)
	ids, err = c.SendMessages("t", msgs[:1], true)
	require.NoError(t, err)
	assert.Equal(t, []int64{50}, ids)
	assert.Equal(t, 2, a.count("produce"))
}

// TestStreamErrorsMatchCalls: an error answered on the stream is the error
// the call would have returned: reason, sentinel, no retry for fatal ones,
// the leader hint followed.
func TestStreamErrorsMatchCalls(t *testing.T) {
	a, leader := startNode(t), startNode(t)
	a.send = func(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		if req.GetTopic() == "missing" {
			return nil, reasonError(t, codes.NotFound, "TOPIC_NOT_FOUND", nil)
		}
		return nil, reasonError(t, codes.FailedPrecondition, "NOT_LEADER", map[string]string{"leader": leader.addr})
	}
	leader.send = okSend(7)
	c := New("", []string{a.addr})
	defer c.Close()

	_, err := c.SendMessages("missing", msgs, true)
	assert.Equal(t, ErrTopicNotFound, err)
	var se *StatusError
	_, err = c.SendMessagesContext(t.Context(), "missing", msgs, true)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, codes.NotFound, se.Code)
	assert.Equal(t, "TOPIC_NOT_FOUND", se.Reason)
	assert.Equal(t, a.addr, se.Node)
	assert.Equal(t, 2, a.count("send"), "not found is not retried")

	ids, err := c.SendMessages("t", msgs[:1], true)
	require.NoError(t, err)
	assert.Equal(t, []int64{7}, ids, "the NOT_LEADER hint is followed")
	assert.Equal(t, leader.addr, c.leader("t"))
}

// TestStreamSendHonoursContext: a send whose answer does not come before its
// context ends returns the context's error; the late answer is dropped and
// the stream keeps serving.
func TestStreamSendHonoursContext(t *testing.T) {
	n := startNode(t)
	release := make(chan struct{})
	ok := okSend(1)
	var calls sync.WaitGroup
	calls.Add(1)
	first := true
	var mu sync.Mutex
	n.send = func(ctx context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		wasFirst := first
		first = false
		mu.Unlock()
		if wasFirst {
			defer calls.Done()
			<-release
		}
		return ok(ctx, req)
	}
	c := New("", []string{n.addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := c.SendMessagesContext(ctx, "t", msgs, true)
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)

	close(release)
	calls.Wait()
	ids, err := c.SendMessages("t", msgs[:1], true)
	require.NoError(t, err)
	assert.Equal(t, []int64{4}, ids, "the first batch was stored; its answer was dropped")
	assert.Equal(t, 1, n.count("produce"))
	c.mu.Lock()
	var ps *produceStream
	for _, s := range c.streams {
		ps = s
	}
	c.mu.Unlock()
	require.NotNil(t, ps)
	require.Eventually(t, func() bool {
		ps.mu.Lock()
		defer ps.mu.Unlock()
		return len(ps.pending) == 0 && len(ps.slots) == 0
	}, 10*time.Second, time.Millisecond, "the late answer freed its slot")
}

// TestStreamResourceExhaustedSendsCalls: a node that ends the Produce
// stream with RESOURCE_EXHAUSTED (it serves its cap of streams, or a
// request was larger than it reads) gets the unanswered request again as a
// SendMessages call with the same producer pair, so that a batch it stored
// is not stored twice; the Client sends it calls, not new streams, for
// streamPause, then opens a stream again.
func TestStreamResourceExhaustedSendsCalls(t *testing.T) {
	n := startNode(t)
	n.streamErr = status.Error(codes.ResourceExhausted, "fake: too many Produce streams")
	sends := recordSends(n, 7)
	// A pause no machine outlasts; the test ends it below.
	defer func(p time.Duration) { streamPause = p }(streamPause)
	streamPause = time.Hour
	c := New("", []string{n.addr})
	defer c.Close()
	for i := range 3 {
		_, err := c.SendMessages("t", msgs[:1], true)
		require.NoError(t, err, "send %d", i)
	}
	assert.Equal(t, 1, n.count("produce"), "no new stream within the pause")
	got := sends()
	require.Len(t, got, 3)
	for i, req := range got {
		assert.Equal(t, c.ProducerID(), req.GetProducerId(), "call %d", i)
		assert.Equal(t, uint64(i+1), req.GetSequence(), "call %d", i)
	}

	// After the pause, sends go over a stream again.
	n.mu.Lock()
	n.streamErr = nil
	n.mu.Unlock()
	c.mu.Lock()
	for cc := range c.noProduce {
		c.noProduce[cc] = time.Now() // the pause is over
	}
	c.mu.Unlock()
	_, err := c.SendMessages("t", msgs[:1], true)
	require.NoError(t, err)
	assert.Equal(t, 2, n.count("produce"))
	assert.Len(t, sends(), 4, "the send went over the stream, which calls the node's send")
}

// recordSends makes n answer sends as okSend(first) does, and returns a
// function that reports the requests it answered so far, in order.
func recordSends(n *fakeNode, first int64) func() []*forestbusv1.SendMessagesRequest {
	var mu sync.Mutex
	var got []*forestbusv1.SendMessagesRequest
	ok := okSend(first)
	n.send = func(ctx context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		return ok(ctx, req)
	}
	return func() []*forestbusv1.SendMessagesRequest {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}
