package tlsfiles_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/credentials"

	"github.com/forestbus/forestbus/internal/tlsfiles"
	"github.com/forestbus/forestbus/internal/tlstest"
)

// reports collects what a Node reports.
type reports struct {
	mu   sync.Mutex
	errs []error
}

func (r *reports) add(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

func (r *reports) take() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.errs
	r.errs = nil
	return e
}

func write(t *testing.T, name string, b []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(name, b, 0o600))
}

// serve accepts TLS connections with cfg until the test ends, completing
// each handshake; the certificates clients presented go to seen.
func serve(t *testing.T, cfg *tls.Config) (addr string, seen <-chan *x509.Certificate) {
	t.Helper()
	cfg.NextProtos = []string{"h2"} // grpc's client requires it
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	ch := make(chan *x509.Certificate, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
					select {
					case ch <- pc[0]:
					default: // nobody looks at these
					}
				}
			}
			c.Close()
		}
	}()
	return ln.Addr().String(), ch
}

// served is the certificate a server presents to a client with cfg.
func served(t *testing.T, addr string, cfg *tls.Config) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	require.NoError(t, err)
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// TestNodeFollowsItsFiles: a node's certificate, key and authorities
// replaced on disk are used from the next handshake on, as server and as
// client; a change that does not check out is refused once and the node
// goes on with what it had.
func TestNodeFollowsItsFiles(t *testing.T) {
	ca1 := tlstest.NewCA(t)
	dir := t.TempDir()
	a := ca1.Issue(t, "node")
	caFile, certFile, keyFile := ca1.Write(t, dir, "node", a)
	var rep reports
	n, err := tlsfiles.Files{CA: caFile, Cert: certFile, Key: keyFile}.Node("127.0.0.1", true, rep.add)
	require.NoError(t, err)
	n.SetRecheck(0)
	peer := n.PeerCredentials() // made once, as a node makes them

	addr, _ := serve(t, n.Server())
	client := ca1.Issue(t, "client")
	assert.True(t, served(t, addr, ca1.ClientConfig(client)).Equal(tlstest.Parse(t, a.CertPEM)))

	// A new certificate and key.
	b := ca1.Issue(t, "node")
	write(t, certFile, b.CertPEM)
	write(t, keyFile, b.KeyPEM)
	assert.True(t, served(t, addr, ca1.ClientConfig(client)).Equal(tlstest.Parse(t, b.CertPEM)))
	assert.Equal(t, []error{nil}, rep.take())

	// The certificate written before its key: refused, reported once.
	c := ca1.Issue(t, "node")
	write(t, certFile, c.CertPEM)
	for range 3 {
		assert.True(t, served(t, addr, ca1.ClientConfig(client)).Equal(tlstest.Parse(t, b.CertPEM)))
	}
	errs := rep.take()
	require.Len(t, errs, 1)
	assert.ErrorContains(t, errs[0], "private key does not match")
	write(t, keyFile, c.KeyPEM)
	assert.True(t, served(t, addr, ca1.ClientConfig(client)).Equal(tlstest.Parse(t, c.CertPEM)))
	assert.Equal(t, []error{nil}, rep.take())

	// A certificate its authorities do not sign: refused.
	ca2 := tlstest.NewCA(t)
	d := ca2.Issue(t, "node")
	write(t, certFile, d.CertPEM)
	write(t, keyFile, d.KeyPEM)
	assert.True(t, served(t, addr, ca1.ClientConfig(client)).Equal(tlstest.Parse(t, c.CertPEM)))
	errs = rep.take()
	require.Len(t, errs, 1)
	assert.ErrorContains(t, errs[0], "unknown authority")

	// The peer side, before the authorities change: a server ca2 signed
	// is refused, and ca2's clients are too.
	peerAddr, peerSaw := serve(t, ca2.ServerConfig(ca2.Issue(t, "peer"), true))
	err = dialPeer(t, peer, peerAddr)
	var unknown x509.UnknownAuthorityError
	assert.True(t, errors.As(err, &unknown), "%v", err)
	client2 := ca2.Issue(t, "client")
	trustBoth := x509.NewCertPool()
	trustBoth.AddCert(tlstest.Parse(t, ca1.PEM))
	trustBoth.AddCert(tlstest.Parse(t, ca2.PEM))
	cfg2 := &tls.Config{RootCAs: trustBoth, Certificates: []tls.Certificate{client2.Cert}}
	assert.ErrorContains(t, admitted(t, addr, cfg2), "unknown certificate authority", "ca2's client refused")

	// Both authorities: d is taken, ca2's clients are let in, and the
	// node's client certificate is d.
	write(t, caFile, append(append([]byte{}, ca1.PEM...), ca2.PEM...))
	assert.True(t, served(t, addr, ca2.ClientConfig(client2)).Equal(tlstest.Parse(t, d.CertPEM)))
	assert.Equal(t, []error{nil}, rep.take())
	assert.NoError(t, admitted(t, addr, cfg2), "ca2's client let in")
	require.NoError(t, dialPeer(t, peer, peerAddr))
	select {
	case got := <-peerSaw:
		assert.True(t, got.Equal(tlstest.Parse(t, d.CertPEM)), "the node presents its new certificate to peers")
	case <-time.After(10 * time.Second):
		t.Fatal("the peer completed no handshake")
	}

	// A bundle caught half written: refused, not taken without its end.
	whole := append(append([]byte{}, ca1.PEM...), ca2.PEM...)
	write(t, caFile, whole[:len(whole)-40])
	assert.True(t, served(t, addr, cfg2).Equal(tlstest.Parse(t, d.CertPEM)))
	errs = rep.take()
	require.Len(t, errs, 1)
	assert.ErrorContains(t, errs[0], "cut-off PEM block")
}

// admitted reports whether the server at addr lets a client with cfg in:
// under TLS 1.3 the client's side of the handshake ends before the server
// has checked its certificate, so it reads on until the server, which
// closes every connection it took, says EOF (nil) or sends its alert.
func admitted(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = conn.Read(make([]byte, 1))
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// dialPeer makes a TLS connection to addr with a node's peer credentials.
func dialPeer(t *testing.T, creds credentials.TransportCredentials, addr string) error {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer raw.Close()
	conn, _, err := creds.ClientHandshake(context.Background(), addr, raw)
	if err == nil {
		conn.Close()
	}
	return err
}

// TestNodeRefusesBadFilesAtStart: the first reading is checked as
// CheckNode checks it.
func TestNodeRefusesBadFilesAtStart(t *testing.T) {
	ca := tlstest.NewCA(t)
	other := tlstest.NewCA(t)
	dir := t.TempDir()
	caFile, _, _ := ca.Write(t, dir, "node", ca.Issue(t, "node"))
	_, certFile, keyFile := other.Write(t, t.TempDir(), "other", other.Issue(t, "other"))
	_, err := tlsfiles.Files{CA: caFile, Cert: certFile, Key: keyFile}.Node("127.0.0.1", false, nil)
	assert.ErrorContains(t, err, "unknown authority")
	_, err = tlsfiles.Files{CA: caFile, Cert: certFile + ".missing", Key: keyFile}.Node("127.0.0.1", false, nil)
	assert.ErrorContains(t, err, "no such file")
	_, err = tlsfiles.Files{CA: caFile}.Node("127.0.0.1", false, nil)
	assert.ErrorContains(t, err, "-tls-cert")
}
