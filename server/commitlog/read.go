package commitlog

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	minReadChunk = 64 << 10
	maxReadChunk = 16 << 20
)

// entryBox lets one allocation hold an Entry and the values its optional
// fields point to.
type entryBox struct {
	e           pb.Entry
	term, index uint64
	typ         pb.EntryType
}

// ReleaseCache drops the entries <= index from the tail cache: raft will
// not read them back soon (they are applied, and every follower has them).
// A later read of them goes to disk.
func (l *Log) ReleaseCache(index uint64) {
	l.mu.Lock()
	l.cache.releaseThrough(index)
	l.mu.Unlock()
}

// Entries implements raft.Storage: entries [lo, hi), at least one, stopping
// before the total protobuf size would exceed maxSize. The returned slice is
// freshly allocated; entry data are capacity-limited sub-slices of read
// buffers owned by the result. Returns raft.ErrCompacted if lo < FirstIndex
// and raft.ErrUnavailable if hi > LastIndex+1.
func (l *Log) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, ErrClosed
	}
	if lo < l.start.firstIndex {
		return nil, raft.ErrCompacted
	}
	if hi > l.lastIndex+1 {
		return nil, raft.ErrUnavailable
	}
	if lo >= hi {
		return nil, nil
	}
	if ents, ok := l.cache.get(lo, hi, maxSize); ok {
		return ents, nil
	}
	si, off, _, err := l.locate(lo)
	if err != nil {
		return nil, err
	}
	n := hi - lo
	ents := make([]*pb.Entry, 0, min(n, 256))
	var boxes []entryBox
	var chunk []byte
	var chunkOff int64 // file offset of chunk[0] within segment si
	var size uint64
	chunkSize := int64(min(max(maxSize, minReadChunk), maxReadChunk))
	for idx := lo; idx < hi; idx++ {
		s := l.segs[si]
		if off >= s.size {
			si++
			if si >= len(l.segs) {
				return nil, fmt.Errorf("commitlog: entry %d missing", idx)
			}
			s, off, chunk = l.segs[si], 0, nil
		}
		// Make sure the whole record at off is in chunk.
		rel := off - chunkOff
		if !recordIn(chunk, rel) {
			var hdr [recHeaderSize]byte
			if err := s.readAt(hdr[:], off); err != nil {
				return nil, err
			}
			h := parseHeader(hdr[:])
			want := min(max(chunkSize, h.size()), s.size-off)
			if h.size() > want {
				return nil, fmt.Errorf("%w: record %d in %s overruns segment", ErrCorrupt, idx, s.path)
			}
			chunk = make([]byte, want)
			if err := s.readAt(chunk, off); err != nil {
				return nil, err
			}
			chunkOff, rel = off, 0
		}
		h := parseHeader(chunk[rel:])
		if h.index != idx || h.length < recRestSize {
			return nil, fmt.Errorf("%w: expected entry %d in %s at offset %d", ErrCorrupt, idx, s.path, off)
		}
		end := rel + h.size()
		data := chunk[rel+recHeaderSize : end : end]
		if len(data) == 0 {
			data = nil
		}
		esz := entrySize(h, len(data))
		if len(ents) > 0 && size+esz > maxSize {
			break
		}
		size += esz
		if len(boxes) == 0 {
			boxes = make([]entryBox, min(hi-idx, 64))
		}
		b := &boxes[0]
		boxes = boxes[1:]
		b.term, b.index, b.typ = h.term, h.index, pb.EntryType(h.typ)
		b.e.Term, b.e.Index, b.e.Type, b.e.Data = &b.term, &b.index, &b.typ, data
		ents = append(ents, &b.e)
		off += h.size()
	}
	return ents, nil
}

// entrySize is the protobuf encoding size of an entry (as raft counts it).
func entrySize(h recHeader, dataLen int) uint64 {
	n := 3 + protowire.SizeVarint(uint64(h.typ)) + protowire.SizeVarint(h.term) + protowire.SizeVarint(h.index)
	if dataLen > 0 {
		n += 1 + protowire.SizeVarint(uint64(dataLen)) + dataLen
	}
	return uint64(n)
}

// MessageCost is what a message of n bytes counts against a read's byte
// limits (maxBytes, fill): its payload and the framing an answer carries
// it in, a tag byte and its length as a varint (protobuf's repeated bytes
// field). The limits thus bound an answer's encoded size, however small
// its messages: counted by payload alone, 4 MiB of 1-byte messages is a
// 12 MiB answer.
func MessageCost(n int) int { return protowire.SizeTag(1) + protowire.SizeBytes(n) }

