package commitlog

import (
	"os"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// resident reports, per 4 KiB page of the file at path, whether the page
// cache holds it (mincore of a shared mapping).
func resident(t *testing.T, path string) []bool {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	if st.Size() == 0 {
		return nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, err)
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+4095)/4096)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	out := make([]bool, len(vec))
	for i, v := range vec {
		out[i] = v&1 != 0
	}
	return out
}

// cachedDir is a temporary directory whose files' pages can be dropped
// from the page cache: not on tmpfs, where the cache is the storage.
func cachedDir(t *testing.T) string {
	dir := t.TempDir()
	var fs unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &fs))
	if fs.Type == unix.TMPFS_MAGIC {
		t.Skip("tmpfs: the page cache is the files' storage and cannot be dropped")
	}
	return dir
}

// cacheReach says how far back from the log's newest record its segments'
// pages are cached without a gap, and how many pages before that are.
func cacheReach(t *testing.T, l *Log) (reach int64, strays int) {
	t.Helper()
	var pages []bool // the records' pages, oldest first
	for _, s := range l.segs {
		pages = append(pages, resident(t, s.path)[:(s.size+4095)/4096]...)
	}
	i := len(pages)
	for i > 0 && pages[i-1] {
		i--
	}
	for _, in := range pages[:i] {
		if in {
			strays++
		}
	}
	return int64(len(pages)-i) * 4096, strays
}

// TestPageCacheDropsBehind: a log leaves about PageCacheBytes of its newest
// synced records in the page cache, drops the older ones as it syncs and
// after Open's scan, and still reads everything back.
func TestPageCacheDropsBehind(t *testing.T) {
	dir := cachedDir(t)
	const keep = 2 << 20
	opts := Options{SegmentBytes: 3 << 20, PageCacheBytes: keep}
	l := openT(t, dir, opts)
	var want [][]byte
	for i := uint64(1); i <= 160; i++ { // 160 x 64 KiB: ~10 MiB in 4 segments
		want = append(want, appendUniform(t, l, i, 16, 4096)...)
		if i%4 == 0 {
			require.NoError(t, l.Sync())
		}
	}
	require.NoError(t, l.Sync())
	require.Greater(t, l.Stats().Segments, 3)
	reach, strays := cacheReach(t, l)
	assert.GreaterOrEqual(t, reach, int64(keep), "the newest PageCacheBytes stay cached")
	assert.LessOrEqual(t, reach, int64(keep+2*dropChunk), "older records are dropped")
	assert.Zero(t, strays, "nothing cached before the window")

	got, _, err := l.ReadMessages(nil, 1, l.NextID()-1, len(want), 64<<20)
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.NoError(t, l.Close())

	// Open reads every segment; it drops them again.
	l = openT(t, dir, opts)
	reach, strays = cacheReach(t, l)
	assert.LessOrEqual(t, reach, int64(keep+2*dropChunk))
	assert.Zero(t, strays)
	require.NoError(t, l.Close())

	// Negative: the page cache is the kernel's.
	opts.PageCacheBytes = -1
	l = openT(t, dir, opts)
	defer l.Close()
	reach, _ = cacheReach(t, l)
	assert.Greater(t, reach, int64(keep+2*dropChunk))
}

// TestPageCacheNoSync: without fsync the log starts the writeback of what
// leaves the window first, so that most of it can be dropped.
func TestPageCacheNoSync(t *testing.T) {
	dir := cachedDir(t)
	// A wide window: the writeback of a record starts 4 MiB of appends
	// before it is dropped.
	const keep = 8 << 20
	l := openT(t, dir, Options{SegmentBytes: 6 << 20, PageCacheBytes: keep, NoSync: true})
	defer l.Close()
	for i := uint64(1); i <= 480; i++ { // ~30 MiB
		appendUniform(t, l, i, 16, 4096)
		require.NoError(t, l.Sync())
	}
	reach, strays := cacheReach(t, l)
	assert.LessOrEqual(t, reach, int64(keep+2*dropChunk))
	old := max(int(l.Stats().Bytes-reach)/4096, 0)
	// A page still being written back when it leaves the window stays
	// cached: allow some, not most (all of them stay without the early
	// writeback).
	assert.Less(t, strays, old/2, "pages cached before the window, of %d", old)
}
