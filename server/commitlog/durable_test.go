package commitlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// writtenEnds returns the end offsets of the records in a segment file's
// bytes, up to the first that is not a whole record (a preallocated tail's
// zeros end them).
func writtenEnds(b []byte) []int {
	var ends []int
	for p := 0; p+recHeaderSize <= len(b); {
		h := parseHeader(b[p:])
		if h.index == 0 || h.length < recRestSize || p+int(h.size()) > len(b) {
			break
		}
		p += int(h.size())
		ends = append(ends, p)
	}
	return ends
}

// lastSegment reads the last segment of the log in dir: its path, first
// index, bytes and the end offsets of its whole records.
func lastSegment(t *testing.T, dir string) (path string, first uint64, b []byte, ends []int) {
	t.Helper()
	paths := segPaths(t, dir)
	path = paths[len(paths)-1]
	first, _ = parseSegmentName(filepath.Base(path))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return path, first, b, writtenEnds(b)
}

// damageRecord flips a bit in the data of the record of index in the last
// segment of the log in dir (or, with zero, zeroes the segment from that
// record on), and returns the segment's path and bytes.
func damageRecord(t *testing.T, dir string, index uint64, zero bool) (string, []byte) {
	t.Helper()
	p, first, b, ends := lastSegment(t, dir)
	require.Greater(t, uint64(len(ends)), index-first, "the segment holds index %d", index)
	k := index - first
	if zero {
		start := 0
		if k > 0 {
			start = ends[k-1]
		}
		clear(b[start:])
	} else {
		b[ends[k]-1] ^= 0x10
	}
	require.NoError(t, os.WriteFile(p, b, 0o644))
	return p, b
}

// cutBefore truncates the last segment of the log in dir where the record
// of index starts, as if the disk had lost it and what follows.
func cutBefore(t *testing.T, dir string, index uint64) {
	t.Helper()
	p, first, _, ends := lastSegment(t, dir)
	off := 0
	if k := index - first; k > 0 {
		off = ends[k-1]
	}
	require.NoError(t, os.Truncate(p, int64(off)))
}

// requireRefused opens the log in dir twice and requires ErrCorrupt with
// msg each time, the last segment left as it was.
func requireRefused(t *testing.T, dir, msg string) {
	t.Helper()
	paths := segPaths(t, dir)
	before, err := os.ReadFile(paths[len(paths)-1])
	require.NoError(t, err)
	for range 2 {
		_, err := Open(dir, Options{})
		require.ErrorIs(t, err, ErrCorrupt)
		require.ErrorContains(t, err, msg)
		after, err := os.ReadFile(paths[len(paths)-1])
		require.NoError(t, err)
		require.Equal(t, before, after, "the segment is left as it was")
	}
}

// requireCut opens the log in dir and requires it to end at last, with the
// model's entries up to there, and to take appends again.
func requireCut(t *testing.T, dir string, m *model, last uint64) {
	t.Helper()
	l := openT(t, dir, Options{})
	got, err := l.LastIndex()
	require.NoError(t, err)
	require.Equal(t, last, got)
	want := m.clone()
	want.appendN(t, l, last+1, 2, 9) // rolls the model back to last too
	want.check(t, l)
	require.NoError(t, l.Close())
}

