package replica

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/internal/flushhook"
	"github.com/forestbus/forestbus/server/commitlog"
)

// TestStopKeepsUnappliedConfChange: a node stopped while the Ready that
// commits a configuration change waits for its sync (such Readies apply
// after it) still has the change after a restart. The log recorded raft's
// commit point, covering the change, and Close stored it; raft restarts
// taking everything up to the stored point as applied, so the change was
// skipped for good and the node ran on its old configuration (a review
// found it). The stored point is now cut to the applied index.
func TestStopKeepsUnappliedConfChange(t *testing.T) {
	dir := t.TempDir()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	e, err := NewEngine(Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Logger: logger})
	require.NoError(t, err)
	e.Start()
	l, err := commitlog.Open(dir, commitlog.Options{SegmentBytes: 1 << 20})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "t", Log: l, Peers: []raft.Peer{{ID: 1}}})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, g.WaitLeader(ctx))
	_, err = g.Propose(ctx, [][]byte{[]byte("x")}, true)
	require.NoError(t, err)

	var armed atomic.Bool
	var n atomic.Int32
	rel1, rel2 := make(chan struct{}), make(chan struct{})
	prev := flushhook.Set(func(f *os.File, _ string) {
		if !armed.Load() {
			return
		}
		switch n.Add(1) {
		case 1:
			<-rel1
		case 2:
			<-rel2
		}
	})
	defer flushhook.Set(prev)
	armed.Store(true)

	cc := &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeType_ConfChangeAddLearnerNode.Enum(), NodeId: new(uint64(2))}}}
	require.NoError(t, g.ProposeConfChange(ctx, cc))
	require.Eventually(t, func() bool { return n.Load() == 1 }, 5*time.Second, time.Millisecond) // cc entry's sync stalled
	go func() { _, _ = g.Propose(context.Background(), [][]byte{[]byte("y")}, false) }()
	require.Eventually(t, func() bool { props, _ := queued(g); return props == 1 }, 5*time.Second, time.Millisecond)
	close(rel1)
	// Next Ready: commits the cc and appends "y": waits for sync 2.
	require.Eventually(t, func() bool { return n.Load() == 2 }, 5*time.Second, time.Millisecond)
	require.Empty(t, g.ConfState().GetLearners(), "not applied yet")
	stopped := make(chan struct{})
	go func() { e.Stop(); close(stopped) }()
	// Stop has begun: the loop, waiting on the stalled sync, takes the
	// stop branch, which closes the logs without applying the Ready.
	require.Eventually(t, func() bool {
		select {
		case <-e.stopc:
			return true
		default:
			return false
		}
	}, 5*time.Second, time.Millisecond)
	close(rel2)
	<-stopped
	armed.Store(false)

	// Restart.
	e2, err := NewEngine(Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Logger: logger})
	require.NoError(t, err)
	e2.Start()
	defer e2.Stop()
	l2, err := commitlog.Open(dir, commitlog.Options{SegmentBytes: 1 << 20})
	require.NoError(t, err)
	hs, cs, err := l2.InitialState()
	require.NoError(t, err)
	last, _ := l2.LastIndex()
	ents, _ := l2.Entries(1, last+1, 1<<20)
	ccIndex := uint64(0)
	for _, ent := range ents {
		if ent.GetType() == raftpb.EntryType_EntryConfChangeV2 {
			ccIndex = ent.GetIndex()
		}
	}
	require.NotZero(t, ccIndex)
	if len(cs.GetLearners()) == 0 {
		require.Less(t, hs.GetCommit(), ccIndex, "stored commit point covers a change never applied")
	}
	g2, err := e2.AddGroup(GroupConfig{Name: "t", Log: l2})
	require.NoError(t, err)
	require.NoError(t, g2.WaitLeader(ctx))
	require.Eventually(t, func() bool {
		return slices.Contains(g2.ConfState().GetLearners(), 2)
	}, 10*time.Second, time.Millisecond, "the committed AddLearner(2) at %d is lost on this node", ccIndex)
}

// TestStartAfterStop: Start on a stopped engine does nothing (it ran a
// loop that closed the stopped engine's done channel again: a panic).
func TestStartAfterStop(t *testing.T) {
	e, err := NewEngine(Config{NodeID: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	e.Stop()
	e.Start()
	e.Stop()
	e.mu.Lock()
	defer e.mu.Unlock()
	require.False(t, e.started, "no loop started after Stop")
}

// TestBootstrapStoresConfigurationOnce: a new group's configuration is
// stored with one write of the log's meta file, by AddGroup on its caller's
// goroutine, not once per bootstrap entry (one configuration change per
// peer) as the engine applies them: each write is two fsyncs on the engine
// goroutine, which every group of the node waits for (a topic created on a
// 3-node cluster paid six). A restart finds the whole configuration.
func TestBootstrapStoresConfigurationOnce(t *testing.T) {
	dir := t.TempDir()
	var metaWrites atomic.Int32
	prev := flushhook.Set(func(f *os.File, _ string) {
		if f != nil && f.Name() == filepath.Join(dir, "meta.tmp") {
			metaWrites.Add(1)
		}
	})
	defer flushhook.Set(prev)
	e := newEngine(t)
	l, err := commitlog.Open(dir, commitlog.Options{SegmentBytes: 1 << 20})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "t", Log: l, Peers: []raft.Peer{{ID: 3}, {ID: 1}, {ID: 2}}})
	require.NoError(t, err)
	require.EqualValues(t, 1, metaWrites.Load(), "AddGroup stores the bootstrap configuration")
	require.Eventually(t, func() bool { return g.applied.Load() >= 3 }, 10*time.Second, time.Millisecond, "bootstrap entries not applied")
	require.ElementsMatch(t, []uint64{1, 2, 3}, g.ConfState().GetVoters())
	e.RemoveGroup("t")
	<-g.stopped
	require.EqualValues(t, 1, metaWrites.Load(), "meta file writes for a three-peer bootstrap: applying it stores nothing more")

	l2, err := commitlog.Open(dir, commitlog.Options{SegmentBytes: 1 << 20})
	require.NoError(t, err)
	defer l2.Close()
	_, cs, err := l2.InitialState()
	require.NoError(t, err)
	require.ElementsMatch(t, []uint64{1, 2, 3}, cs.GetVoters())
}
