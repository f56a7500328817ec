//go:build linux

package replica

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"

	"github.com/forestbus/forestbus/internal/powerloss"
	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/transport"
)

// plNode is a one-node cluster on root: an engine, its journal, and
// single-voter groups g0..g(n-1) whose logs use the journal.
type plNode struct {
	e      *Engine
	j      *commitlog.Journal
	groups []*Group
}

func openPLNode(t *testing.T, root string, n int) *plNode {
	t.Helper()
	j, err := commitlog.OpenJournal(filepath.Join(root, "journal"), root, commitlog.JournalOptions{Bytes: 64 << 10})
	require.NoError(t, err)
	e, err := NewEngine(Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Journal: j, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	e.Start()
	nd := &plNode{e: e, j: j}
	t.Cleanup(func() {
		e.Stop()
		require.NoError(t, j.Close())
	})
	for i := range n {
		l, err := commitlog.Open(filepath.Join(root, fmt.Sprintf("g%d", i)), commitlog.Options{Journal: j, SegmentBytes: 16 << 10})
		require.NoError(t, err)
		g, err := e.AddGroup(GroupConfig{Name: fmt.Sprintf("g%d", i), Log: l, Peers: []raft.Peer{{ID: 1}}})
		require.NoError(t, err)
		require.NoError(t, g.WaitLeader(ctx10(t)))
		nd.groups = append(nd.groups, g)
	}
	return nd
}

type plAck struct {
	group int
	first uint64
	msgs  [][]byte
}

// freezer records acknowledged batches and freezes the disk (Snapshot)
// the instant their number reaches each of thresholds: the acknowledgement
// is not yet followed by any flush it did not wait for.
type freezer struct {
	d          *powerloss.Disk
	thresholds []int
	onFreeze   func() // notes more state at each freeze (called under mu)

	mu     sync.Mutex
	acks   []plAck
	images []*powerloss.Image
	sets   [][]plAck // the batches each image must hold
}

func (f *freezer) ack(a plAck) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acks = append(f.acks, a)
	if k := len(f.images); k < len(f.thresholds) && len(f.acks) >= f.thresholds[k] {
		f.images = append(f.images, f.d.Snapshot())
		f.sets = append(f.sets, slices.Clone(f.acks))
		if f.onFreeze != nil {
			f.onFreeze()
		}
	}
}

// run drives perTopic producers per topic, each sending batches of 1 to 8
// messages with wait-for-commit through propose and handing the batches
// acknowledged to ack, until every freeze is taken (within timeout, a
// deadline for a loaded machine, not the expected time); then
// it stops them.
func (f *freezer) run(t *testing.T, timeout time.Duration, topics, perTopic int,
	propose func(ctx context.Context, topic int, msgs [][]byte) (Result, error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for p := range topics * perTopic {
		wg.Go(func() {
			gi := p % topics
			for b := 0; b < 100000 && ctx.Err() == nil; b++ {
				msgs := make([][]byte, 1+b%8)
				for k := range msgs {
					msgs[k] = fmt.Appendf(nil, "g%d-p%d-b%d-m%d", gi, p, b, k)
				}
				if r, err := propose(ctx, gi, msgs); err == nil {
					f.ack(plAck{group: gi, first: r.FirstID, msgs: msgs})
				}
			}
		})
	}
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.images) == len(f.thresholds)
	}, timeout, time.Millisecond, "acknowledged batches")
}

// TestPowerLossKeepsAcknowledgedMessages: producers send batches with
// wait-for-commit to the topics of one node (so that its syncs go through
// the journal, with write-behind, commit points every few ticks and the
// early apply); at three moments, each right as a batch is acknowledged,
// the disk is frozen (powerloss.Disk.Snapshot) and a new node recovers a
// tree that power loss could leave. Every batch acknowledged before the
// freeze must be there, at the IDs it was acknowledged with.
func TestPowerLossKeepsAcknowledgedMessages(t *testing.T) {
	const topics, perTopic = 4, 2
	root := t.TempDir()
	d := powerloss.Watch(t, root)
	nd := openPLNode(t, root, topics)

	f := &freezer{d: d, thresholds: []int{1500, 3000, 4500}}
	f.run(t, 2*time.Minute, topics, perTopic, func(ctx context.Context, gi int, msgs [][]byte) (Result, error) {
		return nd.groups[gi].Propose(ctx, msgs, true) // only the test's cancel fails one here
	})
	for k, im := range f.images {
		dst := t.TempDir()
		im.Write(t, dst, nil) // flushed bytes only: the node ran on after the snapshot
		checkRecovered(t, dst, topics, f.sets[k])
	}
}

// checkRecovered starts a node on the tree dst and checks that every batch
// in acked is readable at its IDs.
func checkRecovered(t *testing.T, dst string, topics int, acked []plAck) {
	t.Helper()
	nd := openPLNode(t, dst, topics)
	for i, g := range nd.groups {
		checkAcked(t, g, i, acked)
	}
	nd.e.Stop()
}