// TestOpenRefusesDamageBelowTheWatermark: outside a journal replay, a bad
// record of the last segment at or below the durable watermark (what the
// log had synced when its hardstate slot was last written) was durable: no
// crash tears it, so Open reports ErrCorrupt and leaves the file as it is,
// where it used to cut the record and every durable record after it. One
// above the watermark may be a crash's torn write and is cut as before;
// and a log that ends below the watermark lost records it had synced.
func TestOpenRefusesDamageBelowTheWatermark(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		refuse string // the error, or "" when the tail is cut
		last   uint64 // the log's end when cut
	}{
		{"a durable record damaged", func(t *testing.T, dir string) { damageRecord(t, dir, 20, false) },
			"(index 20), which was durable (the log was synced through index 30)", 0},
		{"the last durable record damaged", func(t *testing.T, dir string) { damageRecord(t, dir, 30, false) },
			"(index 30), which was durable", 0},
		{"durable records read as zeros", func(t *testing.T, dir string) { damageRecord(t, dir, 25, true) },
			"(index 25), which was durable", 0},
		{"durable records lost", func(t *testing.T, dir string) { cutBefore(t, dir, 25) },
			"the log ends at index 24, but records after it were durable (the log was synced through index 30)", 0},
		{"the first unsynced record torn", func(t *testing.T, dir string) { damageRecord(t, dir, 31, false) }, "", 30},
		{"a later unsynced record torn", func(t *testing.T, dir string) { damageRecord(t, dir, 33, false) }, "", 32},
		{"unsynced records lost", func(t *testing.T, dir string) { cutBefore(t, dir, 31) }, "", 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := openT(t, t.TempDir(), Options{})
			m := newModel()
			m.appendN(t, l, 1, 30, 1)
			require.NoError(t, l.Sync())
			require.NoError(t, l.FlushHardState()) // as the engine does about once a second
			m.appendN(t, l, 31, 5, 1)              // never synced
			dir := crashImage(t, l)
			require.NoError(t, l.Close())
			tc.damage(t, dir)
			if tc.refuse != "" {
				requireRefused(t, dir, tc.refuse)
				return
			}
			requireCut(t, dir, m, tc.last)
		})
	}
}

// TestCloseRecordsTheWatermark: a cleanly closed log synced everything, so
// a bad last record found at the next start is damage, not a torn write;
// and one closed before its records were synced through (a crash image
// taken before the watermark was written) still has its tail cut.
func TestCloseRecordsTheWatermark(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	m := newModel()
	m.appendN(t, l, 1, 12, 1)
	crashed := crashImage(t, l) // nothing synced yet: no watermark
	require.NoError(t, l.Close())

	damageRecord(t, dir, 12, false)
	requireRefused(t, dir, "(index 12), which was durable (the log was synced through index 12)")

	damageRecord(t, crashed, 12, false)
	requireCut(t, crashed, m, 11)
}

// TestTruncationLowersTheWatermark: before a truncation rewrites records
// the watermark covers, it lowers the watermark durably, so that the new
// records, unsynced, may still be cut as torn after a crash. A journaled
// log's truncation syncs the log first (voidJournal), which must not
// raise the watermark back over the records it cuts.
func TestTruncationLowersTheWatermark(t *testing.T) {
	check := func(t *testing.T, m *model, crashed string) {
		t.Helper()
		damageRecord(t, crashed, 9, false)
		requireCut(t, crashed, m, 8)
	}
	t.Run("plain", func(t *testing.T) {
		l := openT(t, t.TempDir(), Options{})
		m := newModel()
		m.appendN(t, l, 1, 12, 1)
		require.NoError(t, l.Sync())
		require.NoError(t, l.FlushHardState())
		m.appendN(t, l, 8, 3, 2) // replaces 8..12: 8..10 of term 2, never synced
		require.NoError(t, l.FlushHardState())
		crashed := crashImage(t, l)
		check(t, m, crashed)
	})
	t.Run("journaled", func(t *testing.T) {
		f := newJournalFixture(t, 2, 0)
		f.round(t, 10, 1) // 3..12 through the journal
		l, m := f.logs[0], f.models[0]
		require.NoError(t, l.FlushHardState())
		m.appendN(t, l, 8, 3, 2)
		require.NoError(t, l.FlushHeld()) // into the segment, unsynced
		require.NoError(t, l.FlushHardState())
		crashed := f.crash(t)
		// Replay first: the journal's records of log 0 precede the
		// truncation's barrier, so it replays none of them.
		j, err := OpenJournal(filepath.Join(crashed, "journal"), crashed, JournalOptions{})
		require.NoError(t, err)
		require.NoError(t, j.Close())
		check(t, m, f.logDir(crashed, 0))
	})
}

