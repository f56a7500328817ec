package fastcodec

import (
	"sync"
	"sync/atomic"
)

// Lending: a server handler whose answer points into buffers it wants back
// (the commit log's read buffers) lends the answer to the codec with Lend,
// and Marshal, once it has copied the answer's encoding into gRPC's own
// buffers, calls the release function the handler gave.
//
// grpc-go encodes the answer a unary handler returns without an error in
// the handler's goroutine, as soon as the handler and its interceptors
// have returned (the server's SendMsg of the reply), so every such answer
// is released, and nothing reads the answer after it was encoded. A
// handler lends only the answer it returns with a nil error, on a server
// that uses this codec: a lent message never marshalled would keep its
// entry, and its buffers, for the life of the process (Lent counts them).
//
// After Marshal, grpc-go hands the sent message to the server's stats
// handler (OutPayload.Payload) and, with grpc.EnableTracing, to its trace
// log, both of which may read it later. By then its buffers may serve
// another read. So a server that lends must not set a stats handler that
// reads payloads, nor enable tracing; this module's server sets neither
// (its metrics are interceptors, which finish before the encoding).

var (
	loans sync.Map     // lent message -> release func()
	lent  atomic.Int64 // entries in loans
)

// Lend ties release to m until Marshal has encoded m. m must be a pointer.
func Lend(m any, release func()) {
	lent.Add(1)
	loans.Store(m, release)
}

// Lent is the number of messages lent and not yet marshalled.
func Lent() int { return int(lent.Load()) }

// repay releases v's buffers if v was lent.
func repay(v any) {
	if lent.Load() == 0 {
		return
	}
	if r, ok := loans.LoadAndDelete(v); ok {
		lent.Add(-1)
		r.(func())()
	}
}
