package client

import (
	"crypto/tls"
	"slices"
	"sync"

	"google.golang.org/grpc"
)

// Clients of one process share their connections to a node when they dial
// it with the default options (no WithDialOptions, no
// WithPrivateConnections): a grpc.ClientConn is meant to be shared, and a
// node then serves one connection's reader and writer for many Clients
// instead of one pair per Client, which costs it a socket read, a write and
// two wake-ups for every batch of every Client. Each Client holds a
// reference; the last one released closes the connection.
//
// A connection serves at most clientsPerConn Clients, and the pool opens
// another one beyond: a node serves at most 32,000 calls at once on one
// connection (MaxConcurrentStreams; 1,000 for each of 32 Clients, what one
// had on a connection of its own), and a call over the limit waits for a
// free stream.
const clientsPerConn = 32

var pool = struct {
	mu    sync.Mutex
	conns map[poolKey][]*pooledConn // dial target and TLS config -> its connections
}{conns: make(map[poolKey][]*pooledConn)}

// poolKey names the shared connections to a node: its dial target and the
// TLS configuration they are dialed with (nil: plaintext). The pointer
// keeps the configuration alive while the key is in use, so another one
// cannot take its address.
type poolKey struct {
	target string
	tls    *tls.Config
}

type pooledConn struct {
	cc   *grpc.ClientConn
	refs int
}

// acquire returns a shared connection to target with room for one more
// Client, dialling one with dial when there is none, and takes a reference
// to it.
func acquire(target poolKey, dial func() (*grpc.ClientConn, error)) (*grpc.ClientConn, error) {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	for _, p := range pool.conns[target] {
		if p.refs < clientsPerConn {
			p.refs++
			return p.cc, nil
		}
	}
	cc, err := dial()
	if err != nil {
		return nil, err
	}
	pool.conns[target] = append(pool.conns[target], &pooledConn{cc: cc, refs: 1})
	return cc, nil
}

// release drops a reference to cc, a connection from acquire, and closes it
// when it was the last. It reports whether cc was pooled.
func release(target poolKey, cc *grpc.ClientConn) (pooled bool, err error) {
	pool.mu.Lock()
	list := pool.conns[target]
	i := slices.IndexFunc(list, func(p *pooledConn) bool { return p.cc == cc })
	if i < 0 {
		pool.mu.Unlock()
		return false, nil
	}
	if list[i].refs--; list[i].refs > 0 {
		pool.mu.Unlock()
		return true, nil
	}
	if list = slices.Delete(list, i, i+1); len(list) == 0 {
		delete(pool.conns, target)
	} else {
		pool.conns[target] = list
	}
	pool.mu.Unlock()
	return true, cc.Close()
}