// TestSnapshotLowersTheWatermark: a snapshot below the watermark replaces
// the log; the records that follow it take indexes the watermark covered,
// so it is lowered durably first.
func TestSnapshotLowersTheWatermark(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	m := newModel()
	m.appendN(t, l, 1, 20, 1)
	require.NoError(t, l.Sync())
	require.NoError(t, l.FlushHardState())
	require.NoError(t, l.ApplySnapshot(&pb.Snapshot{Data: EncodeSnapshotData(nil, 500), Metadata: &pb.SnapshotMetadata{
		Index: proto.Uint64(12), Term: proto.Uint64(2), ConfState: &pb.ConfState{Voters: []uint64{1}},
	}}))
	m = newModel()
	m.first, m.last, m.next, m.fid = 13, 12, 500, 500
	m.appendN(t, l, 13, 4, 2) // never synced
	require.NoError(t, l.FlushHardState())
	crashed := crashImage(t, l)
	require.NoError(t, l.Close())
	damageRecord(t, crashed, 14, false)
	requireCut(t, crashed, m, 13)
}

// TestCutLowersTheWatermarkHeldInMemory: a commit-only SetHardState after
// a sync raises the watermark the next slot will carry without writing a
// slot (foldDurable). A truncation or snapshot that then cuts records the
// watermark covers must lower that one too, not only the slots' (which
// were already low): left high, it went into the next slot written — a
// new term's, the snapshot's own, or Close's — over a log now shorter,
// which Open then refused as corrupt, after a crash or after a clean stop
// (a review found it).
func TestCutLowersTheWatermarkHeldInMemory(t *testing.T) {
	// written: ten records of term 1, synced, and a commit point recorded
	// in memory only, as a follower's commit is.
	written := func(t *testing.T, dir string) (*Log, *model) {
		l := openT(t, dir, Options{})
		require.NoError(t, l.SetHardStateParts(1, 1, 0))
		m := newModel()
		m.appendN(t, l, 1, 10, 1)
		require.NoError(t, l.Sync())
		require.NoError(t, l.SetHardStateParts(1, 1, 3))
		return l, m
	}
	t.Run("truncation, then a new term and a crash", func(t *testing.T) {
		l, m := written(t, t.TempDir())
		defer l.Close()
		m.appendN(t, l, 8, 1, 2) // a new leader's shorter tail replaces 8..10
		require.NoError(t, l.SetHardStateParts(2, 0, 3))
		require.NoError(t, l.Sync())
		l2, err := Open(crashImage(t, l), Options{})
		require.NoError(t, err, "every record is synced: the log opens")
		m.check(t, l2)
		require.NoError(t, l2.Close())
	})
	t.Run("truncation, then a clean close", func(t *testing.T) {
		dir := t.TempDir()
		l, m := written(t, dir)
		m.appendN(t, l, 8, 1, 2)
		require.NoError(t, l.Sync())
		require.NoError(t, l.Close())
		l2, err := Open(dir, Options{})
		require.NoError(t, err, "a log closed cleanly opens")
		m.check(t, l2)
		require.NoError(t, l2.Close())
	})
	t.Run("snapshot below the tail, then a crash", func(t *testing.T) {
		l, _ := written(t, t.TempDir())
		defer l.Close()
		require.NoError(t, l.ApplySnapshot(&pb.Snapshot{Data: EncodeSnapshotData(nil, 100), Metadata: &pb.SnapshotMetadata{
			Index: proto.Uint64(5), Term: proto.Uint64(2), ConfState: &pb.ConfState{Voters: []uint64{1}},
		}}))
		require.NoError(t, l.Sync())
		l2, err := Open(crashImage(t, l), Options{})
		require.NoError(t, err, "every record is synced: the log opens")
		last, err := l2.LastIndex()
		require.NoError(t, err)
		assert.Equal(t, uint64(5), last)
		require.NoError(t, l2.Close())
	})
}

