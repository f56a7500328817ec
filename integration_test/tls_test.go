package integration_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/internal/tlstest"
	"github.com/forestbus/forestbus/server/httpapi"
)

// TestClusterTLS: fbnode processes started with -tls-cert, -tls-key,
// -tls-ca and -tls-client-auth form a cluster over TLS; a client with a
// certificate the authority signed sends through a leader's kill -9 and
// restart; a fourth node joins (-join, over TLS); every node then holds
// the same messages; a plaintext client gets nothing.
func TestClusterTLS(t *testing.T) {
	ca := tlstest.NewCA(t)
	caFile, certFile, keyFile := ca.Write(t, t.TempDir(), "node", ca.Issue(t, "node"))
	tlsArgs := []string{"-tls-ca", caFile, "-tls-cert", certFile, "-tls-key", keyFile, "-tls-client-auth"}
	opts := []client.Option{client.WithTLS(ca.ClientConfig(ca.Issue(t, "client")))}
	c := startClusterWith(t, 3, opts, tlsArgs...)
	cl := client.New("it", c.addrs(), append(opts, client.WithRetryWindow(30*time.Second))...)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	sent := 0
	send := func(n int) int64 {
		var last int64
		for range n {
			ids, err := cl.SendMessagesContext(ctx, "default", [][]byte{fmt.Appendf(nil, "m%d", sent)}, true)
			require.NoError(t, err, "message %d", sent)
			sent++
			last = ids[0]
		}
		return last
	}
	send(50)
	leader := c.leader("default", c.procs)
	leader.kill()
	send(50)
	leader.restart()

	n4 := newProc(t, "n4", append([]string{"-join", c.procs[0].addr}, tlsArgs...)...)
	n4.start(freeAddrs(t, 1)[0])
	all := append(slices.Clone(c.procs), n4)
	c.waitMembers(all, "n1", "n2", "n3", "n4")
	last := send(50)
	require.EqualValues(t, 150, last)
	c.catchUp(c.procs[0], "default", last, 60*time.Second) // a follower's commit point trails
	want := c.readAll(c.procs[0], "default", last)
	for _, p := range all {
		c.catchUp(p, "default", last, 60*time.Second)
		assert.Equal(t, want, c.readAll(p, "default", last), "%s's copy", p.name)
	}

	plain := client.New("it", c.addrs(), client.WithRetryWindow(0))
	defer plain.Close()
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	defer pcancel()
	_, err := plain.SendMessagesContext(pctx, "default", [][]byte{[]byte("plain")}, true)
	assert.Error(t, err, "a plaintext client")
}

