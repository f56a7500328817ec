package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
)

func newEngine(t *testing.T) *Engine {
	t.Helper()
	e, err := NewEngine(Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	e.Start()
	t.Cleanup(e.Stop)
	return e
}

func openGroup(t *testing.T, e *Engine, dir, name string) *Group {
	t.Helper()
	l, err := commitlog.Open(dir, commitlog.Options{SegmentBytes: 4096})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: name, Log: l, Peers: []raft.Peer{{ID: 1}}})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, g.WaitLeader(ctx))
	return g
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestConcurrentProposersGetContiguousIDs: many proposers at once; every
// batch gets its own contiguous range, the ranges tile 1..N, and the log
// holds each batch's messages at its IDs.
func TestConcurrentProposersGetContiguousIDs(t *testing.T) {
	e := newEngine(t)
	g := openGroup(t, e, t.TempDir(), "t")
	const producers, batches, size = 8, 25, 7
	type got struct {
		r   Result
		tag string
	}
	var mu sync.Mutex
	var all []got
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; b < batches; b++ {
				msgs := make([][]byte, size)
				for i := range msgs {
					msgs[i] = fmt.Appendf(nil, "p%d-b%d-%d", p, b, i)
				}
				r, err := g.Propose(ctx10(t), msgs, b%2 == 0)
				if !assert.NoError(t, err) {
					return
				}
				mu.Lock()
				all = append(all, got{r, fmt.Sprintf("p%d-b%d", p, b)})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.Len(t, all, producers*batches)
	seen := make(map[uint64]bool)
	for _, a := range all {
		assert.Equal(t, uint32(size), a.r.Count)
		for i := uint64(0); i < size; i++ {
			id := a.r.FirstID + i
			assert.False(t, seen[id], "id %d assigned twice", id)
			seen[id] = true
		}
	}
	total := uint64(producers * batches * size)
	for id := uint64(1); id <= total; id++ {
		require.True(t, seen[id], "id %d never assigned", id)
	}
	require.Eventually(t, func() bool { return g.CommitID() == total }, 10*time.Second, time.Millisecond)
	for _, a := range all {
		res, err := g.Read(ctx10(t), a.r.FirstID, size, 1<<20, 0)
		require.NoError(t, err)
		require.Len(t, res.Messages, size)
		for i, m := range res.Messages {
			assert.Equal(t, fmt.Sprintf("%s-%d", a.tag, i), string(m))
		}
	}
}

// TestManyConcurrentSingleMessageProposals: 200 proposers at once, each
// answered with its own ID, none lost.
func TestManyConcurrentSingleMessageProposals(t *testing.T) {
	e := newEngine(t)
	g := openGroup(t, e, t.TempDir(), "t")
	before := g.log.Stats()
	const n = 200
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := g.Propose(ctx10(t), [][]byte{[]byte("x")}, true)
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	after := g.log.Stats()
	assert.Equal(t, before.NextID+n, after.NextID)
}

func TestReadWaitsForCommitAndTimesOut(t *testing.T) {
	e := newEngine(t)
	g := openGroup(t, e, t.TempDir(), "t")
	res, err := g.Read(ctx10(t), 1, 10, 1<<20, 30*time.Millisecond)
	require.NoError(t, err)
	assert.Empty(t, res.Messages)
	assert.Equal(t, uint64(1), res.NextID)

	done := make(chan ReadResult, 1)
	go func() {
		r, err := g.Read(ctx10(t), 1, 10, 1<<20, 10*time.Second)
		if err == nil {
			done <- r
		}
	}()
	_, err = g.Propose(ctx10(t), [][]byte{[]byte("a")}, true)
	require.NoError(t, err)
	select {
	case r := <-done:
		assert.Equal(t, [][]byte{[]byte("a")}, r.Messages)
	case <-time.After(10 * time.Second):
		t.Fatal("reader not woken by the commit")
	}
}

func TestRemoveGroupReleasesCallers(t *testing.T) {
	e := newEngine(t)
	closed := make(chan struct{})
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "t", Log: l, Peers: []raft.Peer{{ID: 1}}, OnClose: func() { close(closed) }})
	require.NoError(t, err)
	require.NoError(t, g.WaitLeader(ctx10(t)))

	errc := make(chan error, 1)
	go func() {
		_, err := g.Read(ctx10(t), 1, 1, 100, 10*time.Second)
		errc <- err
	}()
	e.RemoveGroup("t")
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("OnClose not called")
	}
	assert.ErrorIs(t, <-errc, ErrStopped)
	_, err = g.Propose(ctx10(t), [][]byte{[]byte("a")}, true)
	assert.ErrorIs(t, err, ErrStopped)
	assert.Nil(t, e.Group("t"))
}

