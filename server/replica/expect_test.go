package replica

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/transport"
)

// TestExpectedGroupGetsEarlyVotes: a group whose first node campaigns
// before its peer has opened the group is elected at once when the peer
// expected it (a topic's start runs off the engine goroutine, and its
// nodes open the group moments apart): the votes that reach the peer
// before its group opens are kept and delivered. Dropped, they cost an
// election timeout (5 s here; 1 to 2 s in a node's defaults).
func TestExpectedGroupGetsEarlyVotes(t *testing.T) {
	hub := transport.NewHub()
	ids := []uint64{1, 2}
	cfg := Config{TickInterval: 10 * time.Millisecond, ElectionTicks: 500}
	e1 := startHubEngine(t, hub, 1, ids, cfg, nil)
	e2 := startHubEngine(t, hub, 2, ids, cfg, nil)
	peers := []raft.Peer{{ID: 1}, {ID: 2}}

	e2.Expect("g")
	l1, err := commitlog.Open(t.TempDir(), commitlog.Options{NoSync: true})
	require.NoError(t, err)
	g1, err := e1.AddGroup(GroupConfig{Name: "g", Log: l1, Peers: peers, Campaign: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		e2.mu.Lock()
		defer e2.mu.Unlock()
		return len(e2.expected["g"]) > 0
	}, 10*time.Second, time.Millisecond, "node 1's campaign never reached node 2")

	l2, err := commitlog.Open(t.TempDir(), commitlog.Options{NoSync: true})
	require.NoError(t, err)
	_, err = e2.AddGroup(GroupConfig{Name: "g", Log: l2, Peers: peers})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	require.NoError(t, g1.WaitLeader(ctx), "node 1's votes, sent before node 2 opened the group, were lost")
	e2.mu.Lock()
	_, left := e2.expected["g"]
	e2.mu.Unlock()
	require.False(t, left, "AddGroup took the kept messages")
}

// TestExpectKeepsOnlyWhatIsAnnounced: messages for unknown groups are
// dropped unless the group is expected; an expected group keeps the newest
// maxExpectedMsgs, Forget drops them, and a stopped engine expects
// nothing.
func TestExpectKeepsOnlyWhatIsAnnounced(t *testing.T) {
	e := newEngine(t)
	m := &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: new(uint64(2)), To: new(uint64(1))}
	kept := func(name string) (int, bool) {
		e.mu.Lock()
		defer e.mu.Unlock()
		buf, ok := e.expected[name]
		return len(buf), ok
	}
	e.Step("unknown", m)
	_, ok := kept("unknown")
	require.False(t, ok)

	e.Expect("x")
	for i := range maxExpectedMsgs + 10 {
		e.Step("x", &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: new(uint64(2)), To: new(uint64(1)), Index: new(uint64(i))})
	}
	n, ok := kept("x")
	require.True(t, ok)
	require.Equal(t, maxExpectedMsgs, n)
	e.mu.Lock()
	first, last := e.expected["x"][0].GetIndex(), e.expected["x"][n-1].GetIndex()
	e.mu.Unlock()
	require.EqualValues(t, 10, first, "the oldest are dropped")
	require.EqualValues(t, maxExpectedMsgs+9, last)
	e.Forget("x")
	_, ok = kept("x")
	require.False(t, ok)
	e.Step("x", m)
	_, ok = kept("x")
	require.False(t, ok, "forgotten")

	e.Stop()
	e.Expect("y")
	_, ok = kept("y")
	require.False(t, ok, "a stopped engine")
}
