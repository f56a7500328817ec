package commitlog

import (
	"cmp"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// DefaultJournalBytes is the size at which the journal moves to a new file.
const DefaultJournalBytes = 64 << 20

const (
	journalPrefix   = "journal-"
	journalSuffix   = ".wal"
	journalSpare    = "spare.wal"
	journalHdrSize  = 16 // u32 body length, u32 crc32c of [8, 16+length), u64 epoch
	journalGrowStep = 1 << 20

	kindRecords = 1 // body: the log's records written since its last sync
	kindBarrier = 2 // body: the log's earlier records in the journal are void
	// kindSalt is a file's first entry (no path; payload: 8 random bytes).
	// Its CRC is plain; every later entry's CRC is seeded with the salt, so
	// bytes a recycled file still holds (producers' messages included) can
	// never pass for an entry of the file's new epoch. A file whose first
	// entry is of another kind was written by an earlier build: its
	// entries are read with plain CRCs.
	kindSalt = 3
)

// journalCommits counts the journal's fdatasyncs of committed batches,
// journalCheckpoints its completed checkpoints and segmentSyncs the
// fdatasyncs of segments by Sync (for tests).
// heldWrites counts the writes of held records (write-behind, see holdBytes).
var journalCommits, journalCheckpoints, segmentSyncs, heldWrites atomic.Uint64

// Journal is a node-wide write-ahead file shared by many logs: SyncMany makes
// the records that several logs wrote since their last sync durable with one
// write and one fdatasync of the journal, instead of flushing every log's
// segment files (see "Journal" in the package documentation).
//
// Its methods are safe for concurrent use.
type Journal struct {
	dir    string // the journal's files
	base   string // logs' directories are named relative to it
	dev    uint64 // filesystem of dir; only logs on it use the journal
	limit  int64
	logger *slog.Logger

	// fs is the journal directory, opened before any log: syncfs on it
	// reports every writeback error of the filesystem since then (syncfs
	// reports only the errors that follow the opening of the file it is
	// given).
	fs *os.File

	mu     sync.Mutex
	f      *os.File
	epoch  uint64
	pos    int64 // end of the valid records in f
	alloc  int64 // bytes of f written (zeros ahead of pos)
	buf    []byte
	zeros  []byte
	seed   uint32 // CRC state of the current file's salt (kindSalt)
	salt   [8]byte
	err    error         // sticky: the journal failed; every commit fails
	ckpt   chan struct{} // closed when the previous file's checkpoint ended
	ckErr  error         // the checkpoint's result, read after ckpt closed
	spare  bool          // dir holds a recyclable file
	closed bool
	// users counts the open logs that use the journal; unclean is set
	// when one of them closed without syncing everything (fenced).
	users   int
	unclean bool

	// Write-behind (see holdBytes). holders counts, per epoch, the logs whose
	// held records were first journaled in that epoch's file; a file's
	// checkpoint waits until no log holds records of it or an older one
	// (waiting is set meanwhile). pinned: a log could not write records
	// that only the journal has, so no file may be recycled again. Guarded
	// by hmu, not mu: a log releases while a commit holding mu waits for
	// the checkpoint that waits for that release.
	hmu     sync.Mutex
	hcond   sync.Cond
	holders map[uint64]int
	pinned  error
	waiting atomic.Uint64
	onWait  func()
}

// JournalOptions configure OpenJournal.
type JournalOptions struct {
	// Bytes: a file that has reached it is checkpointed and the journal
	// moves to the next. Default DefaultJournalBytes.
	Bytes int64
	// Logger receives recovery notes; nil discards them.
	Logger *slog.Logger
}

// OpenJournal opens the journal in dir for logs whose directories lie under
// base. It first recovers: the records of every journal file left in dir are
// replayed into their logs, which are then synced, and the files are dropped.
// Call it before opening any of those logs.
func OpenJournal(dir, base string, opts JournalOptions) (*Journal, error) {
	if opts.Bytes <= 0 {
		opts.Bytes = DefaultJournalBytes
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("commitlog: create journal dir: %w", err)
	}
	fs, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("commitlog: journal: %w", err)
	}
	j := &Journal{dir: dir, base: base, limit: opts.Bytes, logger: logger, dev: deviceOf(dir), fs: fs, holders: map[uint64]int{}}
	j.hcond.L = &j.hmu
	if err := j.open(); err != nil {
		fs.Close()
		return nil, err
	}
	return j, nil
}

