package server_test

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/transport"
)

// TestJoinedNodeSendsReadersElsewhere: a node that joins learns of the
// topics from the metadata group, and starts each topic's group empty
// until that topic's leader sends it the log. Meanwhile it answered
// GetTopicDetails first 1, last 0, commit 0 and GetMessages "empty, next ID
// 1", whatever the topic held (a review saw it for a topic trimmed to
// 941-1000). It answers UNAVAILABLE/NO_LEADER until the log arrives. Here
// the topic's leader, not the metadata leader, cannot reach the new node.
func TestJoinedNodeSendsReadersElsewhere(t *testing.T) {
	hub := transport.NewHub()
	c := servertest.NewCluster(t, 3, servertest.WithHub(hub))
	c.WaitTopic("default")
	ctx := ctxT(t)
	lead := func(id uint64) *servertest.Node {
		for _, n := range c.Nodes {
			if n.RaftID() == id {
				return n
			}
		}
		return nil
	}
	tp, err := c.Nodes[0].Registry().Get("default")
	require.NoError(t, err)
	meta := c.Nodes[0].Registry().Meta().Leader()
	// The topic's leader must be another node. TransferLeadership does
	// nothing while no follower is replicating and recently active: ask
	// until it moves.
	require.Eventually(t, func() bool {
		l := tp.Group.Leader()
		if l != 0 && l != meta {
			return true
		}
		if lt, err := lead(meta).Registry().Get("default"); err == nil && l == meta {
			_ = lt.Group.TransferLeadership(ctx)
		}
		return false
	}, 20*time.Second, 20*time.Millisecond)
	topicLeader := lead(tp.Group.Leader())
	_, err = dial(t, topicLeader).bus.SendMessages(ctx, &forestbusv1.SendMessagesRequest{Topic: "default", Messages: [][]byte{[]byte("a"), []byte("b")}, WaitForCommit: true})
	require.NoError(t, err)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	resp, err := dial(t, lead(meta)).admin.AddNode(ctx, &forestbusv1.AddNodeRequest{Name: "n4", Address: lis.Addr().String()})
	require.NoError(t, err)
	hub.SetDrop(topicLeader.RaftID(), resp.GetNode().GetId(), 1)
	j := &server.Join{ID: resp.GetNode().GetId()}
	for _, m := range resp.GetNodes() {
		j.Members = append(j.Members, server.JoinMember{ID: m.GetId(), Name: m.GetName(), Address: m.GetAddress()})
	}
	s, err := server.Start(ctx, server.Config{
		Listener: lis, ListenAddr: lis.Addr().String(), DataDir: t.TempDir(), ClusterID: "test", NodeName: "n4",
		DefaultTopic: "default", TickInterval: 20 * time.Millisecond, Join: j,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		NewTransport: func(id uint64, handler transport.Handler) server.PeerTransport {
			return hub.Transport(id, handler)
		},
	})
	require.NoError(t, err)
	defer s.Stop()
	require.Eventually(t, func() bool { _, err := s.Registry().Get("default"); return err == nil }, 20*time.Second, 5*time.Millisecond, "n4 learns of the topic")

	cc := dialAddr(t, s.Addr())
	noLeader := func(err error) {
		t.Helper()
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		var reason string
		for _, d := range status.Convert(err).Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				reason = info.GetReason()
			}
		}
		assert.Equal(t, "NO_LEADER", reason)
	}
	_, err = cc.bus.GetTopicDetails(ctx, &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
	noLeader(err)
	_, err = cc.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 10})
	noLeader(err)

	hub.SetDrop(topicLeader.RaftID(), resp.GetNode().GetId(), 0)
	require.Eventually(t, func() bool {
		d, err := cc.bus.GetTopicDetails(ctx, &forestbusv1.GetTopicDetailsRequest{Topic: "default"})
		return err == nil && d.GetCommitId() == 2
	}, 20*time.Second, 10*time.Millisecond, "n4 has the log")
	m, err := cc.bus.GetMessages(ctx, &forestbusv1.GetMessagesRequest{Topic: "default", Id: 1, Quantity: 10})
	require.NoError(t, err)
	assert.Equal(t, [][]byte{[]byte("a"), []byte("b")}, m.GetMessages())
}
