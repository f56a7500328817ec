package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/syncbuf"
	"github.com/forestbus/forestbus/internal/tlstest"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/httpapi"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestTLSCluster: nodes that serve TLS and require client certificates
// replicate over TLS (raft streams, forwarded calls, health checks); a
// client with a certificate the cluster's authority signed sends and
// reads on every node; a plaintext client, one without a certificate and
// one that trusts another authority get nothing.
func TestTLSCluster(t *testing.T) {
	ca := tlstest.NewCA(t)
	var logs syncbuf.Buffer // every node's log
	nodeCert := ca.Issue(t, "node")
	c := servertest.NewCluster(t, 3, servertest.WithTLS(ca, nodeCert, true), servertest.WithConfig(func(cfg *server.Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}))
	c.WaitTopic("default")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clientCert := ca.Issue(t, "client")

	cl := client.New("test", c.Addrs(), client.WithTLS(ca.ClientConfig(clientCert)))
	defer cl.Close()
	ids, err := cl.SendMessagesContext(ctx, "default", [][]byte{[]byte("a"), []byte("b")}, true)
	require.NoError(t, err, "committed: the nodes replicate over TLS")
	for _, addr := range c.Addrs() {
		one := client.New("test", []string{addr}, client.WithTLS(ca.ClientConfig(clientCert)))
		require.Eventually(t, func() bool {
			got, _, err := one.GetMessagesContext(ctx, "default", ids[0], 10, false)
			return err == nil && len(got) == 2 && string(got[1]) == "b"
		}, 10*time.Second, 10*time.Millisecond, "node %s", addr)
		one.Close()
	}

	// A follower forwards a SendMessages call to the leader, over TLS.
	d, err := cl.TopicDetails(ctx, "default")
	require.NoError(t, err)
	for _, n := range c.Nodes {
		if n.Cfg.NodeName == d.Leader {
			continue
		}
		cc, err := grpc.NewClient("passthrough:///"+n.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(ca.ClientConfig(clientCert))))
		require.NoError(t, err)
		defer cc.Close()
		mctx := metadata.AppendToOutgoingContext(ctx, client.ClusterIDMetadataKey, "test")
		resp, err := forestbusv1.NewForestBusServiceClient(cc).SendMessages(mctx, &forestbusv1.SendMessagesRequest{
			Topic: "default", Messages: [][]byte{[]byte("c")}, WaitForCommit: true,
		})
		require.NoError(t, err, "forwarded by %s", n.Cfg.NodeName)
		assert.Equal(t, ids[1]+1, resp.GetFirstId())
		break
	}

	// Health checks between the nodes go over TLS too: every node up.
	ts := httptest.NewServer(httpapi.New(c.Nodes[0].Server, httpapi.WithGRPCMetrics(nil)))
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/status.json")
	require.NoError(t, err)
	var st httpapi.Status
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
	resp.Body.Close()
	for _, n := range st.Nodes {
		assert.True(t, n.Up, "%s: %s", n.Name, n.Error)
	}
	// The certificate served, and when it expires.
	leaf := tlstest.Parse(t, nodeCert.CertPEM)
	require.NotNil(t, st.TLS)
	assert.Equal(t, "CN=node", st.TLS.Subject)
	assert.True(t, leaf.NotAfter.Equal(st.TLS.NotAfter), "%v, want %v", st.TLS.NotAfter, leaf.NotAfter)
	resp, err = http.Get(ts.URL + "/metrics")
	require.NoError(t, err)
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Contains(t, string(metrics), fmt.Sprintf("forestbus_tls_certificate_expiration_timestamp_seconds %g", float64(leaf.NotAfter.Unix())))
	resp, err = http.Get(ts.URL + "/status")
	require.NoError(t, err)
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Contains(t, string(page), "TLS certificate CN=node, expires "+leaf.NotAfter.Format("2006-01-02 15:04 MST"))

	other := tlstest.NewCA(t)
	for name, opts := range map[string][]client.Option{
		"plaintext":           nil,
		"no certificate":      {client.WithTLS(ca.ClientConfig(nil))},
		"another authority":   {client.WithTLS(other.ClientConfig(clientCert))},
		"another's signature": {client.WithTLS(ca.ClientConfig(other.Issue(t, "stranger")))},
	} {
		bad := client.New("test", c.Addrs(), append(opts, client.WithRetryWindow(0))...)
		bctx, bcancel := context.WithTimeout(ctx, time.Second)
		_, err := bad.SendMessagesContext(bctx, "default", [][]byte{[]byte("x")}, true)
		bcancel()
		bad.Close()
		assert.Error(t, err, name)
	}
	var got [][]byte
	require.Eventually(t, func() bool { // a follower's commit point trails
		got, _, err = cl.GetMessagesContext(ctx, "default", 1, 10, false)
		return err == nil && len(got) >= 3
	}, 10*time.Second, 10*time.Millisecond)
	assert.Len(t, got, 3, "nothing from the refused clients")
	assert.Contains(t, logs.String(), "TLS handshake failed", "the nodes say why they refused them")
}

// TestTLSConfigGoesTogether: a node that serves TLS must dial its peers
// with TLS (they serve it too), and the reverse.
func TestTLSConfigGoesTogether(t *testing.T) {
	ca := tlstest.NewCA(t)
	leaf := ca.Issue(t, "node")
	for _, cfg := range []server.Config{
		{TLS: ca.ServerConfig(leaf, false)},
		{PeerTLS: ca.ClientConfig(leaf)},
	} {
		cfg.ListenAddr, cfg.DataDir = "127.0.0.1:0", t.TempDir()
		s, err := server.Start(context.Background(), cfg)
		if s != nil {
			_ = s.Stop()
		}
		require.Error(t, err)
		assert.Contains(t, err.Error(), "TLS and PeerTLS")
	}
}