func TestReopenKeepsIDsAndCommit(t *testing.T) {
	dir := t.TempDir()
	e := newEngine(t)
	g := openGroup(t, e, dir, "t")
	for i := 0; i < 20; i++ {
		_, err := g.Propose(ctx10(t), [][]byte{[]byte("a"), []byte("b"), []byte("c")}, true)
		require.NoError(t, err)
	}
	e.Stop()

	e2 := newEngine(t)
	l, err := commitlog.Open(dir, commitlog.Options{SegmentBytes: 4096})
	require.NoError(t, err)
	g2, err := e2.AddGroup(GroupConfig{Name: "t", Log: l, Peers: []raft.Peer{{ID: 1}}})
	require.NoError(t, err)
	assert.Equal(t, uint64(60), g2.CommitID(), "commit point known at once")
	require.NoError(t, g2.WaitLeader(ctx10(t)))
	r, err := g2.Propose(ctx10(t), [][]byte{[]byte("d")}, true)
	require.NoError(t, err)
	assert.Equal(t, uint64(61), r.FirstID)
}

func TestCommandGroupAppliesAndReplays(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var applied []string
	apply := func(_ uint64, p []byte) error {
		mu.Lock()
		defer mu.Unlock()
		applied = append(applied, string(p))
		if string(p) == "bad" {
			return errors.New("rejected")
		}
		return nil
	}
	e := newEngine(t)
	l, err := commitlog.Open(dir, commitlog.Options{})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "", Log: l, Peers: []raft.Peer{{ID: 1}}, Apply: apply})
	require.NoError(t, err)
	require.NoError(t, g.WaitLeader(ctx10(t)))
	require.NoError(t, g.ProposeCommand(ctx10(t), []byte("one")))
	assert.EqualError(t, g.ProposeCommand(ctx10(t), []byte("bad")), "rejected")
	require.NoError(t, g.ProposeCommand(ctx10(t), []byte("two")))
	e.Stop()

	mu.Lock()
	applied = nil
	mu.Unlock()
	e2 := newEngine(t)
	l2, err := commitlog.Open(dir, commitlog.Options{})
	require.NoError(t, err)
	_, err = e2.AddGroup(GroupConfig{Name: "", Log: l2, Peers: []raft.Peer{{ID: 1}}, Apply: apply})
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"one", "bad", "two"}, applied, "replayed in log order before the group runs")
}

func TestConfigValidation(t *testing.T) {
	_, err := NewEngine(Config{})
	assert.Error(t, err)
	_, err = NewEngine(Config{NodeID: 1, HeartbeatTicks: 5, ElectionTicks: 5})
	assert.Error(t, err)
}

// TestCommittedAnswerIsReadable: once a wait_for_commit proposal is
// answered, its messages are readable on the same node at once.
func TestCommittedAnswerIsReadable(t *testing.T) {
	e := newEngine(t)
	g := openGroup(t, e, t.TempDir(), "t")
	for i := 0; i < 500; i++ {
		r, err := g.Propose(ctx10(t), [][]byte{[]byte("m")}, true)
		require.NoError(t, err)
		res, err := g.Read(ctx10(t), r.FirstID, 1, 100, 0)
		require.NoError(t, err)
		require.Len(t, res.Messages, 1, "proposal %d answered before its commit was visible", i)
	}
}

// TestRemoveThenStopClosesGroup: a group removed just before Stop is still
// closed, its hook runs, and callers are released.
func TestRemoveThenStopClosesGroup(t *testing.T) {
	for i := 0; i < 20; i++ {
		e := newEngine(t)
		closed := make(chan struct{})
		l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
		require.NoError(t, err)
		g, err := e.AddGroup(GroupConfig{Name: "t", Log: l, Peers: []raft.Peer{{ID: 1}}, OnClose: func() { close(closed) }})
		require.NoError(t, err)
		e.RemoveGroup("t")
		e.Stop()
		select {
		case <-closed:
		default:
			t.Fatal("removed group not closed by Stop")
		}
		_, err = g.Propose(context.Background(), [][]byte{[]byte("a")}, true)
		require.Error(t, err)
	}
}

