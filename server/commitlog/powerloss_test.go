//go:build linux

package commitlog

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/internal/flushhook"
	"github.com/forestbus/forestbus/internal/powerloss"
)

// durableState is what a log must have after a power loss: its model and
// term and vote as of its last successful sync (the commit point is not
// made durable by a sync).
type durableState struct {
	m  *model
	hs hardState
}

// TestPowerLossKeepsSyncedEntries drives logs that share a small journal
// (so that it rotates, checkpoints and recycles its files, and the logs
// hold records in memory) and small segments (so that they roll) through
// random appends, truncations, term changes, syncs of random groups,
// retention (commit points and segment deletion) and snapshots replacing
// a log, and at random points
// takes the tree a power loss could leave (powerloss.Disk). In every such
// tree, recovery (journal replay, then each log's open) must give each log
// at least every entry and hardstate of its last sync, unchanged (less what
// retention deleted since), and otherwise only entries it wrote since.
func TestPowerLossKeepsSyncedEntries(t *testing.T) {
	if !syncfsWorks {
		t.Skip("the journal needs syncfs (Linux 5.8 or later)")
	}
	// Small segments roll often (a roll writes what a log holds); large
	// ones let logs hold records across several journal files.
	runs := []struct {
		seed    uint64
		segment int64
	}{{1, MinSegmentBytes}, {2, 64 << 10}, {3, 16 << 10}, {4, 64 << 10}, {5, MinSegmentBytes}}
	if testing.Short() {
		runs = runs[:2]
	}
	for _, r := range runs {
		t.Run(fmt.Sprint(r.seed), func(t *testing.T) { powerLossRun(t, r.seed, r.segment, 400) })
	}
}

func powerLossRun(t *testing.T, seed uint64, segment int64, steps int) {
	rnd := rand.New(rand.NewPCG(seed, 0))
	root := t.TempDir()
	const n = 4
	jdir := filepath.Join(root, "journal")
	logDir := func(root string, i int) string { return filepath.Join(root, "topics", fmt.Sprint(i)) }
	opts := JournalOptions{Bytes: 4 << 10}
	commits, checkpoints, heldW := journalCommits.Load(), journalCheckpoints.Load(), heldWrites.Load()
	segOpts := func(j *Journal) Options { return Options{Journal: j, SegmentBytes: segment} }

	d := powerloss.Watch(t, root) // the empty root is on disk
	j, err := OpenJournal(jdir, root, opts)
	require.NoError(t, err)
	logs := make([]*Log, n)
	models := make([]*model, n)
	hs := make([]hardState, n) // current term, vote and commit
	for i := range logs {
		logs[i] = openT(t, logDir(root, i), segOpts(j))
		models[i] = newModel()
	}
	t.Cleanup(func() {
		for _, l := range logs {
			_ = l.Close()
		}
		_ = j.Close()
	})
	durable := make([]durableState, n)
	for i := range durable {
		durable[i] = durableState{m: models[i].clone()}
	}

	// syncGroup syncs logs idx together as the replica engine's syncer
	// does, while this goroutine plays the engine loop: when a journal
	// checkpoint waits for records that logs outside the group hold, they
	// write them.
	syncGroup := func(idx []int) {
		group := make([]*Log, len(idx))
		for k, i := range idx {
			group[k] = logs[i]
		}
		done := make(chan []error, 1)
		go func() { done <- SyncMany(group, nil) }()
		var errs []error
		for errs == nil {
			select {
			case errs = <-done:
				continue
			case <-time.After(time.Millisecond):
			}
			if !j.Waiting() {
				continue
			}
			for i, l := range logs {
				if !slices.Contains(idx, i) && l.HeldWanted() {
					require.NoError(t, l.FlushHeld())
				}
			}
		}
		for k, i := range idx {
			require.NoError(t, errs[k], "log %d", i)
			durable[i] = durableState{m: models[i].clone(), hs: hardState{term: hs[i].term, vote: hs[i].vote}}
			if rnd.IntN(2) == 0 {
				// As the engine does about once a second: the slot gets
				// the durable watermark.
				require.NoError(t, logs[i].FlushHardState())
			}
		}
	}

	term := func(i int) uint64 { return max(hs[i].term, 1) }
	setHardState := func(i int) {
		require.NoError(t, logs[i].SetHardState(&pb.HardState{
			Term: proto.Uint64(hs[i].term), Vote: proto.Uint64(hs[i].vote), Commit: proto.Uint64(hs[i].commit),
		}))
	}
	losses, deletes, snaps := 0, 0, 0
	for step := range steps {
		i := rnd.IntN(n)
		m, l := models[i], logs[i]
		op := rnd.IntN(21)
		switch {
		case op < 10: // appends to some logs, as producers to several topics
			for k := range n {
				if k == i || rnd.IntN(2) == 0 {
					models[k].appendN(t, logs[k], models[k].last+1, 1+rnd.IntN(6), term(k))
				}
			}
		case op < 11: // a new term, and entries of it over a suffix: synced at once
			hs[i].term = term(i) + 1
			hs[i].vote = uint64(1 + rnd.IntN(3))
			setHardState(i)
			start := m.last + 1
			if m.last >= m.first {
				start = m.last + 1 - uint64(rnd.IntN(int(min(m.last-m.first+1, 8))+1))
			}
			start = max(start, hs[i].commit+1) // raft never truncates committed entries
			m.appendN(t, l, start, 1+rnd.IntN(4), hs[i].term)
			syncGroup([]int{i})
		case op < 17: // sync a random group of logs
			var idx []int
			for k := range n {
				if k == i || rnd.IntN(2) == 0 {
					idx = append(idx, k)
				}
			}
			syncGroup(idx)
		case op == 17: // the engine writes an idle log's held records
			require.NoError(t, l.FlushHeld())
		case op == 18: // commit what is synced, and retention deletes segments below
			if hs[i].term == 0 || durable[i].m.last <= hs[i].commit {
				continue
			}
			hs[i].commit = durable[i].m.last
			setHardState(i)
			if rnd.IntN(2) == 0 {
				require.NoError(t, l.FlushHardState())
			}
			require.NoError(t, l.DeleteBefore(m.first+uint64(rnd.IntN(int(hs[i].commit-m.first+2)))))
			first, err := l.FirstIndex()
			require.NoError(t, err)
			if first > m.first {
				deletes++
			}
			m.first = first
		case op == 19 && rnd.IntN(3) > 0: // (rarer: a snapshot resets retention's segments)
			m.appendN(t, l, m.last+1, 1+rnd.IntN(6), term(i))
		case op == 19: // a leader's snapshot replaces the log (a follower behind retention)
			idx := m.last + 1 + uint64(rnd.IntN(8))
			next, snapTerm := m.next+uint64(rnd.IntN(50)), term(i)
			if m.last > hs[i].commit && m.last >= m.first && rnd.IntN(2) == 0 {
				// At an uncommitted entry of the log instead.
				lo := max(hs[i].commit+1, m.first)
				idx = lo + uint64(rnd.IntN(int(m.last-lo+1)))
				next, snapTerm = m.ids[idx].Next, m.ents[idx].GetTerm()
			}
			require.NoError(t, l.ApplySnapshot(&pb.Snapshot{
				Data: EncodeSnapshotData(nil, next),
				Metadata: &pb.SnapshotMetadata{Index: proto.Uint64(idx), Term: proto.Uint64(snapTerm),
					ConfState: &pb.ConfState{Voters: []uint64{1}}},
			}))
			fresh := newModel()
			fresh.first, fresh.last, fresh.next, fresh.fid = idx+1, idx, next, next
			models[i] = fresh
			hs[i].commit = max(hs[i].commit, idx)
			syncGroup([]int{i})
			snaps++
		default: // power loss
			losses++
			checkPowerLoss(t, d, rnd, durable, models, logDir, opts, segOpts, step)
		}
	}
	checkPowerLoss(t, d, rnd, durable, models, logDir, opts, segOpts, steps)
	t.Logf("seed %d: %d steps, %d power losses, %d journal commits, %d checkpoints, %d held writes, %d retention deletions, %d snapshots",
		seed, steps, losses+1, journalCommits.Load()-commits, journalCheckpoints.Load()-checkpoints, heldWrites.Load()-heldW, deletes, snaps)
}