// open replays the journal files left in j.dir and makes the next epoch's
// file current.
func (j *Journal) open() error {
	dir := j.dir
	epochs, err := journalFiles(dir)
	if err != nil {
		return err
	}
	if err := j.replay(epochs); err != nil {
		return err
	}
	// Every replayed log is synced: the files are redundant. The newest
	// becomes the next epoch's file, renamed in one step (its blocks are
	// written, so the fdatasyncs of the next file need no metadata); the
	// others are removed. A journal file of the highest epoch used so far
	// thus always exists, and epochs only grow: a recycled file's old
	// entries carry smaller epochs than the file they lie in, and replay
	// stops at them.
	var last uint64
	if n := len(epochs); n > 0 {
		last = epochs[n-1]
		for _, e := range epochs[:n-1] {
			if err := os.Remove(j.path(e)); err != nil {
				return fmt.Errorf("commitlog: journal: %w", err)
			}
		}
		// The removals reach the disk before the rename: a filesystem that
		// reorders them could otherwise bring an older file back beside a
		// renamed newest one whose entries no longer count.
		if n > 1 {
			if err := syncDir(dir); err != nil {
				return err
			}
		}
		if err := os.Rename(j.path(last), j.path(last+1)); err != nil {
			return fmt.Errorf("commitlog: journal: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, journalSpare)); err == nil {
		if last == 0 {
			// A spare without any journal file (not left by this code):
			// its epochs are unknown, so it is not reused.
			if err := os.Remove(filepath.Join(dir, journalSpare)); err != nil {
				return fmt.Errorf("commitlog: journal: %w", err)
			}
		} else {
			j.spare = true
		}
	}
	return j.next(last + 1)
}

func (j *Journal) path(epoch uint64) string {
	return filepath.Join(j.dir, fmt.Sprintf("%s%020d%s", journalPrefix, epoch, journalSuffix))
}

// journalFiles lists the epochs of the journal files in dir, ascending.
func journalFiles(dir string) ([]uint64, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("commitlog: journal: %w", err)
	}
	var out []uint64
	for _, de := range des {
		name := de.Name()
		if !strings.HasPrefix(name, journalPrefix) || !strings.HasSuffix(name, journalSuffix) {
			continue
		}
		var e uint64
		if _, err := fmt.Sscanf(strings.TrimSuffix(strings.TrimPrefix(name, journalPrefix), journalSuffix), "%d", &e); err != nil || e == 0 {
			continue
		}
		out = append(out, e)
	}
	slices.Sort(out)
	return out, nil
}

// next makes the file of epoch e current: the spare, renamed, or a new file.
// The directory is synced before any record relies on the name.
func (j *Journal) next(e uint64) error {
	p := j.path(e)
	if _, err := os.Stat(p); err == nil {
		// OpenJournal renamed the newest file to it.
	} else if j.spare {
		if err := os.Rename(filepath.Join(j.dir, journalSpare), p); err != nil {
			return j.fail(fmt.Errorf("commitlog: journal: %w", err))
		}
		j.spare = false
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return j.fail(fmt.Errorf("commitlog: journal: %w", err))
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return j.fail(fmt.Errorf("commitlog: journal: %w", err))
	}
	if err := syncDir(j.dir); err != nil {
		f.Close()
		return j.fail(err)
	}
	if _, err := crand.Read(j.salt[:]); err != nil {
		f.Close()
		return j.fail(fmt.Errorf("commitlog: journal: %w", err))
	}
	j.seed = crc32.Checksum(j.salt[:], castagnoli)
	j.f, j.epoch, j.pos, j.alloc = f, e, 0, st.Size()
	return nil
}

func (j *Journal) fail(err error) error {
	if j.err == nil {
		j.err = err
		j.logger.Error("commitlog: journal failed; logs that use it are fenced", "err", err)
	}
	return j.err
}

// relPath names dir relative to the journal's base.
func (j *Journal) relPath(dir string) (string, error) {
	rel, err := filepath.Rel(j.base, dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", fmt.Errorf("commitlog: log %s is not under the journal's base %s", dir, j.base)
	}
	if len(rel) > 1<<16-1 {
		return "", fmt.Errorf("commitlog: log path too long for the journal: %s", rel)
	}
	return filepath.ToSlash(rel), nil
}

// appendEntry frames one journal entry: header, kind, path, payload.
func (j *Journal) appendEntry(dst []byte, kind byte, path string, payload []byte) []byte {
	return frameEntry(dst, j.epoch, j.seed, kind, path, payload)
}

// saltEntry frames the current file's first entry (kindSalt).
func (j *Journal) saltEntry() []byte {
	return frameEntry(nil, j.epoch, 0, kindSalt, "", j.salt[:])
}

// frameEntry frames one entry of epoch whose CRC starts from seed.
func frameEntry(dst []byte, epoch uint64, seed uint32, kind byte, path string, payload []byte) []byte {
	start := len(dst)
	n := 1 + 2 + len(path) + len(payload)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.LittleEndian.AppendUint64(dst, epoch)
	dst = append(dst, kind)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(path)))
	dst = append(dst, path...)
	dst = append(dst, payload...)
	binary.LittleEndian.PutUint32(dst[start+4:start+8], crc32.Update(seed, castagnoli, dst[start+8:]))
	return dst
}

