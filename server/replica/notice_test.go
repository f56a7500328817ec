package replica

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/transport"
)

// countingTransport counts what a node sends of group "g" (the liveness
// pings are not counted): all messages, the appends without entries
// (commit notices) and the quiesce heartbeats. It passes every message on.
type countingTransport struct {
	Transport
	all, notices, quiesce atomic.Int64
}

func (c *countingTransport) Send(group string, msgs []*raftpb.Message) {
	if group == "g" {
		for _, m := range msgs {
			c.all.Add(1)
			switch {
			case m.GetType() == raftpb.MessageType_MsgApp && len(m.GetEntries()) == 0:
				c.notices.Add(1)
			case isQuiesceMsg(m):
				c.quiesce.Add(1)
			}
		}
	}
	c.Transport.Send(group, msgs)
}

// noticeCluster is three engines on a Hub with one group "g", each
// engine's transport counted. Index 0 is the leader: node 1 campaigns at
// once, but another node's election timer may fire first (a loaded CI
// machine), so the arrays are ordered by whoever won.
type noticeCluster struct {
	hub     *transport.Hub
	groups  [3]*Group
	trs     [3]*countingTransport
	applied [3]*atomic.Int64 // commands applied per node (command groups)
}

// openNoticeCluster starts the cluster; with commands, "g" is a command
// group (an Apply hook, like the metadata group's) that counts the
// commands each node applies in applied.
func openNoticeCluster(t *testing.T, tick, delay time.Duration, commands bool) *noticeCluster {
	t.Helper()
	hub := transport.NewHub()
	root := t.TempDir()
	c := &noticeCluster{hub: hub}
	ids := []uint64{1, 2, 3}
	// Node 1, which campaigns at once, starts last: a message to a node
	// not on the hub yet, or to an engine without the group yet, is
	// dropped, and with the hour-long ticks of some tests nothing sends it
	// again (no election timeout, no heartbeat). Started first, node 1's
	// pre-votes sometimes beat nodes 2 and 3 to it under load, and the
	// group never elected a leader.
	for k := len(ids) - 1; k >= 0; k-- {
		id := ids[k]
		c.applied[k] = new(atomic.Int64)
		e := startHubEngine(t, hub, id, ids, Config{TickInterval: tick, CommitNoticeDelay: delay}, func(tr Transport) Transport {
			c.trs[k] = &countingTransport{Transport: tr}
			return c.trs[k]
		})
		l, err := commitlog.Open(filepath.Join(root, fmt.Sprintf("n%d", id)), commitlog.Options{})
		require.NoError(t, err)
		gc := GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}, Campaign: id == 1}
		if commands {
			n := c.applied[k] // not c.applied[k] at the call: the array is reordered
			gc.Apply = func(uint64, []byte) error { n.Add(1); return nil }
		}
		g, err := e.AddGroup(gc)
		require.NoError(t, err)
		c.groups[k] = g
	}
	var lead uint64
	require.Eventually(t, func() bool {
		lead = c.groups[0].Leader()
		return lead != 0 && c.groups[1].Leader() == lead && c.groups[2].Leader() == lead
	}, 10*time.Second, time.Millisecond, "the three nodes agree on a leader")
	k := int(lead - 1)
	c.groups[0], c.groups[k] = c.groups[k], c.groups[0]
	c.trs[0], c.trs[k] = c.trs[k], c.trs[0]
	c.applied[0], c.applied[k] = c.applied[k], c.applied[0]
	return c
}

// sendSequentially proposes n one-message batches on the leader, each once
// the previous one is committed (as W2 does).
func (c *noticeCluster) sendSequentially(t *testing.T, n int) uint64 {
	t.Helper()
	var last uint64
	for i := range n {
		res, err := c.groups[0].Propose(ctx10(t), [][]byte{fmt.Appendf(nil, "m%d", i)}, true)
		require.NoError(t, err)
		last = res.FirstID
	}
	return last
}

// TestCommitNoticesRideOnTheNextAppend: under a stream of proposals the
// leader holds back the appends that only carry a new commit index, and the
// next append with entries carries it instead; sent at once, every commit
// costs one per follower.
func TestCommitNoticesRideOnTheNextAppend(t *testing.T) {
	const n = 40
	for _, tc := range []struct {
		name  string
		delay time.Duration
	}{{"held", time.Hour}, {"at once", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			c := openNoticeCluster(t, 20*time.Millisecond, tc.delay, false)
			c.sendSequentially(t, 1) // the first commit of the term, settled
			before := c.trs[0].notices.Load()
			last := c.sendSequentially(t, n)
			sent := c.trs[0].notices.Load() - before
			if tc.delay > 0 {
				// None is sent: the next proposal's append replaces each,
				// and the hour never ends; the last one too is dropped.
				assert.Zero(t, sent)
			} else {
				assert.GreaterOrEqual(t, sent, int64(n), "a notice per commit and follower")
			}
			// The followers learn the last commit all the same: from the
			// heartbeats of the next ticks.
			for _, g := range c.groups[1:] {
				require.Eventually(t, func() bool { return g.CommitID() == last }, 10*time.Second, time.Millisecond)
			}
		})
	}
}