// TestHardStateSlotFormats: a slot carries the watermark after the part
// earlier versions read; a slot of an earlier version (36 bytes), or one
// whose first part an earlier version rewrote, reads with watermark 0.
func TestHardStateSlotFormats(t *testing.T) {
	st := hardState{term: 3, vote: 2, commit: 40, durable: 41}
	b := make([]byte, hsSlotSize)
	encodeHSSlot(b, 7, st)
	seq, got, ok := decodeHSSlot(b)
	require.True(t, ok)
	assert.Equal(t, uint64(7), seq)
	assert.Equal(t, st, got)

	seq, got, ok = decodeHSSlot(b[:hsBaseSize])
	require.True(t, ok, "an earlier version's slot")
	assert.Equal(t, uint64(7), seq)
	assert.Equal(t, hardState{term: 3, vote: 2, commit: 40}, got)

	old := make([]byte, hsSlotSize)
	encodeHSSlot(old, 8, hardState{term: 3, vote: 2, commit: 45})
	copy(b, old[:hsBaseSize]) // an earlier version wrote its slot over ours
	seq, got, ok = decodeHSSlot(b)
	require.True(t, ok)
	assert.Equal(t, uint64(8), seq)
	assert.Equal(t, hardState{term: 3, vote: 2, commit: 45}, got, "the stale watermark does not count")

	b[40] ^= 1 // the watermark damaged: its checksum fails, the rest holds
	_, got, ok = decodeHSSlot(b)
	require.True(t, ok)
	assert.Zero(t, got.durable)
	b[33] ^= 1
	_, _, ok = decodeHSSlot(b)
	assert.False(t, ok, "the first checksum covers the slot")

	// A file an earlier version created (two 36-byte slots) opens, and
	// its log cuts a bad last record as before.
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	m := newModel()
	m.appendN(t, l, 1, 5, 1)
	require.NoError(t, l.SetHardStateParts(1, 1, 0))
	require.NoError(t, l.Close())
	raw, err := os.ReadFile(filepath.Join(dir, hardStateName))
	require.NoError(t, err)
	require.Len(t, raw, hsSlotStride+hsSlotSize)
	for _, off := range []int{0, hsSlotStride} {
		// As the earlier version wrote it: the first 36 bytes, zeros after.
		clear(raw[off+hsBaseSize : off+hsSlotSize])
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, hardStateName), raw[:hsSlotStride+hsBaseSize], 0o644))
	damageRecord(t, dir, 5, false)
	l = openT(t, dir, Options{})
	hs, _, err := l.InitialState()
	require.NoError(t, err)
	assert.Equal(t, uint64(1), hs.GetTerm())
	assert.Equal(t, uint64(1), hs.GetVote())
	last, err := l.LastIndex()
	require.NoError(t, err)
	assert.Equal(t, uint64(4), last, "no watermark: cut as before")
	require.NoError(t, l.Close())
}

// TestNoSyncKeepsTheWatermark: with NoSync ("os" mode) nothing is synced,
// so neither a Sync nor Close moves the watermark: after a power loss any
// record may be torn, and a bad last record is cut.
func TestNoSyncKeepsTheWatermark(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{NoSync: true})
	m := newModel()
	m.appendN(t, l, 1, 10, 1)
	require.NoError(t, l.Sync())
	require.NoError(t, l.FlushHardState())
	require.NoError(t, l.Close())
	h, _, err := openHardState(dir)
	require.NoError(t, err)
	assert.Zero(t, h.cur.durable)
	require.NoError(t, h.f.Close())
	damageRecord(t, dir, 10, false)
	l = openT(t, dir, Options{NoSync: true})
	last, err := l.LastIndex()
	require.NoError(t, err)
	assert.Equal(t, uint64(9), last)
	require.NoError(t, l.Close())
}

