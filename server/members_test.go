package server_test

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestAddNodeChecksNameAndAddress: AddNode refuses a name outside the
// topic name rules and an address that is not host:port as invalid
// members (an address was reported as "invalid name"), and an address
// another member has (it was accepted: peers then asked the old member
// for the new one's streams, and cluster status showed the new one up).
func TestAddNodeChecksNameAndAddress(t *testing.T) {
	n := servertest.StartNode(t)
	admin := dial(t, n).admin
	for _, tc := range []struct {
		name, addr string
		code       codes.Code
		text       string
	}{
		{"bad name", "127.0.0.1:4001", codes.InvalidArgument, "invalid member: node name"},
		{"", "127.0.0.1:4001", codes.InvalidArgument, "invalid member: node name"},
		{"n2", "badaddr", codes.InvalidArgument, `invalid member: node address "badaddr"`},
		{"n2", ":4001", codes.InvalidArgument, "invalid member: node address"},
		{"n2", n.Addr(), codes.AlreadyExists, "is the address of node \"" + n.Cfg.NodeName + "\""},
	} {
		_, err := admin.AddNode(ctxT(t), &forestbusv1.AddNodeRequest{Name: tc.name, Address: tc.addr})
		require.Error(t, err, "%q at %q", tc.name, tc.addr)
		assert.Equal(t, tc.code, status.Code(err), "%q at %q: %v", tc.name, tc.addr, err)
		assert.Contains(t, status.Convert(err).Message(), tc.text)
	}
	d, err := dial(t, n).bus.GetClusterDetails(ctxT(t), &forestbusv1.GetClusterDetailsRequest{})
	require.NoError(t, err)
	assert.Len(t, d.GetNodes(), 1, "no member was added")
}

// lockedBuffer is a log sink safe for the node's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWarnsOfAMovedAddress: a node restarted on another address than the
// one the cluster knows it at says so (it started in silence, and peers
// and clients looked for it at the old address).
func TestWarnsOfAMovedAddress(t *testing.T) {
	var logs lockedBuffer
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}))
	require.Eventually(t, func() bool { return len(n.Registry().Members()) == 1 }, 10*time.Second, 5*time.Millisecond)
	n.Stop()
	assert.NotContains(t, logs.String(), "another address")
	old := n.Cfg.ListenAddr
	n.Cfg.ListenAddr = "127.0.0.1:0"
	n.Start()
	assert.Contains(t, logs.String(), "the cluster knows this node at another address than it now advertises")
	assert.Contains(t, logs.String(), "member_address="+old)
}
