package httpapi

import (
	"sync"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"
)

// GRPC is the gRPC server metrics of go-grpc-middleware's Prometheus
// provider and the interceptors that feed them.
type GRPC struct {
	// Metrics is the provider's collector (it is a prometheus.Collector).
	// After registering the services, Metrics.InitializeMetrics(grpcServer)
	// creates the zero series of every method (optional).
	Metrics *grpcprom.ServerMetrics
	// Unary and Stream record every call: they must be in the server's
	// interceptor chain, outermost (before the interceptor that turns Go
	// errors into status codes), to count the codes clients receive.
	Unary  grpc.UnaryServerInterceptor
	Stream grpc.StreamServerInterceptor
}

// ServerOptions returns Unary and Stream as grpc.ServerOptions. gRPC chains
// interceptors in the order of the options, so put these before the others:
//
//	opts := append(g.ServerOptions(), otherOptions...)
func (g *GRPC) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(g.Unary),
		grpc.ChainStreamInterceptor(g.Stream),
	}
}

var (
	grpcOnce    sync.Once
	grpcMetrics *GRPC
)

// GRPCMetrics returns the process's gRPC server metrics (one value per
// process, created on first use). New registers them in its registry unless
// told otherwise (WithGRPCMetrics).
//
// They stay empty until the interceptors are in the gRPC server's chain.
// Package server cannot import this package (this package imports server),
// so the options are handed to it: fbnode sets
// server.Config.GRPCOptions = httpapi.GRPCMetrics().ServerOptions() when it
// serves -http.
//
// The stream interceptor also sees the peer streams of the raft transport
// (forestbus.peer.*), which then show up as long-lived streams.
func GRPCMetrics() *GRPC {
	grpcOnce.Do(func() { grpcMetrics = NewGRPCMetrics() })
	return grpcMetrics
}

// NewGRPCMetrics returns new gRPC server metrics, for a process that runs
// several servers (tests) and wants them apart; see WithGRPCMetrics.
func NewGRPCMetrics() *GRPC {
	// The handling-time histogram too (grpc_server_handling_seconds), which
	// the README lists: the provider leaves it off by default.
	m := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	return &GRPC{Metrics: m, Unary: m.UnaryServerInterceptor(), Stream: m.StreamServerInterceptor()}
}
