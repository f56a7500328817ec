package commitlog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
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
	src := t.TempDir()
	l := openT(t, src, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 60, 1)
	require.NoError(t, l.Close())
	paths := segPaths(t, src)
	require.Greater(t, len(paths), 1)
	lastPath := paths[len(paths)-1]
	full, err := os.ReadFile(lastPath)
	require.NoError(t, err)
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

// lastSegment writes n entries of size bytes (spanning sectors) to a log in
// dir (one segment) and returns its segment's path, contents and record ends.
func lastSegment(t *testing.T, dir string, n, size int, fill func(i int) byte) (string, []byte, []int) {
	t.Helper()
	l := openT(t, dir, Options{SegmentBytes: 1 << 30})
	ents := make([]*pb.Entry, n)
	for i := range ents {
		big := bytes.Repeat([]byte{fill(i)}, size)
		ents[i] = ent(uint64(i+1), 1, pb.EntryType_EntryNormal, EncodeBatch(nil, 0, 0, 0, [][]byte{big}))
	}
	_, err := l.Append(ents, nil)
	require.NoError(t, err)
	require.NoError(t, l.Close())
	paths := segPaths(t, dir)
	last := paths[len(paths)-1]
	b, err := os.ReadFile(last)
	require.NoError(t, err)
	ends := recordEnds(b)
	require.Greater(t, len(ends), 3)
	return last, b, ends
}

func letters(i int) byte { return byte('a' + i%26) }

// A record damaged after it was written is not cut as a torn write: it and
// what follows it may have been acknowledged. Only "os" mode, which
// promises nothing after a power loss, cuts it.
func TestDamagedLastSegmentIsCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		record func(ends []int) int // which record of the last segment
	}{
		{"last record", func(ends []int) int { return len(ends) - 1 }},
		{"a record before others", func(ends []int) int { return len(ends) - 3 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			last, b, ends := lastSegment(t, dir, 8, 3000, letters)
			i := tc.record(ends)
			b[ends[i]-1] ^= 0x40 // a bit of the record's data
			require.NoError(t, os.WriteFile(last, b, 0o644))

			_, err := Open(dir, Options{SegmentBytes: 1 << 30})
			require.ErrorIs(t, err, ErrCorrupt)
			require.ErrorContains(t, err, "damaged record")
			fi, err := os.Stat(last)
			require.NoError(t, err)
			require.Equal(t, int64(len(b)), fi.Size(), "nothing cut")

			l := openT(t, dir, Options{SegmentBytes: 1 << 30, NoSync: true})
			defer l.Close()
			li, _ := l.LastIndex()
			first, _ := parseSegmentName(filepath.Base(last))
			require.Equal(t, first-1+uint64(i), li, "os mode cuts at the damaged record")
		})
	}
}

// A record with any sector-aligned piece of zeros is what a crash leaves of
// an interrupted write: it and everything after it are cut.
func TestTornRecordWithZeroSectorIsCut(t *testing.T) {
	for _, tc := range []struct {
		name string
		zero func(start, end int) (int, int) // the zeroed range of the record [start, end)
	}{
		{"its header", func(start, _ int) (int, int) { return start, start + recHeaderSize }},
		{"a whole sector of its data", func(start, _ int) (int, int) {
			s := (start/sectorSize + 2) * sectorSize
			return s, s + sectorSize
		}},
		{"its last piece", func(_, end int) (int, int) { return end / sectorSize * sectorSize, end }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			last, b, ends := lastSegment(t, dir, 8, 3000, letters)
			i := len(ends) - 3 // records follow it
			lo, hi := tc.zero(ends[i-1], ends[i])
			require.GreaterOrEqual(t, lo, ends[i-1])
			require.LessOrEqual(t, hi, ends[i])
			clear(b[lo:hi])
			require.NoError(t, os.WriteFile(last, b, 0o644))

			l := openT(t, dir, Options{SegmentBytes: 1 << 30})
			defer l.Close()
			li, _ := l.LastIndex()
			first, _ := parseSegmentName(filepath.Base(last))
			require.Equal(t, first-1+uint64(i), li)
			fi, err := os.Stat(last)
			require.NoError(t, err)
			require.Equal(t, int64(ends[i-1]), fi.Size(), "cut at the torn record")
		})
	}
}

// A zero piece that only part of a sector of the record holds (the rest of
// the sector is the record's too) is not a torn write's; nor is one where
// tornRecord's reads of a long record meet.
func TestPartSectorOfZerosIsDamage(t *testing.T) {
	for _, size := range []int{3000, 100 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			dir := t.TempDir()
			last, b, ends := lastSegment(t, dir, 8, size, letters)
			start := ends[len(ends)-4]
			lo := (start/sectorSize + 2) * sectorSize
			hi := lo + sectorSize - 1
			if size > 64<<10 {
				lo = start + 64<<10 // past the first read
				hi = (lo/sectorSize + 1) * sectorSize
			}
			clear(b[lo:hi])
			require.NoError(t, os.WriteFile(last, b, 0o644))
			_, err := Open(dir, Options{SegmentBytes: 1 << 30})
			require.ErrorIs(t, err, ErrCorrupt)
		})
	}
}

// A record whose CRC holds but whose content fails a check (here: its
// index) was written whole: zeros in its data are its messages', not a
// torn write's.
func TestIntactRecordFailingItsChecksIsDamage(t *testing.T) {
	dir := t.TempDir()
	last, b, ends := lastSegment(t, dir, 8, 3000, func(int) byte { return 0 })
	rec := b[ends[len(ends)-4]:ends[len(ends)-3]]
	binary.LittleEndian.PutUint64(rec[8:], 1000) // its raft index
	binary.LittleEndian.PutUint32(rec[4:], crc32.Checksum(rec[recPrefixSize:], castagnoli))
	require.NoError(t, os.WriteFile(last, b, 0o644))
	_, err := Open(dir, Options{SegmentBytes: 1 << 30})
	require.ErrorIs(t, err, ErrCorrupt)
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
