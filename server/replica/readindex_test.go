package replica

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/transport"
)

// TestReadIndexSingleNode: a group of one answers at once.
func TestReadIndexSingleNode(t *testing.T) {
	e := newEngine(t)
	g := openGroup(t, e, t.TempDir(), "t")
	_, err := g.Propose(ctx10(t), [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	want := g.Applied()
	require.NoError(t, g.ReadIndex(ctx10(t)))
	assert.GreaterOrEqual(t, g.Applied(), want)
}

// TestReadIndexFollowerSeesCommitted: after ReadIndex on a follower, the
// follower has applied what the leader committed before the call, though
// the leader holds back telling it (a minute of commit-notice delay); the
// quiesced group is woken for it without an election, and quiesces again.
func TestReadIndexFollowerSeesCommitted(t *testing.T) {
	c, lead := openRestartCluster(t, Config{CommitNoticeDelay: time.Minute})
	f := lead%3 + 1
	term := c.groups[lead].Term()
	for i := range 5 {
		quiesced := c.trs[lead].quiesce.Load()
		_, err := c.groups[lead].Propose(ctx10(t), [][]byte{[]byte("m")}, true)
		require.NoError(t, err)
		want := c.groups[lead].Applied()
		require.NoError(t, c.groups[f].ReadIndex(ctx10(t)), "round %d", i)
		require.GreaterOrEqual(t, c.groups[f].Applied(), want, "round %d: the follower applied what was committed before its read", i)
		require.Eventually(t, func() bool { return c.trs[lead].quiesce.Load() > quiesced }, 10*time.Second, time.Millisecond,
			"round %d: the leader quiesces again", i)
	}
	assert.Equal(t, term, c.groups[lead].Term(), "no election")
	assert.Equal(t, lead, c.groups[f].Leader())
}

// TestReadIndexAfterRestart: a follower restarted while its group is
// quiesced knows no leader at first, and raft drops a read request then;
// the round is asked again until the leader answers.
func TestReadIndexAfterRestart(t *testing.T) {
	c, lead := openRestartCluster(t, Config{})
	f := lead%3 + 1
	c.restart(t, f, Config{ElectionTicks: 60_000})
	want := c.groups[lead].Applied()
	require.NoError(t, c.groups[f].ReadIndex(ctx10(t)))
	assert.GreaterOrEqual(t, c.groups[f].Applied(), want)
}

// TestReadIndexWithoutQuorum: with both other nodes gone, a read cannot
// be confirmed: it ends with its context.
func TestReadIndexWithoutQuorum(t *testing.T) {
	c, lead := openRestartCluster(t, Config{})
	for _, id := range restartIDs {
		if id != lead {
			c.hubs[id].Stop()
			c.engines[id].Stop()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, c.groups[lead].ReadIndex(ctx), context.DeadlineExceeded)
}

// TestReadIndexSlowerThanItsReask: a round whose answer takes longer than
// readRoundTicks to come back (a slow link from the leader) still
// completes. Each re-ask used to replace the request, so every answer
// arrived for a request already replaced, and the read never returned.
// (The delay is several rounds: a quiesced engine ticks only every ping
// interval, so a round is asked again later than readRoundTicks.)
func TestReadIndexSlowerThanItsReask(t *testing.T) {
	c, lead := openRestartCluster(t, Config{})
	f := lead%3 + 1
	tick := c.engines[f].cfg.TickInterval
	c.hub.SetDelay(lead, f, time.Duration(4*readRoundTicks)*tick)
	want := c.groups[lead].Applied()
	require.NoError(t, c.groups[f].ReadIndex(ctx10(t)))
	assert.GreaterOrEqual(t, c.groups[f].Applied(), want)
}

// TestNoSnapshotWhileApplying: raft may ask a command group for its
// snapshot while the group applies a batch (a configuration change makes
// the leader send to its peers). The group's state is then ahead of its
// applied index, so raft is told to ask again later.
func TestNoSnapshotWhileApplying(t *testing.T) {
	g := &Group{}
	calls := 0
	s := snapshotStorage{g: g, snap: func() (*raftpb.Snapshot, error) { calls++; return &raftpb.Snapshot{}, nil }}
	g.applying = true
	_, err := s.Snapshot()
	require.ErrorIs(t, err, raft.ErrSnapshotTemporarilyUnavailable)
	assert.Zero(t, calls)
	g.applying = false
	_, err = s.Snapshot()
	require.NoError(t, err)
	assert.Equal(t, 1, calls)
}

// TestReadIndexAskedWhenALeaderIsKnown: a read round asked while no
// leader is known (raft drops the request) is asked again as soon as one
// is, not readRoundTicks later: a quiesced group counts no ticks, and a
// node just started waited for its first metadata barrier until its
// caller gave up. Ticks of an hour here: only a leader's arrival can have
// the round asked again.
func TestReadIndexAskedWhenALeaderIsKnown(t *testing.T) {
	hub := transport.NewHub()
	ids := []uint64{1, 2, 3}
	root := t.TempDir()
	open := func(id uint64) *Group {
		e := startHubEngine(t, hub, id, ids, Config{TickInterval: time.Hour}, nil)
		l, err := commitlog.Open(filepath.Join(root, fmt.Sprint("n", id)), commitlog.Options{})
		require.NoError(t, err)
		g, err := e.AddGroup(GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}, Campaign: id == 1})
		require.NoError(t, err)
		return g
	}
	open(3)
	g2 := open(2)
	read := make(chan error, 1)
	go func() { read <- g2.ReadIndex(ctx10(t)) }()
	require.Eventually(t, func() bool {
		var asked bool
		err := g2.do(ctx10(t), func() error { asked = g2.reads.inFlight != nil; return nil })
		return err == nil && asked
	}, 10*time.Second, time.Millisecond, "the round is asked while no leader is known")
	require.Zero(t, g2.Leader())
	open(1) // campaigns at once
	require.NoError(t, <-read)
	assert.Equal(t, uint64(1), g2.Leader())
}
