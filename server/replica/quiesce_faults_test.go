package replica

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/transport"
)

// TestIsolatedQuiescedLeaderStepsDown: a quiesced leader whose node is cut
// off from both followers must stop calling itself the leader once the
// followers have elected another (CheckQuorum, after an election timeout),
// as a cut-off follower does (CutOff): otherwise readers waiting at its
// tail stay there and its own rounds (balancing, retention) take it for the
// leader for as long as the partition lasts.
func TestIsolatedQuiescedLeaderStepsDown(t *testing.T) {
	c := openNoticeCluster(t, 20*time.Millisecond, -1, false)
	c.sendSequentially(t, 1)
	for _, tr := range c.trs {
		require.Eventually(t, func() bool { return tr.quiesce.Load() > 0 }, 10*time.Second, time.Millisecond, "the group quiesces")
	}
	old := c.groups[0]
	lead := old.e.NodeID()
	c.hub.Isolate(lead)
	require.Eventually(t, func() bool {
		l := c.groups[1].Leader()
		return l != 0 && l != lead
	}, 20*time.Second, time.Millisecond, "the followers elect a leader")
	newTerm := c.groups[1].Term()
	// Election timeout is 10 ticks (200 ms) here; give it 50x that.
	require.Eventually(t, func() bool { return old.Leader() != lead || old.CutOff() }, 10*time.Second, 5*time.Millisecond,
		"the cut-off quiesced leader (term %d) still leads; the others elected a leader in term %d", old.Term(), newTerm)
}

// TestPartitionedQuiescedFollowerLearnsNewLeader: a follower cut off while
// the group is quiesced, during which the leadership moves, learns the new
// leader and term once healed, and the group quiesces again.
func TestPartitionedQuiescedFollowerLearnsNewLeader(t *testing.T) {
	c := openNoticeCluster(t, 20*time.Millisecond, -1, false)
	c.sendSequentially(t, 1)
	for _, tr := range c.trs {
		require.Eventually(t, func() bool { return tr.quiesce.Load() > 0 }, 10*time.Second, time.Millisecond, "the group quiesces")
	}
	f := c.groups[2]
	c.hub.Isolate(f.e.NodeID())
	require.NoError(t, c.groups[0].TransferLeadership(ctx10(t)))
	nl := c.groups[1].e.NodeID()
	require.Eventually(t, func() bool { return c.groups[0].Leader() == nl && c.groups[1].Leader() == nl }, 20*time.Second, time.Millisecond)
	c.hub.Heal()
	require.Eventually(t, func() bool { return f.Leader() == nl && f.Term() == c.groups[1].Term() }, 20*time.Second, time.Millisecond,
		"the healed follower learns the new leader")
	q := c.trs[1].quiesce.Load()
	require.Eventually(t, func() bool { return c.trs[1].quiesce.Load() > q }, 20*time.Second, time.Millisecond, "the new leader quiesces")
}

// timeoutNowLog records to whom its node sends MsgTimeoutNow.
type timeoutNowLog struct {
	Transport
	mu      sync.Mutex
	to      []uint64
	quiesce map[string]int
}

func (l *timeoutNowLog) Send(group string, msgs []*raftpb.Message) {
	l.mu.Lock()
	for _, m := range msgs {
		if m.GetType() == raftpb.MessageType_MsgTimeoutNow {
			l.to = append(l.to, m.GetTo())
		}
		if isQuiesceMsg(m) {
			if l.quiesce == nil {
				l.quiesce = map[string]int{}
			}
			l.quiesce[group]++
		}
	}
	l.mu.Unlock()
	l.Transport.Send(group, msgs)
}

// TestTransferSkipsSilentPeers (node 2 dies: raft's Status lists the
// progress map in an order that puts 2 before 3 most of the time, and the
// voters tie on Match): a quiesced leader's raft still sees every
// follower as recently active and replicating (it has not ticked, so
// CheckQuorum has not looked), also one whose node has been silent for
// long (dead, cut off). TransferLeadership (a node's hand-off at stop)
// must not pick that one: the hand-off would wait out an election timeout,
// with the group's proposals held, before trying the next voter.
func TestTransferSkipsSilentPeers(t *testing.T) {
	names := make([]string, 8)
	for i := range names {
		names[i] = fmt.Sprint("g", i)
	}
	hub := transport.NewHub()
	var tl *timeoutNowLog
	engines, groups := openHubTrio(t, hub, Config{TickInterval: 20 * time.Millisecond}, names, func(id uint64, tr Transport) Transport {
		if id != 1 {
			return tr
		}
		tl = &timeoutNowLog{Transport: tr}
		return tl
	})
	quiesced := func(g *Group) bool {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		return tl.quiesce[g.Name()] > 0
	}
	for _, g := range groups[0] {
		_, err := g.Propose(ctx10(t), [][]byte{[]byte("m")}, true)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return quiesced(g) }, 10*time.Second, time.Millisecond, "leader quiesces")
	}
	hub.Isolate(2) // node 2 dies
	require.Eventually(t, func() bool { return !engines[0].PeerLive(2) }, 10*time.Second, time.Millisecond, "node 1 finds node 2 silent")

	var wg sync.WaitGroup
	start := time.Now()
	for _, g := range groups[0] {
		wg.Go(func() { assert.NoError(t, g.TransferLeadership(ctx10(t))) })
	}
	wg.Wait()
	took := time.Since(start)
	tl.mu.Lock()
	defer tl.mu.Unlock()
	assert.NotContains(t, tl.to, uint64(2), "hand-offs asked of the silent node 2 (MsgTimeoutNow to %v); the %d hand-offs took %v", tl.to, len(names), took)
}

