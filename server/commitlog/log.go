package commitlog

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

const (
	// DefaultSegmentBytes is the segment roll size used when Options.SegmentBytes is 0.
	DefaultSegmentBytes = 64 << 20
	// MinSegmentBytes is the smallest segment roll size; smaller values are raised to it.
	MinSegmentBytes = 4 << 10
	// DefaultPageCacheBytes is the page cache a log keeps when
	// Options.PageCacheBytes is 0 (see "Page cache" in the package doc).
	DefaultPageCacheBytes = 32 << 20
)

var (
	// ErrCompacted is returned by ReadMessages for a message id below FirstID.
	ErrCompacted = errors.New("commitlog: message id compacted")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("commitlog: log closed")
	// ErrCorrupt is wrapped by errors about damaged files that cannot be repaired.
	ErrCorrupt = errors.New("commitlog: corrupt log")
)

// Options configure a Log.
type Options struct {
	// SegmentBytes: the active segment is rolled once it reaches this size.
	// Default DefaultSegmentBytes; values below MinSegmentBytes are raised.
	SegmentBytes int64
	// NoSync selects the "os" durability mode: Sync does not fsync.
	NoSync bool
	// PageCacheBytes is how much of its newest records a log leaves in the
	// OS page cache once they are durable; older records are dropped from
	// it (see "Page cache" in the package doc). Default
	// DefaultPageCacheBytes; negative leaves the page cache to the kernel.
	PageCacheBytes int64
	// Logger receives recovery warnings; nil discards them.
	Logger *slog.Logger
	// Journal, if set, lets SyncMany make this log's writes durable through
	// the node's journal (see "Journal" in the package doc). The log's
	// directory must lie under the journal's base. Ignored with NoSync.
	Journal *Journal

	// replay, set by the journal's replay, says which records the journal
	// holds for this log: Open cuts a bad record of the last segment only
	// where a crash may have torn it (journalSpans.mayCut).
	replay journalSpans
}

// EntryIDs are the message ids derived for the raft entry Index.
//
// For an entry that is not a duplicate (Dup false) its messages have ids
// FirstID .. FirstID+Count-1 and Next == FirstID+Count. An entry without
// messages (leader no-op, conf change, other payload kinds, empty batch) has
// Count 0 and FirstID == Next == the id the next message will get.
//
// Dup reports a batch of a producer (non-zero producer id) whose sequence is
// already stored (see "Idempotent appends" in the package documentation).
// It consumed no ids. FirstID and Count are then the ids the ORIGINAL batch
// got, or FirstID 0 and Count 0 when the original is no longer remembered
// (older than DedupIDWindow batches of the producer, or than DedupSeqWindow
// sequences). Next is the id after the entry's position in the log.
//
// Next is valid for every entry: all messages with ids below Next are in
// entries at or before Index. Use Next - 1, not FirstID+Count-1, as the last
// message id at or before an entry (a commit cap): for a Dup, FirstID+Count
// is the original batch's end.
type EntryIDs struct {
	Index   uint64
	FirstID uint64
	Count   uint32
	Dup     bool
	Next    uint64
}

// recentIDs is how many entries' ids a Log keeps in memory (Log.recent).
const recentIDs = 64

// Stats is a snapshot of a Log's size and bounds.
type Stats struct {
	Segments              int
	Bytes                 int64
	FirstIndex, LastIndex uint64
	FirstID, NextID       uint64
	// CachedEntries and CachedBytes: the tail cache (see ReleaseCache).
	CachedEntries, CachedBytes int
	// HeldBytes: records held in memory, not yet in the segment file
	// (write-behind, see FlushHeld); included in Bytes.
	HeldBytes int
}