// checkPowerLoss recovers a tree a power loss could leave now and checks
// every log in it against its durable state (at least that) and its model
// (nothing else).
func checkPowerLoss(t *testing.T, d *powerloss.Disk, rnd *rand.Rand, durable []durableState, models []*model,
	logDir func(string, int) string, opts JournalOptions, segOpts func(*Journal) Options, step int) {
	t.Helper()
	dst := t.TempDir()
	d.Lose(t, dst, rnd)

	j, err := OpenJournal(filepath.Join(dst, "journal"), dst, opts)
	require.NoError(t, err, "step %d: journal recovery", step)
	defer j.Close()
	for i, ds := range durable {
		l, err := Open(logDir(dst, i), segOpts(j))
		require.NoError(t, err, "step %d: log %d", step, i)
		want, cur := ds.m, models[i]
		last, err := l.LastIndex()
		require.NoError(t, err)
		require.GreaterOrEqual(t, last, want.last, "step %d: log %d lost synced entries", step, i)
		require.LessOrEqual(t, last, cur.last, "step %d: log %d has entries it never wrote", step, i)
		// Retention records the new start durably before it deletes.
		first, err := l.FirstIndex()
		require.NoError(t, err)
		require.GreaterOrEqual(t, first, want.first, "step %d: log %d starts below its synced start", step, i)
		require.LessOrEqual(t, first, cur.first, "step %d: log %d lost its new start", step, i)
		if last >= first {
			got, err := l.Entries(first, last+1, 1<<62)
			require.NoError(t, err, "step %d: log %d", step, i)
			for k, e := range got {
				idx := first + uint64(k)
				require.True(t, proto.Equal(cur.ents[idx], e), "step %d: log %d entry %d: want %v got %v", step, i, idx, cur.ents[idx], e)
				if idx <= want.last {
					require.True(t, proto.Equal(want.ents[idx], e), "step %d: log %d synced entry %d changed", step, i, idx)
				}
				ids, err := l.IDs(idx)
				require.NoError(t, err)
				require.Equal(t, cur.ids[idx], ids, "step %d: log %d ids of %d", step, i, idx)
			}
		}
		hs, _, err := l.InitialState()
		require.NoError(t, err)
		require.GreaterOrEqual(t, hs.GetTerm(), ds.hs.term, "step %d: log %d lost its synced term", step, i)
		if hs.GetTerm() == ds.hs.term && ds.hs.vote != 0 {
			require.Equal(t, ds.hs.vote, hs.GetVote(), "step %d: log %d lost its synced vote", step, i)
		}
		require.LessOrEqual(t, hs.GetCommit(), last, "step %d: log %d commits beyond its log", step, i)
		require.NoError(t, l.Close())
	}
}