// quiesceDropper drops the first quiesce heartbeats its node sends to drop.
type quiesceDropper struct {
	Transport
	mu      sync.Mutex
	drop    uint64
	left    int
	dropped int
}

func (d *quiesceDropper) Send(group string, msgs []*raftpb.Message) {
	d.mu.Lock()
	if d.left > 0 {
		msgs = slices.DeleteFunc(slices.Clone(msgs), func(m *raftpb.Message) bool {
			if d.left > 0 && isQuiesceMsg(m) && m.GetTo() == d.drop {
				d.left--
				d.dropped++
				return true
			}
			return false
		})
	}
	d.mu.Unlock()
	d.Transport.Send(group, msgs)
}

// TestLostQuiesceHeartbeatKeepsLeader: a follower whose quiesce heartbeat
// was lost keeps ticking while its leader sends nothing more; it must not
// lose its leader (campaign) because of it.
func TestLostQuiesceHeartbeatKeepsLeader(t *testing.T) {
	var qd *quiesceDropper
	_, nodes := openHubTrio(t, transport.NewHub(), Config{TickInterval: 20 * time.Millisecond}, []string{"g"}, func(id uint64, tr Transport) Transport {
		if id != 1 {
			return tr
		}
		qd = &quiesceDropper{Transport: tr}
		return qd
	})
	groups := []*Group{nodes[0][0], nodes[1][0], nodes[2][0]}
	qd.mu.Lock()
	qd.drop, qd.left = 3, 1
	qd.mu.Unlock()
	_, err := groups[0].Propose(ctx10(t), [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	require.Eventually(t, func() bool { qd.mu.Lock(); defer qd.mu.Unlock(); return qd.dropped == 1 }, 10*time.Second, time.Millisecond)
	f := groups[2]
	// 5 election timeouts: the follower must keep its leader throughout.
	deadline := time.Now().Add(5 * f.ElectionTimeout())
	for time.Now().Before(deadline) {
		require.Equal(t, uint64(1), f.Leader(), "the follower lost its leader after its quiesce heartbeat was lost (term %d)", f.Term())
		time.Sleep(time.Millisecond)
	}
}

// quiesceAckDropper drops the acknowledgements of quiesce heartbeats sent
// to node to, and counts the quiesce heartbeats sent by its node.
type quiesceAckDropper struct {
	Transport
	to   uint64
	sent atomic.Int64
}

func (d *quiesceAckDropper) Send(group string, msgs []*raftpb.Message) {
	msgs = slices.DeleteFunc(slices.Clone(msgs), func(m *raftpb.Message) bool {
		if isQuiesceMsg(m) && m.GetType() == raftpb.MessageType_MsgHeartbeat {
			d.sent.Add(1)
		}
		return isQuiesceMsg(m) && m.GetType() == raftpb.MessageType_MsgHeartbeatResp && m.GetTo() == d.to
	})
	d.Transport.Send(group, msgs)
}

// TestFormerLeaderGoesQuiet: a leader that quiesced and handed its group
// off before its followers acknowledged (here they never do) kept their
// names; quiesced again as a follower, it kept its node's loop ticking,
// every tick, for good (a bench found the idle cost up). Its loop rests
// again: one tick pass a ping interval.
func TestFormerLeaderGoesQuiet(t *testing.T) {
	const tick = 50 * time.Millisecond
	drops := make([]*quiesceAckDropper, 3)
	engines, nodes := openHubTrio(t, transport.NewHub(), Config{TickInterval: tick}, []string{"g"}, func(id uint64, tr Transport) Transport {
		drops[id-1] = &quiesceAckDropper{Transport: tr, to: 1}
		return drops[id-1]
	})
	groups := []*Group{nodes[0][0], nodes[1][0], nodes[2][0]}
	_, err := groups[0].Propose(ctx10(t), [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return drops[0].sent.Load() > 0 }, 10*time.Second, time.Millisecond, "node 1 quiesces the group")
	ok, err := groups[0].HandTo(ctx10(t), 2, 0)
	require.NoError(t, err)
	require.True(t, ok, "the hand-off to node 2")
	require.Eventually(t, func() bool { return groups[0].Leader() == 2 && drops[1].sent.Load() > 0 }, 10*time.Second, time.Millisecond,
		"node 2 leads and quiesces the group")

	// Quiet: a pass every ping interval (pingEvery ticks); awake, one a tick.
	quietRate := float64(time.Second/tick) / pingEvery
	var rate float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		start, before := time.Now(), engines[0].Metrics().Ticks
		<-time.After(time.Second) // a measurement window
		rate = float64(engines[0].Metrics().Ticks-before) / time.Since(start).Seconds()
		if rate <= 2*quietRate+1 {
			break
		}
		require.True(t, time.Now().Before(deadline), "node 1's loop still makes %.0f tick passes a second (quiet: %.0f)", rate, quietRate)
	}
}