// commit makes the pending records of logs[i] for every i in idx durable:
// one write and one fdatasync of the journal. Records the logs hold in
// memory since an older file are written to their segments first (that
// file's checkpoint may be waiting for them); the records they hold after
// the commit count against the current file.
//
// A log whose held records cannot be written is fenced and left out: its
// error goes to errs[i], and commit returns the error of the rest.
func (j *Journal) commit(logs []*Log, idx []int, errs []error) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.ready(); err != nil {
		return err
	}
	n := commitSize(logs, idx)
	// Under mu, the epoch cannot move between this and the write, except
	// while roomFor waits for a checkpoint, which may be waiting for these
	// very logs: when the file may have to move on, every log of the
	// commit writes what it holds, so that no checkpoint waits for them.
	rotate := j.pos != 0 && j.pos+int64(n) > j.limit
	failed := false
	for _, i := range idx {
		if l := logs[i]; l.heldEpoch != 0 && (rotate || l.heldEpoch < j.epoch) {
			if errs[i] = l.writeHeld(l.segs[len(l.segs)-1]); errs[i] != nil {
				failed = true
			}
		}
	}
	if failed { // leave the fenced logs out (a fresh slice: idx is the caller's)
		idx = slices.DeleteFunc(slices.Clone(idx), func(i int) bool { return errs[i] != nil })
		n = commitSize(logs, idx)
	}
	if len(idx) == 0 {
		return nil
	}
	if err := j.roomFor(int64(n), true); err != nil {
		return err
	}
	buf := slices.Grow(j.buf[:0], n)
	for _, i := range idx {
		buf = j.appendEntry(buf, kindRecords, logs[i].jpath, logs[i].jbuf)
	}
	err := j.write(buf)
	if cap(buf) <= maxRetainedWriteBuffer {
		j.buf = buf[:0]
	} else {
		j.buf = nil
	}
	if err != nil {
		return err
	}
	journalCommits.Add(1)
	for _, i := range idx {
		if l := logs[i]; l.heldEpoch == 0 && l.Holding() && len(l.segs[len(l.segs)-1].held) > 0 {
			l.heldEpoch = j.epoch
			j.hold(j.epoch)
		}
	}
	return nil
}

// OnWait sets f to be called when a checkpoint starts waiting for logs to
// write the records they hold (see Waiting): the owner of those logs can
// then write them at once. f must not block. Call it before the journal is
// used.
func (j *Journal) OnWait(f func()) {
	j.hmu.Lock()
	j.onWait = f
	j.hmu.Unlock()
}

// Waiting reports whether a checkpoint waits for logs to write the records
// they hold in memory (Log.HeldWanted tells which).
func (j *Journal) Waiting() bool { return j.waiting.Load() != 0 }

