package api_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/servertest"
)

// produceOne sends one batch of one message on st and returns the answer.
func produceOne(t *testing.T, st forestbusv1.ForestBusService_ProduceClient, id uint64, msg string) (*forestbusv1.ProduceResponse, error) {
	t.Helper()
	err := st.Send(&forestbusv1.ProduceRequest{RequestId: id, Batch: &forestbusv1.SendMessagesRequest{
		Topic: "default", Messages: [][]byte{[]byte(msg)}, WaitForCommit: true,
	}})
	if err != nil {
		return nil, err
	}
	return st.Recv()
}

// A Produce stream over the node's cap fails with RESOURCE_EXHAUSTED
// before any of its requests is stored; once a stream ends, a new one is
// served.
func TestProduceStreamCap(t *testing.T) {
	n := servertest.StartNode(t)
	svc, bus := ownService(t, n)
	svc.SetMaxProduceStreams(1)

	ctx1, cancel1 := context.WithCancel(testCtx(t))
	defer cancel1()
	s1, err := bus.Produce(ctx1)
	require.NoError(t, err)
	r, err := produceOne(t, s1, 1, "first")
	require.NoError(t, err)
	require.Equal(t, int64(1), r.GetResult().GetFirstId(), "%v", r)
	assert.Equal(t, 1, svc.ProduceStreams())

	s2, err := bus.Produce(testCtx(t))
	require.NoError(t, err)
	_, err = produceOne(t, s2, 1, "refused")
	if err == io.EOF { // Send saw the stream end first; Recv has its status
		_, err = s2.Recv()
	}
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)

	// The refused stream's request was not stored: the next message
	// gets ID 2.
	require.NoError(t, s1.CloseSend())
	_, err = s1.Recv()
	require.ErrorIs(t, err, io.EOF)
	require.Eventually(t, func() bool { return svc.ProduceStreams() == 0 }, 10*time.Second, time.Millisecond)
	s3, err := bus.Produce(testCtx(t))
	require.NoError(t, err)
	r, err = produceOne(t, s3, 1, "third")
	require.NoError(t, err)
	assert.Equal(t, int64(2), r.GetResult().GetFirstId(), "%v", r)
}
