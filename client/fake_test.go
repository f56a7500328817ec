package client

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// fakeNode is an in-process ForestBusService and AdminService whose
// answers each test scripts.
type fakeNode struct {
	forestbusv1.UnimplementedForestBusServiceServer
	forestbusv1.UnimplementedAdminServiceServer

	addr string

	mu        sync.Mutex
	calls     map[string]int
	clusterID []string // forestbus-cluster-id of the last call

	// unaryOnly makes Produce answer UNIMPLEMENTED (an older node); else
	// Produce serves each request with send, as a SendMessages call.
	unaryOnly bool
	// streamErr, when set, ends a Produce stream with it at its first
	// request, unanswered.
	streamErr error
	// stallProduce makes Produce read nothing of its streams (a stuck
	// node: flow control soon holds the client's requests).
	stallProduce bool

	send    func(ctx context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error)
	get     func(ctx context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error)
	details func(ctx context.Context, req *forestbusv1.GetTopicDetailsRequest) (*forestbusv1.GetTopicDetailsResponse, error)
	cluster func(ctx context.Context) (*forestbusv1.GetClusterDetailsResponse, error)
	admin   func(ctx context.Context, op string, req any) (any, error)
}

// startNode serves a fake node on a free loopback port until the test ends.
// It accepts keepalive pings as nodes do (transport.ServerOptions).
func startNode(t *testing.T, opts ...grpc.ServerOption) *fakeNode {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	n := &fakeNode{addr: lis.Addr().String(), calls: make(map[string]int)}
	opts = append([]grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
		MinTime: 5 * time.Second, PermitWithoutStream: true,
	})}, opts...)
	srv := grpc.NewServer(opts...)
	forestbusv1.RegisterForestBusServiceServer(srv, n)
	forestbusv1.RegisterAdminServiceServer(srv, n)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return n
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return addr
}

func (n *fakeNode) record(ctx context.Context, op string) {
	md, _ := metadata.FromIncomingContext(ctx)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls[op]++
	n.clusterID = md.Get(ClusterIDMetadataKey)
}

func (n *fakeNode) count(op string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.calls[op]
}

func (n *fakeNode) lastClusterID() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.clusterID
}

func (n *fakeNode) SendMessages(ctx context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
	n.record(ctx, "send")
	if n.send == nil {
		return nil, status.Error(codes.Unimplemented, "no send")
	}
	return n.send(ctx, req)
}

// Produce serves each request as SendMessages (counted as a "send"); the
// stream itself counts as a "produce".
func (n *fakeNode) Produce(st forestbusv1.ForestBusService_ProduceServer) error {
	n.mu.Lock()
	unaryOnly, streamErr, stall := n.unaryOnly, n.streamErr, n.stallProduce
	n.mu.Unlock()
	if unaryOnly {
		return status.Error(codes.Unimplemented, "no produce")
	}
	n.record(st.Context(), "produce")
	if stall {
		<-st.Context().Done()
		return nil
	}
	var sendMu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		if streamErr != nil {
			return streamErr
		}
		wg.Go(func() {
			resp := &forestbusv1.ProduceResponse{RequestId: req.GetRequestId()}
			r, err := n.SendMessages(st.Context(), req.GetBatch())
			if err != nil {
				st := status.Convert(err)
				pe := &forestbusv1.ProduceError{Code: int32(st.Code()), Message: st.Message()}
				for _, d := range st.Details() {
					if info, ok := d.(*errdetails.ErrorInfo); ok {
						pe.Reason, pe.Metadata = info.GetReason(), info.GetMetadata()
					}
				}
				resp.Outcome = &forestbusv1.ProduceResponse_Error{Error: pe}
			} else {
				resp.Outcome = &forestbusv1.ProduceResponse_Result{Result: r}
			}
			sendMu.Lock()
			defer sendMu.Unlock()
			_ = st.Send(resp)
		})
	}
}

func (n *fakeNode) GetMessages(ctx context.Context, req *forestbusv1.GetMessagesRequest) (*forestbusv1.GetMessagesResponse, error) {
	n.record(ctx, "get")
	if n.get == nil {
		return nil, status.Error(codes.Unimplemented, "no get")
	}
	return n.get(ctx, req)
}

func (n *fakeNode) GetTopicDetails(ctx context.Context, req *forestbusv1.GetTopicDetailsRequest) (*forestbusv1.GetTopicDetailsResponse, error) {
	n.record(ctx, "details")
	if n.details == nil {
		return nil, status.Error(codes.Unimplemented, "no details")
	}
	return n.details(ctx, req)
}

func (n *fakeNode) GetClusterDetails(ctx context.Context, _ *forestbusv1.GetClusterDetailsRequest) (*forestbusv1.GetClusterDetailsResponse, error) {
	n.record(ctx, "cluster")
	if n.cluster == nil {
		return nil, status.Error(codes.Unimplemented, "no cluster")
	}
	return n.cluster(ctx)
}

func (n *fakeNode) adminCall(ctx context.Context, op string, req any) (any, error) {
	n.record(ctx, op)
	if n.admin == nil {
		return nil, status.Error(codes.Unimplemented, "no admin")
	}
	return n.admin(ctx, op, req)
}

func (n *fakeNode) CreateTopic(ctx context.Context, req *forestbusv1.CreateTopicRequest) (*forestbusv1.CreateTopicResponse, error) {
	r, err := n.adminCall(ctx, "create", req)
	if err != nil {
		return nil, err
	}
	return r.(*forestbusv1.CreateTopicResponse), nil
}

func (n *fakeNode) UpdateTopic(ctx context.Context, req *forestbusv1.UpdateTopicRequest) (*forestbusv1.UpdateTopicResponse, error) {
	r, err := n.adminCall(ctx, "update", req)
	if err != nil {
		return nil, err
	}
	return r.(*forestbusv1.UpdateTopicResponse), nil
}

func (n *fakeNode) RemoveTopic(ctx context.Context, req *forestbusv1.RemoveTopicRequest) (*forestbusv1.RemoveTopicResponse, error) {
	r, err := n.adminCall(ctx, "remove", req)
	if err != nil {
		return nil, err
	}
	return r.(*forestbusv1.RemoveTopicResponse), nil
}

func (n *fakeNode) ListTopics(ctx context.Context, req *forestbusv1.ListTopicsRequest) (*forestbusv1.ListTopicsResponse, error) {
	r, err := n.adminCall(ctx, "list", req)
	if err != nil {
		return nil, err
	}
	return r.(*forestbusv1.ListTopicsResponse), nil
}

// reasonError builds a node error the way the server's error table does.
func reasonError(t *testing.T, code codes.Code, reason string, md map[string]string) error {
	t.Helper()
	st, err := status.New(code, "fake: "+reason).WithDetails(&errdetails.ErrorInfo{
		Reason:   reason,
		Domain:   ErrorDomain,
		Metadata: md,
	})
	require.NoError(t, err)
	return st.Err()
}

// okSend answers every send with IDs from first on.
func okSend(first int64) func(context.Context, *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
	var mu sync.Mutex
	next := first
	return func(_ context.Context, req *forestbusv1.SendMessagesRequest) (*forestbusv1.SendMessagesResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		r := &forestbusv1.SendMessagesResponse{FirstId: next, Count: int32(len(req.GetMessages()))}
		next += int64(len(req.GetMessages()))
		return r, nil
	}
}