// TestJournalReplayRefusesDamageBelowTheWatermark: records a log synced on
// its own after the journal's last records of it are durable, though the
// journal does not hold them. Replay cuts only what it can write again:
// damage in them, or in the journal's span before them, is refused (the
// cut would drop 6..9), where replay used to cut and restore 3..5 alone.
func TestJournalReplayRefusesDamageBelowTheWatermark(t *testing.T) {
	for _, index := range []uint64{4, 7, 9} {
		t.Run(fmt.Sprint(index), func(t *testing.T) {
			f := newJournalFixture(t, 2, 0)
			f.round(t, 3, 1) // 3..5 through the journal
			f.models[0].appendN(t, f.logs[0], 6, 4, 1)
			require.NoError(t, f.logs[0].Sync()) // 6..9 on its own
			require.NoError(t, f.logs[0].FlushHardState())
			crashed := f.crash(t)
			p, b := f.damageRecord(t, crashed, 0, index, false)
			for range 2 {
				_, err := OpenJournal(filepath.Join(crashed, "journal"), crashed, JournalOptions{})
				require.ErrorIs(t, err, ErrCorrupt)
				require.ErrorContains(t, err, fmt.Sprintf("(index %d), which was durable (the log was synced through index 9; the journal holds its records from index 3 to 5)", index))
				after, rerr := os.ReadFile(p)
				require.NoError(t, rerr)
				require.Equal(t, b, after, "the segment is left as it was")
			}
		})
	}
}

// slotsOnDisk decodes both hardstate slots of the log in dir as the file
// holds them (ok false for an invalid one).
func slotsOnDisk(t *testing.T, dir string) (st [2]hardState, ok [2]bool) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, hardStateName))
	require.NoError(t, err)
	for k := range 2 {
		off := k * hsSlotStride
		if len(raw) >= off+hsBaseSize {
			_, st[k], ok[k] = decodeHSSlot(raw[off:min(len(raw), off+hsSlotSize)])
		}
	}
	return st, ok
}

// newestOnDisk is the slot Open would take.
func newestOnDisk(t *testing.T, dir string) hardState {
	t.Helper()
	h, _, err := openHardState(dir)
	require.NoError(t, err)
	require.NoError(t, h.f.Close())
	return h.cur
}

// TestSyncsMoveTheWatermark: each way a log's records become durable moves
// the watermark to its end, and the next FlushHardState writes it: its own
// fdatasync (Sync, SyncMany of one log), a journal commit, and a syncfs
// shared by logs without a journal.
func TestSyncsMoveTheWatermark(t *testing.T) {
	t.Run("own sync", func(t *testing.T) {
		l := openT(t, t.TempDir(), Options{})
		m := newModel()
		m.appendN(t, l, 1, 4, 1)
		for _, err := range SyncMany([]*Log{l}, nil) {
			require.NoError(t, err)
		}
		require.NoError(t, l.FlushHardState())
		assert.Equal(t, uint64(4), newestOnDisk(t, l.dir).durable)
		require.NoError(t, l.Close())
	})
	t.Run("journal commit", func(t *testing.T) {
		f := newJournalFixture(t, 2, 0)
		f.round(t, 5, 1) // 3..7, one journal commit (round checks it)
		for i, l := range f.logs {
			require.NoError(t, l.FlushHardState())
			assert.Equal(t, uint64(7), newestOnDisk(t, l.dir).durable, "log %d", i)
		}
	})
	t.Run("syncfs", func(t *testing.T) {
		if !syncfsWorks {
			t.Skip("syncfs unavailable (Linux 5.8 or later)")
		}
		root := t.TempDir()
		var logs []*Log
		for _, name := range []string{"a", "b"} {
			l := openT(t, filepath.Join(root, name), Options{})
			m := newModel()
			m.appendN(t, l, 1, 3, 1)
			require.NoError(t, l.Sync()) // its new segment and directory
			m.appendN(t, l, 4, 3, 1)
			logs = append(logs, l)
		}
		calls := syncfsCalls.Load()
		for _, err := range SyncMany(logs, nil) {
			require.NoError(t, err)
		}
		require.Equal(t, calls+1, syncfsCalls.Load(), "one syncfs for both")
		for i, l := range logs {
			require.NoError(t, l.FlushHardState())
			assert.Equal(t, uint64(6), newestOnDisk(t, l.dir).durable, "log %d", i)
			require.NoError(t, l.Close())
		}
	})
}

