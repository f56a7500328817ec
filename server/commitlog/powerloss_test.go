//go:build linux

package commitlog

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// disk models what a power loss leaves of a directory tree: a file's
// bytes as of its last flush, a directory's names as of its last flush.
// It learns of the flushes through the flushed hook. Files are known by
// inode and birth time (fileKey), so a rename that reached the disk keeps
// the bytes flushed under the old name, and a name removed without a
// directory flush comes back after the power loss.
//
// The model errs on the kind side in two ways, so it can miss a bug but
// never report a false one: a flush records the file as the hook reads it,
// a moment after the flush (with any write made meanwhile), and a file
// survives whole or as flushed, never torn (torn tails are the recovery
// tests' and FuzzOpen's subject).
type disk struct {
	root string

	mu    sync.Mutex
	bytes map[fileKey][]byte           // file -> contents at its last flush
	names map[string]map[string]dirent // directory -> its names at its last flush
}

// fileKey names a file for its whole life: its inode number with its
// birth time, since a removed file's number is soon reused.
type fileKey struct {
	ino  uint64
	born int64
}

func keyOf(st *unix.Statx_t) fileKey {
	return fileKey{ino: st.Ino, born: st.Btime.Sec*1e9 + int64(st.Btime.Nsec)}
}

// statx stats path relative to dirfd (the file dirfd itself when path is "").
func statx(dirfd int, path string) (fileKey, error) {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if path == "" {
		flags = unix.AT_EMPTY_PATH
	}
	var st unix.Statx_t
	if err := unix.Statx(dirfd, path, flags, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		return fileKey{}, err
	}
	if st.Mask&unix.STATX_BTIME == 0 {
		return fileKey{}, errors.New("no birth times on this filesystem")
	}
	return keyOf(&st), nil
}

type dirent struct {
	key fileKey
	dir bool
}

// watchDisk records every flush under root until the test ends, starting
// from root's current state as flushed. Set before any goroutine of the
// code under test runs, and cleared after the test's cleanups (which close
// the logs and the journal), so the hook is never written while read.
func watchDisk(t *testing.T, root string) *disk {
	t.Helper()
	if _, err := statx(unix.AT_FDCWD, root); err != nil {
		t.Skipf("power loss model: %v", err)
	}
	d := &disk{root: root, bytes: map[fileKey][]byte{}, names: map[string]map[string]dirent{}}
	d.flushAll()
	flushed = func(f *os.File, dir string) {
		switch {
		case f != nil:
			d.flushFile(t, f)
		case dir != "":
			d.flushDir(dir)
		default:
			d.flushAll()
		}
	}
	t.Cleanup(func() { flushed = nil }) // registered first: runs last
	return d
}