// commitSize is the bytes of the entries commit writes for logs[i], i in idx.
func commitSize(logs []*Log, idx []int) int {
	n := 0
	for _, i := range idx {
		n += journalHdrSize + 3 + len(logs[i].jpath) + len(logs[i].jbuf)
	}
	return n
}

// hold counts a log holding records first journaled in epoch's file.
func (j *Journal) hold(epoch uint64) {
	j.hmu.Lock()
	j.holders[epoch]++
	j.hmu.Unlock()
}

// release ends a hold (the log wrote its held records, or pinned).
func (j *Journal) release(epoch uint64) {
	j.hmu.Lock()
	if j.holders[epoch]--; j.holders[epoch] <= 0 {
		delete(j.holders, epoch)
		j.hcond.Broadcast()
	}
	j.hmu.Unlock()
}

// pin records that a log could not write held records the journal has:
// from now on no file is recycled (checkpoints fail, which fails the
// journal at its next rotation), and the files stay for replay.
func (j *Journal) pin(err error) {
	j.hmu.Lock()
	if j.pinned == nil {
		j.pinned = err
		j.logger.Error("commitlog: a log could not write records only the journal has; journal files are kept for replay", "err", err)
	}
	j.hcond.Broadcast()
	j.hmu.Unlock()
}

// awaitHolders waits until no log holds records of epoch's file or an
// older one; it returns the pin error if the journal was pinned.
func (j *Journal) awaitHolders(epoch uint64) error {
	j.hmu.Lock()
	defer j.hmu.Unlock()
	for j.pinned == nil {
		held := false
		for e := range j.holders {
			held = held || e <= epoch
		}
		if !held {
			break
		}
		if j.waiting.Swap(epoch) != epoch && j.onWait != nil {
			j.onWait()
		}
		j.hcond.Wait()
	}
	j.waiting.Store(0)
	return j.pinned
}

// barrier records durably that the journal's earlier records of the log at
// path are void (see Log.voidJournal, its only caller).
func (j *Journal) barrier(path string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.ready(); err != nil {
		return err
	}
	n := journalHdrSize + 3 + len(path)
	// A barrier never waits for a checkpoint: its caller is the loop that
	// owns the logs the checkpoint may wait for. A file in that case
	// grows past the limit by the barrier.
	if err := j.roomFor(int64(n), false); err != nil {
		return err
	}
	return j.write(j.appendEntry(make([]byte, 0, n), kindBarrier, path, nil))
}

func (j *Journal) ready() error {
	if j.closed {
		return ErrClosed
	}
	return j.err
}

// roomFor moves to the next file when n more bytes would take the current
// one past the limit. The full file is checkpointed in the background: once
// no log holds records of it in memory, one syncfs of the filesystem makes
// every segment write that preceded its records durable, after which the
// file is kept as the spare. Moving on waits for the previous file's
// checkpoint, with mu released; when mayWait is false and that checkpoint
// is still running, the current file takes the n bytes past its limit.
func (j *Journal) roomFor(n int64, mayWait bool) error {
	for j.pos != 0 && j.pos+n > j.limit {
		if j.ckpt != nil {
			select {
			case <-j.ckpt:
			default:
				if !mayWait {
					return nil
				}
				ckpt := j.ckpt
				j.mu.Unlock()
				<-ckpt
				j.mu.Lock()
				if err := j.ready(); err != nil {
					return err
				}
				continue // another caller may have moved on meanwhile
			}
			if err := j.waitCheckpoint(); err != nil {
				return err
			}
			continue
		}
		old, oldPath, oldEpoch := j.f, j.f.Name(), j.epoch
		if err := j.next(j.epoch + 1); err != nil {
			return err
		}
		done := make(chan struct{})
		j.ckpt = done
		go func() {
			defer close(done)
			err := j.awaitHolders(oldEpoch)
			if err == nil {
				err = syncfs(j.fs)
			}
			if err == nil {
				err = os.Rename(oldPath, filepath.Join(j.dir, journalSpare))
			}
			if err == nil {
				// The old file must not come back under its name after a
				// power loss: Close voids the current file, and with it
				// the barriers that cancel the old file's records.
				err = syncDir(j.dir)
			}
			if err == nil {
				journalCheckpoints.Add(1)
			}
			if cerr := old.Close(); err == nil {
				err = cerr
			}
			j.ckErr = err
		}()
		return nil
	}
	return nil
}