// TestLostLogFencesGroup: a leader's heartbeat claiming this node stored
// more than its log holds (the node's data was wiped) stops that group
// with ErrStorageFailed instead of raft's panic; a heartbeat within the log
// does not.
func TestLostLogFencesGroup(t *testing.T) {
	e := newEngine(t)
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
	require.NoError(t, err)
	g, err := e.AddGroup(GroupConfig{Name: "t", Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}})
	require.NoError(t, err)
	last, err := l.LastIndex()
	require.NoError(t, err)

	heartbeat := func(commit uint64) *raftpb.Message {
		return &raftpb.Message{
			Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: new(uint64(2)), To: new(uint64(1)),
			Term: new(uint64(5)), Commit: new(commit),
		}
	}
	e.Step("t", heartbeat(last))
	require.Eventually(t, func() bool { return g.Leader() == 2 }, 10*time.Second, time.Millisecond)
	assert.NotErrorIs(t, g.checkLeader(), ErrStorageFailed)

	e.Step("t", heartbeat(last+50))
	require.Eventually(t, func() bool { return errors.Is(g.checkLeader(), ErrStorageFailed) }, 10*time.Second, time.Millisecond)
}

// TestCommitPointReachesDiskWithinTicks: the log keeps a commit-only
// HardState change in memory (commitlog.Log.SetHardState), and the group's
// tick writes it, so what a killed process leaves on disk knows the commit
// point of a topic that went idle a tick ago.
func TestCommitPointReachesDiskWithinTicks(t *testing.T) {
	dir := t.TempDir()
	e := newEngine(t)
	g := openGroup(t, e, dir, "t")
	for i := 0; i < 20; i++ {
		_, err := g.Propose(ctx10(t), [][]byte{[]byte("a"), []byte("b")}, true)
		require.NoError(t, err)
	}
	applied := g.applied.Load()
	onDisk := func() uint64 {
		// Copy the files as they are now (the page cache is what a
		// SIGKILL leaves) and open the copy.
		cp := t.TempDir()
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, ent := range entries {
			b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(cp, ent.Name()), b, 0o644))
		}
		l, err := commitlog.Open(cp, commitlog.Options{SegmentBytes: 4096})
		require.NoError(t, err)
		defer l.Close()
		hs, _, err := l.InitialState()
		require.NoError(t, err)
		return hs.GetCommit()
	}
	deadline := time.Now().Add(10 * time.Second)
	var got uint64
	for got = onDisk(); got < applied && time.Now().Before(deadline); got = onDisk() {
		time.Sleep(10 * time.Millisecond)
	}
	assert.Equal(t, applied, got, "commit point on disk")
}

