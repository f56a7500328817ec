package commitlog

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
)

func cacheEnt(i uint64) *pb.Entry {
	return &pb.Entry{Index: new(i), Term: new(uint64(1)), Type: pb.EntryType_EntryNormal.Enum(), Data: fmt.Appendf(nil, "e%d", i)}
}

// TestEntriesSameFromCacheAndDisk: the tail cache answers exactly what the
// files do, across truncation and reopen.
func TestEntriesSameFromCacheAndDisk(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, Options{SegmentBytes: MinSegmentBytes, NoSync: true})
	require.NoError(t, err)
	var ents []*pb.Entry
	for i := uint64(1); i <= 300; i++ {
		ents = append(ents, cacheEnt(i))
	}
	_, err = l.Append(ents, nil)
	require.NoError(t, err)
	// Overwrite a suffix with another term.
	var ov []*pb.Entry
	for i := uint64(250); i <= 320; i++ {
		e := cacheEnt(i)
		e.Term = new(uint64(2))
		e.Data = fmt.Appendf(nil, "f%d", i)
		ov = append(ov, e)
	}
	_, err = l.Append(ov, nil)
	require.NoError(t, err)
	fromCache, err := l.Entries(1, 321, 1<<30)
	require.NoError(t, err)
	small, err := l.Entries(100, 321, 1)
	require.NoError(t, err)
	require.Len(t, small, 1, "maxSize still returns one entry")
	require.NoError(t, l.Close())

	l, err = Open(dir, Options{SegmentBytes: MinSegmentBytes, NoSync: true})
	require.NoError(t, err)
	defer l.Close()
	require.Empty(t, l.cache.ents, "a reopened log reads from disk")
	fromDisk, err := l.Entries(1, 321, 1<<30)
	require.NoError(t, err)
	require.Len(t, fromCache, 320)
	for i := range fromDisk {
		assert.Equal(t, fromDisk[i].GetIndex(), fromCache[i].GetIndex())
		assert.Equal(t, fromDisk[i].GetTerm(), fromCache[i].GetTerm())
		assert.Equal(t, fromDisk[i].GetData(), fromCache[i].GetData())
	}
}

func TestTailCacheBounds(t *testing.T) {
	var c tailCache
	for i := uint64(1); i <= cacheMaxEntries+10; i++ {
		c.add([]*pb.Entry{cacheEnt(i)})
	}
	assert.Len(t, c.ents, cacheMaxEntries)
	assert.Equal(t, uint64(11), c.first)
	_, ok := c.get(5, 6, 1<<20)
	assert.False(t, ok, "evicted entries come from disk")
	got, ok := c.get(11, 13, 1<<20)
	require.True(t, ok)
	assert.Equal(t, uint64(11), got[0].GetIndex())
	c.truncateFrom(100)
	assert.Len(t, c.ents, 89)
	_, ok = c.get(99, 101, 1<<20)
	assert.False(t, ok)
	// A non-contiguous add restarts the cache.
	c.add([]*pb.Entry{cacheEnt(500)})
	assert.Equal(t, uint64(500), c.first)
	assert.Len(t, c.ents, 1)
}

// TestReleaseCache: released entries leave the cache (a later read gets
// them from disk, alike), the rest stay and the cache goes on from there.
func TestReleaseCache(t *testing.T) {
	l, err := Open(t.TempDir(), Options{NoSync: true})
	require.NoError(t, err)
	defer l.Close()
	var ents []*pb.Entry
	for i := uint64(1); i <= 10; i++ {
		ents = append(ents, cacheEnt(i))
	}
	_, err = l.Append(ents, nil)
	require.NoError(t, err)

	l.ReleaseCache(0) // below the cache: nothing
	assert.Equal(t, 10, l.Stats().CachedEntries)
	l.ReleaseCache(4)
	st := l.Stats()
	assert.Equal(t, 6, st.CachedEntries)
	assert.Equal(t, 5*len("e5")+len("e10"), st.CachedBytes)
	assert.Equal(t, uint64(5), l.cache.first)
	got, err := l.Entries(1, 11, 1<<20)
	require.NoError(t, err)
	require.Len(t, got, 10)
	for i, e := range got {
		assert.Equal(t, ents[i].GetData(), e.GetData())
	}

	_, err = l.Append([]*pb.Entry{cacheEnt(11)}, nil)
	require.NoError(t, err)
	assert.Equal(t, 7, l.Stats().CachedEntries, "the cache goes on after a release")
	l.ReleaseCache(100)
	st = l.Stats()
	assert.Equal(t, 0, st.CachedEntries)
	assert.Equal(t, 0, st.CachedBytes)
	for i, e := range l.cache.ents[:cap(l.cache.ents)] {
		assert.Nil(t, e, "slot %d still holds a released entry", i)
	}
	_, err = l.Append([]*pb.Entry{cacheEnt(12)}, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, l.Stats().CachedEntries)
}

// TestTailCacheForgetsWhatItDrops: entries the cache drops, at its bounds
// or released, leave no reference behind in its array.
func TestTailCacheForgetsWhatItDrops(t *testing.T) {
	var c tailCache
	for i := uint64(1); i <= cacheMaxEntries+100; i++ {
		c.add([]*pb.Entry{cacheEnt(i)})
		if i%7 == 0 {
			c.releaseThrough(i - 3)
		}
	}
	require.NotEmpty(t, c.ents)
	for i, e := range c.ents {
		require.Equal(t, c.first+uint64(i), e.GetIndex())
	}
	for i, e := range c.ents[len(c.ents):cap(c.ents)] {
		assert.Nil(t, e, "slot %d past the end", len(c.ents)+i)
	}
	bytes := 0
	for _, e := range c.ents {
		bytes += len(e.GetData())
	}
	assert.Equal(t, bytes, c.bytes)
}