// waitCheckpoint waits for the previous file's checkpoint.
func (j *Journal) waitCheckpoint() error {
	if j.ckpt == nil {
		return nil
	}
	<-j.ckpt
	j.ckpt = nil
	if j.ckErr != nil {
		return j.fail(fmt.Errorf("commitlog: journal checkpoint: %w", j.ckErr))
	}
	j.spare = true
	return nil
}

// write appends buf at pos and fdatasyncs. The file is grown with zeros a
// step ahead, so that most fdatasyncs flush data only (no size or extent
// change to journal).
func (j *Journal) write(buf []byte) error {
	if j.pos == 0 {
		// A file's entries start with its salt (kindSalt).
		buf = append(j.saltEntry(), buf...)
	}
	end := j.pos + int64(len(buf))
	if end > j.alloc {
		grow := max(end-j.alloc, journalGrowStep)
		if j.zeros == nil {
			j.zeros = make([]byte, journalGrowStep)
		}
		for off := j.alloc; off < j.alloc+grow; off += journalGrowStep {
			if _, err := j.f.WriteAt(j.zeros[:min(journalGrowStep, j.alloc+grow-off)], off); err != nil {
				return j.fail(fmt.Errorf("commitlog: journal: %w", err))
			}
		}
		j.alloc += grow
	}
	if _, err := j.f.WriteAt(buf, j.pos); err != nil {
		return j.fail(fmt.Errorf("commitlog: journal: %w", err))
	}
	if err := fdatasync(j.f); err != nil {
		return j.fail(fmt.Errorf("commitlog: journal: %w", err))
	}
	j.pos = end
	return nil
}

func (j *Journal) attach() {
	j.mu.Lock()
	j.users++
	j.mu.Unlock()
}

func (j *Journal) detach(clean bool) {
	j.mu.Lock()
	j.users--
	j.unclean = j.unclean || !clean
	j.mu.Unlock()
}

// Close waits for a checkpoint in progress and closes the file. The logs
// that use the journal must be closed first (Close syncs each of them).
// When every log that used it closed cleanly, its records are all in their
// segments: the current file is voided, so that the next OpenJournal has
// nothing to replay. Otherwise the file stays for replay.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return ErrClosed
	}
	j.closed = true
	err := j.waitCheckpoint()
	if err == nil && j.err == nil && j.users == 0 && !j.unclean && j.pos > 0 {
		// Replay starts at offset 0 and stops at the first bad entry:
		// zeroing the first header voids the file and keeps its blocks.
		if _, err = j.f.WriteAt(make([]byte, journalHdrSize), 0); err == nil {
			err = fdatasync(j.f)
		}
	}
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	if cerr := j.fs.Close(); err == nil {
		err = cerr
	}
	return err
}

// replay applies the records of the files of the given epochs, in order, to
// their logs (see "Journal" in the package documentation).
func (j *Journal) replay(epochs []uint64) error {
	type pending struct {
		path     string
		payloads [][]byte
	}
	var (
		order []*pending
		byDir = map[string]*pending{}
	)
	for _, e := range epochs {
		b, err := os.ReadFile(j.path(e))
		if err != nil {
			return fmt.Errorf("commitlog: journal: %w", err)
		}
		n := 0
		var seed uint32 // plain CRCs: a file of an earlier build
		for off := 0; ; n++ {
			kind, path, payload, size, ok := parseJournalEntry(b[off:], e, seed)
			if !ok {
				break
			}
			if kind == kindSalt {
				if off != 0 || len(payload) != 8 {
					break
				}
				seed = crc32.Checksum(payload, castagnoli)
				off += size
				continue
			}
			off += size
			p := byDir[path]
			if p == nil {
				p = &pending{path: path}
				byDir[path] = p
				order = append(order, p)
			}
			switch kind {
			case kindRecords:
				p.payloads = append(p.payloads, payload)
			case kindBarrier:
				p.payloads = nil
			}
		}
		j.logger.Info("commitlog: journal file read", "epoch", e, "entries", n)
	}
	for _, p := range order {
		if len(p.payloads) == 0 {
			continue
		}
		if err := j.replayLog(p.path, p.payloads); err != nil {
			return err
		}
	}
	return nil
}

