package replica

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/transport"
)

// testEngine is node 1 of a Hub with peers 2 and 3, not started: the test
// plays the loop.
func testEngine(t *testing.T) (*Engine, *transport.Hub) {
	t.Helper()
	hub := transport.NewHub()
	ids := []uint64{1, 2, 3}
	e, tr := newHubEngine(t, hub, 1, ids, Config{}, nil)
	t.Cleanup(tr.Stop)
	for _, id := range ids[1:] {
		hub.Transport(id, &handlerRef{})
	}
	return e, hub
}

// TestUndeliveredPingMarksPeerSilent: a liveness ping the transport cannot
// deliver (here a cut link, which the Hub reports as GRPC does a broken
// stream) marks its peer silent at once, without waiting out silenceTicks,
// and wakes the loop, but only when the peer's own pings have stopped too:
// a peer heard from within a ping interval (a one-way fault, a full queue)
// is not marked. The next message heard from the peer ends the silence.
func TestUndeliveredPingMarksPeerSilent(t *testing.T) {
	e, hub := testEngine(t)
	e.heard(2)
	e.heard(3)
	hub.Isolate(2)
	e.pingPeers(nil) // the Hub reports the drop before Send returns
	assert.LessOrEqual(t, e.silentFor(2), e.silenceTicks, "heard from just now")
	assert.False(t, e.silenced.Load())

	e.setHeard(2, e.clockTicks()-pingEvery-1) // its pings stopped a ping interval ago
	e.pingPeers(nil)
	assert.Greater(t, e.silentFor(2), e.silenceTicks, "a ping that could not be sent")
	assert.LessOrEqual(t, e.silentFor(3), e.silenceTicks, "the peer whose ping went out")
	assert.True(t, e.silenced.Load(), "the loop is told")
	assert.Len(t, e.wake, 1, "and woken")

	hub.Heal()
	e.heard(2)
	assert.LessOrEqual(t, e.silentFor(2), e.silenceTicks, "heard from again")
}

// TestWakeSilentLeaders: once unheard marked a peer silent, the loop wakes
// the quiesced groups that peer leads, and only those, without waiting for
// a tick; with nothing marked it wakes none.
func TestWakeSilentLeaders(t *testing.T) {
	e, hub := testEngine(t)
	var groups []*Group
	for i, lead := range []uint64{2, 3, 2} {
		l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
		require.NoError(t, err)
		g, err := e.AddGroup(GroupConfig{Name: fmt.Sprintf("g%d", i), Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = l.Close() })
		g.lead.Store(lead)
		g.quiesced = i < 2 // g2 is awake already
		groups = append(groups, g)
	}
	e.heard(3)
	e.setHeard(2, e.clockTicks()-pingEvery-1)
	assert.False(t, e.wakeSilentLeaders(groups), "nothing marked")
	assert.True(t, groups[0].quiesced)

	hub.Isolate(2)
	e.pingPeers(nil)
	assert.True(t, e.wakeSilentLeaders(groups))
	assert.False(t, groups[0].quiesced, "led by the silent node")
	assert.True(t, groups[1].quiesced, "led by a node heard from")
	assert.False(t, e.silenced.Load(), "taken")
	assert.False(t, e.wakeSilentLeaders(groups), "once")
}

// TestAskWakesTheAskersLeaders: a ping asking for leaders wakes the
// quiesced groups this node leads that have the asker as a member, not
// others (a node removed from the cluster, asking for its old groups,
// must not keep every leader awake), and a node asks only while a group
// has been without a leader for less than askFor election timeouts.
func TestAskWakesTheAskersLeaders(t *testing.T) {
	e, _ := testEngine(t)
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	g, err := e.AddGroup(GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}})
	require.NoError(t, err)
	list := []*Group{g}
	assert.True(t, e.asking(list), "no leader since it opened")
	g.leaderless.Store(time.Now().Add(-askFor * e.electionTimeout).UnixNano())
	assert.False(t, e.asking(list), "no leader for askFor election timeouts: no more asking")

	g.lead.Store(1)
	g.isLeader, g.quiesced = true, true
	e.noteAsk(4)
	assert.False(t, e.wakeAskedLeaders(list), "node 4 is no member")
	assert.True(t, g.quiesced)
	e.noteAsk(2)
	assert.True(t, e.wakeAskedLeaders(list))
	assert.False(t, g.quiesced, "node 2 is a member")
	g.quiesced = true
	assert.False(t, e.wakeAskedLeaders(list), "asks are taken once")
}