// TestClusterTLSRotation: certificate files replaced under running fbnode
// processes are served from the next handshake on, with no restart: a
// new certificate from the same authority; a certificate no named
// authority signs, which the nodes refuse and log while they go on with
// the one they had; then a new authority beside the old and a certificate
// it signed. A node killed and restarted after that is dialed by peers
// that never restarted: they verify it against the authorities they read
// again, and it catches up.
func TestClusterTLSRotation(t *testing.T) {
	ca1, ca2 := tlstest.NewCA(t), tlstest.NewCA(t)
	dir := t.TempDir()
	caFile, certFile, keyFile := ca1.Write(t, dir, "node", ca1.Issue(t, "node"))
	tlsArgs := []string{"-tls-ca", caFile, "-tls-cert", certFile, "-tls-key", keyFile, "-tls-client-auth"}
	// The test's clients trust both authorities from the start, to read
	// from every node at every step; they present a ca1 certificate.
	trustBoth := x509.NewCertPool()
	trustBoth.AddCert(tlstest.Parse(t, ca1.PEM))
	trustBoth.AddCert(tlstest.Parse(t, ca2.PEM))
	clientLeaf := ca1.Issue(t, "client")
	clientTLS := &tls.Config{RootCAs: trustBoth, Certificates: []tls.Certificate{clientLeaf.Cert}, MinVersion: tls.VersionTLS12}
	opts := []client.Option{client.WithTLS(clientTLS)}
	c := startClusterWith(t, 3, opts, tlsArgs...)
	cl := client.New("it", c.addrs(), append(opts, client.WithRetryWindow(30*time.Second))...)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var last int64
	send := func(n int) {
		for i := range n {
			ids, err := cl.SendMessagesContext(ctx, "default", [][]byte{fmt.Appendf(nil, "m%d", i)}, true)
			require.NoError(t, err)
			last = ids[0]
		}
	}
	// replace writes the files the way a certificate manager does: each
	// whole, then renamed over the old.
	replace := func(files map[string][]byte) {
		for name, b := range files {
			require.NoError(t, os.WriteFile(name+".new", b, 0o600))
			require.NoError(t, os.Rename(name+".new", name))
		}
	}
	// serving waits until every node serves want to a client with cfg.
	serving := func(want *tlstest.Leaf, cfg *tls.Config) {
		t.Helper()
		wantCert := tlstest.Parse(t, want.CertPEM)
		for _, p := range c.procs {
			var got string
			require.Eventually(t, func() bool {
				conn, err := tls.Dial("tcp", p.addr, cfg)
				if err != nil {
					got = err.Error()
					return false
				}
				defer conn.Close()
				pc := conn.ConnectionState().PeerCertificates[0]
				got = pc.Subject.CommonName + " " + pc.SerialNumber.String()
				return pc.Equal(wantCert)
			}, 20*time.Second, 50*time.Millisecond, "%s serves %s", p.name, got)
		}
	}
	h2 := func(cfg *tls.Config) *tls.Config { cfg.NextProtos = []string{"h2"}; return cfg }
	send(20)

	// A new certificate from the same authority.
	b := ca1.Issue(t, "node-b")
	replace(map[string][]byte{keyFile: b.KeyPEM, certFile: b.CertPEM})
	serving(b, h2(clientTLS.Clone()))
	send(20)

	// One no named authority signed: refused and logged, b goes on.
	bad := ca2.Issue(t, "node-bad")
	logged := make([]int, len(c.procs)) // each node's log before the change
	for i, p := range c.procs {
		logged[i] = len(p.stderr.String())
	}
	replace(map[string][]byte{keyFile: bad.KeyPEM, certFile: bad.CertPEM})
	for i, p := range c.procs {
		require.Eventually(t, func() bool {
			// a handshake makes the node look at its files
			if conn, err := tls.Dial("tcp", p.addr, h2(clientTLS.Clone())); err == nil {
				conn.Close()
			}
			line := p.stderr.String()[logged[i]:]
			return strings.Contains(line, "tls files changed: refused") && strings.Contains(line, "unknown authority")
		}, 20*time.Second, 100*time.Millisecond, "%s logs the refusal", p.name)
	}
	serving(b, h2(clientTLS.Clone()))
	send(20)

	// A new authority beside the old, and a certificate it signed.
	cc := ca2.Issue(t, "node-c")
	replace(map[string][]byte{caFile: append(append([]byte{}, ca1.PEM...), ca2.PEM...), keyFile: cc.KeyPEM, certFile: cc.CertPEM})
	serving(cc, h2(clientTLS.Clone()))
	_, err := tls.Dial("tcp", c.procs[0].addr, h2(ca1.ClientConfig(clientLeaf)))
	require.Error(t, err, "a client that trusts only ca1 no longer verifies the node")
	// ca2's clients are let in now: a call, not only a handshake (under
	// TLS 1.3 the client's side ends before the node checks its
	// certificate).
	ca2Client := client.New("it", c.addrs()[:1], client.WithTLS(&tls.Config{RootCAs: trustBoth, Certificates: []tls.Certificate{ca2.Issue(t, "client2").Cert}, MinVersion: tls.VersionTLS12}), client.WithRetryWindow(0))
	defer ca2Client.Close()
	_, err = ca2Client.TopicDetails(ctx, "default")
	require.NoError(t, err, "a client ca2 signed")

	// A restarted node: its peers dial it and verify its ca2 certificate
	// with what they read again.
	n3 := c.procs[2]
	if c.leader("default", c.procs) == n3 {
		n3 = c.procs[1]
	}
	n3.kill()
	send(20)
	n3.restart()
	send(20)
	require.EqualValues(t, 100, last)
	c.catchUp(c.procs[0], "default", last, 60*time.Second)
	want := c.readAll(c.procs[0], "default", last)
	for _, p := range c.procs {
		c.catchUp(p, "default", last, 60*time.Second)
		assert.Equal(t, want, c.readAll(p, "default", last), "%s's copy", p.name)
	}
}

// TestHTTPSEndpoints: fbnode -http-tls serves /status.json and /metrics
// over TLS with the node's certificate, to HTTP/1.1 and HTTP/2 clients,
// and requires a client certificate as gRPC does with -tls-client-auth.
func TestHTTPSEndpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	ca := tlstest.NewCA(t)
	caFile, certFile, keyFile := ca.Write(t, t.TempDir(), "node", ca.Issue(t, "node"))
	httpAddr := freeAddrs(t, 1)[0]
	startProc(t, "n1", "-tls-ca", caFile, "-tls-cert", certFile, "-tls-key", keyFile, "-tls-client-auth",
		"-http", httpAddr, "-http-tls")
	clientCfg := ca.ClientConfig(ca.Issue(t, "client"))
	get := func(tr *http.Transport, path string) (*http.Response, error) {
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		defer c.CloseIdleConnections()
		return c.Get("https://" + httpAddr + path)
	}
	for _, h2 := range []bool{false, true} {
		cfg := clientCfg.Clone()
		if !h2 {
			cfg.NextProtos = []string{"http/1.1"} // as curl --http1.1 offers
		}
		resp, err := get(&http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: h2}, "/status.json")
		require.NoError(t, err, "HTTP/2 %v", h2)
		var st httpapi.Status
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, map[bool]int{false: 1, true: 2}[h2], resp.ProtoMajor)
		require.NotNil(t, st.TLS)
		assert.Equal(t, "CN=node", st.TLS.Subject)
	}
	resp, err := get(&http.Transport{TLSClientConfig: clientCfg.Clone()}, "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Contains(t, string(body), "forestbus_tls_certificate_expiration_timestamp_seconds")

	_, err = get(&http.Transport{TLSClientConfig: ca.ClientConfig(nil)}, "/status.json")
	assert.Error(t, err, "no client certificate")
	plain, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + httpAddr + "/status.json")
	if err == nil {
		plain.Body.Close()
		assert.Equal(t, http.StatusBadRequest, plain.StatusCode, "plain HTTP to the HTTPS port")
	}
}