// ReadMessages appends to dst the messages with ids in [id, maxID] (maxID is
// the caller's commit cap), stopping once maxCount messages or maxBytes
// (counted by MessageCost) are collected, but always returning at least one message when id
// <= maxID and it exists. maxCount or maxBytes <= 0 mean no limit: the read
// then returns everything up to maxID, read in chunks of up to 16 MiB. It
// returns the messages and the next id to read (id + number returned).
//
// If id < FirstID it returns (dst, FirstID(), ErrCompacted). If id > maxID or
// id >= NextID it returns (dst, id, nil).
//
// The messages are capacity-limited sub-slices of buffers freshly allocated
// per call (one, unless the first estimate of the size fell short); they
// stay valid after later appends or truncations.
// Safe for concurrent use with the writer, which it does not hold up while
// it reads the files (see readChunk); maxID must then be at or below the
// commit point, as the replica's reads are: records above it may be
// truncated meanwhile.
func (l *Log) ReadMessages(dst [][]byte, id, maxID uint64, maxCount, maxBytes int) ([][]byte, uint64, error) {
	return l.readMessages(dst, id, maxID, maxCount, 0, maxBytes, false, nil)
}

// Scratch holds a reader's buffers, reused from one read to the next. Not
// safe for concurrent use.
type Scratch struct {
	bufs [][]byte // the buffers of the last read, reused in order
	used int      // how many of bufs the read in progress has taken
	msgs [][]byte
}

// buffer returns n bytes for the read in progress: the next of sc's
// buffers when it is large enough, else a new one that replaces it. The
// buffers taken earlier in the read stay as they are (its messages point
// into them). A nil sc (a read into fresh buffers) gets a new one.
func (sc *Scratch) buffer(n int64) []byte {
	if sc == nil {
		return make([]byte, n)
	}
	i := sc.used
	sc.used++
	if i < len(sc.bufs) && int64(cap(sc.bufs[i])) >= n {
		return sc.bufs[i][:n]
	}
	b := make([]byte, n)
	if i < len(sc.bufs) {
		sc.bufs[i] = b
	} else {
		sc.bufs = append(sc.bufs, b)
	}
	return b
}

// ReadInto is ReadMessages reading into sc's buffers instead of fresh ones:
// a reader that is done with one answer before it asks for the next (a
// Subscribe stream; a GetMessages answer once gRPC has encoded it)
// allocates, zeroes and leaves for the collector nothing per read. The
// messages returned are valid only until the next read with sc.
func (l *Log) ReadInto(sc *Scratch, id, maxID uint64, maxCount, maxBytes int) ([][]byte, uint64, error) {
	return l.readScratch(sc, id, maxID, maxCount, 0, maxBytes, false)
}

// ReadBatchesInto is ReadBatches reading into sc's buffers, as ReadInto.
func (l *Log) ReadBatchesInto(sc *Scratch, id, maxID uint64, count, fill, maxBytes int) ([][]byte, uint64, error) {
	return l.readScratch(sc, id, maxID, count, fill, maxBytes, true)
}

func (l *Log) readScratch(sc *Scratch, id, maxID uint64, maxCount, fill, maxBytes int, whole bool) ([][]byte, uint64, error) {
	sc.used = 0
	msgs, next, err := l.readMessages(sc.msgs[:0], id, maxID, maxCount, fill, maxBytes, whole, sc)
	sc.msgs = msgs[:0]
	return msgs, next, err
}

// ReadBatches is ReadMessages with targets rather than caps: it reads on
// until it has count messages and fill bytes (MessageCost) (or reaches maxID),
// then finishes the stored batch (record) it is in. A sequential reader thus
// gets whole batches, and as much per call as fill asks for, whatever count
// it names: fewer calls for the same messages. maxBytes stays a hard cap.
func (l *Log) ReadBatches(dst [][]byte, id, maxID uint64, count, fill, maxBytes int) ([][]byte, uint64, error) {
	return l.readMessages(dst, id, maxID, count, fill, maxBytes, true, nil)
}