// pingCapture records the liveness pings an engine sends.
type pingCapture struct {
	Transport
	mu    sync.Mutex
	pings []*raftpb.Message
}

func (c *pingCapture) Send(group string, msgs []*raftpb.Message) {
	if group == livenessGroup {
		c.mu.Lock()
		c.pings = append(c.pings, msgs...)
		c.mu.Unlock()
	}
	c.Transport.Send(group, msgs)
}

func (c *pingCapture) last() *raftpb.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pings[len(c.pings)-1]
}

// TestAnnounceLater: with AnnounceLater the pings carry no incarnation and
// ask for no leaders until Announce (a node's groups are not all open
// yet: peers reacting to its restart would send them messages it drops).
func TestAnnounceLater(t *testing.T) {
	hub := transport.NewHub()
	var pc *pingCapture
	e, tr := newHubEngine(t, hub, 1, []uint64{1, 2}, Config{AnnounceLater: true}, func(tr Transport) Transport {
		pc = &pingCapture{Transport: tr}
		return pc
	})
	t.Cleanup(tr.Stop)
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	g, err := e.AddGroup(GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}}})
	require.NoError(t, err)
	list := []*Group{g}
	e.pingPeers(list)
	assert.Zero(t, pc.last().GetIndex(), "no incarnation before Announce")
	assert.Zero(t, pc.last().GetCommit(), "no ask before Announce")
	e.Announce()
	assert.True(t, e.pingSoon.Load(), "Announce pings at once")
	e.pingPeers(list)
	assert.Equal(t, e.incarnation, pc.last().GetIndex())
	assert.Equal(t, uint64(pingAsks), pc.last().GetCommit(), "g knows no leader")
}

// TestLoopWakesSilentLeadersAtOnce: the running loop itself, with no tick
// due (the tick interval is an hour), wakes the quiesced group whose
// leader's node a failed ping marked silent, and leaves alone the one led by
// a node heard from.
func TestLoopWakesSilentLeadersAtOnce(t *testing.T) {
	hub := transport.NewHub()
	ids := []uint64{1, 2, 3}
	e, tr := newHubEngine(t, hub, 1, ids, Config{TickInterval: time.Hour}, nil)
	t.Cleanup(tr.Stop)
	for _, id := range ids[1:] {
		hub.Transport(id, &handlerRef{})
	}
	var groups []*Group
	for i, lead := range []uint64{2, 3} {
		l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
		require.NoError(t, err)
		g, err := e.AddGroup(GroupConfig{Name: fmt.Sprintf("g%d", i), Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}})
		require.NoError(t, err)
		g.lead.Store(lead)
		g.quiesced = true
		groups = append(groups, g)
	}
	e.heard(3)
	e.setHeard(2, e.clockTicks()-pingEvery-1) // its pings stopped a ping interval ago
	e.Start()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			e.Stop()
		}
	})
	e.ReportUnreachable(livenessGroup, 2) // as the transport does for a ping it could not send
	require.Eventually(t, func() bool { return !e.silenced.Load() }, 10*time.Second, time.Millisecond,
		"the loop did not take the silence without a tick")
	e.Stop() // the groups' state is the loop's until it returns
	stopped = true
	assert.False(t, groups[0].quiesced, "led by the silent node: woken")
	assert.True(t, groups[1].quiesced, "led by a node heard from: left quiesced")
}

// TestSilenceOutlastsTwoPings: a quiesced follower waits at least two and a
// half ping intervals (and an election timeout) before it takes its leader
// for dead, so one late or lost ping does not wake every group.
func TestSilenceOutlastsTwoPings(t *testing.T) {
	assert.Equal(t, int64(2*pingEvery+pingEvery/2), silenceTicks(10))
	assert.Equal(t, int64(50), silenceTicks(50))
}

// TestQuiescedGroupReplacesSilentLeader: once the group is quiesced (no
// heartbeats), its followers elect a new leader when the leader's node
// falls silent: when the pings to it fail (a cut link) and when they are
// lost without a report (a lossy link, found by the silence alone).
func TestQuiescedGroupReplacesSilentLeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(h *transport.Hub, lead uint64, others []uint64)
	}{
		{"pings fail", func(h *transport.Hub, lead uint64, _ []uint64) { h.Isolate(lead) }},
		{"pings lost", func(h *transport.Hub, lead uint64, others []uint64) {
			for _, o := range others {
				h.SetDrop(lead, o, 1)
				h.SetDrop(o, lead, 1)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openNoticeCluster(t, 20*time.Millisecond, -1, false)
			c.sendSequentially(t, 1)
			for _, tr := range c.trs[1:] {
				require.Eventually(t, func() bool { return tr.quiesce.Load() > 0 }, 10*time.Second, time.Millisecond, "a follower quiesces")
			}
			lead := c.groups[0].e.NodeID()
			others := []uint64{c.groups[1].e.NodeID(), c.groups[2].e.NodeID()}
			tc.cut(c.hub, lead, others)
			require.Eventually(t, func() bool {
				for _, g := range c.groups[1:] {
					if l := g.Leader(); l != 0 && l != lead {
						return true
					}
				}
				return false
			}, 20*time.Second, time.Millisecond, "a follower leads")
		})
	}
}

