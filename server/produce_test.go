package server_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// produceAll sends reqs on one Produce stream without waiting in between,
// closes its side, and returns the answers by request ID and the stream's
// final error (nil for OK).
func produceAll(t *testing.T, ctx context.Context, c conn, reqs []*forestbusv1.ProduceRequest) (map[uint64]*forestbusv1.ProduceResponse, error) {
	t.Helper()
	st, err := c.bus.Produce(ctx)
	require.NoError(t, err)
	for _, r := range reqs {
		// io.EOF: the node has ended the stream already (a refused
		// stream may end before the first request is sent); Recv
		// returns its status.
		if err := st.Send(r); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
	}
	require.NoError(t, st.CloseSend())
	got := map[uint64]*forestbusv1.ProduceResponse{}
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		_, dup := got[r.GetRequestId()]
		require.False(t, dup, "request %d answered twice", r.GetRequestId())
		got[r.GetRequestId()] = r
	}
}

// TestProduce: a stream's requests are answered once each, by request ID,
// with SendMessages' IDs or its errors; the stream ends OK after the
// client closes its side and every request is answered.
func TestProduce(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.MaxMessageBytes = 100 }))
	c := dial(t, n)
	req := func(id uint64, topic string, msgs [][]byte) *forestbusv1.ProduceRequest {
		return &forestbusv1.ProduceRequest{RequestId: id, Batch: &forestbusv1.SendMessagesRequest{Topic: topic, Messages: msgs, WaitForCommit: true}}
	}
	reqs := []*forestbusv1.ProduceRequest{
		req(7, "default", batch("a", 3)),
		req(8, "nope", batch("b", 1)),
		req(9, "default", nil),
		{RequestId: 10},
		req(11, "default", [][]byte{make([]byte, 101)}),
		req(12, "default", batch("c", 2)),
	}
	got, err := produceAll(t, ctxT(t), c, reqs)
	require.NoError(t, err, "the stream ends OK")
	require.Len(t, got, len(reqs))

	wantErr := map[uint64]struct {
		code   codes.Code
		reason string
	}{
		8:  {codes.NotFound, "TOPIC_NOT_FOUND"},
		9:  {codes.InvalidArgument, "INVALID_ARGUMENT"},
		10: {codes.InvalidArgument, "INVALID_ARGUMENT"},
		11: {codes.InvalidArgument, "MESSAGE_TOO_LARGE"},
	}
	for id, w := range wantErr {
		pe := got[id].GetError()
		require.NotNil(t, pe, "request %d", id)
		assert.Equal(t, int32(w.code), pe.GetCode(), "request %d: %v", id, pe)
		assert.Equal(t, w.reason, pe.GetReason(), "request %d", id)
		assert.NotEmpty(t, pe.GetMessage(), "request %d", id)
	}
	a, b := got[7].GetResult(), got[12].GetResult()
	require.NotNil(t, a)
	require.NotNil(t, b)
	assert.Equal(t, int32(3), a.GetCount())
	assert.Equal(t, int32(2), b.GetCount())
	// The two good batches got IDs 1-5, one after the other in some order.
	if a.GetFirstId() == 1 {
		assert.Equal(t, int64(4), b.GetFirstId())
	} else {
		assert.Equal(t, int64(1), b.GetFirstId())
		assert.Equal(t, int64(3), a.GetFirstId())
	}
	assert.Len(t, readAll(t, c, "default", 1, 5, 10), 5)
}

// TestProduceIdempotent: a batch resent on a stream with the same producer
// pair is stored once and answered with the first copy's IDs, as with
// SendMessages.
func TestProduceIdempotent(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	b := &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("x", 2), WaitForCommit: true, ProducerId: 99, Sequence: 1}
	first, err := produceAll(t, ctxT(t), c, []*forestbusv1.ProduceRequest{{RequestId: 1, Batch: b}})
	require.NoError(t, err)
	again, err := produceAll(t, ctxT(t), c, []*forestbusv1.ProduceRequest{{RequestId: 1, Batch: b}})
	require.NoError(t, err)
	require.NotNil(t, first[1].GetResult())
	assert.Equal(t, first[1].GetResult().GetFirstId(), again[1].GetResult().GetFirstId())
	d, err := c.bus.GetTopicDetails(ctxT(t), &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
	require.NoError(t, err)
	assert.Equal(t, int64(2), d.GetLastId(), "stored once")
}

// TestProduceWrongCluster: the cluster ID is checked once, for the stream.
func TestProduceWrongCluster(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "forestbus-cluster-id", "other")
	_, err := produceAll(t, ctx, c, []*forestbusv1.ProduceRequest{{RequestId: 1, Batch: &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("a", 1)}}})
	require.Error(t, err)
	assert.Equal(t, codes.FailedPrecondition, status.Code(err))
	assert.Equal(t, "CLUSTER_ID_MISMATCH", reasonOf(err))
}

// TestProduceNotLeader: a follower does not forward Produce requests; it
// answers NOT_LEADER with the leader's address.
func TestProduceNotLeader(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	l := leaderIndex(t, c, "default")
	f := c.Nodes[(l+1)%3]
	got, err := produceAll(t, ctxT(t), dial(t, f), []*forestbusv1.ProduceRequest{{RequestId: 5, Batch: &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("a", 1), WaitForCommit: true}}})
	require.NoError(t, err)
	pe := got[5].GetError()
	require.NotNil(t, pe)
	assert.Equal(t, int32(codes.FailedPrecondition), pe.GetCode())
	assert.Equal(t, "NOT_LEADER", pe.GetReason())
	assert.Equal(t, c.Nodes[l].Cfg.ListenAddr, pe.GetMetadata()["leader"])
}

// TestProduceEndsAtShutdown: an open stream does not hold the node's
// shutdown; it ends with SHUTTING_DOWN after its answers.
func TestProduceEndsAtShutdown(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	st, err := c.bus.Produce(ctxT(t))
	require.NoError(t, err)
	require.NoError(t, st.Send(&forestbusv1.ProduceRequest{RequestId: 1, Batch: &forestbusv1.SendMessagesRequest{Topic: "default", Messages: batch("a", 1), WaitForCommit: true}}))
	r, err := st.Recv()
	require.NoError(t, err)
	require.NotNil(t, r.GetResult())

	stopped := make(chan error, 1)
	go func() { stopped <- n.Server.Stop() }()
	_, err = st.Recv()
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	assert.Equal(t, "SHUTTING_DOWN", reasonOf(err))
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("Stop did not return")
	}
	n.Server = nil
}
