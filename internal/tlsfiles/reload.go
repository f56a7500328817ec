package tlsfiles

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// DefaultRecheck is how often a Node looks at its files again, at most:
// a handshake (or a status request, Server.ServingCertificate) after that
// long reads them.
const DefaultRecheck = time.Second

// Node is a node's TLS setup that follows its files: a certificate, key or
// authority file replaced on disk is in use from the next handshake on (a
// second later at most, by default), without a restart. Connections
// already made keep the certificates they were made with, as with any TLS
// server.
//
// A changed set of files is checked as at start (checkNode) before it
// replaces the one in use: a certificate written before its key, a
// certificate of the wrong host or an authority that does not sign it is
// refused, reported once, and the node goes on with what it had until
// the files change again.
type Node struct {
	files      Files
	host       string
	clientAuth bool
	report     func(error)

	mu      sync.Mutex
	recheck time.Duration
	checked time.Time // when the files were last read
	inUse   contents  // the files cur was read from
	refused refusal   // the last change refused, reported once
	cur     *loaded
}

// loaded is one reading of the files.
type loaded struct {
	server *tls.Config // what a handshake with a client uses
	client *tls.Config // what a handshake with a peer uses
}

// refusal is a reading of the files that was refused, and why.
type refusal struct {
	c   contents
	why string
}

// Node reads the files, checks them (checkNode), and returns a
// setup that follows them. report, when not nil, is told of each change
// taken (nil) or refused (why), outside any lock.
func (f Files) Node(host string, clientAuth bool, report func(error)) (*Node, error) {
	n := &Node{files: f, host: host, clientAuth: clientAuth, report: report, recheck: DefaultRecheck}
	c, err := f.read()
	if err != nil {
		return nil, err
	}
	if n.cur, err = n.load(c); err != nil {
		return nil, err
	}
	n.inUse, n.checked = c, time.Now()
	return n, nil
}

// SetRecheck sets how often the files are looked at, at most (tests).
func (n *Node) SetRecheck(d time.Duration) {
	n.mu.Lock()
	n.recheck = d
	n.mu.Unlock()
}

// load parses and checks the files' contents.
func (n *Node) load(c contents) (*loaded, error) {
	certs, pool, err := n.files.parsed(c)
	if err != nil {
		return nil, err
	}
	server, err := server(certs, pool, n.clientAuth)
	if err != nil {
		return nil, err
	}
	if err := n.files.checkNode(certs[0], pool, n.host, n.clientAuth); err != nil {
		return nil, err
	}
	// grpc's credentials advertise h2 on the configuration they are given;
	// this one replaces it for the handshake, so it says so itself. (An
	// HTTPS server serves with it too: crypto/tls lets a client that
	// offers only http/1.1 in on an h2 server, as if without ALPN.)
	server.NextProtos = []string{"h2"}
	client := &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}
	return &loaded{server: server, client: client}, nil
}

// current returns the files' latest good reading, reading them again if
// the last look is more than the recheck interval old. The files are
// compared by content: a file rewritten in place within the file
// system's timestamp granularity keeps its size and modification time.
func (n *Node) current() *loaded {
	cur, changed, err := n.look()
	if changed && n.report != nil {
		n.report(err)
	}
	return cur
}

// look is current under the lock: changed when the files changed since
// the last report, err when the change is refused.
func (n *Node) look() (cur *loaded, changed bool, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if time.Since(n.checked) < n.recheck {
		return n.cur, false, nil
	}
	n.checked = time.Now()
	c, err := n.files.read()
	if err == nil && c.equal(n.inUse) {
		n.refused = refusal{} // back as they were: a change refused before is news again
		return n.cur, false, nil
	}
	if err == nil {
		cur, err = n.load(c)
	}
	if err != nil {
		r := refusal{c, err.Error()}
		if r.why == n.refused.why && r.c.equal(n.refused.c) {
			return n.cur, false, nil // told already
		}
		n.refused = r
		return n.cur, true, err
	}
	n.cur, n.inUse, n.refused = cur, c, refusal{}
	return cur, true, nil
}

// Server is the configuration to serve with: each handshake takes the
// files' latest good reading.
func (n *Node) Server() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return n.current().server, nil
		},
	}
}

// PeerCredentials are the gRPC credentials to dial peers with: each
// handshake presents the latest certificate and verifies the peer against
// the latest authorities (the system's roots when CA is not named).
func (n *Node) PeerCredentials() credentials.TransportCredentials { return peerCredentials{n} }

// peerCredentials make grpc's TLS credentials afresh from the files'
// latest reading for each handshake: grpc copies a tls.Config when its
// credentials are made, and crypto/tls verifies against a fixed RootCAs.
type peerCredentials struct{ n *Node }

func (p peerCredentials) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(p.n.current().client).ClientHandshake(ctx, authority, conn)
}

func (p peerCredentials) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("tls: peer credentials dial, they do not serve (Node.Server)")
}

func (p peerCredentials) Info() credentials.ProtocolInfo { return tlsInfo }

// tlsInfo is what grpc's TLS credentials say of themselves.
var tlsInfo = credentials.NewTLS(&tls.Config{}).Info()

func (p peerCredentials) Clone() credentials.TransportCredentials { return p }

// OverrideServerName is deprecated in grpc and unused here.
func (p peerCredentials) OverrideServerName(string) error {
	return errors.New("tls: OverrideServerName is not supported")
}
