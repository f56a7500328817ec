package commitlog

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func segPaths(t testing.TB, dir string) []string {
	t.Helper()
	firsts, err := listSegments(dir)
	require.NoError(t, err)
	out := make([]string, len(firsts))
	for i, f := range firsts {
		out[i] = filepath.Join(dir, segmentName(f))
	}
	return out
}

func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	des, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(src, de.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, de.Name()), b, 0o644))
	}
}

// crashImage copies the files of open log l (a log of one directory) to a
// new directory as they are now: what the process leaves if it dies here,
// with nothing since the last sync lost yet. Tests then take from it what a
// power loss could.
func crashImage(t testing.TB, l *Log) string {
	t.Helper()
	dir := t.TempDir()
	copyDir(t, l.dir, dir)
	return dir
}

// recordEnds returns the end offsets of the records in a segment file.
func recordEnds(b []byte) []int {
	var ends []int
	for p := 0; p+recHeaderSize <= len(b); {
		h := parseHeader(b[p:])
		p += int(h.size())
		ends = append(ends, p)
	}
	return ends
}

func TestTornTailEveryOffset(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 60, 1)
	// The process dies with the last segment's records unsynced (rolls
	// synced the ones before).
	src := crashImage(t, l)
	size := l.segs[len(l.segs)-1].size // the file may be preallocated past it
	require.NoError(t, l.Close())
	paths := segPaths(t, src)
	require.Greater(t, len(paths), 1)
	lastPath := paths[len(paths)-1]
	full, err := os.ReadFile(lastPath)
	require.NoError(t, err)
	full = full[:size]
	ends := recordEnds(full)
	require.Equal(t, len(full), ends[len(ends)-1])
	lastFirst, _ := parseSegmentName(filepath.Base(lastPath))

	for cut := 0; cut <= len(full); cut++ {
		dir := t.TempDir()
		copyDir(t, src, dir)
		require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(lastPath)), full[:cut], 0o644))
		l, err := Open(dir, Options{SegmentBytes: MinSegmentBytes, NoSync: true})
		require.NoError(t, err, "cut at %d", cut)
		whole := 0
		keep := 0
		for _, e := range ends {
			if e <= cut {
				whole++
				keep = e
			}
		}
		li, _ := l.LastIndex()
		require.Equal(t, lastFirst-1+uint64(whole), li, "cut at %d", cut)
		fi, err := os.Stat(filepath.Join(dir, filepath.Base(lastPath)))
		require.NoError(t, err)
		require.Equal(t, int64(keep), fi.Size(), "file truncated to whole records")
		wantNext := m.ids[li].FirstID + uint64(m.ids[li].Count)
		require.Equal(t, wantNext, l.NextID())
		ids, err := l.IDs(li)
		require.NoError(t, err)
		require.Equal(t, m.ids[li], ids)
		// The log keeps working after recovery.
		_, err = l.Append([]*pb.Entry{ent(li+1, 2, pb.EntryType_EntryNormal, EncodeBatch(nil, 0, 0, 0, [][]byte{[]byte("x")}))}, nil)
		require.NoError(t, err)
		require.Equal(t, wantNext+1, l.NextID())
		require.NoError(t, l.Close())
	}
}

func TestCorruptLastRecordDropped(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 40, 1)
	dir := crashImage(t, l)            // the last record never synced
	size := l.segs[len(l.segs)-1].size // the file may be preallocated past it
	require.NoError(t, l.Close())
	paths := segPaths(t, dir)
	last := paths[len(paths)-1]
	b, err := os.ReadFile(last)
	require.NoError(t, err)
	b = b[:size]
	ends := recordEnds(b)
	require.Greater(t, len(ends), 1)
	b[len(b)-1] ^= 0x40 // flip a byte in the last record's data
	require.NoError(t, os.WriteFile(last, b, 0o644))

	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	li, _ := l.LastIndex()
	assert.Equal(t, uint64(39), li)
	m.appendN(t, l, 40, 5, 2)
	m.check(t, l)
}