// TestFencedLeaderReleasesQuiescedFollowers: a leader whose group is fenced
// (a storage error) sends nothing more while its node goes on pinging; its
// quiesced followers must still wake and elect a leader between them
// (review: they waited for it until its node restarted), also when the
// first heartbeat that wakes them is lost.
func TestFencedLeaderReleasesQuiescedFollowers(t *testing.T) {
	for _, loseFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("first heartbeat lost=%v", loseFirst), func(t *testing.T) {
			c := openNoticeCluster(t, 20*time.Millisecond, -1, false)
			c.sendSequentially(t, 1)
			for _, tr := range c.trs[1:] {
				require.Eventually(t, func() bool { return tr.quiesce.Load() > 0 }, 10*time.Second, time.Millisecond, "a follower quiesces")
			}
			lead := c.groups[0]
			others := []uint64{c.groups[1].e.NodeID(), c.groups[2].e.NodeID()}
			if loseFirst {
				for _, o := range others {
					c.hub.SetDrop(lead.e.NodeID(), o, 1)
				}
			}
			fenced := make(chan struct{})
			require.True(t, lead.enqueue(func() {
				lead.inOps = append(lead.inOps, func() {
					lead.fence(errors.New("injected storage failure"))
					close(fenced)
				})
			}))
			select {
			case <-fenced:
			case <-time.After(10 * time.Second):
				t.Fatal("the leader's group did not run the fence")
			}
			for _, o := range others {
				c.hub.SetDrop(lead.e.NodeID(), o, 0)
			}
			require.Eventually(t, func() bool {
				for _, g := range c.groups[1:] {
					if l := g.Leader(); l != 0 && l != lead.e.NodeID() {
						return true
					}
				}
				return false
			}, 20*time.Second, time.Millisecond, "a follower leads")
		})
	}
}

// TestLocalCallKeepsFollowerQuiesced: a call on a quiesced follower (a
// Status, a proposal it drops) leaves it quiesced: woken, it heard nothing
// from its quiesced leader, campaigned after an election timeout, and read
// no leader meanwhile (a review found it).
func TestLocalCallKeepsFollowerQuiesced(t *testing.T) {
	c := openNoticeCluster(t, 20*time.Millisecond, 20*time.Millisecond, false)
	c.sendSequentially(t, 1)
	for _, tr := range c.trs {
		require.Eventually(t, func() bool { return tr.quiesce.Load() > 0 }, 10*time.Second, time.Millisecond)
	}
	f := c.groups[1]
	quiesced := func() bool {
		var q bool
		require.NoError(t, f.do(ctx10(t), func() error { q = f.quiesced; return nil }))
		return q
	}
	require.Eventually(t, quiesced, 10*time.Second, time.Millisecond, "the follower quiesces")
	_, err := f.Status(ctx10(t))
	require.NoError(t, err)
	assert.True(t, quiesced(), "a Status call woke the quiesced follower")
}

// restartCluster is three engines on a Hub (10 ms ticks) with one group
// "g" on disk, whose nodes the test restarts. Index by node ID.
type restartCluster struct {
	hub     *transport.Hub
	root    string
	engines [4]*Engine
	hubs    [4]*transport.HubTransport
	groups  [4]*Group
	trs     [4]*countingTransport
}

var restartIDs = []uint64{1, 2, 3}

