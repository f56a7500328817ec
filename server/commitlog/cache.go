package commitlog

import (
	pb "go.etcd.io/raft/v3/raftpb"
)

// Tail cache: the most recently appended entries stay in memory, so that
// raft's reads of the log's tail — the entries a leader sends to followers
// in MsgApp and the entries every node applies once committed, both right
// after they were appended — cost no disk read and no allocation beyond the
// returned slice. The cache holds the *pb.Entry values Append was given;
// raft never modifies an entry once it is in a Ready.
//
// The cache is per log, so its bounds are small: a node with many topics
// must not hold megabytes for each (raft reads the tail back within a pass
// or two; a follower that lags further is served from disk). And its owner
// releases what raft will not read again (ReleaseCache): once applied, and
// on a leader once every follower has it, so that an idle log holds
// nothing.
const (
	cacheMaxEntries = 512
	cacheMaxBytes   = 1 << 20
)

// tailCache holds entries [first, first+len(ents)). Guarded by Log.mu.
type tailCache struct {
	first uint64
	ents  []*pb.Entry
	bytes int
}

// add appends entries that continue the cache (or restarts it), then trims
// it to its bounds.
func (c *tailCache) add(ents []*pb.Entry) {
	if len(ents) == 0 {
		return
	}
	if len(c.ents) == 0 || ents[0].GetIndex() != c.first+uint64(len(c.ents)) {
		c.reset()
		c.first = ents[0].GetIndex()
	}
	for _, e := range ents {
		c.ents = append(c.ents, e)
		c.bytes += len(e.GetData())
	}
	drop, bytes := 0, c.bytes
	for len(c.ents)-drop > cacheMaxEntries || (bytes > cacheMaxBytes && len(c.ents)-drop > 1) {
		bytes -= len(c.ents[drop].GetData())
		drop++
	}
	c.dropFirst(drop)
}

// dropFirst forgets the first n entries. The slots past the end of c.ents
// stay nil (the array must not keep forgotten entries alive).
func (c *tailCache) dropFirst(n int) {
	if n == 0 {
		return
	}
	for _, e := range c.ents[:n] {
		c.bytes -= len(e.GetData())
	}
	m := copy(c.ents, c.ents[n:])
	clear(c.ents[m:])
	c.ents = c.ents[:m]
	c.first += uint64(n)
}

// truncateFrom forgets entries >= index.
func (c *tailCache) truncateFrom(index uint64) {
	if len(c.ents) == 0 || index >= c.first+uint64(len(c.ents)) {
		return
	}
	if index <= c.first {
		c.reset()
		return
	}
	keep := int(index - c.first)
	for i := keep; i < len(c.ents); i++ {
		c.bytes -= len(c.ents[i].GetData())
		c.ents[i] = nil
	}
	c.ents = c.ents[:keep]
}

// releaseThrough forgets entries <= index.
func (c *tailCache) releaseThrough(index uint64) {
	if len(c.ents) == 0 || index < c.first {
		return
	}
	c.dropFirst(int(min(index-c.first+1, uint64(len(c.ents)))))
}

func (c *tailCache) reset() {
	clear(c.ents)
	c.ents = c.ents[:0]
	c.bytes = 0
}

// get returns entries [lo, hi) capped at maxSize (at least one), when the
// cache holds lo; ok is false otherwise. The slice is fresh.
func (c *tailCache) get(lo, hi, maxSize uint64) (ents []*pb.Entry, ok bool) {
	if len(c.ents) == 0 || lo < c.first || hi > c.first+uint64(len(c.ents)) {
		return nil, false
	}
	src := c.ents[lo-c.first : hi-c.first]
	var size uint64
	n := 0
	for _, e := range src {
		size += entrySize(recHeader{typ: uint8(e.GetType()), term: e.GetTerm(), index: e.GetIndex()}, len(e.GetData()))
		if n > 0 && size > maxSize {
			break
		}
		n++
	}
	return append([]*pb.Entry(nil), src[:n]...), true
}
