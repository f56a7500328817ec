package commitlog

import (
	"fmt"
	"os"
	"slices"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// DeleteBefore deletes whole segments whose entries are all below index and
// at or below the commit index of the latest HardState. The active (last)
// segment is never deleted. FirstIndex and FirstID move to the start of the
// first kept segment; the new start (index, term of index-1, first id) is
// recorded durably in the meta file before any file is deleted, so
// Term(FirstIndex-1) stays valid across restarts.
func (l *Log) DeleteBefore(index uint64) error {
	if err := l.writable(); err != nil {
		return err
	}
	commit := l.hs.cur.commit
	n := 0
	for n < len(l.segs)-1 {
		s := l.segs[n]
		if s.empty() || s.last >= index || s.last > commit {
			break
		}
		n++
	}
	if n == 0 {
		return nil
	}
	keep := l.segs[n]
	st := logStart{firstIndex: keep.first, firstID: l.nextID}
	if !keep.empty() {
		st.firstID = keep.points[0].firstID
	}
	var err error
	if st.prevTerm, err = l.termLocked(keep.first - 1); err != nil {
		return fmt.Errorf("commitlog: delete before %d: %w", index, err)
	}
	// The dedup table as of the new start: the one the first kept segment
	// started with. Without it (too large to keep), replay the segments to
	// delete onto the table as of the old start: that reads them whole,
	// inside the engine's pass, from disk (their pages were dropped long
	// ago): 64 MiB a segment.
	table := keep.startTable
	if table == nil {
		t, err := decodeDedupTable(l.baseTable)
		if err != nil {
			return fmt.Errorf("%w: dedup table: %w", ErrCorrupt, err)
		}
		nextID := l.start.firstID
		for _, s := range l.segs[:n] {
			if nextID, err = replayDedup(s, t, nextID); err != nil {
				return err
			}
		}
		if nextID != st.firstID {
			return fmt.Errorf("%w: delete before %d: replay ends at id %d, not %d", ErrCorrupt, index, nextID, st.firstID)
		}
		table = t.encode(nil)
	}
	if err := writeMeta(l.dir, st, l.cs, table); err != nil {
		return l.fence(err)
	}
	removed := slices.Clone(l.segs[:n])
	l.mu.Lock()
	l.segs = slices.Delete(l.segs, 0, n)
	l.start = st
	l.baseTable = table
	k := 0
	for k < len(l.dups) && l.dups[k].index < st.firstIndex {
		k++
	}
	l.dups = slices.Delete(l.dups, 0, k)
	k = 0 // keep the run covering firstIndex-1, starting it there
	for k+1 < len(l.terms) && l.terms[k+1].start <= st.firstIndex-1 {
		k++
	}
	l.terms = slices.Delete(l.terms, 0, k)
	l.terms[0].start = st.firstIndex - 1
	for _, s := range removed {
		s.close()
		s.dirty = false
	}
	l.mu.Unlock()
	return l.removeFiles(removed)
}

// removeFiles deletes closed segment files. The directory is fsynced by the
// next Sync: a segment that reappears after a crash lies below the log start
// recorded in meta and is removed by Open.
func (l *Log) removeFiles(segs []*segment) error {
	for _, s := range segs {
		if err := removeSegment(s.path); err != nil && !os.IsNotExist(err) {
			return l.fence(fmt.Errorf("commitlog: remove segment: %w", err))
		}
	}
	if len(segs) > 0 {
		l.dirDirty = true
	}
	return nil
}

// removeSuffix deletes closed segment files that end the log, given
// oldest first: newest first, each removal durable before the next, so
// that a crash part way leaves the remaining segments contiguous (oldest
// first, or a filesystem persisting the removals in another order, could
// leave a gap that Open refuses). The caller syncs the directory after
// the last.
func (l *Log) removeSuffix(segs []*segment) error {
	for i := len(segs) - 1; i >= 0; i-- {
		if err := l.removeFiles(segs[i : i+1]); err != nil {
			return err
		}
		if i > 0 && !l.opts.NoSync {
			if err := syncDir(l.dir); err != nil {
				return l.fence(err)
			}
		}
	}
	return nil
}

// removeSegment is os.Remove; tests make it fail to stop a removal part
// way, as a crash would.
var removeSegment = os.Remove

// ApplySnapshot discards the whole log and restarts it after the snapshot:
// FirstIndex becomes snap.Metadata.Index+1, Term(FirstIndex-1) the snapshot
// term, and message numbering continues at the next id carried in snap.Data
// (see DecodeSnapshotData); the dedup table restarts from the one it carries
// (version 2; version 1 data carries none: empty table). The ConfState and log start are persisted durably.
// It returns raft.ErrSnapOutOfDate if the snapshot is not above the commit
// index.
func (l *Log) ApplySnapshot(snap *pb.Snapshot) error {
	if err := l.writable(); err != nil {
		return err
	}
	md := snap.GetMetadata()
	idx, term := md.GetIndex(), md.GetTerm()
	if idx <= l.hs.cur.commit || idx < l.start.firstIndex-1 {
		return raft.ErrSnapOutOfDate
	}
	nextID, table, err := decodeSnapshotData(snap.GetData())
	if err != nil {
		return err
	}
	dedup, err := decodeDedupTable(table)
	if err != nil {
		return fmt.Errorf("commitlog: snapshot data: %w", err)
	}
	table = slices.Clone(table)
	st := logStart{firstIndex: idx + 1, prevTerm: term, firstID: nextID}
	cs := proto.Clone(pb.EnsureConfState(md.GetConfState())).(*pb.ConfState)

	// 0. The journal's records of the old log must not be replayed onto
	// the new start. The log's records above idx go, and new ones take
	// their indexes: the durable watermark must not cover them (durably)
	// first (after voidJournal, whose sync moves it up to the log's end).
	if err := l.voidJournal(); err != nil {
		return err
	}
	if err := l.lowerDurable(idx); err != nil {
		return err
	}
	// 1. Remove segments that start above the snapshot (all uncommitted) so
	// that no stale segment can follow the new start after a crash.
	k := len(l.segs)
	for k > 0 && l.segs[k-1].first > idx {
		k--
	}
	tail := slices.Clone(l.segs[k:])
	l.mu.Lock()
	l.segs = l.segs[:k]
	for _, s := range tail {
		s.close()
		s.dirty = false
	}
	l.mu.Unlock()
	if err := l.removeSuffix(tail); err != nil {
		return err
	}
	if len(tail) > 0 {
		if err := syncDir(l.dir); err != nil {
			return l.fence(err)
		}
	}
	// 2. Record the new start durably; the remaining segments all lie below it.
	if err := writeMeta(l.dir, st, cs, table); err != nil {
		return l.fence(err)
	}
	// 3. Drop everything else.
	rest := slices.Clone(l.segs)
	l.mu.Lock()
	l.cache.reset()
	l.segs = l.segs[:0]
	l.start = st
	l.cs = cs
	l.lastIndex = idx
	l.nextID = nextID
	l.baseTable = table
	l.dups = nil
	l.dedup = dedup
	l.terms = append(l.terms[:0], termRun{start: idx, term: term})
	for _, s := range rest {
		s.close()
		s.dirty = false
	}
	l.mu.Unlock()
	if err := l.removeFiles(rest); err != nil {
		return err
	}
	// Everything up to idx is committed by definition.
	hs := l.hs.cur
	hs.commit = max(hs.commit, idx)
	if err := l.hs.write(hs); err != nil {
		return l.fence(err)
	}
	return nil
}