// checkAcked checks that group g (topic i) commits and holds every batch
// of topic i in acked at its IDs.
func checkAcked(t *testing.T, g *Group, i int, acked []plAck) {
	t.Helper()
	want := map[uint64][]byte{}
	var top uint64
	for _, a := range acked {
		if a.group != i {
			continue
		}
		for k, m := range a.msgs {
			want[a.first+uint64(k)] = m
		}
		top = max(top, a.first+uint64(len(a.msgs))-1)
	}
	// A restarted node may know an older commit point; leading again, it
	// commits its whole log.
	require.Eventually(t, func() bool { return g.CommitID() >= top }, 30*time.Second, time.Millisecond,
		"g%d commits up to the last acknowledged ID %d", i, top)
	for id := uint64(1); id <= top; {
		r, err := g.Read(ctx10(t), id, 1000, 1<<20, 0)
		require.NoError(t, err)
		require.NotEmpty(t, r.Messages, "g%d: ID %d", i, id)
		for _, m := range r.Messages {
			if w, ok := want[id]; ok {
				require.Equal(t, string(w), string(m), "g%d: ID %d", i, id)
			}
			id++
		}
	}
}

// plCluster is three nodes on an in-memory network, each with its
// directory root/n<id>, its journal, and groups g0..g(n-1) of all three.
type plCluster struct {
	hub   *transport.Hub
	nodes [3]*plNode
}

func openPLCluster(t *testing.T, root string, n int) *plCluster {
	t.Helper()
	hub := transport.NewHub()
	c := &plCluster{hub: hub}
	ids := []uint64{1, 2, 3}
	for k, id := range ids {
		dir := filepath.Join(root, fmt.Sprintf("n%d", id))
		j, err := commitlog.OpenJournal(filepath.Join(dir, "journal"), dir, commitlog.JournalOptions{Bytes: 64 << 10})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, j.Close()) }) // after the engine stops
		// 50 ms ticks (elections after 0.5 s): under -race on a loaded
		// machine, 10 ms ticks let CheckQuorum depose leaders over and over.
		e := startHubEngine(t, hub, id, ids, Config{TickInterval: 50 * time.Millisecond, Journal: j}, nil)
		nd := &plNode{e: e, j: j}
		for i := range n {
			l, err := commitlog.Open(filepath.Join(dir, fmt.Sprintf("g%d", i)), commitlog.Options{Journal: j, SegmentBytes: 16 << 10})
			require.NoError(t, err)
			g, err := e.AddGroup(GroupConfig{Name: fmt.Sprintf("g%d", i), Log: l,
				Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}, Campaign: i%3 == k})
			require.NoError(t, err)
			nd.groups = append(nd.groups, g)
		}
		c.nodes[k] = nd
	}
	return c
}

// leader returns topic i's group on the node that leads it, nil when no
// node leads it now.
func (c *plCluster) leader(i int) *Group {
	for _, nd := range c.nodes {
		if g := nd.groups[i]; g.Leader() == g.e.NodeID() {
			return g
		}
	}
	return nil
}

// waitLeader is leader, waiting for one.
func (c *plCluster) waitLeader(t *testing.T, i int) *Group {
	t.Helper()
	var g *Group
	require.Eventually(t, func() bool { g = c.leader(i); return g != nil }, 30*time.Second, time.Millisecond, "g%d has a leader", i)
	return g
}

// TestPowerLossClusterKeepsAcknowledgedMessages: three nodes, three topics
// (each led by a different node), producers that wait for commit at each
// topic's leader. Three times, right as a batch is acknowledged, the disks
// of all three nodes are frozen at once (one power loss for the whole
// cluster, the worst case); a new cluster recovers the trees and must hold
// every batch acknowledged before the freeze at its IDs. An acknowledged
// batch is on a majority's disks: the leader's own copy may not be yet
// (its MsgApps go out before its sync, and it answers once a majority has
// the batch), so this checks that a recovered cluster elects a node that
// has every acknowledged entry, also when the frozen leader of a topic
// stays cut off until the other two have elected one of themselves.
func TestPowerLossClusterKeepsAcknowledgedMessages(t *testing.T) {
	const topics, perTopic = 3, 3
	root := t.TempDir()
	d := powerloss.Watch(t, root)
	c := openPLCluster(t, root, topics)

	var leads [][]uint64 // each topic's leader at each freeze
	f := &freezer{d: d, thresholds: []int{800, 1600, 2400}, onFreeze: func() {
		var l []uint64
		for i := range topics {
			l = append(l, c.nodes[0].groups[i].Leader())
		}
		leads = append(leads, l)
	}}
	// All three freezes first, then the producers stop: the recovered
	// clusters do not compete with a loaded one for the CPU.
	f.run(t, 3*time.Minute, topics, perTopic, func(ctx context.Context, gi int, msgs [][]byte) (Result, error) {
		g := c.leader(gi)
		if g == nil {
			time.Sleep(time.Millisecond) // polls for an election's end, until ctx ends
			return Result{}, ErrNoLeader
		}
		// An error (leadership moved): the outcome is unknown, not acknowledged.
		return g.Propose(ctx, msgs, true)
	})
	for k, im := range f.images {
		dst := t.TempDir()
		im.Write(t, dst, nil) // flushed bytes only: the nodes ran on after the snapshot
		rc := openPLCluster(t, dst, topics)
		// The frozen leader of one topic stays away until the others elect:
		// an acknowledged batch must be on one of them too.
		i := k % topics
		if old := leads[k][i]; old != 0 {
			rc.hub.Isolate(old)
			g := rc.waitLeader(t, i)
			require.NotEqual(t, old, g.e.NodeID())
			checkAcked(t, g, i, f.sets[k])
			rc.hub.Heal()
		}
		for i := range topics {
			checkAcked(t, rc.waitLeader(t, i), i, f.sets[k])
		}
		for _, nd := range rc.nodes {
			nd.e.Stop()
		}
	}
}