// readMessages reads from id: up to maxCount messages, or, when whole, at
// least maxCount messages and fill bytes, ending on a record boundary.
func (l *Log) readMessages(dst [][]byte, id, maxID uint64, maxCount, fill, maxBytes int, whole bool, sc *Scratch) ([][]byte, uint64, error) {
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return dst, id, ErrClosed
	}
	if first := l.firstIDLocked(); id < first {
		l.mu.RUnlock()
		return dst, first, ErrCompacted
	}
	r := readState{limit: min(maxID, l.nextID-1), maxCount: maxCount, fill: fill, maxBytes: maxBytes, whole: whole, next: id}
	empty := id > r.limit || l.nextID == 0
	l.mu.RUnlock()
	if empty {
		return dst, id, nil
	}
	if r.maxCount <= 0 {
		r.maxCount = math.MaxInt
	}
	if r.maxBytes <= 0 {
		r.maxBytes = math.MaxInt
	}
	var err error
	for more := true; more && err == nil; {
		// A chunk sized by an estimate can end before the targets are met
		// (a record that did not fit): read on from there, into another
		// buffer (the messages so far point into the last one).
		dst, more, err = l.readChunk(dst, &r, sc)
	}
	return dst, r.next, err
}

// readState is one readMessages call's limits and progress.
type readState struct {
	limit                    uint64 // last ID to return
	maxCount, fill, maxBytes int
	whole                    bool
	next                     uint64 // next ID to return
	got, bytes               int    // messages and their MessageCost returned so far
	scanned                  int64  // record bytes read so far
	// The current chunk's file reads, made without the lock (see
	// readChunk); a chunk ends where they run out.
	pieces  [8]filePiece
	npieces int
}

// scanBudget is how many record bytes a call reads on for its targets
// once it has a message: twice what it may return, and at least a chunk.
// Records that return nothing (duplicates, stored whole but holding no
// IDs; a client picks its producer pair, so it can store 16 MiB of
// duplicate after a 1-byte message) count too: without the budget, a read
// of tiny messages between large duplicates read on to the commit point,
// stalling the reader for nothing (a review read 208 MiB for 64 bytes of
// answer).
func (r *readState) scanBudget() int64 {
	return 2 * max(int64(min(r.fill, maxReadChunk)), int64(min(r.maxBytes, maxReadChunk)), maxReadChunk/2)
}

// filePiece is a part of a chunk read from a segment file: n bytes at file
// offset off into the chunk's buffer at at.
type filePiece struct {
	s       *segment
	off, at int64
	n       int64
}

// unlockedReadHook, when set (tests), runs before each file read made
// without the log's lock: findStart's ("locate"), then the chunk's
// ("chunk").
var unlockedReadHook func(site string)

// readChunk reads the records from r.next into one buffer, sized to what
// r's limits still allow, and appends their messages to dst. more reports
// that it stopped only because the buffer ended, with limits unmet and more
// of the log to read.
//
// The log's read lock is held while the chunk is planned (the buffer
// sized, the records a journaled log still holds in memory copied), not
// while its files are read: neither the span of headers that locates the
// chunk's first record (findStart) nor the chunk itself. A read from disk (a
// consumer far behind, whose records left the page cache long ago) can
// take milliseconds, and the engine appending to this log — and with it
// every topic of the node — would wait for the lock that long. Without the
// lock the read is safe because a record at or below the commit point
// never changes in an open segment file (only uncommitted records are
// truncated), the parse stops at r.limit before looking at anything later,
// and Go keeps a file's descriptor alive during a read even when the file
// is closed meanwhile. A segment closed (retention, a snapshot, Close) or
// cut (a truncation) during the read shows as a short read, and the chunk
// is then read again, all of it under the lock.
func (l *Log) readChunk(dst [][]byte, r *readState, sc *Scratch) (_ [][]byte, more bool, err error) {
	id := r.next
	for locked := false; ; locked = true {
		var start chunkStart
		if !locked {
			start = l.findStart(id)
		}
		l.mu.RLock()
		buf, avail, err := l.planChunk(r, sc, start) // buf is nil on error
		if !locked {
			l.mu.RUnlock()
		}
		if buf != nil {
			if !locked && unlockedReadHook != nil {
				unlockedReadHook("chunk")
			}
			err = r.readPieces(buf)
		}
		if locked {
			l.mu.RUnlock()
		}
		if buf != nil && err != nil && !locked {
			if sc != nil {
				sc.used-- // the retry takes the same buffer
			}
			continue
		}
		if buf == nil || err != nil {
			return dst, false, err
		}
		return r.parseChunk(dst, id, buf, avail)
	}
}

// chunkStart is where the record holding a chunk's first message lies,
// found by findStart; a nil s: not found, planChunk finds it.
type chunkStart struct {
	s   *segment
	off int64
	h   recHeader
}