// TestLoweringWritesBothSlots: a truncation leaves no slot on disk with the
// old watermark, in either durability mode: with NoSync the anchor moves
// without an fsync, so a slot written after the lowering may be lost and
// the other slot come back as it was before it.
func TestLoweringWritesBothSlots(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		t.Run(fmt.Sprint("NoSync=", noSync), func(t *testing.T) {
			dir := t.TempDir()
			l := openT(t, dir, Options{})
			m := newModel()
			m.appendN(t, l, 1, 12, 1)
			require.NoError(t, l.Sync())
			require.NoError(t, l.SetHardStateParts(1, 1, 2)) // both slots get the watermark
			require.NoError(t, l.Sync())
			require.NoError(t, l.SetHardStateParts(2, 1, 2))
			require.NoError(t, l.Close())
			st, ok := slotsOnDisk(t, dir)
			require.Equal(t, [2]bool{true, true}, ok)
			require.Equal(t, [2]uint64{12, 12}, [2]uint64{st[0].durable, st[1].durable})

			l = openT(t, dir, Options{NoSync: noSync})
			m.appendN(t, l, 8, 2, 3) // truncates at 8
			st, ok = slotsOnDisk(t, dir)
			require.Equal(t, [2]bool{true, true}, ok)
			assert.Equal(t, [2]uint64{7, 7}, [2]uint64{st[0].durable, st[1].durable})
			require.NoError(t, l.Close())
		})
	}
}

// TestCommitRecordedDuringSync: a leader records commit points (applying
// what its followers acknowledged) while the syncer goroutine syncs its
// log, also a Ready that changed term and vote. Run with -race: record
// and the hardstate's sync must not share fields.
func TestCommitRecordedDuringSync(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	m := newModel()
	m.appendN(t, l, 1, 2, 1)
	require.NoError(t, l.Sync())
	for term := uint64(2); term < 12; term++ {
		m.appendN(t, l, m.last+1, 2, term)
		require.NoError(t, l.SetHardStateParts(term, 1, m.last-2)) // the Ready: a new term
		done := make(chan []error, 1)
		go func() { done <- SyncMany([]*Log{l}, nil) }()
		for c := m.last - 2; c <= m.last; c++ {
			require.NoError(t, l.SetHardStateParts(term, 1, c))
		}
		for _, err := range <-done {
			require.NoError(t, err)
		}
	}
	require.NoError(t, l.Close())
	hs := newestOnDisk(t, l.dir)
	assert.Equal(t, hardState{term: 11, vote: 1, commit: m.last, durable: m.last}, hs)
}

// TestSyncNowWithNoSync: SyncNow fdatasyncs also after NoSync's Syncs,
// which mark nothing dirty (each only does the bookkeeping): the caller is
// about to store something durable that depends on what the log holds.
func TestSyncNowWithNoSync(t *testing.T) {
	l := openT(t, t.TempDir(), Options{NoSync: true})
	defer l.Close()
	m := newModel()
	m.appendN(t, l, 1, 5, 1)
	require.NoError(t, l.Sync()) // the engine's, every pass
	before := segmentSyncs.Load()
	require.NoError(t, l.SyncNow())
	assert.Greater(t, segmentSyncs.Load(), before)
}

// TestFenceWhileACommitPointIsRecorded: the replica engine records a
// commit point (commit-only SetHardStateParts) while its syncer may fence
// the same log after a failed sync (a leader applying ahead of its sync).
// The fence's error was a plain field the recording read: a data race
// (-race finds it).
func TestFenceWhileACommitPointIsRecorded(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	require.NoError(t, l.SetHardStateParts(1, 1, 0))
	m := newModel()
	m.appendN(t, l, 1, 100, 1)
	require.NoError(t, l.Sync())
	fenced := make(chan struct{})
	go func() {
		defer close(fenced)
		_ = l.fence(errors.New("a failed sync"))
	}()
	var err error
	for c := uint64(1); c <= 100 && err == nil; c++ {
		err = l.SetHardStateParts(1, 1, c)
	}
	<-fenced
	require.ErrorContains(t, l.SetHardStateParts(1, 1, 100), "a failed sync", "fenced")
}
