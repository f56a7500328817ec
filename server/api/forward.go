package api

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/grpcflow"
	"github.com/forestbus/forestbus/server/replica"
)

// ForwardedKey marks a request a node forwarded to the leader. A node never
// forwards such a request again (hop limit 1): it answers NOT_LEADER, and
// the client follows the hint.
const ForwardedKey = "forestbus-forwarded"

// forwardable lists the methods a follower forwards to the leader, with a
// constructor for their response.
var forwardable = map[string]func() proto.Message{
	forestbusv1.ForestBusService_SendMessages_FullMethodName: func() proto.Message { return new(forestbusv1.SendMessagesResponse) },
	forestbusv1.AdminService_CreateTopic_FullMethodName:      func() proto.Message { return new(forestbusv1.CreateTopicResponse) },
	forestbusv1.AdminService_UpdateTopic_FullMethodName:      func() proto.Message { return new(forestbusv1.UpdateTopicResponse) },
	forestbusv1.AdminService_RemoveTopic_FullMethodName:      func() proto.Message { return new(forestbusv1.RemoveTopicResponse) },
	forestbusv1.AdminService_AddNode_FullMethodName:          func() proto.Message { return new(forestbusv1.AddNodeResponse) },
	forestbusv1.AdminService_RemoveNode_FullMethodName:       func() proto.Message { return new(forestbusv1.RemoveNodeResponse) },
}

// forwarder keeps one client connection per leader address, and a slot
// per call it forwards (Config.MaxForwarding).
type forwarder struct {
	slots chan struct{} // nil: forwarding off
	creds credentials.TransportCredentials

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// take claims a slot for a forwarded call without waiting; false when all
// are taken (or forwarding is off). done gives it back.
func (f *forwarder) take() bool {
	select {
	case f.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (f *forwarder) done() { <-f.slots }

func (f *forwarder) conn(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.conns[addr]; c != nil {
		return c, nil
	}
	opts := append(grpcflow.DialOptions(),
		grpc.WithTransportCredentials(f.creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(300<<20)))
	c, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	if f.conns == nil {
		f.conns = make(map[string]*grpc.ClientConn)
	}
	f.conns[addr] = c
	return c, nil
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.conns = nil
}

// unaryForward answers a forwardable call that failed with NOT_LEADER on
// this node by sending it to the leader and relaying the leader's answer,
// with the forestbus-leader response header so the client goes direct next
// time.
func (s *Service) unaryForward(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	newResp, ok := forwardable[info.FullMethod]
	if err == nil || !ok {
		return resp, err
	}
	var nl *replica.NotLeaderError
	if !errors.As(err, &nl) || nl.Leader == 0 {
		return resp, err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get(ForwardedKey)) > 0 {
		return resp, err // one hop only
	}
	addr := s.leaderAddr(nl.Leader)
	if addr == "" || !s.fwd.take() {
		// No address, or as many calls forwarded as allowed: the
		// client gets NOT_LEADER with the leader's address and goes
		// there itself.
		return resp, err
	}
	defer s.fwd.done()
	conn, cerr := s.fwd.conn(addr)
	if cerr != nil {
		return resp, err
	}
	out := metadata.Pairs(ForwardedKey, "1", ClusterIDKey, s.cfg.ClusterID)
	fctx := metadata.NewOutgoingContext(ctx, out)
	fresp := newResp()
	var sent peer.Peer
	if ferr := conn.Invoke(fctx, info.FullMethod, req, fresp, grpc.Peer(&sent)); ferr != nil {
		if st, ok := status.FromError(ferr); ok && len(st.Details()) == 0 && st.Code() == codes.Unavailable {
			if sent.Addr == nil {
				// The call never left: answer NOT_LEADER with the
				// leader's address, and let the client try.
				return resp, err
			}
			// The leader may have the batch: the outcome is unknown,
			// which NOT_LEADER ("send it there") would hide.
			return nil, status.Errorf(codes.Unavailable, "forwarding to the leader at %s failed after the request was sent (outcome unknown): %v", addr, st.Message())
		}
		if leaderAnswered(ferr) {
			// The client goes there next time, errors or not.
			_ = grpc.SetHeader(ctx, metadata.Pairs(LeaderKey, addr))
		}
		return nil, ferr // the leader's answer, passed through as is
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(LeaderKey, addr))
	return fresp, nil
}

// leaderAnswered reports whether a forwarded call's error is the leader's
// answer to the request itself (a Forest Bus error: TOPIC_NOT_FOUND,
// DUPLICATE_BATCH, ...) from a node that still leads, so that the client
// may go there next time. Not for the answers that say the node is no
// usable leader: NOT_LEADER (its ErrorInfo names the new one), NO_LEADER
// (also leadership lost), SHUTTING_DOWN and STORAGE_FAILED.
func leaderAnswered(err error) bool {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			switch info.GetReason() {
			case Reason(forestbusv1.ErrorReason_ERROR_REASON_NOT_LEADER),
				Reason(forestbusv1.ErrorReason_ERROR_REASON_NO_LEADER),
				Reason(forestbusv1.ErrorReason_ERROR_REASON_SHUTTING_DOWN),
				Reason(forestbusv1.ErrorReason_ERROR_REASON_STORAGE_FAILED):
				return false
			}
			return true
		}
	}
	return false
}