// findStart finds the record holding message id, which must be committed,
// reading the headers from its index point without the log's lock (see
// readChunk). It gives up (a zero chunkStart) when any of that span is
// still in memory only, or the read comes up short.
func (l *Log) findStart(id uint64) chunkStart {
	// A log closed or an id deleted meanwhile: planChunk, which checks
	// both under the lock, reports it.
	l.mu.RLock()
	si, p, err := l.idPoint(id)
	var s *segment
	var end int64
	if err == nil {
		s = l.segs[si]
		end = min(p.off+spanSize, s.size)
		if end > s.size-int64(len(s.held)) {
			s = nil
		}
	}
	l.mu.RUnlock()
	if s == nil {
		return chunkStart{}
	}
	if unlockedReadHook != nil {
		unlockedReadHook("locate")
	}
	bp := spanPool.Get().(*[]byte)
	defer spanPool.Put(bp)
	buf := (*bp)[:end-p.off]
	if m, _ := s.f.ReadAt(buf, p.off); m < len(buf) {
		return chunkStart{}
	}
	off, h, ok := matchHeader(buf, p.off, func(h *recHeader) bool { return holdsID(h, id) })
	if !ok {
		return chunkStart{}
	}
	return chunkStart{s: s, off: off, h: h}
}

// planChunk locates r.next, sizes the chunk's buffer and returns it with
// the records of the log's memory copied in and the file reads that fill
// the rest in r.pieces; avail is what the log holds from r.next. A nil
// buffer means nothing to read: the log closed (ErrClosed) or r.next was
// deleted since the read began (ErrCompacted for a read that has no
// message yet, with r.next moved to the first ID; else no error, and the
// read ends with what it has). start is where findStart found r.next's
// record, if it did. Caller holds l.mu.
func (l *Log) planChunk(r *readState, sc *Scratch, start chunkStart) (buf []byte, avail int64, err error) {
	if l.closed {
		return nil, 0, ErrClosed
	}
	if first := l.firstIDLocked(); r.next < first {
		if r.got > 0 {
			return nil, 0, nil
		}
		r.next = first
		return nil, 0, ErrCompacted
	}
	id := r.next
	si, off, h := -1, start.off, start.h
	if s := start.s; s != nil {
		// Still the log's, unless deleted since.
		k := sort.Search(len(l.segs), func(k int) bool { return l.segs[k].first >= s.first })
		if k < len(l.segs) && l.segs[k] == s {
			si = k
		}
	}
	if si < 0 {
		if si, off, h, err = l.locateID(id); err != nil {
			return nil, 0, err
		}
	}

	// Size the buffer: the first record entirely, then an estimate of what the
	// limits allow, bounded by what the log holds.
	avail = l.segs[si].size - off
	for _, s := range l.segs[si+1:] {
		avail += s.size
	}
	// The byte limits count MessageCost; the buffer holds records: scale
	// by the first record's ratio (whose messages cost their payload and
	// length, as stored, and a tag byte each). Every term is clamped to a
	// chunk before it is multiplied.
	toRecords := func(b int64) int64 { return b }
	if cost := int64(h.dataLen()) - BatchHeaderSize + int64(h.count); h.count > 0 && cost > 0 {
		toRecords = func(b int64) int64 { return b * h.size() / cost }
	}
	est := min(maxReadChunk, toRecords(int64(min(maxReadChunk, r.maxBytes-r.bytes))))
	if h.count > 0 && r.maxCount < math.MaxInt {
		per := int64(h.dataLen())/int64(h.count) + 1
		fill := toRecords(int64(max(0, min(r.fill-r.bytes, maxReadChunk))))
		est = min(est, max(int64(min(r.maxCount-r.got, maxReadChunk))*per, fill))
	}
	skip := int64(0)
	if h.count > 0 && id > h.firstID {
		skip = (int64(h.dataLen()) * int64(id-h.firstID)) / int64(h.count)
	}
	// The messages wanted end inside a record, which is read whole: up to
	// the record boundary after them, counted in records like the first
	// (exact for uniform batches; a short estimate reads on).
	span := (skip + est + h.size() - 1) / h.size() * h.size()
	want := min(max(h.size(), span+recHeaderSize+minReadChunk/16), avail)
	buf = sc.buffer(want)

	// The file reads, and the records held in memory (the end of the last
	// segment) copied now: they are written out and their buffer reused
	// once the lock is released.
	r.npieces = 0
	filled := int64(0)
	for filled < want && si < len(l.segs) {
		s := l.segs[si]
		n := min(want-filled, s.size-off)
		w := s.size - int64(len(s.held))
		if off < w && n > 0 && r.npieces == len(r.pieces) {
			// Out of pieces (segments far smaller than a chunk): the
			// chunk ends here, and the read goes on with the next one.
			buf = buf[:filled]
			break
		}
		if off < w && n > 0 {
			k := min(n, w-off)
			r.pieces[r.npieces] = filePiece{s: s, off: off, at: filled, n: k}
			r.npieces++
			if k < n {
				if err := s.readAt(buf[filled+k:filled+n], off+k); err != nil {
					return nil, 0, err
				}
			}
		} else if n > 0 {
			if err := s.readAt(buf[filled:filled+n], off); err != nil {
				return nil, 0, err
			}
		}
		filled += n
		si, off = si+1, 0
	}
	return buf, avail, nil
}

