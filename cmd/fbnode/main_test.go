package main

import (
	"bufio"
	"crypto/x509"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/internal/tlstest"
)

// TestNonsenseFlagsRefused: values the node used to replace quietly with a
// default or a floor (a review started nodes with each of these) are
// refused, naming the flag, before anything starts.
func TestNonsenseFlagsRefused(t *testing.T) {
	for _, tc := range [][]string{
		{"-segment-bytes", "1"},
		{"-segment-bytes", "-5"},
		{"-journal-bytes", "-1"},
		{"-journal-bytes", "1"},
		{"-max-wait", "-1s"},
		{"-max-message-bytes", "-1"},
		{"-max-batch-bytes", "0"},
		{"-max-read-bytes", "0"},
		{"-min-topic-segment-bytes", "-1"},
		{"-retention", "-1h"},
		{"-removed-retention", "-1h"},
		{"-retention-interval", "0s"},
		// 0 is the server's default for these, which is not what 0 says.
		{"-read-ahead-bytes", "0"},
		{"-max-forwarding", "0"},
		{"-max-topics", "0"},
		{"-page-cache-bytes", "0"},
		{"-max-streams-per-conn", "0"},
		// Recorded for good as the member address: none a peer can dial.
		{"-advertise", "myhost"},
		{"-advertise", "0.0.0.0:3000"},
		{"-advertise", ":3000"},
		{"-advertise", "127.0.0.1:0"},
		// A first start joins or bootstraps, not both (-join won quietly).
		{"-initial-cluster", "n1=127.0.0.1:1,n2=127.0.0.1:2", "-join", "127.0.0.1:1"},
	} {
		args := append([]string{"-listen", "127.0.0.1:0", "-data", filepath.Join(t.TempDir(), "d")}, tc...)
		err := run(args, io.Discard)
		require.Error(t, err, "%v", tc)
		assert.Contains(t, err.Error(), tc[0], "%v", tc)
	}
}

// TestWildcardListenNeedsAdvertise: a node listening on every interface
// must be told the address others dial: it records it as its member
// address, and a wildcard one ([::]:3000) sends a joining node to itself.
func TestWildcardListenNeedsAdvertise(t *testing.T) {
	for _, listen := range []string{":0", "0.0.0.0:0", "[::]:0"} {
		err := run([]string{"-listen", listen, "-data", filepath.Join(t.TempDir(), "d")}, io.Discard)
		require.Error(t, err, listen)
		assert.Contains(t, err.Error(), "-advertise", listen)
	}
	assert.False(t, unspecifiedHost("127.0.0.1:3000"))
	assert.False(t, unspecifiedHost("localhost:3000"))
	assert.True(t, unspecifiedHost(":3000"))
}

// TestRetentionFlagsTakeDays: -retention and -removed-retention take days
// ("7d"), as fbctl's retention flags and the README do (fbnode refused
// them: "parse error").
func TestRetentionFlagsTakeDays(t *testing.T) {
	fs := flag.NewFlagSet("fbnode", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	d := durationFlag(fs, "retention", time.Hour, "")
	assert.Equal(t, time.Hour, *d, "the default")
	require.NoError(t, fs.Parse([]string{"-retention", "7d"}))
	assert.Equal(t, 7*24*time.Hour, *d)
	require.NoError(t, fs.Parse([]string{"-retention", "90m"}))
	assert.Equal(t, 90*time.Minute, *d)
	assert.Error(t, fs.Parse([]string{"-retention", "-1d"}))
}

// TestHTTPPortInUseFailsFirst: a -http port in use fails the start before
// the node creates its data directory (it bootstrapped a cluster and its
// default topic, then exited).
func TestHTTPPortInUseFailsFirst(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	data := filepath.Join(t.TempDir(), "d")
	err = run([]string{"-listen", "127.0.0.1:0", "-data", data, "-http", busy.Addr().String()}, io.Discard)
	require.ErrorContains(t, err, "-http")
	_, statErr := os.Stat(data)
	assert.True(t, os.IsNotExist(statErr), "the data directory was made: %v", statErr)
}

// TestVersionFlag: -version prints the build and starts nothing (no data
// directory is made).
func TestVersionFlag(t *testing.T) {
	data := filepath.Join(t.TempDir(), "d")
	var out strings.Builder
	require.NoError(t, run([]string{"-version", "-data", data, "-listen", "127.0.0.1:0"}, &out))
	assert.Regexp(t, `^fbnode \S+ .*go1\.\d+`, out.String())
	assert.NoDirExists(t, data)
}

// TestTLSFlags: a TLS setup missing a piece is refused before anything
// starts, naming the flag.
func TestTLSFlags(t *testing.T) {
	ca := tlstest.NewCA(t)
	caFile, certFile, keyFile := ca.Write(t, t.TempDir(), "node", ca.Issue(t, "node"))
	_, serverCert, serverKey := ca.Write(t, t.TempDir(), "server-only", ca.IssueFor(t, "server-only", x509.ExtKeyUsageServerAuth))
	other := tlstest.NewCA(t)
	_, otherCert, otherKey := other.Write(t, t.TempDir(), "other", other.Issue(t, "other"))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-tls-cert", certFile}, "-tls-key"},
		{[]string{"-tls-key", keyFile}, "-tls-cert"},
		{[]string{"-tls-ca", caFile}, "-tls-cert"},
		{[]string{"-tls-client-auth", "-tls-cert", certFile, "-tls-key", keyFile}, "-tls-ca"},
		{[]string{"-tls-cert", certFile, "-tls-key", keyFile, "-tls-ca", certFile + ".missing"}, "no such file"},
		{[]string{"-tls-cert", keyFile, "-tls-key", keyFile}, "tls"},
		// The node's own certificate, checked as its peers will.
		{[]string{"-tls-cert", otherCert, "-tls-key", otherKey, "-tls-ca", caFile}, "unknown authority"},
		{[]string{"-tls-cert", certFile, "-tls-key", keyFile, "-tls-ca", caFile, "-advertise", "node.example:4000"}, "not node.example"},
		{[]string{"-tls-cert", serverCert, "-tls-key", serverKey, "-tls-ca", caFile, "-tls-client-auth"}, "clientAuth"},
		{[]string{"-http", "127.0.0.1:0", "-http-tls"}, "-tls-cert"},
		{[]string{"-tls-cert", certFile, "-tls-key", keyFile, "-tls-ca", caFile, "-http-tls"}, "needs -http"},
	} {
		data := filepath.Join(t.TempDir(), "d")
		err := run(append([]string{"-listen", "127.0.0.1:0", "-data", data}, tc.args...), io.Discard)
		require.Error(t, err, "%v", tc.args)
		assert.Contains(t, err.Error(), tc.want, "%v", tc.args)
		assert.NoDirExists(t, data, "nothing started")
	}
}

// TestHTTPIdleConnectionsEnd: -http closes keep-alive connections left
// idle (each held a goroutine and a descriptor for ever).
func TestHTTPIdleConnectionsEnd(t *testing.T) {
	defer func(d time.Duration) { httpIdleTimeout = d }(httpIdleTimeout)
	httpIdleTimeout = 100 * time.Millisecond
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := newHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }), nil)
	go func() { _ = hs.Serve(lis) }()
	defer hs.Close()

	conn, err := net.Dial("tcp", lis.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	assert.False(t, resp.Close, "the connection is kept alive")
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "the idle connection is closed by the server")
}
