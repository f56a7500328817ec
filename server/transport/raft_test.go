package transport

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// raftNode runs one raft.RawNode of group "g" on a Hub, the way the replica
// engine does: one goroutine owns the RawNode; the Handler only queues.
type raftNode struct {
	id   uint64
	rn   *raft.RawNode
	st   *raft.MemoryStorage
	tr   *HubTransport
	lead atomic.Uint64

	mu      sync.Mutex
	queue   []func()
	wake    chan struct{}
	stopc   chan struct{}
	done    chan struct{}
	applied atomic.Int64 // non-empty normal entries applied
}

func (n *raftNode) do(f func()) {
	n.mu.Lock()
	n.queue = append(n.queue, f)
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *raftNode) Step(_ string, m *raftpb.Message) { n.do(func() { _ = n.rn.Step(m) }) }
func (n *raftNode) ReportUnreachable(_ string, to uint64) {
	n.do(func() { n.rn.ReportUnreachable(to) })
}
func (n *raftNode) ReportSnapshot(_ string, to uint64, failed bool) {
	s := raft.SnapshotFinish
	if failed {
		s = raft.SnapshotFailure
	}
	n.do(func() { n.rn.ReportSnapshot(to, s) })
}

func (n *raftNode) run() {
	defer close(n.done)
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-n.stopc:
			return
		case <-ticker.C:
			n.rn.Tick()
		case <-n.wake:
		}
		n.mu.Lock()
		q := n.queue
		n.queue = nil
		n.mu.Unlock()
		for _, f := range q {
			f()
		}
		for n.rn.HasReady() {
			rd := n.rn.Ready()
			if rd.SoftState != nil {
				n.lead.Store(rd.SoftState.Lead)
			}
			if !raft.IsEmptyHardState(rd.HardState) {
				_ = n.st.SetHardState(rd.HardState)
			}
			_ = n.st.Append(rd.Entries)
			n.tr.Send("g", rd.Messages)
			for _, e := range rd.CommittedEntries {
				if e.GetType() == raftpb.EntryType_EntryNormal && len(e.GetData()) > 0 {
					n.applied.Add(1)
				}
			}
			n.rn.Advance(rd)
		}
	}
}

func startRaft(t *testing.T, hub *Hub, ids []uint64) []*raftNode {
	var nodes []*raftNode
	for _, id := range ids {
		st := raft.NewMemoryStorage()
		require.NoError(t, st.ApplySnapshot(&raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
			Index: new(uint64(1)), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: ids},
		}}))
		rn, err := raft.NewRawNode(&raft.Config{
			ID: id, ElectionTick: 20, HeartbeatTick: 1, Storage: st,
			MaxSizePerMsg: 1 << 20, MaxInflightMsgs: 64, CheckQuorum: true, PreVote: true,
			Logger: &raft.DefaultLogger{Logger: discardLogger()},
		})
		require.NoError(t, err)
		n := &raftNode{id: id, rn: rn, st: st, wake: make(chan struct{}, 1), stopc: make(chan struct{}), done: make(chan struct{})}
		n.tr = hub.Transport(id, n)
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		for _, id := range ids {
			n.tr.AddPeer(id, "")
		}
		go n.run()
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			close(n.stopc)
			<-n.done
			n.tr.Stop()
		}
	})
	return nodes
}

// agreedLeader returns the leader all nodes in ns agree on, or 0.
func agreedLeader(ns []*raftNode) uint64 {
	lead := ns[0].lead.Load()
	for _, n := range ns[1:] {
		if n.lead.Load() != lead {
			return 0
		}
	}
	return lead
}

// TestHubRaft runs a 3-node Raft group over the Hub: election, failover
// when the leader is isolated, healing, and replication.
func TestHubRaft(t *testing.T) {
	hub := NewHub()
	nodes := startRaft(t, hub, []uint64{1, 2, 3})
	var lead uint64
	require.Eventually(t, func() bool { lead = agreedLeader(nodes); return lead != 0 }, waitFor, tick)

	hub.Isolate(lead)
	var rest []*raftNode
	for _, n := range nodes {
		if n.id != lead {
			rest = append(rest, n)
		}
	}
	var next uint64
	require.Eventually(t, func() bool { next = agreedLeader(rest); return next != 0 && next != lead }, waitFor, tick)

	hub.Heal()
	require.Eventually(t, func() bool { return agreedLeader(nodes) == next }, waitFor, tick)

	// Drops on every link still let entries commit (Raft retransmits).
	for _, a := range nodes {
		for _, b := range nodes {
			hub.SetDrop(a.id, b.id, 0.1)
		}
	}
	leader := nodes[next-1]
	for i := range 20 {
		data := []byte(fmt.Sprint(i))
		leader.do(func() { _ = leader.rn.Propose(data) })
	}
	require.Eventually(t, func() bool {
		for _, n := range nodes {
			if n.applied.Load() != 20 {
				return false
			}
		}
		return true
	}, waitFor, tick)
	require.Positive(t, hub.Dropped())
}
