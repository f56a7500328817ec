package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/syncbuf"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/topic"
	"github.com/forestbus/forestbus/server/transport"
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

// TestWarnsOfAMovedAddress: a node restarted on another address than the
// one the cluster knows it at says so (it started in silence, and peers
// and clients looked for it at the old address).
func TestWarnsOfAMovedAddress(t *testing.T) {
	var logs syncbuf.Buffer
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

// TestNoMovedAddressWarningForAHostName: a node that joined at a host name
// (fbnode sends its -listen, localhost:P) and listens at its IP has not
// moved: no warning at a restart, and it advertises the name the cluster
// knows it by.
func TestNoMovedAddressWarningForAHostName(t *testing.T) {
	n1 := servertest.StartNode(t)
	lis, err := net.Listen("tcp", "localhost:0")
	require.NoError(t, err)
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	listen := "localhost:" + port
	resp, err := dial(t, n1).admin.AddNode(ctxT(t), &forestbusv1.AddNodeRequest{Name: "n2", Address: listen})
	require.NoError(t, err)
	j := &server.Join{ID: resp.GetNode().GetId()}
	for _, m := range resp.GetNodes() {
		j.Members = append(j.Members, server.JoinMember{ID: m.GetId(), Name: m.GetName(), Address: m.GetAddress()})
	}
	var logs syncbuf.Buffer
	cfg := server.Config{
		Listener: lis, ListenAddr: listen, DataDir: t.TempDir(), ClusterID: "test", NodeName: "n2",
		TickInterval: 20 * time.Millisecond, Join: j, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	s, err := server.Start(ctxT(t), cfg)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(s.Registry().Members()) == 2 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, s.Stop())
	cfg.Listener, cfg.Join = nil, nil // fbnode restarted with the same flags
	s, err = server.Start(ctxT(t), cfg)
	require.NoError(t, err)
	defer s.Stop()
	assert.NotContains(t, logs.String(), "another address")
	assert.Contains(t, s.ConnectionString(), "@"+listen)
}

// TestAddNodeRetryOfAFreeFormName: a member named before the name rule
// (-name takes any name) still gets the answer of a retried AddNode.
func TestAddNodeRetryOfAFreeFormName(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithConfig(func(c *server.Config) { c.NodeName = "db 1" }))
	require.Eventually(t, func() bool { return len(n.Registry().Members()) == 1 }, 10*time.Second, 5*time.Millisecond)
	resp, err := dial(t, n).admin.AddNode(ctxT(t), &forestbusv1.AddNodeRequest{Name: "db 1", Address: n.Addr()})
	require.NoError(t, err, "the existing member")
	assert.Equal(t, "db 1", resp.GetNode().GetName())
}

// TestClusterDetailsNameLearners: a member added and not yet caught up
// (here never started) is a learner in AddNode's answer and in
// GetClusterDetails; the voters are not.
func TestClusterDetailsNameLearners(t *testing.T) {
	n := servertest.StartNode(t)
	c := dial(t, n)
	added, err := c.admin.AddNode(ctxT(t), &forestbusv1.AddNodeRequest{Name: "n9", Address: "127.0.0.1:1"})
	require.NoError(t, err)
	// AddNode's answer says so too (it never set learner).
	assert.True(t, added.GetNode().GetLearner(), "the added node")
	inAnswer := map[string]bool{}
	for _, nd := range added.GetNodes() {
		inAnswer[nd.GetName()] = nd.GetLearner()
	}
	assert.Equal(t, map[string]bool{"n1": false, "n9": true}, inAnswer, "AddNode's member list")
	d, err := c.bus.GetClusterDetails(ctxT(t), &forestbusv1.GetClusterDetailsRequest{})
	require.NoError(t, err)
	learner := map[string]bool{}
	for _, nd := range d.GetNodes() {
		learner[nd.GetName()] = nd.GetLearner()
	}
	assert.Equal(t, map[string]bool{"n1": false, "n9": true}, learner)
}

// topicFilter drops the raft messages of the groups named prefix* to node
// `to` while block is set: a member that stays a learner of those topics.
type topicFilter struct {
	*transport.HubTransport
	prefix string
	to     uint64
	block  *atomic.Bool
}

func (f *topicFilter) Send(group string, msgs []*raftpb.Message) {
	if f.block.Load() && strings.HasPrefix(group, f.prefix) {
		msgs = slices.DeleteFunc(slices.Clone(msgs), func(m *raftpb.Message) bool { return m.GetTo() == f.to })
	}
	f.HubTransport.Send(group, msgs)
}

