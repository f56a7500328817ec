// Package servertest starts real Forest Bus nodes inside a test process, on
// 127.0.0.1 with a free port and a temporary data directory.
package servertest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/server"
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

// WithSegmentBytes sets the default segment size.
func WithSegmentBytes(n int64) Option { return func(c *server.Config) { c.SegmentBytes = n } }

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
	t.Cleanup(func() { _ = n.Server.Stop() })
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
}

// Restart stops the node cleanly and starts it again on the same data
// directory and address.
func (n *Node) Restart() {
	n.t.Helper()
	require.NoError(n.t, n.Server.Stop())
	n.start()
}