// Log is one topic's raft log and message store.
//
// Concurrency: the raft.Storage methods and all writes (Append, SetHardState,
// SetConfState, Sync, ApplySnapshot, DeleteBefore, Close) must be called from
// the single goroutine that owns the log. IDs, FirstID, NextID, ReadMessages,
// Stats, ReleaseCache and the read-only Storage methods (Entries, Term,
// FirstIndex, LastIndex, Snapshot) take the lock and may be called from any
// goroutine concurrently with the owner (the replica engine's loop calls
// them while its syncer owns the log for a Sync).
type Log struct {
	dir    string
	opts   Options
	logger *slog.Logger

	// mu guards the fields below against concurrent readers. The owner
	// goroutine reads them without locking and writes them holding mu.
	mu        sync.RWMutex
	segs      []*segment
	start     logStart // first retained index, term before it, first id
	lastIndex uint64
	// recent holds the ids of the last entries, slot index % len(recent),
	// valid where the slot's Index is the index asked for (and that index
	// is in the log): the tail's ids, and those of an entry just behind it
	// (the one a leader applies while later ones are in flight), without a
	// pread. An entry appended again after a truncation overwrites its
	// slot before the log reaches its index again.
	recent [recentIDs]EntryIDs
	nextID uint64
	// baseTable is the encoded dedup table as of start.firstIndex-1 (what
	// meta and Snapshot carry). Immutable: replaced, never modified.
	baseTable []byte
	// dups holds the verdicts of the duplicate entries in the retained log,
	// by increasing index (appended by the owner under mu).
	dups   []dupRec
	terms  []termRun // covers [start.firstIndex-1, lastIndex]
	cs     *pb.ConfState
	cache  tailCache // recently appended entries, for Entries
	floor  uint64    // retention floor: first readable message id (floor.go)
	closed bool
	// segmentBytes is the roll size: Options.SegmentBytes, then
	// SetSegmentBytes's.
	segmentBytes atomic.Int64
	// writeError is sticky: set when a write failed, the log is fenced. An
	// atomic: the syncer may fence the log (SyncMany) while the engine
	// records a commit point in it (a leader applying ahead of its sync,
	// which reads it through writable).
	writeError atomic.Pointer[error]

	// Owner-only state.
	noPrealloc bool     // the filesystem cannot allocate ahead (preallocate)
	dev        uint64   // filesystem of dir (SyncMany), 0 if unknown
	syncDev    *syncDev // dev's syncfs descriptor (SyncMany); nil: none
	hs         *hsFile
	dirDirty   bool
	dirty      []*segment
	wbuf       []byte
	counts     []uint32
	pts        []indexPoint
	runs       []termRun
	dedup      *dedupTable // as of lastIndex
	// syncedTo is the log's last index as of its last completed sync:
	// the durable watermark the syncs have reached. A sync may run on
	// another goroutine while the owner records commit points (a leader
	// applying what its followers acknowledged), so it is not written
	// into hs there; the owner folds it in (foldDurable) before it writes
	// a hardstate slot.
	syncedTo atomic.Uint64

	// jpath is the log's name in the journal ("" when it does not use
	// one); jbuf holds the records written since the last sync.
	jpath string
	jbuf  []byte
	// hold: the last sync went through the journal, so appends are held
	// in memory (see holdBytes); heldEpoch is the journal file whose checkpoint
	// waits for the held records (0: none of them is journaled yet).
	hold      bool
	heldEpoch uint64
}

// Open opens (creating if needed) the log in dir and recovers it: every
// segment is scanned and verified; a torn or corrupt tail of the last segment
// is cut off (the file is truncated). A damaged record in any other segment,
// or a gap between segments, makes Open fail with an error wrapping
// ErrCorrupt.
func Open(dir string, opts Options) (*Log, error) {
	opts.SegmentBytes = segmentBytes(opts.SegmentBytes)
	if opts.PageCacheBytes == 0 {
		opts.PageCacheBytes = DefaultPageCacheBytes
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("commitlog: create dir: %w", err)
	}
	l := &Log{dir: dir, opts: opts, logger: logger.With("dir", dir), dev: deviceOf(dir)}
	l.segmentBytes.Store(opts.SegmentBytes)
	if !opts.NoSync {
		l.syncDev = registerSyncDev(l.dev, dir) // before the log writes (syncdev.go)
	}
	if j := opts.Journal; j != nil && !opts.NoSync && l.dev != 0 && l.dev == j.dev && syncfsUsable(l.dev) {
		rel, err := j.relPath(dir)
		if err != nil {
			return nil, err
		}
		l.jpath = rel
	}
	if err := l.recover(); err != nil {
		l.closeFiles()
		return nil, err
	}
	l.dropCache() // the scan read every segment
	if l.jpath != "" {
		opts.Journal.attach()
	}
	return l, nil
}