// parseJournalEntry decodes the entry at the start of b written in epoch;
// ok is false at the end of the valid entries.
func parseJournalEntry(b []byte, epoch uint64, seed uint32) (kind byte, path string, payload []byte, size int, ok bool) {
	if len(b) < journalHdrSize+3 {
		return 0, "", nil, 0, false
	}
	n := int(binary.LittleEndian.Uint32(b[0:4]))
	if n < 3 || n > len(b)-journalHdrSize || binary.LittleEndian.Uint64(b[8:16]) != epoch {
		return 0, "", nil, 0, false
	}
	if crc32.Update(seed, castagnoli, b[8:journalHdrSize+n]) != binary.LittleEndian.Uint32(b[4:8]) {
		return 0, "", nil, 0, false
	}
	body := b[journalHdrSize : journalHdrSize+n]
	kind = body[0]
	pl := int(binary.LittleEndian.Uint16(body[1:3]))
	if 3+pl > len(body) || (kind != kindRecords && kind != kindBarrier && kind != kindSalt) {
		return 0, "", nil, 0, false
	}
	return kind, string(body[3 : 3+pl]), body[3+pl:], journalHdrSize + n, true
}

// replayLog applies one log's journaled records: records the log already
// holds (same index and term) are skipped, those below its first index
// too, and the rest are appended, which also replaces a conflicting suffix
// (raft's rule). The log is then closed, which syncs it.
func (j *Journal) replayLog(rel string, payloads [][]byte) error {
	if local := filepath.FromSlash(rel); !filepath.IsLocal(local) || filepath.Clean(local) == "." {
		// Not a path the journal writes (a log's directory under base):
		// entries whose checksum matched by chance, or forged in message
		// bytes of a recycled file. Never a directory outside base.
		j.logger.Warn("commitlog: journal records of a path outside the data directory ignored", "log", rel)
		return nil
	}
	dir := filepath.Join(j.base, filepath.FromSlash(rel))
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		j.logger.Info("commitlog: journal records of a log that no longer exists", "log", rel)
		return nil
	}
	spans := spansOf(payloads)
	from := spans.first() // lowest index the journal holds for the log
	l, err := Open(dir, Options{Logger: j.logger, replay: spans})
	if err != nil {
		return fmt.Errorf("commitlog: journal replay of %s: %w", rel, err)
	}
	var ents []*pb.Entry
	applied := 0
	for _, p := range payloads {
		if ents, err = decodeRecords(ents[:0], p); err != nil {
			break
		}
		var n int
		if n, err = l.replayEntries(ents); err != nil {
			break
		}
		applied += n
	}
	if err == nil && applied > 0 {
		j.logger.Info("commitlog: journal records replayed", "log", rel, "entries", applied, "last_index", l.lastIndex)
	}
	l.restoreCommit()
	// Records the log already held may still be only in the page cache (the
	// process died, the machine did not): Close must fdatasync them before
	// the journal that holds them is dropped.
	l.markDirtyFrom(from)
	if cerr := l.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("commitlog: journal replay of %s: %w", rel, err)
	}
	return nil
}

// journalSpans are the index ranges [first, last] that a log's journaled
// records hold, sorted and merged.
type journalSpans [][2]uint64

// spansOf returns the spans of the records in payloads that replay would
// apply: it stops at the first payload that does not decode, as replayLog
// does.
func spansOf(payloads [][]byte) journalSpans {
	var out journalSpans
	var ents []*pb.Entry
	for _, p := range payloads {
		var err error
		if ents, err = decodeRecords(ents[:0], p); err != nil {
			break
		}
		for _, e := range ents {
			out = append(out, [2]uint64{e.GetIndex(), e.GetIndex()})
		}
	}
	slices.SortFunc(out, func(a, b [2]uint64) int { return cmp.Compare(a[0], b[0]) })
	merged := out[:0]
	for _, s := range out {
		if n := len(merged); n > 0 && s[0] <= merged[n-1][1]+1 {
			merged[n-1][1] = max(merged[n-1][1], s[1])
			continue
		}
		merged = append(merged, s)
	}
	return merged
}