// TestFencedGroupWritesHeldRecords: groups synced together through a
// journal hold their appends in memory (commitlog write-behind). A group
// the engine fences keeps its log open, so it writes what it holds at once:
// a journal checkpoint must never wait for a group that stopped.
func TestFencedGroupWritesHeldRecords(t *testing.T) {
	root := t.TempDir()
	j, err := commitlog.OpenJournal(filepath.Join(root, "journal"), root, commitlog.JournalOptions{})
	require.NoError(t, err)
	e, err := NewEngine(Config{NodeID: 1, TickInterval: 10 * time.Millisecond, Journal: j, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	e.Start()
	t.Cleanup(func() {
		e.Stop()
		require.NoError(t, j.Close())
	})
	var groups []*Group
	for _, name := range []string{"a", "b", "c"} {
		l, err := commitlog.Open(filepath.Join(root, name), commitlog.Options{Journal: j})
		require.NoError(t, err)
		g, err := e.AddGroup(GroupConfig{Name: name, Log: l, Peers: []raft.Peer{{ID: 1}}})
		require.NoError(t, err)
		require.NoError(t, g.WaitLeader(ctx10(t)))
		groups = append(groups, g)
	}
	b := groups[1]
	held := false
	for round := 0; round < 500 && !held; round++ {
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Go(func() {
				_, err := g.Propose(ctx10(t), [][]byte{[]byte("m")}, true)
				assert.NoError(t, err)
			})
		}
		wg.Wait()
		held = b.Log().Stats().HeldBytes > 0
	}
	require.True(t, held, "group b held records (its syncs went through the journal)")
	require.NoError(t, b.do(ctx10(t), func() error {
		b.fence(errors.New("stopped by the test"))
		return nil
	}))
	assert.Zero(t, b.Log().Stats().HeldBytes, "the fenced group wrote what it held")
}

// TestSetPeersWhileRunning: the membership may change the pinged peers
// while the loop reads them every tick (run with -race: SetPeers once
// rewrote the slice the loop was reading).
func TestSetPeersWhileRunning(t *testing.T) {
	e, err := NewEngine(Config{NodeID: 1, TickInterval: time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	e.Start()
	defer e.Stop()
	openGroup(t, e, t.TempDir(), "t") // keeps the loop ticking
	deadline := time.Now().Add(300 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		e.SetPeers([]uint64{1, 2, uint64(3 + i%2)})
	}
}

// TestSyncMetrics: every acknowledged batch of a one-node group was made
// durable by a sync the engine counted and timed, and the histogram's
// buckets are cumulative up to the count.
func TestSyncMetrics(t *testing.T) {
	e := newEngine(t)
	g := openGroup(t, e, t.TempDir(), "t")
	before := e.Metrics()
	const batches = 20
	for range batches {
		_, err := g.Propose(ctx10(t), [][]byte{[]byte("m")}, true)
		require.NoError(t, err)
	}
	m := e.Metrics()
	syncs := m.Syncs - before.Syncs
	// Each proposal waited for its commit, so no two shared a sync.
	assert.GreaterOrEqual(t, syncs, uint64(batches))
	assert.GreaterOrEqual(t, m.SyncedWrites-before.SyncedWrites, syncs, "a sync covers at least one write")
	require.Len(t, m.SyncSeconds, len(SyncBuckets)+1)
	for i := 1; i < len(m.SyncSeconds); i++ {
		assert.LessOrEqual(t, m.SyncSeconds[i-1], m.SyncSeconds[i], "bucket %d", i)
	}
	assert.Greater(t, m.SyncSecondsSum, before.SyncSecondsSum)
}

// TestOnLeadRunsWhenElected: a group's OnLead hook runs once when this node
// wins its election, and only once it has applied an entry of its term
// (before that, raft would refuse the configuration changes the hook's
// caller proposes).
func TestOnLeadRunsWhenElected(t *testing.T) {
	e := newEngine(t)
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
	require.NoError(t, err)
	var (
		leads   atomic.Int32
		ownTerm atomic.Bool
	)
	g, err := e.AddGroup(GroupConfig{Name: "t", Log: l, Peers: []raft.Peer{{ID: 1}}, OnLead: func() {
		leads.Add(1)
		g := e.Group("t")
		term, err := g.log.Term(g.applied.Load())
		ownTerm.Store(err == nil && term == g.term.Load())
	}})
	require.NoError(t, err)
	require.NoError(t, g.WaitLeader(ctx10(t)))
	_, err = g.Propose(ctx10(t), [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	assert.Equal(t, int32(1), leads.Load())
	assert.True(t, ownTerm.Load(), "OnLead ran before an entry of the leader's term was applied")
}

// TestHistogramBuckets: a duration lands in the first bucket whose bound it
// does not exceed (Prometheus' le), past the last bound in +Inf; the
// cumulative counts end at the total.
func TestHistogramBuckets(t *testing.T) {
	bounds := []float64{0.001, 0.01}
	assert.Equal(t, 0, bucket(bounds, 0))
	assert.Equal(t, 0, bucket(bounds, time.Millisecond), "on the bound: le")
	assert.Equal(t, 1, bucket(bounds, time.Millisecond+1))
	assert.Equal(t, 2, bucket(bounds, time.Second), "+Inf")
	var counts [3]atomic.Uint64
	counts[0].Add(2)
	counts[2].Add(3)
	cum, total := cumulative(counts[:])
	assert.Equal(t, []uint64{2, 2, 5}, cum)
	assert.Equal(t, uint64(5), total)
}