// readPieces reads r.pieces into buf.
func (r *readState) readPieces(buf []byte) error {
	for _, p := range r.pieces[:r.npieces] {
		if m, err := p.s.f.ReadAt(buf[p.at:p.at+p.n], p.off); int64(m) < p.n {
			return fmt.Errorf("commitlog: read %s at %d: %w", p.s.path, p.off, err)
		}
	}
	return nil
}

// parseChunk appends the messages of the records in buf (read from id, the
// log holding avail bytes from there) to dst; see readChunk.
func (r *readState) parseChunk(dst [][]byte, id uint64, buf []byte, avail int64) (_ [][]byte, more bool, err error) {
	// The answer's slice headers in one allocation, sized by the first
	// record's messages per byte: appending them one by one regrew dst
	// about 14 times for a 1 MiB answer (11 % of a follower's CPU under
	// W3, in runtime.growslice). At most one header per 32 bytes of
	// buffer: a first record of tiny messages followed by large ones must
	// not size it for a buffer full of tiny ones (smaller messages grow
	// it by append, as before).
	filled := int64(len(buf))
	if h := parseHeader(buf); h.count > 0 {
		n := min(int(filled*int64(h.count)/h.size()), int(filled/32)) + 1
		if !r.whole {
			n = min(n, r.maxCount-r.got)
		}
		dst = slices.Grow(dst, n)
	}

	p := int64(0)
	// Past r.limit the records may be uncommitted, and read without the
	// lock, torn by a truncation: the parse stops before them.
	for p+recHeaderSize <= filled && r.next <= r.limit {
		h := parseHeader(buf[p:])
		if h.length < recRestSize {
			return dst, false, fmt.Errorf("%w: bad record header", ErrCorrupt)
		}
		end := p + h.size()
		if end > filled {
			break
		}
		if h.count > 0 && r.next < h.firstID+uint64(h.count) {
			if h.firstID > r.next {
				return dst, false, fmt.Errorf("%w: message ids not contiguous at %d", ErrCorrupt, r.next)
			}
			if h.dataLen() < BatchHeaderSize {
				return dst, false, fmt.Errorf("%w: malformed batch in entry %d", ErrCorrupt, h.index)
			}
			data := buf[p+recHeaderSize+BatchHeaderSize : end]
			for i := uint64(0); i < uint64(h.count); i++ {
				ml, k := binary.Uvarint(data)
				if k <= 0 || ml > uint64(len(data)-k) {
					return dst, false, fmt.Errorf("%w: malformed batch in entry %d", ErrCorrupt, h.index)
				}
				m := data[k : k+int(ml) : k+int(ml)]
				data = data[k+int(ml):]
				if h.firstID+i < r.next {
					continue
				}
				if r.next > r.limit {
					return dst, false, nil
				}
				// whole: the targets are met only at a record boundary.
				c := MessageCost(len(m))
				if r.got > 0 && (r.got >= r.maxCount && (!r.whole || i == 0 && r.bytes >= r.fill) || r.bytes+c > r.maxBytes) {
					return dst, false, nil
				}
				dst = append(dst, m)
				r.got++
				r.bytes += c
				r.next++
			}
		}
		p = end
	}
	// p is at a record boundary: read on only if that is not where the
	// targets end, nor past the scan budget.
	r.scanned += p
	met := r.got >= r.maxCount && r.bytes >= r.fill || r.bytes >= r.maxBytes || r.scanned >= r.scanBudget()
	return dst, r.next > id && p < avail && r.next <= r.limit && !met, nil
}

// recordIn reports whether a whole record starts at rel in chunk.
func recordIn(chunk []byte, rel int64) bool {
	if chunk == nil || rel+recHeaderSize > int64(len(chunk)) {
		return false
	}
	h := parseHeader(chunk[rel:])
	return rel+h.size() <= int64(len(chunk))
}
