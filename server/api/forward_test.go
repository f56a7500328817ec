package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/replica"
	"github.com/forestbus/forestbus/server/topic"
)

// heldLeader answers SendMessages once release is closed, telling got of
// each call first.
type heldLeader struct {
	forestbusv1.UnimplementedForestBusServiceServer
	got     chan struct{}
	release chan struct{}
}

func (l *heldLeader) SendMessages(ctx context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
	l.got <- struct{}{}
	select {
	case <-l.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &forestbusv1.SendMessagesResponse{FirstId: 1, Count: int32(len(req.GetMessages()))}, nil
}

// forwardingTo serves leader as node n2 (with the node's codec, which gives
// back lent answers) and returns a client of a follower that answers every
// call NOT_LEADER (leader n2) and so forwards it there, up to
// maxForwarding at once (0: the default), and the leader's address.
func forwardingTo(t *testing.T, leader forestbusv1.ForestBusServiceServer, maxForwarding int) (forestbusv1.ForestBusServiceClient, string) {
	t.Helper()
	srv := grpc.NewServer(New(Config{ClusterID: "c1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil).ServerOptions()...)
	forestbusv1.RegisterForestBusServiceServer(srv, leader)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	svc := New(Config{
		ClusterID:     "c1",
		Nodes:         []Node{{Name: "n2", Address: lis.Addr().String(), RaftID: 2}},
		MaxForwarding: maxForwarding,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, nil)
	t.Cleanup(svc.fwd.close)
	follower := &failingService{}
	follower.set(&replica.NotLeaderError{Leader: 2}, false)
	return serveBus(t, follower, svc.ServerOptions()...), lis.Addr().String()
}

// A follower forwards at most MaxForwarding calls at once: one more is
// answered NOT_LEADER with the leader's address, and a slot freed by a
// forwarded call's answer serves the next.
func TestForwardingCap(t *testing.T) {
	leader := &heldLeader{got: make(chan struct{}, 4), release: make(chan struct{})}
	bus, _ := forwardingTo(t, leader, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := &forestbusv1.SendMessagesRequest{Topic: "t", Messages: [][]byte{[]byte("m")}}

	first := make(chan error, 1)
	go func() {
		_, err := bus.SendMessages(ctx, req)
		first <- err
	}()
	select {
	case <-leader.got: // the first call is forwarded and held: the slot is taken
	case <-ctx.Done():
		t.Fatal("the first call was not forwarded")
	}

	_, err := bus.SendMessages(ctx, req)
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	st := status.Convert(err)
	require.Len(t, st.Details(), 1)
	assert.Contains(t, st.Message(), "not the leader")

	close(leader.release)
	require.NoError(t, <-first)
	resp, err := bus.SendMessages(ctx, req) // the slot came back
	require.NoError(t, err)
	assert.Equal(t, int64(1), resp.GetFirstId())
}

// answeringLeader answers every SendMessages with err.
type answeringLeader struct {
	forestbusv1.UnimplementedForestBusServiceServer
	err error
}

func (l *answeringLeader) SendMessages(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
	return nil, l.err
}

// TestForwardedErrorHeader: the leader's errors about the request itself
// carry forestbus-leader; those saying it is no usable leader do not (the
// header sent clients to a node that had just said it could not lead).
func TestForwardedErrorHeader(t *testing.T) {
	leader := &answeringLeader{}
	bus, leaderAddr := forwardingTo(t, leader, 0)
	req := &forestbusv1.SendMessagesRequest{Topic: "t", Messages: [][]byte{[]byte("m")}}
	for _, tc := range []struct {
		err    error
		header bool
	}{
		{fmt.Errorf("%w: t", topic.ErrNotFound), true},
		{ErrSequenceReused, true},
		{replica.ErrNoLeader, false},
		{replica.ErrLeadershipLost, false},
		{ErrShuttingDown, false},
		{replica.ErrStorageFailed, false},
	} {
		leader.err = tc.err
		var hdr metadata.MD
		_, err := bus.SendMessages(context.Background(), req, grpc.Header(&hdr))
		require.Error(t, err)
		if tc.header {
			assert.Equal(t, []string{leaderAddr}, hdr.Get(LeaderKey), "%v", tc.err)
		} else {
			assert.Empty(t, hdr.Get(LeaderKey), "%v", tc.err)
		}
	}
}