// TestMkdirAllSyncsParents: MkdirAll flushes the parent of every directory
// it creates, and the first MkdirAll of a process on a filesystem syncs
// that filesystem (startSync) before it creates anything.
func TestMkdirAllSyncsParents(t *testing.T) {
	root := t.TempDir()
	var dirs []string
	flushhook.Set(func(_ *os.File, dir string) { dirs = append(dirs, dir) })
	defer flushhook.Set(nil)
	newProcess()
	leaf := filepath.Join(root, "a", "b", "c")
	require.NoError(t, MkdirAll(leaf))
	require.DirExists(t, leaf)
	require.Equal(t, []string{"", root, filepath.Join(root, "a"), filepath.Join(root, "a", "b")}, dirs, `"": the filesystem`)

	dirs = nil
	require.NoError(t, MkdirAll(leaf))
	require.Empty(t, dirs, "nothing created, the filesystem synced already")

	newProcess()
	dirs = nil
	require.NoError(t, MkdirAll(leaf))
	require.Equal(t, []string{""}, dirs, "a new process syncs the filesystem once")

	file := filepath.Join(root, "f")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	require.Error(t, MkdirAll(filepath.Join(file, "d")))
}

// TestOpenSyncsNamesADeadProcessLeft: a dead process (or an operator) made
// a log's directory, and its name may be in no synced directory. Entries
// synced in it must survive a power loss, and so must the journal's
// directory.
func TestOpenSyncsNamesADeadProcessLeft(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "topics", "t.5")
	jdir := filepath.Join(root, "journal")
	d := powerloss.Watch(t, root)
	require.NoError(t, os.MkdirAll(dir, 0o755)) // the dead process
	require.NoError(t, os.MkdirAll(jdir, 0o755))
	newProcess()
	j, err := OpenJournal(jdir, root, JournalOptions{})
	require.NoError(t, err)
	m := newModel()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes, Journal: j})
	m.appendN(t, l, 1, 4, 1)
	require.NoError(t, l.Sync()) // acknowledged
	lost := t.TempDir()
	d.Lose(t, lost, nil)
	require.NoError(t, l.Close())
	require.NoError(t, j.Close())

	require.DirExists(t, filepath.Join(lost, "journal"))
	after := openT(t, filepath.Join(lost, "topics", "t.5"), Options{SegmentBytes: MinSegmentBytes})
	defer after.Close()
	m.check(t, after)
}

// TestOpenSyncsWhatADeadProcessLeft: a process that dies (the machine does
// not) leaves its unsynced appends in the page cache, and the next Open
// reads them as part of the log. raft then takes them for stored: a
// follower acknowledges them at once when the leader sends them again,
// and a candidate's log counts them. So Open makes them durable before it
// returns: a power loss after it keeps them.
//
// Run with preallocation and without: with it, the dead process's segment
// ends in allocated zeros, which Open trims and syncs anyway.
func TestOpenSyncsWhatADeadProcessLeft(t *testing.T) {
	t.Run("preallocated", testOpenSyncsWhatADeadProcessLeft)
	t.Run("not preallocated", func(t *testing.T) {
		allocateFunc = func(*os.File, int64, int64) (bool, error) { return false, nil }
		t.Cleanup(func() { allocateFunc = allocate })
		testOpenSyncsWhatADeadProcessLeft(t)
	})
}

func testOpenSyncsWhatADeadProcessLeft(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "log")
	d := powerloss.Watch(t, root)
	m := newModel()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m.appendN(t, l, 1, 4, 1)
	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(1), Vote: proto.Uint64(1), Commit: proto.Uint64(2)}))
	require.NoError(t, l.Sync())
	// Never synced: appends up to and into a new segment, whose name is
	// in no synced directory.
	for segs := len(l.segs); len(l.segs) == segs; {
		m.appendN(t, l, m.last+1, 4, 1)
	}
	m.appendN(t, l, m.last+1, 4, 1)
	require.NoError(t, l.closeFiles()) // the process dies

	newProcess()
	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m.check(t, l)
	lost := t.TempDir()
	d.Lose(t, lost, nil) // what the disk holds now: flushed bytes only
	require.NoError(t, l.Close())

	after := openT(t, filepath.Join(lost, "log"), Options{SegmentBytes: MinSegmentBytes})
	defer after.Close()
	m.check(t, after)
}