// openRestartCluster starts the cluster with cfg, makes it commit a
// message and waits for the leader to quiesce; it returns the leader's ID.
func openRestartCluster(t *testing.T, cfg Config) (*restartCluster, uint64) {
	c := &restartCluster{hub: transport.NewHub(), root: t.TempDir()}
	// Every node's group opens before any engine runs: with an election
	// timeout of ten minutes, node 1's first votes must not reach a node
	// whose group is not open yet (dropped, they are not sent again).
	for _, id := range restartIDs {
		c.open(t, id, cfg)
	}
	for _, id := range restartIDs {
		c.engines[id].Start()
	}
	t.Cleanup(func() {
		for _, id := range restartIDs {
			c.hubs[id].Stop()
			c.engines[id].Stop()
		}
	})
	var lead uint64
	require.Eventually(t, func() bool {
		lead = c.groups[1].Leader()
		return lead != 0 && c.groups[2].Leader() == lead && c.groups[3].Leader() == lead
	}, 10*time.Second, time.Millisecond, "the three nodes agree on a leader")
	_, err := c.groups[lead].Propose(ctx10(t), [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return c.trs[lead].quiesce.Load() > 0 }, 10*time.Second, time.Millisecond, "the leader quiesces")
	require.Eventually(t, func() bool {
		for _, id := range restartIDs {
			e := c.engines[id]
			e.mu.Lock()
			n := len(e.incarnations)
			e.mu.Unlock()
			if n < len(restartIDs)-1 {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond, "each node has had a ping from each other")
	return c, lead
}

// start starts node id (again) on its directory.
func (c *restartCluster) start(t *testing.T, id uint64, cfg Config) {
	c.open(t, id, cfg)
	c.engines[id].Start() // its first ping, at once, finds the group (as a node's does: its groups open first)
}

// open opens node id's engine and group without starting the engine.
func (c *restartCluster) open(t *testing.T, id uint64, cfg Config) {
	cfg.TickInterval = 10 * time.Millisecond
	e, tr := newHubEngine(t, c.hub, id, restartIDs, cfg, func(tr Transport) Transport {
		c.trs[id] = &countingTransport{Transport: tr}
		return c.trs[id]
	})
	l, err := commitlog.Open(filepath.Join(c.root, fmt.Sprint(id)), commitlog.Options{})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}, Campaign: id == 1})
	require.NoError(t, err)
	c.engines[id], c.hubs[id], c.groups[id] = e, tr, g
}

// restart stops node id and starts it again with cfg.
func (c *restartCluster) restart(t *testing.T, id uint64, cfg Config) {
	c.hubs[id].Stop()
	c.engines[id].Stop()
	c.start(t, id, cfg)
}

// TestRestartedFollowerLearnsQuiescedLeader: a follower that restarts while
// its group's leader is quiesced learns the leader from the leader's
// heartbeat, which its first ping asks for (pingAsks), not by starting an
// election: here its election timeout is ten minutes. The leader quiesces
// again afterwards.
func TestRestartedFollowerLearnsQuiescedLeader(t *testing.T) {
	c, lead := openRestartCluster(t, Config{})
	f := lead%3 + 1 // a follower
	quiesced := c.trs[lead].quiesce.Load()
	c.restart(t, f, Config{ElectionTicks: 60_000})
	term := c.groups[lead].Details().Term
	assert.Equal(t, term, c.groups[f].Details().Term, "the stored term from the start (it said 0: review)")
	require.Eventually(t, func() bool { return c.groups[f].Leader() == lead }, 10*time.Second, time.Millisecond,
		"the restarted follower learns the leader")
	assert.Equal(t, term, c.groups[f].Details().Term)
	require.Eventually(t, func() bool { return c.trs[lead].quiesce.Load() > quiesced }, 10*time.Second, time.Millisecond,
		"the leader quiesces again")
}

// TestRestartedLeadersFollowersElect: when a quiesced leader's node
// restarts, its followers learn it from its pings' new incarnation, and the
// first of them campaigns at once, without waiting for an election timeout
// (here every node's is ten minutes) or for silence (its pings go on).
func TestRestartedLeadersFollowersElect(t *testing.T) {
	slow := Config{ElectionTicks: 60_000}
	c, lead := openRestartCluster(t, slow)
	c.restart(t, lead, slow)
	require.Eventually(t, func() bool {
		l := c.groups[lead%3+1].Leader()
		return l != 0 && l != lead && c.groups[lead].Leader() == l
	}, 10*time.Second, time.Millisecond, "a follower leads, and the restarted node knows it")
}

// storedCommit is the commit point a log in dir would open with if its
// process were killed now: a copy of its files, opened.
func storedCommit(t *testing.T, dir string) uint64 {
	t.Helper()
	cp := t.TempDir()
	des, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, de := range des {
		if !de.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(cp, de.Name()), b, 0o644))
	}
	l, err := commitlog.Open(cp, commitlog.Options{NoSync: true})
	require.NoError(t, err)
	defer l.Close()
	hs, _, err := l.InitialState()
	require.NoError(t, err)
	return hs.GetCommit()
}