// TestHeldCommitNoticeReachesIdleFollowers: with no tick (so no heartbeat)
// for an hour and nothing proposed after it, a held commit notice still
// reaches the followers once the delay is over, round after round (the
// timer is armed again for each).
func TestHeldCommitNoticeReachesIdleFollowers(t *testing.T) {
	c := openNoticeCluster(t, time.Hour, 20*time.Millisecond, false)
	for round := range 3 {
		last := c.sendSequentially(t, 1)
		for _, g := range c.groups[1:] {
			require.Eventually(t, func() bool { return g.CommitID() == last }, 10*time.Second, time.Millisecond, "round %d", round)
		}
	}
	assert.Positive(t, c.trs[0].notices.Load())
}

// TestCommitNoticeDroppedByTheNextAppend: proposals 5 ms apart, a delay of
// 100 ms: each notice is replaced by the next proposal's append before its
// timer fires, so only the last commit's notices (one per follower) go out.
func TestCommitNoticeDroppedByTheNextAppend(t *testing.T) {
	c := openNoticeCluster(t, 50*time.Millisecond, 100*time.Millisecond, false)
	last := c.sendSequentially(t, 1)
	for _, g := range c.groups[1:] {
		require.Eventually(t, func() bool { return g.CommitID() == last }, 10*time.Second, time.Millisecond)
	}
	before := c.trs[0].notices.Load()
	for range 60 {
		last = c.sendSequentially(t, 1)
		time.Sleep(5 * time.Millisecond)
	}
	for _, g := range c.groups[1:] {
		require.Eventually(t, func() bool { return g.CommitID() == last }, 10*time.Second, time.Millisecond)
	}
	// 2 for the last commit; kept notices would go out at every firing of
	// the timer during the ~0.4 s of proposals (8 or more).
	assert.LessOrEqual(t, c.trs[0].notices.Load()-before, int64(4))
}

// TestQuiescedFollowersGetNoLateNotice: a leader that quiesces drops the
// notices it holds (its quiesce heartbeat carries the commit index), so
// none reaches a quiesced follower when the delay is over and wakes it.
func TestQuiescedFollowersGetNoLateNotice(t *testing.T) {
	c := openNoticeCluster(t, 50*time.Millisecond, time.Second, false)
	last := c.sendSequentially(t, 1)
	require.Eventually(t, func() bool { return c.trs[0].quiesce.Load() > 0 }, 10*time.Second, time.Millisecond, "the leader quiesces")
	for _, g := range c.groups[1:] {
		require.Eventually(t, func() bool { return g.CommitID() == last }, 10*time.Second, time.Millisecond)
	}
	// Each follower acknowledged the quiesce heartbeat: what it sent
	// before is counted, and it sends nothing more.
	for _, tr := range c.trs[1:] {
		require.Eventually(t, func() bool { return tr.quiesce.Load() > 0 }, 10*time.Second, time.Millisecond, "a follower quiesces")
	}
	var sent [2]int64
	for i := range sent {
		sent[i] = c.trs[i+1].all.Load()
	}
	time.Sleep(1200 * time.Millisecond) // a window past the delay, for a message that must not come
	for i := range sent {
		assert.Equal(t, sent[i], c.trs[i+1].all.Load(), "follower %d answered a message after quiescing", i+2)
	}
}

// TestCommandGroupSendsNoticesAtOnce: a group with an Apply hook (the
// metadata group: topics created and removed) does not hold its commit
// notices back, so a command applied on the leader reaches every node at
// once, without waiting for the delay or a heartbeat.
func TestCommandGroupSendsNoticesAtOnce(t *testing.T) {
	c := openNoticeCluster(t, time.Hour, time.Hour, true)
	for i := range 3 {
		require.NoError(t, c.groups[0].ProposeCommand(ctx10(t), fmt.Appendf(nil, "c%d", i)))
		for k := range c.applied {
			require.Eventually(t, func() bool { return c.applied[k].Load() == int64(i+1) }, 10*time.Second, time.Millisecond, "node at index %d, command %d", k, i)
		}
	}
	assert.Positive(t, c.trs[0].notices.Load())
}

// TestReplacedNoticeKeepsItsTime: a held notice that replaces an older one
// for the same follower goes out when the older would have. Each notice
// restarted the wait, so a leader that made one more often than
// CommitNoticeDelay never sent any: a follower in StateProbe, whose empty
// append answers every heartbeat response, stayed there, and its leader
// never quiesced again (TestRestartedFollowerLearnsQuiescedLeader, 7 runs
// in 40 with 10 ms heartbeats and the default 20 ms delay).
func TestReplacedNoticeKeepsItsTime(t *testing.T) {
	hub := transport.NewHub()
	e := startHubEngine(t, hub, 1, []uint64{1, 2}, Config{TickInterval: 10 * time.Millisecond, CommitNoticeDelay: time.Hour}, nil)
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{NoSync: true})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}}})
	require.NoError(t, err)
	ctx := ctx10(t)
	require.NoError(t, g.WaitLeader(ctx))
	notice := func() *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MessageType_MsgApp.Enum(), From: new(uint64(1)), To: new(uint64(2)), Term: new(g.term.Load())}
	}
	var first, second time.Time
	var held int
	require.NoError(t, g.do(ctx, func() error { g.holdNotice(notice()); first = g.heldAt; return nil }))
	require.Eventually(t, func() bool { return time.Now().After(first) }, time.Second, time.Microsecond)
	require.NoError(t, g.do(ctx, func() error { g.holdNotice(notice()); second, held = g.heldAt, len(g.notices); return nil }))
	require.Equal(t, 1, held, "the second notice replaces the first")
	require.Equal(t, first, second, "and keeps its time")
}
