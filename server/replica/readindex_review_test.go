package replica

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"

	"github.com/forestbus/forestbus/server/commitlog"
)

// TestReadIndexSingletonBeforeTermCommit: a group of one that restarts
// with its stored commit point behind its log (a kill before the point
// reached its file) campaigns and leads at once. A read it takes once it
// leads, before the entry of its term commits, must still wait for the
// entries its log holds, committed before the restart: raft answers a lone
// voter's request at once with its commit index, without the check it
// makes in larger groups (committedEntryInCurrentTerm). The engine is not
// started: this goroutine drives the group as the loop would, so the
// interleaving is exact.
func TestReadIndexSingletonBeforeTermCommit(t *testing.T) {
	dir := t.TempDir()
	e1 := newEngine(t)
	g1 := openGroup(t, e1, dir, "t")
	for range 3 {
		_, err := g1.Propose(ctx10(t), [][]byte{[]byte("m")}, true)
		require.NoError(t, err)
	}
	committed := g1.Applied()
	e1.Stop()

	// The stored commit point falls back to the bootstrap entry, as after
	// a kill before the periodic write.
	l, err := commitlog.Open(dir, commitlog.Options{SegmentBytes: 4096})
	require.NoError(t, err)
	hs, _, err := l.InitialState()
	require.NoError(t, err)
	require.NoError(t, l.SetHardStateParts(hs.GetTerm(), hs.GetVote(), 1))
	require.NoError(t, l.FlushHardState())
	require.NoError(t, l.Close())

	e, err := NewEngine(Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(e.Stop)
	l2, err := commitlog.Open(dir, commitlog.Options{SegmentBytes: 4096})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "t", Log: l2})
	require.NoError(t, err)
	require.Equal(t, uint64(1), g.Applied())

	step := func() {
		if g.fenced != nil || !g.rn.HasReady() {
			return
		}
		if g.persist() {
			require.NoError(t, g.log.Sync())
		}
		g.applyCommitted()
		g.finish()
	}
	for i := 0; g.rn.BasicStatus().RaftState != raft.StateLeader; i++ {
		require.Less(t, i, 10, "the lone voter leads")
		step()
	}

	done := make(chan error, 1)
	go func() { done <- g.ReadIndex(context.Background()) }()
	require.Eventually(t, func() bool { _, ops := queued(g); return ops > 0 }, 5*time.Second, time.Millisecond)
	g.drainInbox()
	step() // the Ready of the leader's first entry (and of the read, if answered)
	select {
	case err := <-done:
		require.GreaterOrEqual(t, g.Applied(), committed,
			"ReadIndex returned (err %v) with index %d applied, below the %d committed before the restart", err, g.Applied(), committed)
		return
	case <-time.After(200 * time.Millisecond):
	}
	for range 10 {
		g.drainInbox()
		step()
	}
	select {
	case err := <-done:
		require.NoError(t, err)
		require.GreaterOrEqual(t, g.Applied(), committed)
	case <-time.After(5 * time.Second):
		t.Fatal("ReadIndex did not return once the leader's entry committed")
	}
}

// TestReadIndexDropsAbandonedCallers: callers that gave up (their ctx
// ended) while no leader answers are not kept: a node cut off from its
// group's quorum, asked for topics it does not know, would otherwise hold
// every caller's channel until the group hears from a quorum again.
func TestReadIndexDropsAbandonedCallers(t *testing.T) {
	c, lead := openRestartCluster(t, Config{})
	for _, id := range restartIDs {
		if id != lead {
			c.hubs[id].Stop()
			c.engines[id].Stop()
		}
	}
	g := c.groups[lead]
	for range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		require.ErrorIs(t, g.ReadIndex(ctx), context.DeadlineExceeded)
		cancel()
	}
	held := func() int {
		n := 0
		require.NoError(t, g.do(ctx10(t), func() error {
			n = len(g.reads.waiting) + len(g.reads.confirmed)
			if g.reads.inFlight != nil {
				n += len(g.reads.inFlight.waiters)
			}
			return nil
		}))
		return n
	}
	require.Eventually(t, func() bool { return held() == 0 }, 5*time.Second, 10*time.Millisecond,
		"callers that gave up are dropped (still held: %d)", held())
}