// soleVoter starts an engine ticking every tick with one group of one
// voter on a log in dir (NoSync), with apply as its Apply hook, and waits
// until it leads.
func soleVoter(t *testing.T, tick time.Duration, dir string, apply func(uint64, []byte) error) *Group {
	t.Helper()
	e, err := NewEngine(Config{NodeID: 1, TickInterval: tick, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	e.Start()
	t.Cleanup(e.Stop)
	l, err := commitlog.Open(dir, commitlog.Options{NoSync: true})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}}, Apply: apply})
	require.NoError(t, err)
	require.NoError(t, g.WaitLeader(ctx10(t)))
	return g
}

// TestCommandCommitOnFileAtOnce: a group with an Apply hook (the metadata
// group) writes its commit point as soon as it applies commands, so that a
// node killed right after creating a topic replays the create on restart;
// kept in memory until the periodic write (an hour of ticks here), the
// restarted node served without the topic until it heard from the leader.
func TestCommandCommitOnFileAtOnce(t *testing.T) {
	dir := t.TempDir()
	g := soleVoter(t, time.Hour, dir, func(uint64, []byte) error { return nil })
	for i := range 3 {
		require.NoError(t, g.ProposeCommand(ctx10(t), fmt.Appendf(nil, "c%d", i)))
	}
	want := g.Applied()
	require.Eventually(t, func() bool { return storedCommit(t, dir) >= want }, 5*time.Second, 5*time.Millisecond,
		"stored commit %d, applied %d", storedCommit(t, dir), want)
}

// TestIdleCommitOnFileWithinTicks: with every group quiesced the engine
// ticks once a ping interval, and a commit point kept in memory still
// reaches the file within hardStateTicks ticks (plus a ping interval), not
// within hardStateTicks ping intervals.
func TestIdleCommitOnFileWithinTicks(t *testing.T) {
	const tick = 20 * time.Millisecond
	dir := t.TempDir()
	g := soleVoter(t, tick, dir, nil)
	_, err := g.Propose(ctx10(t), [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	want := g.Applied()
	// hardStateTicks + pingEvery ticks is 400 ms; hardStateTicks ping
	// intervals would be 2 s.
	require.Eventually(t, func() bool { return storedCommit(t, dir) >= want },
		time.Duration(hardStateTicks+2*pingEvery)*tick+500*time.Millisecond, 10*time.Millisecond,
		"stored commit %d, applied %d", storedCommit(t, dir), want)
}

// TestPeerReadySince: a peer takes leadership from its first announced
// ping, as this node's clock sees it; not while its pings carry no
// incarnation (it restarts), nor while they say it stands aside, and the
// time starts again after either. StandAside makes this node's own pings
// say so, at once.
func TestPeerReadySince(t *testing.T) {
	hub := transport.NewHub()
	var pc *pingCapture
	e, tr := newHubEngine(t, hub, 1, []uint64{1, 2, 3}, Config{}, func(tr Transport) Transport {
		pc = &pingCapture{Transport: tr}
		return pc
	})
	t.Cleanup(tr.Stop)
	ping := func(inc uint64, aside bool) {
		e.Step(livenessGroup, &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: new(uint64(2)), To: new(uint64(1)), Index: new(inc), Reject: new(aside)})
	}
	assert.True(t, e.PeerReadySince(2).IsZero(), "never pinged")
	before := time.Now()
	ping(1, false) // an incarnation from a clock far behind: ignored
	since := e.PeerReadySince(2)
	assert.False(t, since.Before(before), "the local time of the first ping")
	ping(1, false)
	assert.Equal(t, since, e.PeerReadySince(2), "the same incarnation: the same time")
	ping(0, false)
	assert.True(t, e.PeerReadySince(2).IsZero(), "restarting")
	ping(7, false)
	restarted := e.PeerReadySince(2)
	assert.False(t, restarted.Before(since))
	ping(7, true)
	assert.True(t, e.PeerReadySince(2).IsZero(), "standing aside")
	unaside := time.Now()
	ping(7, false)
	assert.False(t, e.PeerReadySince(2).Before(unaside), "again from when it stopped standing aside")
	assert.True(t, e.PeerReadySince(3).IsZero())

	e.pingPeers(nil)
	assert.False(t, pc.last().GetReject())
	e.StandAside(true)
	assert.True(t, e.pingSoon.Load(), "StandAside pings at once")
	e.pingPeers(nil)
	assert.True(t, pc.last().GetReject(), "the ping says it stands aside")
	e.StandAside(false)
	e.pingPeers(nil)
	assert.False(t, pc.last().GetReject())
}