func (d *disk) flushFile(t *testing.T, f *os.File) {
	// Read through the descriptor: the name may have changed. Under d.mu,
	// so that what is recorded last was read last.
	rc, err := f.SyscallConn()
	if err != nil {
		t.Errorf("flushed file: %v", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cerr := rc.Control(func(fd uintptr) {
		link := fmt.Sprintf("/proc/self/fd/%d", fd)
		if path, _ := os.Readlink(link); !inTree(d.root, path) {
			return // another tree: a recovery's
		}
		var key fileKey
		if key, err = statx(int(fd), ""); err != nil {
			return
		}
		var b []byte
		if b, err = os.ReadFile(link); err == nil {
			d.bytes[key] = b
		}
	})
	if err = errors.Join(err, cerr); err != nil {
		t.Errorf("flushed file %s: %v", f.Name(), err)
	}
}

// listDir returns dir's names; those removed while it reads are left out.
func listDir(dir string) map[string]dirent {
	des, _ := os.ReadDir(dir)
	names := map[string]dirent{}
	for _, de := range des {
		if key, err := statx(unix.AT_FDCWD, filepath.Join(dir, de.Name())); err == nil {
			names[de.Name()] = dirent{key: key, dir: de.IsDir()}
		}
	}
	return names
}

func inTree(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func (d *disk) flushDir(dir string) {
	if !inTree(d.root, dir) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.names[filepath.Clean(dir)] = listDir(dir)
}

// flushAll is a syncfs: everything under root.
func (d *disk) flushAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	_ = filepath.WalkDir(d.root, func(p string, de fs.DirEntry, err error) error {
		switch {
		case err != nil: // removed meanwhile
		case de.IsDir():
			d.names[filepath.Clean(p)] = listDir(p)
		default:
			f, err := os.Open(p)
			if err != nil {
				return nil
			}
			defer f.Close()
			key, err := statx(int(f.Fd()), "")
			b, rerr := io.ReadAll(f)
			if err == nil && rerr == nil {
				d.bytes[key] = b
			}
		}
		return nil
	})
}

// lose writes to dst the tree a power loss could leave now. Each directory
// has its flushed names, or (when rnd says so) its current ones; each file
// has its flushed bytes, or (when rnd says so and the name still holds the
// same file) everything written to it: the kernel may have written any
// file back on its own, but nothing unflushed is ever assumed durable.
func (d *disk) lose(t *testing.T, dst string, rnd *rand.Rand) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	var walk func(src, out string)
	walk = func(src, out string) {
		require.NoError(t, os.MkdirAll(out, 0o755))
		names := d.names[src] // none if never flushed: every dir here is new
		current := listDir(src)
		if rnd.IntN(4) == 0 {
			names = current
		}
		for _, name := range slices.Sorted(maps.Keys(names)) {
			e, p := names[name], filepath.Join(src, name)
			if e.dir {
				walk(p, filepath.Join(out, name))
				continue
			}
			b := d.bytes[e.key] // nil: never flushed, so empty
			if cur, ok := current[name]; ok && cur.key == e.key && rnd.IntN(3) == 0 {
				if all, err := os.ReadFile(p); err == nil {
					b = all
				}
			}
			require.NoError(t, os.WriteFile(filepath.Join(out, name), b, 0o644))
		}
	}
	walk(filepath.Clean(d.root), dst)
}

// durableState is what a log must have after a power loss: its model and
// hardstate as of its last successful sync.
type durableState struct {
	m      *model
	term   uint64
	vote   uint64
	commit uint64 // not made durable by a sync: only bounds truncation
}

// TestPowerLossKeepsSyncedEntries drives logs that share a small journal
// (so that it rotates, checkpoints and recycles its files, and the logs
// hold records in memory) and small segments (so that they roll) through
// random appends, truncations, term changes, syncs of random groups and
// retention (commit points and segment deletion), and at random points takes the tree a power loss could leave (disk). In
// every such tree, recovery (journal replay, then each log's open) must
// give each log at least every entry and hardstate of its last sync,
// unchanged (less what retention deleted since), and otherwise only
// entries it wrote since.
func TestPowerLossKeepsSyncedEntries(t *testing.T) {
	if !syncfsWorks {
		t.Skip("the journal needs syncfs (Linux 5.8 or later)")
	}
	// Small segments roll often (a roll writes what a log holds); large
	// ones let logs hold records across several journal files.
	runs := []struct {
		seed    uint64
		segment int64
	}{{1, MinSegmentBytes}, {2, 64 << 10}, {3, 16 << 10}, {4, 64 << 10}}
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

	d := watchDisk(t, root) // the empty root is on disk
	j, err := OpenJournal(jdir, root, opts)
	require.NoError(t, err)
	logs := make([]*Log, n)
	models := make([]*model, n)
	hs := make([]durableState, n) // current term, vote and commit (m unused)
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
			durable[i] = durableState{m: models[i].clone(), term: hs[i].term, vote: hs[i].vote}
		}
	}

	term := func(i int) uint64 { return max(hs[i].term, 1) }
	setHardState := func(i int) {
		require.NoError(t, logs[i].SetHardState(&pb.HardState{
			Term: proto.Uint64(hs[i].term), Vote: proto.Uint64(hs[i].vote), Commit: proto.Uint64(hs[i].commit),
		}))
	}
	losses, deletes := 0, 0
	for step := range steps {
		i := rnd.IntN(n)
		m, l := models[i], logs[i]
		op := rnd.IntN(20)
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
		default: // power loss
			losses++
			checkPowerLoss(t, d, rnd, durable, models, logDir, opts, segOpts, step)
		}
	}
	checkPowerLoss(t, d, rnd, durable, models, logDir, opts, segOpts, steps)
	t.Logf("seed %d: %d steps, %d power losses, %d journal commits, %d checkpoints, %d held writes, %d retention deletions", seed, steps, losses+1,
		journalCommits.Load()-commits, journalCheckpoints.Load()-checkpoints, heldWrites.Load()-heldW, deletes)
}

// checkPowerLoss recovers a tree a power loss could leave now and checks
// every log in it against its durable state (at least that) and its model
// (nothing else).
func checkPowerLoss(t *testing.T, d *disk, rnd *rand.Rand, durable []durableState, models []*model,
	logDir func(string, int) string, opts JournalOptions, segOpts func(*Journal) Options, step int) {
	t.Helper()
	dst := t.TempDir()
	d.lose(t, dst, rnd)

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
		require.GreaterOrEqual(t, hs.GetTerm(), ds.term, "step %d: log %d lost its synced term", step, i)
		if hs.GetTerm() == ds.term && ds.vote != 0 {
			require.Equal(t, ds.vote, hs.GetVote(), "step %d: log %d lost its synced vote", step, i)
		}
		require.LessOrEqual(t, hs.GetCommit(), last, "step %d: log %d commits beyond its log", step, i)
		require.NoError(t, l.Close())
	}
}

// TestMkdirAllSyncsParents: MkdirAll flushes the parent of every directory
// it creates, and nothing for directories that exist.
func TestMkdirAllSyncsParents(t *testing.T) {
	root := t.TempDir()
	var dirs []string
	flushed = func(_ *os.File, dir string) { dirs = append(dirs, dir) }
	defer func() { flushed = nil }()
	leaf := filepath.Join(root, "a", "b", "c")
	require.NoError(t, MkdirAll(leaf))
	require.DirExists(t, leaf)
	require.Equal(t, []string{root, filepath.Join(root, "a"), filepath.Join(root, "a", "b")}, dirs)

	dirs = nil
	require.NoError(t, MkdirAll(leaf))
	require.Empty(t, dirs, "nothing created, nothing flushed")

	file := filepath.Join(root, "f")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	require.Error(t, MkdirAll(filepath.Join(file, "d")))
}
