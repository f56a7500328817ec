package client

import (
	"sync"

	"google.golang.org/grpc"
)

// Clients of one process share their connections to a node when they dial
// it with the default options (no WithDialOptions, no
// WithPrivateConnections): a grpc.ClientConn is
// meant to be shared, and a node then serves one connection's reader and
// writer for all of them instead of one pair per Client, which costs it a
// socket read, a write and two wake-ups for every batch of every Client.
// Each Client holds a reference; the last one released closes the
// connection.
var pool = struct {
	mu    sync.Mutex
	conns map[string]*pooledConn // dial target -> connection
}{conns: make(map[string]*pooledConn)}

type pooledConn struct {
	cc   *grpc.ClientConn
	refs int
}

// acquire returns the shared connection to target, dialling it with dial
// when there is none, and takes a reference to it.
func acquire(target string, dial func() (*grpc.ClientConn, error)) (*grpc.ClientConn, error) {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if p := pool.conns[target]; p != nil {
		p.refs++
		return p.cc, nil
	}
	cc, err := dial()
	if err != nil {
		return nil, err
	}
	pool.conns[target] = &pooledConn{cc: cc, refs: 1}
	return cc, nil
}

// release drops a reference to cc, a connection from acquire, and closes it
// when it was the last. It reports whether cc was pooled.
func release(target string, cc *grpc.ClientConn) (pooled bool, err error) {
	pool.mu.Lock()
	p := pool.conns[target]
	if p == nil || p.cc != cc {
		pool.mu.Unlock()
		return false, nil
	}
	p.refs--
	if p.refs > 0 {
		pool.mu.Unlock()
		return true, nil
	}
	delete(pool.conns, target)
	pool.mu.Unlock()
	return true, cc.Close()
}
