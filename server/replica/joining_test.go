package replica

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/transport"
)

// TestJoiningGroupSendsReadersElsewhere: a node that joins a group starts
// it empty, and until the leader's first message reaches it, its log says
// first ID 1, commit 0, whatever the topic holds (a review saw a joined
// node answer "empty, next ID 1" for a topic whose IDs started at 941).
// Reads there answer ErrNoLeader until then, and the topic's messages
// once the leader has sent them.
func TestJoiningGroupSendsReadersElsewhere(t *testing.T) {
	hub := transport.NewHub()
	ids := []uint64{1, 2}
	cfg := Config{TickInterval: 10 * time.Millisecond}
	e1 := startHubEngine(t, hub, 1, ids, cfg, nil)
	e2 := startHubEngine(t, hub, 2, ids, cfg, nil)

	l1, err := commitlog.Open(t.TempDir(), commitlog.Options{SegmentBytes: 4096})
	require.NoError(t, err)
	g1, err := e1.AddGroup(GroupConfig{Name: "t", Log: l1, Peers: []raft.Peer{{ID: 1}}})
	require.NoError(t, err)
	require.NoError(t, g1.WaitLeader(ctx10(t)))
	_, err = g1.Propose(ctx10(t), [][]byte{[]byte("a"), []byte("b")}, true)
	require.NoError(t, err)
	require.False(t, g1.Joining(), "a group bootstrapped with its voters")

	hub.SetDrop(1, 2, 1) // the leader's messages do not reach node 2 yet
	cc := &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeType_ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(2))}}}
	require.NoError(t, g1.ProposeConfChange(ctx10(t), cc))
	l2, err := commitlog.Open(t.TempDir(), commitlog.Options{SegmentBytes: 4096})
	require.NoError(t, err)
	g2, err := e2.AddGroup(GroupConfig{Name: "t", Log: l2}) // joining: no peers
	require.NoError(t, err)

	assert.True(t, g2.Joining())
	_, err = g2.Read(ctx10(t), 1, 10, 1<<20, 0)
	require.ErrorIs(t, err, ErrNoLeader, "an empty answer would say the topic is empty")
	_, err = g2.Read(ctx10(t), 1, 10, 1<<20, time.Minute)
	require.ErrorIs(t, err, ErrNoLeader, "a long poll would wait for a log that is not here")

	hub.SetDrop(1, 2, 0)
	require.Eventually(t, func() bool { return !g2.Joining() && g2.CommitID() == 2 }, 10*time.Second, 5*time.Millisecond)
	res, err := g2.Read(ctx10(t), 1, 10, 1<<20, 0)
	require.NoError(t, err)
	assert.Equal(t, [][]byte{[]byte("a"), []byte("b")}, res.Messages)
}
