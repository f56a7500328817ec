package api

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/fastcodec"
)

// ClusterIDKey is the request metadata key naming the cluster a client
// expects. Absent means unchecked.
const ClusterIDKey = "forestbus-cluster-id"

// LeaderKey is the response header a node sets when it answered a call for
// another node (leader forwarding).
const LeaderKey = "forestbus-leader"

// panicked logs p, recovered from a panic, with msg and the stack, and
// returns the Internal status the caller answers with: for the recovery
// interceptors, and for the goroutines of a Produce stream, which they do
// not cover.
func (s *Service) panicked(ctx context.Context, msg string, p any) error {
	s.log.ErrorContext(ctx, msg, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return status.Errorf(codes.Internal, "internal error: %v", p)
}

// ServerOptions returns the codec and the interceptor chain for a
// grpc.Server serving s. The codec is fastcodec's: it decodes SendMessages
// batches without an allocation per message, and it gives GetMessages
// answers' read buffers back (fastcodec.Lend). The chain: logging
// (outermost, sees final codes), error table, recovery, cluster-ID check,
// a removed or refused node's admin calls, leader forwarding (innermost:
// it sees the handler's Go errors).
func (s *Service) ServerOptions() []grpc.ServerOption {
	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		s.log.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithLevels(func(c codes.Code) logging.Level {
			switch c {
			case codes.OK, codes.NotFound, codes.AlreadyExists, codes.InvalidArgument, codes.Canceled,
				codes.FailedPrecondition, codes.Unavailable, codes.DeadlineExceeded,
				// Refusals under load (backpressure, a cap reached): a
				// line per refused call would grow an overloaded node's
				// log fastest; the status-code metrics count them.
				codes.ResourceExhausted:
				return logging.LevelDebug
			case codes.Internal, codes.Unknown, codes.DataLoss:
				return logging.LevelError
			}
			return logging.LevelWarn
		}),
	}
	rec := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		return s.panicked(ctx, "panic in handler", p)
	})
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(fastcodec.Codec{}),
		grpc.ChainUnaryInterceptor(
			logging.UnaryServerInterceptor(logger, logOpts...),
			s.unaryErrors,
			recovery.UnaryServerInterceptor(rec),
			s.unaryClusterID,
			s.unaryAdminAvailable,
			s.unaryForward,
		),
		grpc.ChainStreamInterceptor(
			logging.StreamServerInterceptor(logger, logOpts...),
			s.streamErrors,
			recovery.StreamServerInterceptor(rec),
			s.streamClusterID,
		),
	}
}

func (s *Service) unaryErrors(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	resp, err := h(ctx, req)
	if err != nil {
		return nil, toStatus(ctx, err, s.leaderAddr, s.log)
	}
	return resp, nil
}

func (s *Service) streamErrors(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return toStatus(ss.Context(), h(srv, ss), s.leaderAddr, s.log)
}

func (s *Service) checkClusterID(ctx context.Context) error {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return nil
	}
	for _, id := range md.Get(ClusterIDKey) {
		if id != s.cfg.ClusterID {
			return fmt.Errorf("%w: this node belongs to cluster %q, the request names %q", ErrClusterIDMismatch, s.cfg.ClusterID, id)
		}
	}
	return nil
}

func (s *Service) unaryClusterID(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := s.checkClusterID(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// unaryAdminAvailable answers every AdminService call on a node the
// cluster removed, or that a peer refuses, with why (UNAVAILABLE: ask
// another node), before the call is served or forwarded. Topic calls
// check it in lookup, after their topic name.
func (s *Service) unaryAdminAvailable(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, adminMethodPrefix) {
		if err := s.unavailable(); err != nil {
			return nil, err
		}
	}
	return h(ctx, req)
}

// adminMethodPrefix begins the full method name of every AdminService call.
var adminMethodPrefix = "/" + forestbusv1.AdminService_ServiceDesc.ServiceName + "/"

func (s *Service) streamClusterID(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := s.checkClusterID(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}