// restoreCommit raises the commit point Open lowered to the end of the
// segments (recover) back toward the stored one, as far as the log now
// reaches: after a journal replay restored entries, so that Close does not
// store a lower point than the one it found. The caller owns the log.
func (l *Log) restoreCommit() {
	if c := min(l.hs.disk.commit, l.lastIndex); c > l.hs.cur.commit {
		l.hs.cur.commit = c
	}
}

func (l *Log) recover() error {
	_ = os.Remove(filepath.Join(l.dir, metaTmpName))
	st, cs, table, _, err := readMeta(l.dir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	l.start, l.cs = st, cs
	if l.floor, err = readFloor(l.dir); err != nil {
		return err
	}
	if l.dedup, err = decodeDedupTable(table); err != nil {
		return fmt.Errorf("%w: meta: %w", ErrCorrupt, err)
	}
	l.baseTable = table
	hs, created, err := openHardState(l.dir)
	if err != nil {
		return err
	}
	l.hs = hs
	if created {
		l.dirDirty = true
	} else if !l.opts.NoSync {
		// What we read may only have been in the page cache; make it the
		// durable anchor before overwriting the other slot.
		if err := fdatasync(hs.f); err != nil {
			return fmt.Errorf("commitlog: sync hardstate: %w", err)
		}
	}

	firsts, err := listSegments(l.dir)
	if err != nil {
		return err
	}
	l.terms = []termRun{{start: st.firstIndex - 1, term: st.prevTerm}}
	l.nextID = st.firstID
	l.lastIndex = st.firstIndex - 1
	for _, first := range firsts {
		if first < st.firstIndex {
			// Left behind by retention or a snapshot whose deletion did
			// not complete: everything in it is below the log start.
			l.logger.Info("commitlog: removing segment below log start", "segment", segmentName(first))
			if err := os.Remove(filepath.Join(l.dir, segmentName(first))); err != nil {
				return fmt.Errorf("commitlog: remove stale segment: %w", err)
			}
			l.dirDirty = true
			continue
		}
		if first != l.lastIndex+1 {
			return fmt.Errorf("%w: segment %s does not follow index %d", ErrCorrupt, segmentName(first), l.lastIndex)
		}
		path := filepath.Join(l.dir, segmentName(first))
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("commitlog: open segment: %w", err)
		}
		s := &segment{first: first, last: first - 1, f: f, path: path, startTable: tableAt(l.dedup)}
		l.segs = append(l.segs, s)
		nextID, err := l.scanSegment(s, l.nextID)
		isLast := first == firsts[len(firsts)-1]
		if errors.Is(err, errTorn) {
			zero, zerr := zeroTail(s)
			if zerr != nil {
				return zerr
			}
			if isLast && !l.opts.replay.mayCut(s.last+1, l.hs.cur.durable) {
				// Not a crash's: a record that was durable. Cutting
				// would drop it and the durable records after it;
				// leave the file as it is.
				return fmt.Errorf("%w: %s: bad record at offset %d (index %d), which was durable (%s)",
					ErrCorrupt, path, s.size, s.last+1, l.opts.replay.why(l.hs.cur.durable))
			}
			switch {
			case zero:
				// A preallocated tail left by a crash: not a torn
				// write. (Segments roll at the end of their file, so
				// a sealed one has none; if it has, the next segment
				// must still start right after its last record.)
				// Debug: every topic has one after a kill -9, and a
				// line each (1,000 at 1,000 topics; review) says
				// nothing to act on.
				l.logger.Debug("commitlog: trimming preallocated tail", "segment", segmentName(first), "offset", s.size)
			case isLast:
				fi, serr := f.Stat()
				if serr != nil {
					return fmt.Errorf("commitlog: stat segment: %w", serr)
				}
				l.logger.Warn("commitlog: cutting torn tail", "segment", segmentName(first),
					"offset", s.size, "dropped_bytes", fi.Size()-s.size)
			default:
				return fmt.Errorf("%w: bad record in %s at offset %d (index %d)", ErrCorrupt, path, s.size, s.last+1)
			}
			if err := f.Truncate(s.size); err != nil {
				return fmt.Errorf("commitlog: truncate torn tail: %w", err)
			}
			if !l.opts.NoSync {
				if err := fdatasync(f); err != nil {
					return fmt.Errorf("commitlog: sync segment: %w", err)
				}
			}
		} else if err != nil {
			return err
		}
		s.alloc = s.size
		if s.empty() && !isLast {
			return fmt.Errorf("%w: empty segment %s is not the last", ErrCorrupt, path)
		}
		l.nextID = nextID
		l.lastIndex = s.last
	}
	if l.lastIndex < l.hs.cur.durable && !l.opts.replay.mayCut(l.lastIndex+1, l.hs.cur.durable) {
		// Records the log had synced are gone (a segment's end lost, or
		// the journal that held them): a node must not forget what it
		// acknowledged.
		return fmt.Errorf("%w: %s: the log ends at index %d, but records after it were durable (%s)",
			ErrCorrupt, l.dir, l.lastIndex, l.opts.replay.why(l.hs.cur.durable))
	}
	if l.hs.cur.commit > l.lastIndex {
		// A term change writes the hardstate at once, with a commit point
		// that may cover entries this log had not synced: after a power
		// loss the log can end below it. raft gets the commit cut to the
		// log (InitialState); the log's own checks (ApplySnapshot's "out of
		// date", truncateFrom's refusal) must use the same point, or a
		// snapshot between the two fences the group at every start. The
		// next hardstate write stores the lowered point.
		l.logger.Warn("commitlog: stored commit point beyond the end of the log; lowering it",
			"commit", l.hs.cur.commit, "last_index", l.lastIndex)
		l.hs.cur.commit = l.lastIndex
	}
	l.dedup.trim(l.hs.cur.commit)
	if l.lastIndex >= st.firstIndex {
		ids, err := l.idsLocked(l.lastIndex)
		if err != nil {
			return err
		}
		l.recent[ids.Index%recentIDs] = ids
	}
	if l.dirDirty && !l.opts.NoSync {
		if err := syncDir(l.dir); err != nil {
			return err
		}
		l.dirDirty = false
	}
	return nil
}