func TestCorruptMiddleSegment(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 200, 1)
	require.NoError(t, l.Close())
	paths := segPaths(t, dir)
	require.Greater(t, len(paths), 2)
	mid := paths[1]
	b, err := os.ReadFile(mid)
	require.NoError(t, err)
	b[len(b)/2] ^= 0xff
	require.NoError(t, os.WriteFile(mid, b, 0o644))
	_, err = Open(dir, Options{SegmentBytes: MinSegmentBytes})
	require.ErrorIs(t, err, ErrCorrupt)

	// A missing middle segment is a gap.
	dir2 := t.TempDir()
	l = openT(t, dir2, Options{SegmentBytes: MinSegmentBytes})
	m = newModel()
	m.appendN(t, l, 1, 200, 1)
	require.NoError(t, l.Close())
	require.NoError(t, os.Remove(segPaths(t, dir2)[1]))
	_, err = Open(dir2, Options{SegmentBytes: MinSegmentBytes})
	require.ErrorIs(t, err, ErrCorrupt)
}

// Readers of committed messages run concurrently with appends, suffix
// truncations above the commit point, syncs and retention.
func TestConcurrentReaders(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes, NoSync: true})
	defer l.Close()
	m := newModel()
	m.appendN(t, l, 1, 20, 1)
	var commitMu sync.Mutex
	committed := m.next - 1
	msgs := map[uint64][]byte{}
	for k, v := range m.msgs {
		msgs[k] = v
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := uint64(1)
			var buf [][]byte
			for {
				select {
				case <-stop:
					return
				default:
				}
				commitMu.Lock()
				cap := committed
				commitMu.Unlock()
				var err error
				var next uint64
				buf, next, err = l.ReadMessages(buf[:0], id, cap, 50, 4096)
				if err == ErrCompacted {
					id = next
					continue
				}
				if !assert.NoError(t, err) {
					return
				}
				for k, msg := range buf {
					commitMu.Lock()
					want := msgs[id+uint64(k)]
					commitMu.Unlock()
					if !assert.Equal(t, want, msg) {
						return
					}
				}
				id = next
				if id > cap {
					id = 1
				}
				_, _ = l.IDs(1 + id%20)
				_ = l.Stats()
			}
		}()
	}
	term := uint64(1)
	for round := 0; round < 60; round++ {
		start := m.last + 1
		m.appendN(t, l, start, 10, term)
		// Overwrite the uncommitted tail with a new term.
		term++
		m.appendN(t, l, start+5, 8, term)
		commit := start + 5 + 3
		require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(term), Commit: proto.Uint64(commit)}))
		require.NoError(t, l.Sync())
		commitMu.Lock()
		committed = m.ids[commit].FirstID + uint64(m.ids[commit].Count) - 1
		for id := range m.msgs {
			if id <= committed {
				msgs[id] = m.msgs[id]
			}
		}
		commitMu.Unlock()
		if round%10 == 9 {
			require.NoError(t, l.DeleteBefore(commit-50))
			m.first = l.Stats().FirstIndex
			m.fid = l.FirstID()
		}
	}
	close(stop)
	wg.Wait()
	m.check(t, l)
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Size()
}