// TestRemoveNodeKeepsTopicQuorums: RemoveNode refuses a removal that
// would leave a topic group without a live majority, not only the
// metadata group. A member added to the cluster votes in the metadata
// group at once and is a learner of a topic until it holds the topic's
// log: removing a live voter while another was down passed the metadata
// group's check, and the topic was left with one live voter of two, no
// leader, and no commit to promote its learner with (a review found it).
// Once the learner votes, the removal goes through and the topic writes.
func TestRemoveNodeKeepsTopicQuorums(t *testing.T) {
	hub := transport.NewHub()
	var block atomic.Bool
	filtered := func(id uint64, h transport.Handler) server.PeerTransport {
		return &topicFilter{HubTransport: hub.Transport(id, h), prefix: "big.", to: 4, block: &block}
	}
	c := servertest.NewCluster(t, 3, servertest.WithConfig(func(cfg *server.Config) { cfg.NewTransport = filtered }))
	c.WaitTopic("default")
	ctx := ctxT(t)
	admin := dial(t, c.Nodes[0]).admin
	_, err := admin.CreateTopic(ctx, &forestbusv1.CreateTopicRequest{Name: "big"})
	require.NoError(t, err)
	c.WaitTopic("big")
	send(t, dial(t, c.Nodes[0]), "big", batch("a", 3), true)

	block.Store(true)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	resp, err := admin.AddNode(ctx, &forestbusv1.AddNodeRequest{Name: "n4", Address: lis.Addr().String()})
	require.NoError(t, err)
	j := &server.Join{ID: resp.GetNode().GetId()}
	for _, m := range resp.GetNodes() {
		j.Members = append(j.Members, server.JoinMember{ID: m.GetId(), Name: m.GetName(), Address: m.GetAddress()})
	}
	n4, err := server.Start(ctx, server.Config{
		Listener: lis, ListenAddr: lis.Addr().String(), DataDir: t.TempDir(), ClusterID: "test", NodeName: "n4",
		TickInterval: 20 * time.Millisecond, Join: j, NewTransport: filtered,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	defer n4.Stop()
	reg := c.Nodes[0].Registry()
	big, err := reg.Get("big")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		def, err := reg.Get("default")
		return err == nil && slices.Contains(reg.Meta().ConfState().GetVoters(), 4) &&
			slices.Contains(def.Group.ConfState().GetVoters(), 4) && slices.Contains(big.Group.ConfState().GetLearners(), 4)
	}, 20*time.Second, 10*time.Millisecond, "n4 votes in the metadata group and in default, and learns big")

	c.Nodes[1].Stop() // n2 down
	for _, reg := range []*topic.Registry{c.Nodes[0].Registry(), c.Nodes[2].Registry(), n4.Registry()} {
		require.Eventually(t, func() bool { return !reg.MemberLive("n2") }, 20*time.Second, 10*time.Millisecond)
	}
	err = removeNode(t, admin, "n3")
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	// Judged by the metadata leader: "with 2 voters, 1 of them live", or,
	// should n4 lead the metadata group, its copy of big is behind.
	assert.Contains(t, status.Convert(err).Message(), `topic "big"`)
	assert.Contains(t, big.Group.ConfState().GetVoters(), uint64(3), "n3 still votes in big")
	// Judged by n4, which still learns big (its copy of big's
	// configuration is behind), the removal is refused too.
	require.NoError(t, n4.Registry().Meta().RequestLeadership(ctx))
	require.Eventually(t, func() bool { return reg.Meta().Leader() == 4 && n4.Registry().Meta().Leader() == 4 },
		20*time.Second, 10*time.Millisecond, "n4 leads the metadata group")
	err = removeNode(t, admin, "n3")
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), `this node does not vote in topic "big" yet`)
	// Removing n2, which is down, is safe whatever big's configuration:
	// n4 lets it through though it still learns big (a review found it
	// refused, for as long as n4 learned any topic).
	require.NoError(t, removeNode(t, admin, "n2"))
	require.Eventually(t, func() bool { return !slices.Contains(big.Group.ConfState().GetVoters(), 2) },
		20*time.Second, 10*time.Millisecond, "n2 leaves big")

	block.Store(false) // n4 catches up on big and is promoted
	// The metadata leader judges by its own view of big: wait for every
	// live node's.
	require.Eventually(t, func() bool {
		for _, reg := range []*topic.Registry{c.Nodes[0].Registry(), c.Nodes[2].Registry(), n4.Registry()} {
			tp, err := reg.Get("big")
			if err != nil || !slices.Contains(tp.Group.ConfState().GetVoters(), 4) {
				return false
			}
		}
		return true
	}, 20*time.Second, 10*time.Millisecond, "n4 votes in big")
	require.NoError(t, removeNode(t, admin, "n3"))
	require.Eventually(t, func() bool { return !slices.Contains(big.Group.ConfState().GetVoters(), 3) },
		20*time.Second, 10*time.Millisecond, "n3 leaves big")
	sendWithin := func() error {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := dial(t, c.Nodes[0]).bus.SendMessages(sctx, &forestbusv1.SendMessagesRequest{Topic: "big", Messages: batch("b", 1), WaitForCommit: true})
		return err
	}
	require.Eventually(t, func() bool { return sendWithin() == nil }, 20*time.Second, 100*time.Millisecond, "big commits with n1 and n4")
}

// TestRemovedPeerIsForgotten: once no group on a node counts a removed
// node, the node's transport drops it: each member kept a sending
// goroutine and a connection to every node ever removed, for the life of
// its process (a review found it).
func TestRemovedPeerIsForgotten(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	senders := func() int {
		buf := make([]byte, 1<<22)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "transport.(*peer).run(")
	}
	require.Eventually(t, func() bool { return senders() == 6 }, 20*time.Second, 10*time.Millisecond,
		"each of 3 nodes sends to the other two")
	require.NoError(t, removeNode(t, dial(t, c.Nodes[0]).admin, "n3"))
	c.Nodes[2].Stop() // its own senders go with it
	require.Eventually(t, func() bool { return senders() == 2 }, 20*time.Second, 50*time.Millisecond,
		"n1 and n2 keep one sender each, to each other")
}