// Close persists the latest HardState (fsynced, also with NoSync), syncs
// written segments unless NoSync, and closes all files.
func (l *Log) Close() error {
	if l.closed {
		return ErrClosed
	}
	var err error
	if l.writeError.Load() == nil {
		// A cleanly closed log's files hold its records and nothing else.
		if n := len(l.segs); n > 0 {
			s := l.segs[n-1]
			err = l.writeHeld(s)
			if err == nil {
				var trimmed bool
				if trimmed, err = trimTail(s); err == nil && trimmed && !s.dirty {
					s.dirty = true
					l.dirty = append(l.dirty, s)
				}
			}
		}
		if serr := l.Sync(); err == nil {
			err = serr
		}
		// After the Sync, so that the slot carries its durable watermark.
		l.foldDurable()
		if ferr := l.hs.flush(); err == nil {
			err = ferr
		}
		if serr := l.hs.sync(false, true); err == nil {
			err = serr
		}
	}
	l.mu.Lock()
	l.closed = true
	if n := len(l.segs); n > 0 && l.segs[n-1].held != nil {
		dropHeld(l.segs[n-1]) // written above, or of a fenced log
	}
	l.mu.Unlock()
	if cerr := l.closeFiles(); err == nil {
		err = cerr
	}
	if l.jpath != "" {
		// Synced whole, the log no longer needs its journal records.
		l.opts.Journal.detach(err == nil && l.writeError.Load() == nil)
	}
	return err
}

