package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server/replica"
)

// failingService answers SendMessages with whatever error the test set.
type failingService struct {
	forestbusv1.UnimplementedForestBusServiceServer
	mu    sync.Mutex
	err   error
	panic bool
}

func (f *failingService) set(err error, panic bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err, f.panic = err, panic
}

func (f *failingService) SendMessages(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
	f.mu.Lock()
	err, p := f.err, f.panic
	f.mu.Unlock()
	if p {
		panic("boom")
	}
	return nil, err
}

// serveBus serves impl as ForestBusService on a loopback port, with opts,
// and returns a client of it.
func serveBus(t *testing.T, impl forestbusv1.ForestBusServiceServer, opts ...grpc.ServerOption) forestbusv1.ForestBusServiceClient {
	t.Helper()
	srv := grpc.NewServer(opts...)
	forestbusv1.RegisterForestBusServiceServer(srv, impl)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return forestbusv1.NewForestBusServiceClient(conn)
}

// TestErrorTableRoundTrip sends every row of the error table through a real
// gRPC connection and the interceptor chain, and checks code and reason.
func TestErrorTableRoundTrip(t *testing.T) {
	svc := New(Config{
		ClusterID: "c1",
		Nodes:     []Node{{Name: "n2", Address: "127.0.0.1:9999", RaftID: 2}},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, nil)
	fake := &failingService{}
	client := serveBus(t, fake, svc.ServerOptions()...)

	call := func(err error) *status.Status {
		fake.set(err, false)
		_, cerr := client.SendMessages(context.Background(), &forestbusv1.SendMessagesRequest{})
		require.Error(t, cerr)
		st, ok := status.FromError(cerr)
		require.True(t, ok)
		return st
	}
	reasonOf := func(st *status.Status) *errdetails.ErrorInfo {
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				return info
			}
		}
		return nil
	}

	for _, row := range errorTable {
		t.Run(Reason(row.reason)+"/"+row.err.Error(), func(t *testing.T) {
			st := call(fmt.Errorf("wrapped: %w", row.err))
			assert.Equal(t, row.code, st.Code())
			info := reasonOf(st)
			require.NotNil(t, info, "no ErrorInfo detail")
			assert.Equal(t, Reason(row.reason), info.GetReason())
			assert.Equal(t, Domain, info.GetDomain())
			assert.Contains(t, st.Message(), row.err.Error())
		})
	}
	t.Run("not leader carries the leader's address", func(t *testing.T) {
		st := call(&replica.NotLeaderError{Leader: 2})
		assert.Equal(t, codes.FailedPrecondition, st.Code())
		info := reasonOf(st)
		require.NotNil(t, info)
		assert.Equal(t, "NOT_LEADER", info.GetReason())
		assert.Equal(t, "127.0.0.1:9999", info.GetMetadata()["leader"])
	})
	t.Run("unknown error is Internal", func(t *testing.T) {
		st := call(errors.New("disk on fire"))
		assert.Equal(t, codes.Internal, st.Code())
	})
	t.Run("context errors keep their codes", func(t *testing.T) {
		assert.Equal(t, codes.DeadlineExceeded, call(context.DeadlineExceeded).Code())
		assert.Equal(t, codes.Canceled, call(context.Canceled).Code())
	})
	t.Run("panic is recovered as Internal", func(t *testing.T) {
		fake.set(nil, true)
		_, cerr := client.SendMessages(context.Background(), &forestbusv1.SendMessagesRequest{})
		assert.Equal(t, codes.Internal, status.Code(cerr))
	})
}

func TestEveryReasonHasARow(t *testing.T) {
	have := map[forestbusv1.ErrorReason]bool{}
	for _, row := range errorTable {
		have[row.reason] = true
	}
	for v := range forestbusv1.ErrorReason_name {
		r := forestbusv1.ErrorReason(v)
		if r == forestbusv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
			continue
		}
		assert.True(t, have[r], "no error table row produces %s", r)
	}
}

// A refusal under load (RESOURCE_EXHAUSTED: backpressure, a cap reached)
// is logged at debug, not per call at warn, where an overloaded node's log
// would grow fastest exactly when it is overloaded (the status-code
// metrics count them); internal errors stay at error.
func TestOverloadIsNotLoggedPerCall(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	svc := New(Config{ClusterID: "c1", Logger: logger}, nil)
	fake := &failingService{}
	client := serveBus(t, fake, svc.ServerOptions()...)

	fake.set(replica.ErrProposalDropped, false)
	_, err := client.SendMessages(context.Background(), &forestbusv1.SendMessagesRequest{})
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	fake.set(errors.New("boom"), false)
	_, err = client.SendMessages(context.Background(), &forestbusv1.SendMessagesRequest{})
	require.Equal(t, codes.Internal, status.Code(err), "%v", err)

	mu.Lock()
	out := buf.String()
	mu.Unlock()
	assert.NotContains(t, out, "ResourceExhausted")
	assert.NotContains(t, out, "RESOURCE_EXHAUSTED")
	assert.Contains(t, out, "level=ERROR")
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
