// Package servertest starts real Forest Bus nodes inside a test process, on
// 127.0.0.1 with a free port and a temporary data directory.
package servertest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/internal/tlstest"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/transport"
)

// Node is a node under test. Restart keeps its data directory and address.
type Node struct {
	t   testing.TB
	Cfg server.Config
	*server.Server
}

// Option adjusts a node's config.
type Option func(*server.Config)

// WithSync sets the durability mode.
func WithSync(m server.SyncMode) Option { return func(c *server.Config) { c.Sync = m } }

// WithMaxWait sets the long-poll cap.
func WithMaxWait(d time.Duration) Option { return func(c *server.Config) { c.MaxWait = d } }

// WithSegmentBytes sets the default segment size, and lets clients give
// topics segments that small (Config.MinTopicSegmentBytes, when n is below
// its default).
func WithSegmentBytes(n int64) Option {
	return func(c *server.Config) {
		c.SegmentBytes, c.MinTopicSegmentBytes = n, min(n, server.DefaultMinTopicSegmentBytes)
	}
}

// WithHub runs the cluster's peer traffic over an in-memory hub, whose
// links tests cut, heal, slow and make lossy.
func WithHub(h *transport.Hub) Option {
	return func(c *server.Config) {
		c.NewTransport = func(id uint64, handler transport.Handler) server.PeerTransport {
			return h.Transport(id, handler)
		}
	}
}

// WithTLS makes the nodes serve TLS with leaf (a certificate ca signed)
// and dial each other with it; with clientAuth they require clients and
// peers to present a certificate ca signed.
func WithTLS(ca *tlstest.CA, leaf *tlstest.Leaf, clientAuth bool) Option {
	return func(c *server.Config) {
		c.TLS = ca.ServerConfig(leaf, clientAuth)
		c.PeerTLS = ca.ClientConfig(leaf)
	}
}

// WithConfig applies any change to the config.
func WithConfig(f func(*server.Config)) Option { return f }

// StartNode starts a one-node cluster "test" with topic "default" and stops
// it when the test ends.
func StartNode(t testing.TB, opts ...Option) *Node {
	t.Helper()
	cfg := server.Config{
		ListenAddr:   "127.0.0.1:0",
		DataDir:      t.TempDir(),
		ClusterID:    "test",
		NodeName:     "n1",
		DefaultTopic: "default",
		TickInterval: 20 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	n := &Node{t: t, Cfg: cfg}
	n.start()
	t.Cleanup(func() {
		if n.Server != nil {
			_ = n.Server.Stop()
		}
	})
	return n
}

func (n *Node) start() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := server.Start(ctx, n.Cfg)
	require.NoError(n.t, err)
	n.Server = s
	n.Cfg.ListenAddr = s.Addr() // keep the port across restarts
	n.Cfg.Listener = nil
}

// Stop stops the node; Start starts it again on the same address and data.
func (n *Node) Stop() {
	n.t.Helper()
	if n.Server != nil {
		require.NoError(n.t, n.Server.Stop())
		n.Server = nil
	}
}

// Start starts a stopped node again.
func (n *Node) Start() {
	n.t.Helper()
	n.start()
}

// RaftID is the node's raft ID, from its member list (0 before it knows).
func (n *Node) RaftID() uint64 {
	for _, m := range n.Registry().Members() {
		if m.Name == n.Cfg.NodeName {
			return m.ID
		}
	}
	return 0
}

// Restart stops the node cleanly and starts it again on the same data
// directory and address.
func (n *Node) Restart() {
	n.t.Helper()
	require.NoError(n.t, n.Server.Stop())
	n.start()
}

// Cluster is a set of in-process nodes forming one cluster over loopback
// gRPC.
type Cluster struct {
	t     testing.TB
	Nodes []*Node
}

// NewCluster starts n nodes as one cluster "test" with topic "default" and
// stops them when the test ends. It returns once every node serves; the
// default topic appears once the cluster elects leaders (see WaitTopic).
func NewCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	lis := make([]net.Listener, n)
	var members []string
	for i := range lis {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		lis[i] = l
		members = append(members, fmt.Sprintf("n%d=%s", i+1, l.Addr()))
	}
	c := &Cluster{t: t}
	for i := range lis {
		cfg := server.Config{
			Listener:       lis[i],
			ListenAddr:     lis[i].Addr().String(),
			DataDir:        t.TempDir(),
			ClusterID:      "test",
			NodeName:       fmt.Sprintf("n%d", i+1),
			InitialCluster: strings.Join(members, ","),
			DefaultTopic:   "default",
			TickInterval:   20 * time.Millisecond,
			Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		for _, o := range opts {
			o(&cfg)
		}
		node := &Node{t: t, Cfg: cfg}
		node.start()
		t.Cleanup(func() {
			if node.Server != nil {
				_ = node.Server.Stop()
			}
		})
		c.Nodes = append(c.Nodes, node)
	}
	return c
}

// Addrs lists the nodes' addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Cfg.ListenAddr
	}
	return out
}

// WaitTopic waits until every running node serves the topic and knows its
// leader.
func (c *Cluster) WaitTopic(name string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		if n.Server == nil {
			continue
		}
		for {
			tp, err := n.Registry().Get(name)
			if err == nil {
				require.NoError(c.t, tp.Group.WaitLeader(ctx))
				// The API serves topics once the node has caught up
				// with the cluster's metadata (each try is bounded by
				// the metadata wait, a slow election may take more).
				for n.Registry().CaughtUp(ctx) != nil {
					select {
					case <-ctx.Done():
						c.t.Fatalf("node %s never caught up with the metadata", n.Cfg.NodeName)
					case <-time.After(5 * time.Millisecond): // a pause between tries
					}
				}
				break
			}
			select {
			case <-ctx.Done():
				c.t.Fatalf("node %s: topic %q never appeared", n.Cfg.NodeName, name)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}