// first returns the lowest index the spans hold (0: none).
func (s journalSpans) first() uint64 {
	if len(s) == 0 {
		return 0
	}
	return s[0][0]
}

// mayCut reports whether Open may cut a log's last segment at a bad record
// of this index, or find the log ending before it, as a crash may have
// left it. durable is the log's durable watermark (every record up to it
// was synced, in its segment or the journal: see the hardstate file); s
// are the journal's spans of the log's records during a replay, nil
// outside one.
//
//   - A record below the start of the journal's last span of the log was
//     synced before a later record or before the span itself (a sync
//     covers everything the log appended before it), on its own or by a
//     checkpoint: durable, whatever the watermark says (it may be older).
//   - A record above the watermark may never have been synced: a crash
//     may have torn it (a page written back while a record was being
//     copied into it can tear an unsynced record at any byte).
//   - Otherwise the records from index to the watermark were durable, and
//     only a replay that writes them all again (the journal's last span
//     holds them) may cut them.
//
// No crash tears what is durable: what mayCut refuses is damage, and
// cutting it would drop the durable records after it too.
func (s journalSpans) mayCut(index, durable uint64) bool {
	if len(s) > 0 && index < s[len(s)-1][0] {
		return false
	}
	if index > durable {
		return true
	}
	return len(s) > 0 && durable <= s[len(s)-1][1]
}

// why says, for Open's errors, what showed the records durable: the
// watermark and, in a replay, the journal's last span of the log.
func (s journalSpans) why(durable uint64) string {
	var parts []string
	if durable > 0 {
		parts = append(parts, fmt.Sprintf("the log was synced through index %d", durable))
	}
	if len(s) > 0 {
		parts = append(parts, fmt.Sprintf("the journal holds its records from index %d to %d", s[len(s)-1][0], s[len(s)-1][1]))
	}
	return strings.Join(parts, "; ")
}

// decodeRecords parses the segment records in b (written by Append).
func decodeRecords(dst []*pb.Entry, b []byte) ([]*pb.Entry, error) {
	for len(b) > 0 {
		if len(b) < recHeaderSize {
			return dst, fmt.Errorf("%w: journal: short record", ErrCorrupt)
		}
		h := parseHeader(b)
		if h.length < recRestSize || int64(len(b)) < h.size() {
			return dst, fmt.Errorf("%w: journal: bad record length", ErrCorrupt)
		}
		rec := b[:h.size()]
		if crc32.Checksum(rec[recPrefixSize:], castagnoli) != h.crc || !validEntryType(h.typ) {
			return dst, fmt.Errorf("%w: journal: bad record at index %d", ErrCorrupt, h.index)
		}
		dst = append(dst, &pb.Entry{Index: proto.Uint64(h.index), Term: proto.Uint64(h.term), Type: entryTypeOf(h.typ).Enum(), Data: rec[recHeaderSize:]})
		b = b[h.size():]
	}
	return dst, nil
}

// replayEntries appends the part of ents the log does not hold and returns
// how many entries it appended.
func (l *Log) replayEntries(ents []*pb.Entry) (int, error) {
	for len(ents) > 0 && ents[0].GetIndex() < l.start.firstIndex {
		ents = ents[1:]
	}
	for len(ents) > 0 && ents[0].GetIndex() <= l.lastIndex {
		t, err := l.termLocked(ents[0].GetIndex())
		if err != nil {
			return 0, err
		}
		if t != ents[0].GetTerm() {
			break
		}
		ents = ents[1:]
	}
	if len(ents) == 0 {
		return 0, nil
	}
	if ents[0].GetIndex() > l.lastIndex+1 {
		return 0, fmt.Errorf("%w: journal record at index %d follows last index %d", ErrCorrupt, ents[0].GetIndex(), l.lastIndex)
	}
	if _, err := l.Append(ents, nil); err != nil {
		return 0, err
	}
	return len(ents), nil
}

// markDirtyFrom marks every segment holding an index >= index dirty, so that
// the next Sync fdatasyncs it.
func (l *Log) markDirtyFrom(index uint64) {
	for _, s := range l.segs {
		if s.dirty || s.empty() || s.last < index {
			continue
		}
		s.dirty = true
		l.dirty = append(l.dirty, s)
	}
}