// TestPreallocation: the active segment's file is allocated ahead of its
// records (reading as zeros), in steps that double up to maxPrealloc and stop at the segment
// size; a crash leaves the zeros behind and Open trims them without losing
// or refusing anything; Close and roll leave files that end at their last
// record.
func TestPreallocation(t *testing.T) {
	const segBytes = 8 << 20
	src := t.TempDir()
	l := openT(t, src, Options{SegmentBytes: segBytes})
	m := newModel()
	m.appendN(t, l, 1, 5, 1)
	path := segPaths(t, src)[0]
	s := l.segs[0]
	assert.Equal(t, s.size+minPrealloc, fileSize(t, path), "first step: the records, then minPrealloc more")
	assert.Equal(t, s.alloc, fileSize(t, path))

	// Appends within the allocation leave the file's size alone; past them it
	// grows by doubling steps, never more than maxPrealloc at once.
	prev := fileSize(t, path)
	steps := 0
	for i := uint64(6); s.size < 3*maxPrealloc; i += 50 {
		m.appendN(t, l, i, 50, 1)
		got := fileSize(t, path)
		require.GreaterOrEqual(t, got, s.size)
		if got != prev {
			steps++
			require.LessOrEqual(t, got-s.size, int64(maxPrealloc), "one step holds at most maxPrealloc")
		}
		prev = got
	}
	assert.Greater(t, steps, 3)
	assert.Less(t, steps, 20, "steps double")

	// A crash: the files as they are now, zeros and all.
	require.NoError(t, l.Sync())
	crashed := t.TempDir()
	copyDir(t, src, crashed)
	require.Greater(t, fileSize(t, filepath.Join(crashed, filepath.Base(path))), s.size)
	l2 := openT(t, crashed, Options{SegmentBytes: segBytes})
	m.check(t, l2)
	assert.Equal(t, s.size, fileSize(t, filepath.Join(crashed, filepath.Base(path))), "Open trims the zeros")
	m.appendN(t, l2, m.last+1, 3, 2)
	m.check(t, l2)
	require.NoError(t, l2.Close())

	// Close trims the active segment.
	require.NoError(t, l.Close())
	assert.Equal(t, s.size, fileSize(t, path))
}

// TestPreallocationStopsAtSegmentSize: no zeros past the segment size, and
// sealed segments end at their last record.
func TestPreallocationStopsAtSegmentSize(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 100, 1)
	paths := segPaths(t, dir)
	require.Greater(t, len(paths), 2)
	for i, p := range paths {
		size := fileSize(t, p)
		if i < len(paths)-1 {
			assert.Equal(t, l.segs[i].size, size, "sealed segment %d", i)
		}
		assert.LessOrEqual(t, size, max(l.segs[i].size, int64(MinSegmentBytes)), "segment %d", i)
	}
	require.NoError(t, l.Close())
}

// TestZeroTailInSealedSegment: zeros after a sealed segment's records
// (which this log's appends never leave, see preallocate, but an older or
// interrupted writer might) are trimmed at Open; anything else there is
// corruption.
func TestZeroTailInSealedSegment(t *testing.T) {
	src := t.TempDir()
	l := openT(t, src, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 100, 1)
	require.NoError(t, l.Close())
	mid := segPaths(t, src)[1]
	size := fileSize(t, mid)

	// withTail is a copy of src with tail appended to the middle segment.
	withTail := func(tail []byte) string {
		dir := t.TempDir()
		copyDir(t, src, dir)
		f, err := os.OpenFile(filepath.Join(dir, filepath.Base(mid)), os.O_WRONLY|os.O_APPEND, 0)
		require.NoError(t, err)
		_, err = f.Write(tail)
		require.NoError(t, err)
		require.NoError(t, f.Close())
		return dir
	}

	dir := withTail(make([]byte, 10000))
	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m.check(t, l)
	require.NoError(t, l.Close())
	assert.Equal(t, size, fileSize(t, filepath.Join(dir, filepath.Base(mid))))

	tail := make([]byte, 10000)
	tail[5000] = 1
	_, err := Open(withTail(tail), Options{SegmentBytes: MinSegmentBytes})
	require.ErrorIs(t, err, ErrCorrupt)
}

// TestPreallocationFailureIsNotAWriteFailure: when the filesystem refuses to
// allocate ahead (a full disk), appends still go through, extending the
// file, and the log is not fenced.
func TestPreallocationFailureIsNotAWriteFailure(t *testing.T) {
	allocateFunc = func(*os.File, int64, int64) (bool, error) { return false, syscall.ENOSPC }
	t.Cleanup(func() { allocateFunc = allocate })
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	m := newModel()
	m.appendN(t, l, 1, 20, 1)
	require.NoError(t, l.Sync())
	m.check(t, l)
	s := l.segs[len(l.segs)-1]
	assert.Equal(t, s.size, fileSize(t, s.path), "no allocation ahead")
	require.NoError(t, l.Close())
	l = openT(t, dir, Options{})
	defer l.Close()
	m.check(t, l)
}