func (l *Log) closeFiles() error {
	var err error
	for _, s := range l.segs {
		if cerr := s.close(); cerr != nil && err == nil {
			err = fmt.Errorf("commitlog: close segment: %w", cerr)
		}
	}
	if l.hs != nil {
		if cerr := l.hs.f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("commitlog: close hardstate: %w", cerr)
		}
	}
	return err
}

// InitialState implements raft.Storage. The ConfState is never nil. The
// commit index is raised to FirstIndex-1 (everything below the log start is
// committed) and, if the log ends below it, lowered to LastIndex with a
// warning: the commit point is written without an fsync, so after a power
// loss it can be ahead of what reached the disk (raft learns it again from
// the leader).
func (l *Log) InitialState() (*pb.HardState, *pb.ConfState, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, nil, ErrClosed
	}
	cur := l.hs.cur
	commit := max(cur.commit, l.start.firstIndex-1)
	if commit > l.lastIndex {
		l.logger.Warn("commitlog: commit index beyond the end of the log; lowering it",
			"commit", commit, "last_index", l.lastIndex)
		commit = l.lastIndex
	}
	hs := &pb.HardState{Term: proto.Uint64(cur.term), Vote: proto.Uint64(cur.vote), Commit: proto.Uint64(commit)}
	return hs, proto.Clone(l.cs).(*pb.ConfState), nil
}

// FirstIndex implements raft.Storage.
func (l *Log) FirstIndex() (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.start.firstIndex, nil
}

// LastIndex implements raft.Storage.
func (l *Log) LastIndex() (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.lastIndex, nil
}

// Term implements raft.Storage: valid for [FirstIndex-1, LastIndex]. It
// returns raft.ErrCompacted below and raft.ErrUnavailable above that range.
func (l *Log) Term(i uint64) (uint64, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, ErrClosed
	}
	return l.termLocked(i)
}

func (l *Log) termLocked(i uint64) (uint64, error) {
	if i < l.start.firstIndex-1 {
		return 0, raft.ErrCompacted
	}
	if i > l.lastIndex {
		return 0, raft.ErrUnavailable
	}
	rs := l.terms
	if r := rs[len(rs)-1]; i >= r.start {
		return r.term, nil
	}
	k := sort.Search(len(rs), func(k int) bool { return rs[k].start > i })
	return rs[k-1].term, nil
}

// Snapshot implements raft.Storage. It returns a metadata-only snapshot at
// FirstIndex-1; Data holds the next message id and the dedup table there
// (snapshot data version 2, see DecodeSnapshotData).
func (l *Log) Snapshot() (*pb.Snapshot, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, ErrClosed
	}
	return &pb.Snapshot{
		Data: encodeSnapshotData(nil, l.start.firstID, l.baseTable),
		Metadata: &pb.SnapshotMetadata{
			ConfState: proto.Clone(l.cs).(*pb.ConfState),
			Index:     proto.Uint64(l.start.firstIndex - 1),
			Term:      proto.Uint64(l.start.prevTerm),
		},
	}, nil
}

// FirstID returns the first retained message id.
func (l *Log) FirstID() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.firstIDLocked()
}

func (l *Log) firstIDLocked() uint64 {
	return max(l.start.firstID, min(l.floor, l.nextID))
}

// NextID returns the id the next appended message would get.
func (l *Log) NextID() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.nextID
}

// Stats returns the log's current size and bounds.
func (l *Log) Stats() Stats {
	l.mu.RLock()
	defer l.mu.RUnlock()
	st := Stats{
		Segments:   len(l.segs),
		FirstIndex: l.start.firstIndex,
		LastIndex:  l.lastIndex,
		FirstID:    l.start.firstID,
		NextID:     l.nextID,

		CachedEntries: len(l.cache.ents),
		CachedBytes:   l.cache.bytes,
	}
	for _, s := range l.segs {
		st.Bytes += s.size
		st.HeldBytes += len(s.held)
	}
	return st
}

