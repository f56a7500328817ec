// Package grpcflow sets the HTTP/2 flow-control windows and the buffer pool
// (package bufpool) of every gRPC connection this module dials or serves:
// clients to nodes, node to node, and a follower forwarding to its leader.
//
// grpc-go starts each connection at a 64 KiB window and grows it with a
// bandwidth-delay estimator, which answers received data with a PING and
// waits for the ack to measure. On a fast link the estimate never reaches
// its ceiling, so the pings never stop: every batch a producer sends or a
// leader replicates costs its receiver one more frame written, and its
// sender one more read and wakeup, and a batch larger than the window
// waits for a WINDOW_UPDATE before its tail may go. Setting the windows
// turns the estimator off (grpc-go does so for any window of 64 KiB or
// more). The values are the estimator's own ceiling for a connection
// (16 MiB) and a quarter of it for one stream, so a reader is never
// allowed to fall further behind than the default would let it.
//
// Measured on the 3-node benchmark against the build without them
// (BENCHMARKS.md, run 20261205T060909Z, clusters side by side, alternating):
// W1 ×1.09 msgs/s, W4 ×1.08, W2 p50 0.60 → 0.48 ms.
package grpcflow

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"

	"github.com/forestbus/forestbus/internal/bufpool"
)

const (
	// StreamWindow is the window of one stream (one RPC).
	StreamWindow = 4 << 20
	// ConnWindow is the window of one connection, all streams together.
	ConnWindow = 16 << 20
)

// DialOptions are the windows for a grpc.ClientConn, and the buffer pool
// (package bufpool). Options given after them replace them.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(StreamWindow),
		grpc.WithInitialConnWindowSize(ConnWindow),
		experimental.WithBufferPool(bufpool.Pool),
	}
}

// ServerOptions are the windows for a grpc.Server, and the buffer pool.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(StreamWindow),
		grpc.InitialConnWindowSize(ConnWindow),
		experimental.BufferPool(bufpool.Pool),
	}
}
