package commitlog

import (
	"fmt"
	"slices"
	"sync/atomic"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// maxRetainedWriteBuffer caps the write buffer kept between Append calls.
const maxRetainedWriteBuffer = 16 << 20

// Preallocation: the active segment's file is allocated (fallocate) ahead
// of its records, so an append writes into blocks the file already has
// instead of extending it, and its fdatasync has less metadata to commit.
// Measured on this project's machine (three writers, one ext4 disk, mean
// write + fdatasync over two runs): 200-byte appends 182 -> 151 us, 42 KiB
// appends 414 -> 343 us; on a 3-node cluster (alternating, 6 rounds) W2 p50
// 0.77 -> 0.65 ms and p99 1.60 -> 1.31 ms, W1 562 K -> 632 K msg/s. Writing
// zeros instead did as well on the medians but cost the loop a page-cache
// write of every step (10 % of a W1 leader's CPU) and put multi-millisecond
// fsyncs in the tail. Allocation steps double from
// minPrealloc to maxPrealloc (a topic with a few messages holds little) and
// never reach past the segment size, so a segment rolls at the end of its
// file. A crash leaves the allocated blocks behind as an all-zero tail,
// which Open trims; Close trims them too.
const (
	minPrealloc = 64 << 10
	maxPrealloc = 1 << 20
)

// allocateFunc is allocate; tests replace it to make allocation fail.
var allocateFunc = allocate

// preallocate allocates s's file up to at least need, by the next step.
// It is an optimisation only: when allocation fails (a full disk), the
// write that follows extends the file itself, and fails only if the record
// does not fit either.
func (l *Log) preallocate(s *segment, need int64) {
	if need <= s.alloc || l.noPrealloc {
		return
	}
	step := min(max(s.alloc, minPrealloc), maxPrealloc)
	end := min(need+step, max(need, l.segmentBytes.Load()))
	ok, err := allocateFunc(s.f, s.alloc, end-s.alloc)
	switch {
	case err != nil:
		l.logger.Debug("commitlog: preallocation failed; appending without", "segment", s.path, "err", err)
	case !ok:
		l.noPrealloc = true
	default:
		s.alloc = end
	}
}

// trimTail cuts s's file to its records (dropping the preallocated tail). It
// reports whether the file changed.
func trimTail(s *segment) (bool, error) {
	if s.alloc <= s.size {
		return false, nil
	}
	if err := s.f.Truncate(s.size); err != nil {
		return false, fmt.Errorf("commitlog: trim %s: %w", s.path, err)
	}
	s.alloc = s.size
	return true, nil
}

func (l *Log) writable() error {
	if l.closed {
		return ErrClosed
	}
	if p := l.writeError.Load(); p != nil {
		return *p
	}
	return nil
}

// fence records a write failure: the log refuses further writes. Records
// it holds that the journal has are written if they can be; if not, the
// journal is pinned (see holdBytes).
func (l *Log) fence(err error) error {
	l.mu.Lock()
	fenced := fmt.Errorf("commitlog: log fenced after write error: %w", err)
	first := l.writeError.Swap(&fenced) == nil
	l.mu.Unlock()
	if first && l.heldEpoch != 0 {
		s := l.segs[len(l.segs)-1]
		if perr := l.putHeld(s); perr != nil {
			l.opts.Journal.pin(perr)
			l.opts.Journal.release(l.heldEpoch)
			l.heldEpoch = 0
		}
	}
	return err
}

// Append writes ents to the log and appends the derived ids of each entry to
// ids. ents must be contiguous and ents[0].Index must be at most
// LastIndex+1. If ents[0].Index <= LastIndex, the conflicting suffix is
// truncated first; truncating at or below the commit index of the latest
// HardState is refused. The truncation is made durable before returning
// (unless NoSync) because its ordering against later appends matters;
// otherwise Append does not fsync: call Sync.
//
// The records go to the active segment in one write syscall; when the active
// segment reaches Options.SegmentBytes it is fsynced (unless NoSync) and a new
// one is started, costing one more write. A KindMessages payload that fails
// validation is rejected (ErrBadBatch) before anything is written.
func (l *Log) Append(ents []*pb.Entry, ids []EntryIDs) ([]EntryIDs, error) {
	if err := l.writable(); err != nil {
		return ids, err
	}
	if len(ents) == 0 {
		return ids, nil
	}
	first := ents[0].GetIndex()
	if first < l.start.firstIndex {
		return ids, fmt.Errorf("commitlog: append at index %d below first index %d: %w", first, l.start.firstIndex, raft.ErrCompacted)
	}
	if first > l.lastIndex+1 {
		return ids, fmt.Errorf("commitlog: append at index %d leaves a gap after last index %d", first, l.lastIndex)
	}
	// Validate everything before touching the disk.
	counts := l.counts[:0]
	for i, e := range ents {
		if e.GetIndex() != first+uint64(i) {
			return ids, fmt.Errorf("commitlog: append: entries not contiguous at index %d", e.GetIndex())
		}
		if len(e.GetData()) > maxRecordData {
			return ids, fmt.Errorf("commitlog: append: entry %d too large (%d bytes)", e.GetIndex(), len(e.GetData()))
		}
		c, err := entryCount(e.GetType(), e.GetData())
		if err != nil {
			return ids, fmt.Errorf("commitlog: append: entry %d: %w", e.GetIndex(), err)
		}
		counts = append(counts, c)
	}
	l.counts = counts
	if first <= l.lastIndex {
		if err := l.truncateFrom(first); err != nil {
			return ids, err
		}
	}
	commit := l.hs.cur.commit
	l.dedup.trim(commit)

	if len(l.segs) == 0 {
		s, err := createSegment(l.dir, first)
		if err != nil {
			return ids, err
		}
		s.startTable = tableAt(l.dedup)
		l.mu.Lock()
		l.segs = append(l.segs, s)
		l.mu.Unlock()
		l.dirDirty = true
	}
	s := l.segs[len(l.segs)-1]
	// buf[start:] is the chunk for s. A journaled log encodes straight after
	// the records it owes the journal, so that the segment write and the
	// journal's copy are one buffer.
	buf, start := l.wbuf[:0], 0
	if l.jpath != "" {
		buf, start = l.jbuf, len(l.jbuf)
	}
	pts := l.pts[:0]
	runs := l.runs[:0]
	lastTerm := l.terms[len(l.terms)-1].term
	lastPoint := int64(-indexInterval)
	if len(s.points) > 0 {
		lastPoint = s.points[len(s.points)-1].off
	}
	nextID := l.nextID
	var lastIDs EntryIDs
	base := len(ids)
	chunk := 0 // index in ents of the first entry not yet flushed
	rollAt := l.segmentBytes.Load()
	for i, e := range ents {
		if pos := s.size + int64(len(buf)-start); pos >= rollAt && (pos > 0) {
			if err := l.flush(s, buf[start:], pts, runs, ents[chunk:i], ids[base+chunk:], nextID); err != nil {
				return ids, err
			}
			chunk = i
			ns, err := l.roll(s, e.GetIndex())
			if err != nil {
				return ids, err
			}
			s, start, pts, runs = ns, len(buf), pts[:0], runs[:0]
			lastPoint = int64(-indexInterval)
		}
		off := s.size + int64(len(buf)-start)
		if off-lastPoint >= indexInterval {
			pts = append(pts, indexPoint{index: e.GetIndex(), firstID: nextID, off: off})
			lastPoint = off
		}
		if t := e.GetTerm(); t != lastTerm {
			runs = append(runs, termRun{start: e.GetIndex(), term: t})
			lastTerm = t
		}
		lastIDs = l.dedup.apply(e.GetIndex(), e.GetData(), counts[i], nextID, e.GetIndex() > commit)
		if lastIDs.Dup {
			l.mu.Lock()
			l.dups = append(l.dups, dupRec{index: lastIDs.Index, firstID: lastIDs.FirstID, count: lastIDs.Count})
			l.mu.Unlock()
		}
		buf = appendRecord(buf, e, nextID, uint32(lastIDs.Next-nextID))
		ids = append(ids, lastIDs)
		nextID = lastIDs.Next
	}
	err := l.flush(s, buf[start:], pts, runs, ents[chunk:], ids[base+chunk:], nextID)
	switch {
	case l.jpath != "":
		l.jbuf = buf // SyncMany or Sync drops it
	case cap(buf) <= maxRetainedWriteBuffer:
		l.wbuf = buf[:0]
	default:
		l.wbuf = nil
	}
	l.pts, l.runs = pts[:0], runs[:0]
	return ids, err
}

// flush puts buf at the end of s and publishes the new records to readers:
// it writes buf to the file, or, for a log whose records the journal makes
// durable, holds it in memory (see holdBytes).
// ids holds the ids of ents.
func (l *Log) flush(s *segment, buf []byte, pts []indexPoint, runs []termRun, ents []*pb.Entry, ids []EntryIDs, nextID uint64) error {
	if len(ents) == 0 {
		return nil
	}
	// A buffer grows only while the process's held buffers are below
	// heldBudget; past it, records that do not fit write through.
	hold := l.hold && l.jpath != "" && (heldCap.Load() < heldBudget || cap(s.held)-len(s.held) >= len(buf))
	if !hold {
		if err := l.writeHeld(s); err != nil { // the file stays in order
			return err
		}
		l.preallocate(s, s.size+int64(len(buf)))
		if _, err := s.f.WriteAt(buf, s.size); err != nil {
			_ = s.f.Truncate(s.size)
			s.alloc = s.size
			return l.fence(fmt.Errorf("commitlog: write %s: %w", s.path, err))
		}
	}
	le := ents[len(ents)-1]
	l.mu.Lock()
	if hold {
		c := cap(s.held)
		s.held = append(s.held, buf...)
		if d := cap(s.held) - c; d != 0 {
			heldCap.Add(int64(d))
		}
	}
	s.points = append(s.points, pts...)
	s.size += int64(len(buf))
	s.last = le.GetIndex()
	l.terms = append(l.terms, runs...)
	l.lastIndex = le.GetIndex()
	for _, id := range ids[max(0, len(ids)-recentIDs):] {
		l.recent[id.Index%recentIDs] = id
	}
	l.nextID = nextID
	l.cache.add(ents)
	l.mu.Unlock()
	if !s.dirty {
		s.dirty = true
		l.dirty = append(l.dirty, s)
	}
	if len(s.held) >= holdBytes {
		return l.writeHeld(s)
	}
	return nil
}

// Write-behind. A journaled log whose last sync went through the journal
// (SyncMany with other logs) holds the records it appends in memory, in its
// last segment's held, instead of writing each Append to the file: the
// journal makes them durable, and the segment gets them in one write of up
// to holdBytes. W4's appends are about 1 KiB, each a pwrite that cost more
// CPU than the rest of storing it (14 % of a node's CPU in W4). Readers read
// held records from memory (segment.readAt).
//
// The journal may recycle a file only once every record in it is in its
// segment file (then one syncfs makes them durable): a log whose held
// records the journal has committed counts as a holder of that file's epoch
// (heldEpoch) until it writes them (writeHeld), and the file's checkpoint
// waits for its holders. Held records are written when they reach
// holdBytes, before the file is synced or rolled, truncated, replaced by a
// snapshot or closed, before a journal commit when they were first
// journaled in an older file, and on FlushHeld (the engine calls it for
// quiesced groups and while a checkpoint waits). A log that cannot write
// held records the journal already has pins the journal (Journal.pin): its
// files are never recycled and they are replayed at the next start.
//
// Memory: a buffer grows to about holdBytes and is kept between writes;
// the process's buffers together stay near heldBudget (heldCap counts
// them): past it, no buffer grows (records that do not fit write through),
// and a log that writes its records out lets its buffer go. 100 busy
// topics use 3–6 MiB of buffers, under the budget; 1,000 would use 32–64
// MiB without it (the busiest node after W4 at 1,000 topics, alternating
// runs: 238 and 232 MiB RSS with this budget, 334 and 333 without; see
// BENCHMARKS.md).
const holdBytes = 32 << 10

// heldBudget is a variable for tests.
var heldBudget int64 = 8 << 20

// heldCap is the capacity of every held buffer in the process.
var heldCap atomic.Int64

// dropHeld lets s's held buffer go. The caller holds l.mu (or no reader
// can see s).
func dropHeld(s *segment) {
	heldCap.Add(-int64(cap(s.held)))
	s.held = nil
}

// writeHeld writes the records s holds to its file.
func (l *Log) writeHeld(s *segment) error {
	if len(s.held) == 0 {
		return nil
	}
	if err := l.writable(); err != nil {
		return err
	}
	if err := l.putHeld(s); err != nil {
		return l.fence(err)
	}
	return nil
}

// putHeld is writeHeld without the fence: it writes held at the end of the
// file and releases the journal's file.
func (l *Log) putHeld(s *segment) error {
	w := s.size - int64(len(s.held))
	l.preallocate(s, s.size)
	if _, err := s.f.WriteAt(s.held, w); err != nil {
		_ = s.f.Truncate(w)
		s.alloc = w
		return fmt.Errorf("commitlog: write %s: %w", s.path, err)
	}
	l.mu.Lock()
	if cap(s.held) > 2*holdBytes || heldCap.Load() > heldBudget {
		dropHeld(s)
	} else {
		s.held = s.held[:0] // readers copy from it under mu, never keep it
	}
	l.mu.Unlock()
	heldWrites.Add(1)
	if l.heldEpoch != 0 {
		l.opts.Journal.release(l.heldEpoch)
		l.heldEpoch = 0
	}
	return nil
}

// FlushHeld writes the records the log holds in memory (write-behind) to
// its segment file, without syncing it, and lets the buffer go. The owner
// calls it when the log goes idle and when HeldWanted reports that the
// journal waits for it.
func (l *Log) FlushHeld() error {
	if !l.Holding() {
		return nil
	}
	return l.flushHeld(l.segs[len(l.segs)-1])
}

// flushHeld writes the records s holds and lets its buffer go.
func (l *Log) flushHeld(s *segment) error {
	if err := l.writeHeld(s); err != nil {
		return err
	}
	if s.held != nil {
		l.mu.Lock()
		dropHeld(s)
		l.mu.Unlock()
	}
	return nil
}

// Holding reports whether the log holds records in memory (FlushHeld).
// Owner only.
func (l *Log) Holding() bool {
	n := len(l.segs)
	return n > 0 && l.segs[n-1].held != nil
}

// HeldWanted reports whether the journal waits for this log's held records
// (a checkpoint of the file that has them). Owner only.
func (l *Log) HeldWanted() bool {
	return l.heldEpoch != 0 && l.heldEpoch <= l.opts.Journal.waiting.Load()
}

// synced notes that every record the log holds is durable (a sync of its
// own files, a syncfs or a journal commit has just completed): the durable
// watermark reaches its last index. The hardstate file gets it with the
// next write of a slot (FlushHardState, which the replica engine calls
// about once a second; a term or vote change; Close), without an fsync of
// its own: a slot that does not reach the disk leaves an older, lower
// watermark, still true. With NoSync nothing is synced and the watermark
// stays where it was.
func (l *Log) synced() {
	if !l.opts.NoSync {
		l.syncedTo.Store(l.lastIndex)
	}
}

// foldDurable moves the watermark of the hardstate the log records up to
// what its syncs reached. The owner calls it before a slot is written.
func (l *Log) foldDurable() {
	if d := l.syncedTo.Load(); d > l.hs.cur.durable {
		l.hs.cur.durable = d
	}
}

// lowerDurable lowers the durable watermark to at most index, durably,
// before records above it change (hsFile.lowerDurable).
func (l *Log) lowerDurable(index uint64) error {
	if l.syncedTo.Load() > index {
		l.syncedTo.Store(index)
	}
	if err := l.hs.lowerDurable(index); err != nil {
		return l.fence(err)
	}
	return nil
}

func (l *Log) dropJournalBuf() {
	if cap(l.jbuf) <= maxRetainedWriteBuffer {
		l.jbuf = l.jbuf[:0]
	} else {
		l.jbuf = nil
	}
}

// journalOnly reports whether the journal alone can make this log's pending
// writes durable: records only, no directory change or term/vote to flush.
func (l *Log) journalOnly() bool {
	return l.jpath != "" && len(l.jbuf) > 0 && !l.dirDirty && !(l.hs.unsynced && l.hs.needSync)
}

// voidJournal makes everything the log wrote durable in its own files, then
// records durably in the journal that the journal's earlier records of this
// log must not be replayed. It is called before the log drops a suffix
// (truncation, snapshot): replayed over the changed log, those records
// would bring back what it dropped, or leave a gap after its new end that
// recovery must refuse. A crash between the barrier and the change leaves
// the log whole and synced.
func (l *Log) voidJournal() error {
	if l.jpath == "" {
		return nil
	}
	// The held records go to the file (and the buffer with them: the
	// segments may be cut or removed next).
	if err := l.FlushHeld(); err != nil {
		return err
	}
	if err := l.Sync(); err != nil {
		return err
	}
	if err := l.opts.Journal.barrier(l.jpath); err != nil {
		return l.fence(err)
	}
	return nil
}

// roll fsyncs the full segment s (so that only the last segment can ever
// have a torn tail) and starts a new one at index first.
func (l *Log) roll(s *segment, first uint64) (*segment, error) {
	if err := l.flushHeld(s); err != nil { // only the last segment holds records
		return nil, err
	}
	if s.dirty && !l.opts.NoSync {
		if err := fdatasync(s.f); err != nil {
			return nil, l.fence(fmt.Errorf("commitlog: sync %s: %w", s.path, err))
		}
		s.dirty = false
	}
	ns, err := createSegment(l.dir, first)
	if err != nil {
		return nil, l.fence(err)
	}
	ns.startTable = tableAt(l.dedup) // the entries before first are applied to it
	l.mu.Lock()
	l.segs = append(l.segs, ns)
	l.mu.Unlock()
	l.dirDirty = true
	return ns, nil
}

// truncateFrom removes entries >= index (index in [firstIndex, lastIndex]).
func (l *Log) truncateFrom(index uint64) error {
	if index <= l.hs.cur.commit {
		return fmt.Errorf("commitlog: refusing to truncate at index %d: commit index is %d", index, l.hs.cur.commit)
	}
	newLast := EntryIDs{}
	if index > l.start.firstIndex {
		var err error
		if newLast, err = l.idsLocked(index - 1); err != nil {
			return err
		}
	}
	nextID := l.start.firstID
	if newLast.Next != 0 {
		nextID = newLast.Next
	}
	keep := len(l.segs)
	for keep > 0 && l.segs[keep-1].first >= index {
		keep--
	}
	var cut *segment
	var cutOff int64
	// When index starts a segment, the last kept one ends at index-1 and is
	// kept whole.
	if keep > 0 && l.segs[keep-1].last >= index {
		si, off, _, err := l.locate(index)
		if err != nil {
			return err
		}
		if si != keep-1 {
			return fmt.Errorf("commitlog: truncate: index %d found in unexpected segment", index)
		}
		cut, cutOff = l.segs[si], off
	}
	if err := l.voidJournal(); err != nil {
		return err
	}
	// Records from index on change next: the durable watermark must not
	// cover them (durably) first. (After voidJournal, whose sync moves it
	// up to the log's end.)
	if err := l.lowerDurable(index - 1); err != nil {
		return err
	}
	removed := slices.Clone(l.segs[keep:])
	// The dedup table is owner-only: roll it back to index-1 with the undo
	// records (every producer batch above the commit index has one).
	l.dedup.rollback(index)
	// Readers may be reading anywhere below cut.size: shrink it only while
	// holding the write lock. The file itself is cut last, below, once no
	// reader can reach past cutOff.
	l.mu.Lock()
	if cut != nil {
		cut.size, cut.alloc = cutOff, cutOff
		cut.dropped, cut.flushing = min(cut.dropped, cutOff), min(cut.flushing, cutOff)
		cut.last = index - 1
		k := len(cut.points)
		for k > 0 && cut.points[k-1].index >= index {
			k--
		}
		cut.points = cut.points[:k]
	}
	l.segs = l.segs[:keep]
	k := len(l.terms)
	for k > 1 && l.terms[k-1].start >= index {
		k--
	}
	l.terms = l.terms[:k]
	l.lastIndex = index - 1
	if newLast.Next != 0 {
		l.recent[newLast.Index%recentIDs] = newLast
	}
	l.nextID = nextID
	l.cache.truncateFrom(index)
	k = len(l.dups)
	for k > 0 && l.dups[k-1].index >= index {
		k--
	}
	l.dups = l.dups[:k]
	for _, s := range removed {
		s.close()
		s.dirty = false
	}
	l.mu.Unlock()
	// The files change from the end of the log back: the later segments go
	// (removeSuffix), then the cut segment shrinks. A crash at any point
	// leaves the segments contiguous, with some of the suffix still in them
	// (raft truncates it again); cutting the segment first could leave a
	// gap that Open refuses.
	if err := l.removeSuffix(removed); err != nil {
		return err
	}
	if l.dirDirty && !l.opts.NoSync {
		if err := syncDir(l.dir); err != nil {
			return l.fence(err)
		}
		l.dirDirty = false
	}
	if cut == nil {
		return nil
	}
	if err := cut.f.Truncate(cutOff); err != nil {
		return l.fence(fmt.Errorf("commitlog: truncate %s: %w", cut.path, err))
	}
	if l.opts.NoSync {
		return nil
	}
	if err := fdatasync(cut.f); err != nil {
		return l.fence(fmt.Errorf("commitlog: sync %s: %w", cut.path, err))
	}
	return nil
}

// SetHardState records hs. A change of term or vote is written to the
// hardstate file at once (pwrite, no fsync) and fsynced by the next Sync. A
// commit-only change is kept in memory until FlushHardState, the next term
// or vote change, or Close writes it, and is never fsynced: raft needs no
// durable commit point, and a node that restarts behind learns it from the
// leader. The log reports the recorded commit point at once.
func (l *Log) SetHardState(hs *pb.HardState) error {
	return l.SetHardStateParts(hs.GetTerm(), hs.GetVote(), hs.GetCommit())
}

// SetHardStateParts is SetHardState of a HardState with these fields.
func (l *Log) SetHardStateParts(term, vote, commit uint64) error {
	if err := l.writable(); err != nil {
		return err
	}
	l.foldDurable()
	st := hardState{term: term, vote: vote, commit: commit, durable: l.hs.cur.durable}
	if st == l.hs.cur {
		return nil
	}
	if err := l.hs.record(st); err != nil {
		return l.fence(err)
	}
	return nil
}

// FlushHardState writes a commit point that SetHardState kept in memory,
// and the durable watermark the log's syncs reached since the last write
// (pwrite, no fsync), so that a process that dies after it restarts from
// there. The replica engine calls it about once a second (every
// hardStateTicks ticks); it costs nothing when
// there is nothing to write.
func (l *Log) FlushHardState() error {
	l.foldDurable()
	if !l.hs.pending() {
		return nil
	}
	if err := l.writable(); err != nil {
		return err
	}
	if err := l.hs.flush(); err != nil {
		return l.fence(err)
	}
	return nil
}

// SetConfState durably replaces the stored ConfState before returning. A
// ConfState equal to the stored one is not written again.
func (l *Log) SetConfState(cs *pb.ConfState) error {
	if err := l.writable(); err != nil {
		return err
	}
	l.mu.Lock()
	same := l.cs != nil && l.cs.Equivalent(cs) == nil // raft's own comparison
	l.mu.Unlock()
	if same {
		return nil
	}
	c := proto.Clone(cs).(*pb.ConfState)
	if err := writeMeta(l.dir, l.start, c, l.baseTable); err != nil {
		return l.fence(err)
	}
	l.mu.Lock()
	l.cs = c
	l.mu.Unlock()
	return nil
}

// Sync makes everything written so far durable: it fdatasyncs each segment
// written since the last Sync, the hardstate file when term or vote changed,
// and the directory after files were created or deleted. It is a no-op with
// NoSync or when nothing is dirty.
func (l *Log) Sync() error {
	return l.sync(false)
}

// SyncNow makes everything the log holds durable, also with NoSync: for
// a caller about to store, durably, something that depends on it (the
// metadata registry's checkpoint, in "os" mode). With NoSync, Sync marks
// nothing dirty, so SyncNow marks every segment (and the directory) and
// syncs them as Sync would without NoSync.
func (l *Log) SyncNow() error {
	if err := l.writable(); err != nil {
		return err
	}
	l.markDirtyFrom(0)
	l.dirDirty = true
	return l.syncFiles(false, true)
}

// needsSync reports whether Sync would have to flush anything.
func (l *Log) needsSync() bool {
	if l.jpath != "" {
		// Segments stay dirty after a journaled sync; the records written
		// since are what a sync owes.
		return len(l.jbuf) > 0 || l.dirDirty || l.hs.unsynced && l.hs.needSync
	}
	return len(l.dirty) > 0 || l.dirDirty || l.hs.unsynced && l.hs.needSync
}

// sync is Sync; flushed says the caller has already made every write of
// this log durable (syncfs of its filesystem, see SyncMany), so only the
// bookkeeping is left.
func (l *Log) sync(flushed bool) error {
	return l.syncFiles(flushed, false)
}

// syncFiles is sync; force flushes also with NoSync (SyncNow).
func (l *Log) syncFiles(flushed, force bool) error {
	if err := l.writable(); err != nil {
		return err
	}
	if n := len(l.segs); n > 0 && !flushed {
		if err := l.writeHeld(l.segs[n-1]); err != nil {
			return err
		}
	}
	noSync := (l.opts.NoSync && !force) || flushed
	for _, s := range l.dirty {
		if !s.dirty {
			continue // synced at roll, or removed
		}
		if !noSync {
			if err := fdatasync(s.f); err != nil {
				return l.fence(fmt.Errorf("commitlog: sync %s: %w", s.path, err))
			}
			segmentSyncs.Add(1)
		}
		s.dirty = false
	}
	clear(l.dirty)
	l.dirty = l.dirty[:0]
	if l.dirDirty {
		if !noSync {
			if err := syncDir(l.dir); err != nil {
				return l.fence(err)
			}
		}
		l.dirDirty = false
	}
	if err := l.hs.sync(noSync, false); err != nil {
		return l.fence(err)
	}
	l.synced()
	l.dropJournalBuf()
	l.dropCache() // last: everything written is durable now (NoSync: starts its writeback)
	return nil
}