// IDs returns the message ids of entry index. It returns raft.ErrCompacted
// below FirstIndex and raft.ErrUnavailable above LastIndex. The last
// recentIDs entries appended are answered from memory; others cost one
// small pread.
func (l *Log) IDs(index uint64) (EntryIDs, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return EntryIDs{}, ErrClosed
	}
	return l.idsLocked(index)
}

func (l *Log) idsLocked(index uint64) (EntryIDs, error) {
	if index < l.start.firstIndex {
		return EntryIDs{}, raft.ErrCompacted
	}
	if index > l.lastIndex {
		return EntryIDs{}, raft.ErrUnavailable
	}
	if r := l.recent[index%recentIDs]; r.Index == index && r.Next != 0 {
		return r, nil
	}
	_, _, h, err := l.locate(index)
	if err != nil {
		return EntryIDs{}, err
	}
	ids := EntryIDs{Index: index, FirstID: h.firstID, Count: h.count, Next: h.firstID + uint64(h.count)}
	if h.count == 0 {
		if d, ok := l.findDup(index); ok {
			ids.Dup, ids.FirstID, ids.Count = true, d.firstID, d.count
		}
	}
	return ids, nil
}

// locate finds record index (which must exist). Caller holds mu or is the owner.
func (l *Log) locate(index uint64) (int, int64, recHeader, error) {
	si := sort.Search(len(l.segs), func(k int) bool { return l.segs[k].first > index }) - 1
	if si < 0 || l.segs[si].empty() {
		return 0, 0, recHeader{}, fmt.Errorf("commitlog: index %d not found", index)
	}
	s := l.segs[si]
	pk := sort.Search(len(s.points), func(k int) bool { return s.points[k].index > index }) - 1
	off, h, err := scanSpan(s, s.points[pk], func(h *recHeader) bool { return h.index == index })
	return si, off, h, err
}

// locateID finds the record holding message id (which must exist, id < nextID).
func (l *Log) locateID(id uint64) (int, int64, recHeader, error) {
	si, p, err := l.idPoint(id)
	if err != nil {
		return 0, 0, recHeader{}, err
	}
	off, h, err := scanSpan(l.segs[si], p, func(h *recHeader) bool { return holdsID(h, id) })
	return si, off, h, err
}

// idPoint finds the segment holding message id and the index point its
// record is found from (scanSpan). Caller holds mu or is the owner.
func (l *Log) idPoint(id uint64) (int, indexPoint, error) {
	si := sort.Search(len(l.segs), func(k int) bool {
		s := l.segs[k]
		return s.empty() || s.points[0].firstID > id
	}) - 1
	if si < 0 {
		return 0, indexPoint{}, fmt.Errorf("commitlog: message id %d not found", id)
	}
	s := l.segs[si]
	pk := sort.Search(len(s.points), func(k int) bool { return s.points[k].firstID > id }) - 1
	return si, s.points[pk], nil
}

// holdsID tells whether h is the record holding message id, scanning from
// its segment's index point (the records before it end below id).
func holdsID(h *recHeader, id uint64) bool { return id < h.firstID+uint64(h.count) }

// SetSegmentBytes changes the size at which the active segment rolls (as
// Options.SegmentBytes: 0 means DefaultSegmentBytes, values below
// MinSegmentBytes are raised), from the next append on. Safe from any
// goroutine: a topic's settings change while its log is the syncer's (a
// review found the plain field written under a sync that read it).
func (l *Log) SetSegmentBytes(n int64) {
	l.segmentBytes.Store(segmentBytes(n))
}

// segmentBytes is the roll size Options.SegmentBytes = n stands for.
func segmentBytes(n int64) int64 {
	if n == 0 {
		return DefaultSegmentBytes
	}
	return max(n, MinSegmentBytes)
}
