package commitlog

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/internal/flushhook"
)

// The log must satisfy raft's Storage interface.
var _ raft.Storage = (*Log)(nil)

func TestEmptyLog(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	hs, cs, err := l.InitialState()
	require.NoError(t, err)
	assert.True(t, raft.IsEmptyHardState(hs))
	require.NotNil(t, cs)
	fi, _ := l.FirstIndex()
	li, _ := l.LastIndex()
	assert.Equal(t, uint64(1), fi)
	assert.Equal(t, uint64(0), li)
	term, err := l.Term(0)
	require.NoError(t, err)
	assert.Equal(t, uint64(0), term)
	_, err = l.Term(1)
	assert.ErrorIs(t, err, raft.ErrUnavailable)
	assert.Equal(t, uint64(1), l.FirstID())
	assert.Equal(t, uint64(1), l.NextID())
	msgs, next, err := l.ReadMessages(nil, 1, 100, 10, 1000)
	require.NoError(t, err)
	assert.Empty(t, msgs)
	assert.Equal(t, uint64(1), next)
}

func TestStorageContract(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 50, 1)
	m.appendN(t, l, 51, 50, 2)
	m.appendN(t, l, 101, 30, 5)
	m.check(t, l)
	require.Greater(t, l.Stats().Segments, 2)

	// Boundaries.
	_, err := l.Entries(0, 5, 1<<30)
	assert.ErrorIs(t, err, raft.ErrCompacted)
	_, err = l.Entries(1, 132, 1<<30)
	assert.ErrorIs(t, err, raft.ErrUnavailable)
	_, err = l.Term(131)
	assert.ErrorIs(t, err, raft.ErrUnavailable)
	term, err := l.Term(130)
	require.NoError(t, err)
	assert.Equal(t, uint64(5), term)
	term, err = l.Term(51)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), term)

	// maxSize: at least one, and stops before exceeding.
	got, err := l.Entries(10, 100, 0)
	require.NoError(t, err)
	assert.Len(t, got, 1)
	one := uint64(proto.Size(got[0]))
	got, err = l.Entries(10, 100, one)
	require.NoError(t, err)
	assert.Len(t, got, 1)
	all, err := l.Entries(10, 100, 1<<30)
	require.NoError(t, err)
	var sz uint64
	for _, e := range all[:20] {
		sz += uint64(proto.Size(e))
	}
	got, err = l.Entries(10, 100, sz)
	require.NoError(t, err)
	assert.Len(t, got, 20)
	got, err = l.Entries(10, 100, sz+1)
	require.NoError(t, err)
	assert.Len(t, got, 20)
	// The caller may append to the result without corrupting anything.
	got = append(got[:1:1], ent(999, 9, pb.EntryType_EntryNormal, nil))
	_ = got

	hs := &pb.HardState{Term: proto.Uint64(5), Vote: proto.Uint64(2), Commit: proto.Uint64(120)}
	require.NoError(t, l.SetHardState(hs))
	cs := &pb.ConfState{Voters: []uint64{1, 2, 3}}
	require.NoError(t, l.SetConfState(cs))
	require.NoError(t, l.Sync())
	require.NoError(t, l.Close())

	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	m.check(t, l)
	ghs, gcs, err := l.InitialState()
	require.NoError(t, err)
	assert.True(t, proto.Equal(hs, ghs))
	assert.True(t, proto.Equal(cs, gcs))
}

func TestIDsAcrossTruncation(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 100, 1)
	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(1), Commit: proto.Uint64(40)}))
	// Overwrite a suffix spanning several segments with a different shape.
	m.appendN(t, l, 60, 10, 2)
	m.check(t, l)
	// Overwrite within the last segment.
	m.appendN(t, l, 68, 5, 3)
	m.check(t, l)
	// Truncating at or below commit is refused.
	_, err := l.Append([]*pb.Entry{ent(40, 4, pb.EntryType_EntryNormal, nil)}, nil)
	require.Error(t, err)
	// Gaps are refused.
	_, err = l.Append([]*pb.Entry{ent(100, 4, pb.EntryType_EntryNormal, nil)}, nil)
	require.Error(t, err)
	// Malformed batches are refused and nothing is written.
	bad := EncodeBatch(nil, 1, 0, 0, [][]byte{[]byte("abc")})
	_, err = l.Append([]*pb.Entry{ent(73, 3, pb.EntryType_EntryNormal, nil), ent(74, 3, pb.EntryType_EntryNormal, bad[:len(bad)-1])}, nil)
	require.ErrorIs(t, err, ErrBadBatch)
	m.check(t, l)
	require.NoError(t, l.Sync())
	require.NoError(t, l.Close())
	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	m.check(t, l)
	m.appendN(t, l, 73, 40, 3)
	m.check(t, l)
}

func TestTruncateWholeLog(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 60, 1)
	m.appendN(t, l, 1, 10, 2)
	m.check(t, l)
	require.NoError(t, l.Close())
	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	m.check(t, l)
	assert.Equal(t, 1, l.Stats().Segments)
}

func TestReadMessages(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	m := newModel()
	m.appendN(t, l, 1, 200, 1)
	require.Greater(t, l.Stats().Segments, 3)
	last := m.next - 1

	// Every start id, across segments and mid-batch, unlimited.
	for id := uint64(1); id <= last; id += 3 {
		msgs, next, err := l.ReadMessages(nil, id, last, 0, 0)
		require.NoError(t, err)
		require.Equal(t, m.next, next)
		require.Len(t, msgs, int(last-id+1))
		for k, msg := range msgs {
			require.Equal(t, m.msgs[id+uint64(k)], msg)
		}
	}
	// maxCount.
	msgs, next, err := l.ReadMessages(nil, 5, last, 7, 0)
	require.NoError(t, err)
	assert.Len(t, msgs, 7)
	assert.Equal(t, uint64(12), next)
	// maxBytes: stops before exceeding, but at least one.
	msgs, next, err = l.ReadMessages(nil, 5, last, 0, 1)
	require.NoError(t, err)
	assert.Len(t, msgs, 1)
	assert.Equal(t, uint64(6), next)
	// maxBytes counts each message with its framing (MessageCost).
	limit := MessageCost(len(m.msgs[5])) + MessageCost(len(m.msgs[6])) + MessageCost(len(m.msgs[7]))
	msgs, _, err = l.ReadMessages(nil, 5, last, 0, limit)
	require.NoError(t, err)
	assert.Len(t, msgs, 3)
	msgs, _, err = l.ReadMessages(nil, 5, last, 0, limit-1)
	require.NoError(t, err)
	assert.Len(t, msgs, 2)
	// maxID cap.
	msgs, next, err = l.ReadMessages(nil, 5, 9, 0, 0)
	require.NoError(t, err)
	assert.Len(t, msgs, 5)
	assert.Equal(t, uint64(10), next)
	msgs, next, err = l.ReadMessages(nil, 10, 9, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, msgs)
	assert.Equal(t, uint64(10), next)
	// Past the end.
	msgs, next, err = l.ReadMessages(nil, m.next, m.next+10, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, msgs)
	assert.Equal(t, m.next, next)
	// Appends to dst; messages are capacity limited.
	dst := [][]byte{[]byte("x")}
	dst, _, err = l.ReadMessages(dst, 1, last, 2, 0)
	require.NoError(t, err)
	require.Len(t, dst, 3)
	assert.Equal(t, len(dst[1]), cap(dst[1]))
	// Below FirstID.
	msgs, next, err = l.ReadMessages(nil, 0, last, 0, 0)
	assert.ErrorIs(t, err, ErrCompacted)
	assert.Empty(t, msgs)
	assert.Equal(t, uint64(1), next)
}

func TestDeleteBefore(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 100, 1)
	m.appendN(t, l, 101, 100, 2)
	segs := l.Stats().Segments
	require.Greater(t, segs, 4)

	// Nothing is committed: nothing goes.
	require.NoError(t, l.DeleteBefore(150))
	assert.Equal(t, segs, l.Stats().Segments)

	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(2), Commit: proto.Uint64(180)}))
	require.NoError(t, l.DeleteBefore(150))
	st := l.Stats()
	assert.Less(t, st.Segments, segs)
	assert.Greater(t, st.FirstIndex, uint64(1))
	assert.LessOrEqual(t, st.FirstIndex, uint64(150))
	m.first = st.FirstIndex
	assert.Equal(t, m.ids[m.first].FirstID, st.FirstID)
	for i := m.first - 1; i <= m.last; i++ {
		_, err := l.Term(i)
		require.NoError(t, err)
	}
	term, _ := l.Term(m.first - 1)
	assert.Equal(t, m.ents[m.first-1].GetTerm(), term)
	_, err := l.Term(m.first - 2)
	assert.ErrorIs(t, err, raft.ErrCompacted)
	_, err = l.Entries(m.first-1, m.first+1, 1<<30)
	assert.ErrorIs(t, err, raft.ErrCompacted)
	_, err = l.IDs(m.first - 1)
	assert.ErrorIs(t, err, raft.ErrCompacted)
	_, next, err := l.ReadMessages(nil, 1, m.next, 0, 0)
	assert.ErrorIs(t, err, ErrCompacted)
	assert.Equal(t, st.FirstID, next)
	snap, err := l.Snapshot()
	require.NoError(t, err)
	assert.Equal(t, m.first-1, snap.GetMetadata().GetIndex())
	assert.Equal(t, term, snap.GetMetadata().GetTerm())
	nid, err := DecodeSnapshotData(snap.GetData())
	require.NoError(t, err)
	assert.Equal(t, st.FirstID, nid)
	m.check(t, l)
	require.NoError(t, l.Close())

	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	m.check(t, l)
	term2, err := l.Term(m.first - 1)
	require.NoError(t, err)
	assert.Equal(t, term, term2)
}

func TestApplySnapshot(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	m.appendN(t, l, 1, 80, 1)
	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(1), Commit: proto.Uint64(10)}))

	_, err := l.Snapshot()
	require.NoError(t, err)
	snap := &pb.Snapshot{
		Data: EncodeSnapshotData(nil, 5000),
		Metadata: &pb.SnapshotMetadata{
			Index: proto.Uint64(1000), Term: proto.Uint64(7),
			ConfState: &pb.ConfState{Voters: []uint64{1, 2}},
		},
	}
	require.NoError(t, l.ApplySnapshot(snap))
	check := func(l *Log) {
		fi, _ := l.FirstIndex()
		li, _ := l.LastIndex()
		assert.Equal(t, uint64(1001), fi)
		assert.Equal(t, uint64(1000), li)
		term, err := l.Term(1000)
		require.NoError(t, err)
		assert.Equal(t, uint64(7), term)
		assert.Equal(t, uint64(5000), l.FirstID())
		hs, cs, err := l.InitialState()
		require.NoError(t, err)
		assert.GreaterOrEqual(t, hs.GetCommit(), uint64(1000))
		assert.Equal(t, []uint64{1, 2}, cs.GetVoters())
		_, next, err := l.ReadMessages(nil, 10, 1<<40, 0, 0)
		assert.ErrorIs(t, err, ErrCompacted)
		assert.Equal(t, uint64(5000), next)
	}
	check(l)
	require.NoError(t, l.Close())
	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	check(l)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		assert.NotContains(t, e.Name(), ".log")
	}
	m = &model{ents: map[uint64]*pb.Entry{}, ids: map[uint64]EntryIDs{}, msgs: map[uint64][]byte{}, next: 5000, first: 1001, last: 1000, fid: 5000}
	m.appendN(t, l, 1001, 50, 7)
	m.check(t, l)
	require.NoError(t, l.Close())
	l = openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	m.check(t, l)

	// A snapshot not above commit is out of date.
	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(7), Commit: proto.Uint64(1020)}))
	snap.Metadata.Index = proto.Uint64(1010)
	assert.ErrorIs(t, l.ApplySnapshot(snap), raft.ErrSnapOutOfDate)
}

func TestHardStateSlots(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	hs1 := &pb.HardState{Term: proto.Uint64(3), Vote: proto.Uint64(1), Commit: proto.Uint64(0)}
	require.NoError(t, l.SetHardState(hs1))
	require.NoError(t, l.Sync())
	hs2 := &pb.HardState{Term: proto.Uint64(4), Vote: proto.Uint64(2), Commit: proto.Uint64(0)}
	require.NoError(t, l.SetHardState(hs2))
	require.NoError(t, l.Sync())
	require.NoError(t, l.Close())

	// Close rewrote the state; find which slot holds the newest and tear it.
	path := filepath.Join(dir, hardStateName)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	seq0, _, ok0 := decodeHSSlot(raw[:hsSlotSize])
	seq1, _, ok1 := decodeHSSlot(raw[hsSlotStride : hsSlotStride+hsSlotSize])
	require.True(t, ok0 && ok1)
	newest := 0
	if seq1 > seq0 {
		newest = 1
	}
	// A torn write of a newer state (term 5) into the non-anchor slot.
	torn := make([]byte, hsSlotSize)
	copy(torn, raw[newest*hsSlotStride:])
	torn[0]++ // seq+1
	torn[8] = 5
	torn[20] ^= 0xff // not matching the crc
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(torn, int64((1-newest)*hsSlotStride))
	require.NoError(t, err)
	require.NoError(t, f.Close())

	l = openT(t, dir, Options{})
	got, _, err := l.InitialState()
	require.NoError(t, err)
	assert.Equal(t, uint64(4), got.GetTerm())
	assert.Equal(t, uint64(2), got.GetVote())
	// Commit-only changes never overwrite the durable term/vote slot.
	for c := uint64(1); c <= 5; c++ {
		require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(4), Vote: proto.Uint64(2)}))
	}
	require.NoError(t, l.Close())
	l = openT(t, dir, Options{})
	defer l.Close()
	got, _, err = l.InitialState()
	require.NoError(t, err)
	assert.Equal(t, uint64(4), got.GetTerm())
}

// TestHardStateWithoutValidSlotIsCorrupt: a new log's hardstate file is
// created whole, so a file with both slots damaged is corruption, not a
// node that never voted: Open refuses it rather than restart the node at
// term 0 with no vote (it could vote twice in a term). A file an older
// version left shorter than two slots reads as before.
func TestHardStateWithoutValidSlotIsCorrupt(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	path := filepath.Join(dir, hardStateName)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Len(t, raw, hsSlotStride+hsSlotSize, "created whole")
	for slot := range 2 {
		_, st, ok := decodeHSSlot(raw[slot*hsSlotStride:])
		require.True(t, ok, "slot %d", slot)
		assert.Equal(t, hardState{}, st)
	}
	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(7), Vote: proto.Uint64(2), Commit: proto.Uint64(0)}))
	require.NoError(t, l.Sync())
	require.NoError(t, l.Close())

	raw, err = os.ReadFile(path)
	require.NoError(t, err)
	raw[33] ^= 0xff
	raw[hsSlotStride+33] ^= 0xff
	require.NoError(t, os.WriteFile(path, raw, 0o644))
	_, err = Open(dir, Options{})
	require.ErrorIs(t, err, ErrCorrupt)
	// The same in the size of an earlier version's file (two 36-byte slots).
	require.NoError(t, os.WriteFile(path, raw[:hsSlotStride+hsBaseSize], 0o644))
	_, err = Open(dir, Options{})
	require.ErrorIs(t, err, ErrCorrupt)

	// An older version's file: one slot, never synced whole.
	require.NoError(t, os.WriteFile(path, raw[:hsBaseSize], 0o644))
	l = openT(t, dir, Options{})
	defer l.Close()
	got, _, err := l.InitialState()
	require.NoError(t, err)
	assert.Zero(t, got.GetTerm())
}

func TestClosed(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	require.NoError(t, l.Close())
	assert.ErrorIs(t, l.Close(), ErrClosed)
	_, err := l.Append([]*pb.Entry{ent(1, 1, pb.EntryType_EntryNormal, nil)}, nil)
	assert.ErrorIs(t, err, ErrClosed)
	_, _, err = l.ReadMessages(nil, 1, 1, 1, 1)
	assert.True(t, errors.Is(err, ErrClosed))
}

// TestReadBeyondEstimate: a read whose buffer, sized from the first
// record's average message, ends before its targets are met reads on from
// there: targets and caps hold as if it had read everything at once.
func TestReadBeyondEstimate(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	// Ten records of 100 messages: 10 bytes each in the first, then
	// 1,000 bytes each (100,000 bytes per record).
	all := appendUniform(t, l, 1, 100, 10)
	for i := uint64(2); i <= 10; i++ {
		all = append(all, appendUniform(t, l, i, 100, 1000)...)
	}
	cases := []struct {
		name                  string
		id                    uint64
		count, fill, maxBytes int
		whole                 bool
		wantNext              uint64
	}{
		{"count cap past the first record", 1, 250, 0, 1 << 30, false, 251},
		{"count target", 1, 250, 0, 1 << 30, true, 301},
		{"fill target", 101, 1, 250_000, 1 << 30, true, 401},
		{"maxBytes cap", 101, 1, 1 << 30, 150_000, true, 250}, // 1,003 bytes a message, with framing
		{"everything", 1, 1 << 20, 0, 1 << 30, false, 1001},
	}
	// Fresh buffers first; then the same reads into one Scratch, twice
	// over: a read that needs several buffers takes as many of sc's
	// (reusing those large enough), and the messages in its earlier
	// buffers stay intact.
	var sc Scratch
	for round, scratch := range []*Scratch{nil, &sc, &sc} {
		for _, tc := range cases {
			var got [][]byte
			var next uint64
			var err error
			switch {
			case tc.whole && scratch == nil:
				got, next, err = l.ReadBatches(nil, tc.id, 1000, tc.count, tc.fill, tc.maxBytes)
			case tc.whole:
				got, next, err = l.ReadBatchesInto(scratch, tc.id, 1000, tc.count, tc.fill, tc.maxBytes)
			case scratch == nil:
				got, next, err = l.ReadMessages(nil, tc.id, 1000, tc.count, tc.maxBytes)
			default:
				got, next, err = l.ReadInto(scratch, tc.id, 1000, tc.count, tc.maxBytes)
			}
			require.NoError(t, err, tc.name)
			assert.Equal(t, tc.wantNext, next, "%s, round %d", tc.name, round)
			assert.True(t, slices.EqualFunc(all[tc.id-1:next-1], got, bytes.Equal), "%s, round %d", tc.name, round)
		}
	}
	assert.Greater(t, len(sc.bufs), 1, "no read needed a second buffer: the test lost its point")
}

// TestReadSizesSliceSanely: the answer's slice is sized from the first
// record's messages per byte, but not for a buffer full of them when the
// first record holds empty messages and the rest are large (it once held
// room for about a million messages here, 22 MiB, to return 1,011).
func TestReadSizesSliceSanely(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	all := appendUniform(t, l, 1, 1000, 0)
	for i := uint64(2); i <= 40; i++ {
		all = append(all, appendUniform(t, l, i, 1, 100_000)...)
	}
	got, next, err := l.ReadBatches(nil, 1, uint64(len(all)), 100, 1<<20, 4<<20)
	require.NoError(t, err)
	assert.True(t, slices.EqualFunc(all[:next-1], got, bytes.Equal))
	assert.Greater(t, len(got), 1000)
	assert.Less(t, cap(got), 100_000, "slice sized for %d messages to return %d", cap(got), len(got))
}

// TestReadBatches: count and fill (MessageCost bytes) are targets that end on a
// stored batch boundary; maxBytes stays a hard cap; ReadMessages keeps the
// count a cap.
func TestReadBatches(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	// Three batches of five messages: IDs 1-5 (65 bytes of payload, 75 as
	// the byte limits count them, with a tag and a length byte each), 6-10
	// (91 bytes, 101 counted), 11-15.
	var all [][]byte
	for i := uint64(1); i <= 3; i++ {
		msgs := msgsFor(5*(i-1)+1, 5)
		all = append(all, msgs...)
		_, err := l.Append([]*pb.Entry{ent(i, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, i, 0, 0, msgs))}, nil)
		require.NoError(t, err)
	}
	require.Equal(t, 65, payload(all[:5]))
	require.Equal(t, 91, payload(all[5:10]))
	require.Equal(t, 75, cost(all[:5]))
	require.Equal(t, 101, cost(all[5:10]))
	var sc Scratch // one for every case: ReadBatchesInto answers alike
	for _, tc := range []struct {
		id                    uint64
		count, fill, maxBytes int
		wantNext              uint64
	}{
		{1, 3, 0, 1 << 20, 6},        // finishes the first batch
		{1, 5, 0, 1 << 20, 6},        // exactly one batch
		{1, 6, 0, 1 << 20, 11},       // into the second batch: finishes it
		{3, 1, 0, 1 << 20, 6},        // from the middle of a batch to its end
		{1, 100, 0, 1 << 20, 16},     // everything
		{1, 3, 0, 30, 3},             // maxBytes cuts inside a batch (messages cost 13-17 bytes)
		{14, 1, 0, 1 << 20, 16},      // the last batch's tail
		{1, 1, 1, 1 << 20, 6},        // fill met by the first message: its batch
		{1, 1, 75, 1 << 20, 6},       // fill met exactly at the first boundary
		{1, 1, 76, 1 << 20, 11},      // one byte more: the second batch too
		{3, 1, 50, 1 << 20, 11},      // from mid-batch, 48 bytes to its end: on into the next
		{1, 1, 1 << 20, 1 << 20, 16}, // fill beyond the log: everything
		{1, 1, 1 << 20, 100, 7},      // maxBytes still cuts inside a batch (75 + 18)
		{1, 6, 1, 1 << 20, 11},       // count and fill are both targets
	} {
		got, next, err := l.ReadBatches(nil, tc.id, 15, tc.count, tc.fill, tc.maxBytes)
		require.NoError(t, err)
		assert.Equal(t, tc.wantNext, next, "id %d count %d fill %d", tc.id, tc.count, tc.fill)
		assert.Equal(t, all[tc.id-1:next-1], got, "id %d count %d fill %d", tc.id, tc.count, tc.fill)
		got, next, err = l.ReadBatchesInto(&sc, tc.id, 15, tc.count, tc.fill, tc.maxBytes)
		require.NoError(t, err)
		assert.Equal(t, tc.wantNext, next, "into a Scratch: id %d count %d fill %d", tc.id, tc.count, tc.fill)
		assert.Equal(t, all[tc.id-1:next-1], got, "into a Scratch: id %d count %d fill %d", tc.id, tc.count, tc.fill)
	}
	// The commit cap still holds mid-batch, whatever fill asks for.
	got, next, err := l.ReadBatches(nil, 1, 7, 1, 1<<20, 1<<20)
	require.NoError(t, err)
	assert.Equal(t, uint64(8), next)
	assert.Len(t, got, 7)
	got, next, err = l.ReadBatches(nil, 1, 7, 3, 0, 1<<20)
	require.NoError(t, err)
	assert.Equal(t, uint64(6), next)
	assert.Len(t, got, 5)
	got, next, err = l.ReadBatches(nil, 6, 7, 1, 0, 1<<20)
	require.NoError(t, err)
	assert.Equal(t, uint64(8), next)
	assert.Len(t, got, 2)
	// ReadMessages: the count is a cap.
	got, next, err = l.ReadMessages(nil, 1, 15, 3, 1<<20)
	require.NoError(t, err)
	assert.Equal(t, uint64(4), next)
	assert.Len(t, got, 3)
}

// TestReadInto reads the whole log in steps with one Scratch: the same
// answers as ReadMessages, and, once the buffers have grown, neither the
// read buffer nor the message slice is allocated again (what is left is
// the index lookup's small allocation, as in ReadMessages).
func TestReadInto(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	for i := uint64(1); i <= 20; i++ {
		_, err := l.Append([]*pb.Entry{ent(i, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, i, 0, 0, msgsFor(5*(i-1)+1, 5)))}, nil)
		require.NoError(t, err)
	}
	var sc Scratch
	for id := uint64(1); id <= 100; {
		want, wantNext, err := l.ReadMessages(nil, id, 100, 7, 1<<20)
		require.NoError(t, err)
		got, next, err := l.ReadInto(&sc, id, 100, 7, 1<<20)
		require.NoError(t, err)
		require.Equal(t, wantNext, next)
		require.Equal(t, want, got)
		id = next
	}
	allocs := testing.AllocsPerRun(50, func() {
		if _, _, err := l.ReadInto(&sc, 3, 100, 7, 1<<20); err != nil {
			t.Fatal(err)
		}
	})
	fresh := testing.AllocsPerRun(50, func() {
		if _, _, err := l.ReadMessages(nil, 3, 100, 7, 1<<20); err != nil {
			t.Fatal(err)
		}
	})
	assert.LessOrEqual(t, allocs, 1.0)
	assert.Less(t, allocs, fresh, "ReadMessages allocates its buffer and grows its slice")
}

// TestReadEndingAtRecordBoundary: a read whose count ends exactly at a
// record boundary reads one buffer, not a second one to find out that it
// was done.
func TestReadEndingAtRecordBoundary(t *testing.T) {
	l := openT(t, t.TempDir(), Options{NoSync: true})
	defer l.Close()
	for i := uint64(1); i <= 10; i++ {
		appendUniform(t, l, i, 100, 100)
	}
	dst := make([][]byte, 0, 500)
	allocs := testing.AllocsPerRun(20, func() {
		got, next, err := l.ReadMessages(dst[:0], 1, 1000, 500, 1<<20)
		if err != nil || next != 501 || len(got) != 500 {
			t.Fatalf("read: %v, next %d, %d messages", err, next, len(got))
		}
	})
	// One read: its buffer and the index lookup (plus, at times, a span
	// buffer its sync.Pool dropped: the race detector drops pooled items on
	// purpose). A second read would add a buffer and a lookup: 4 or more.
	assert.Less(t, allocs, 4.0, "one read buffer, not two")
}

// TestReadAheadOneBuffer: a fill target or a maxBytes cap (counted by
// MessageCost) is sized into the buffer with the records' framing, so a
// read-ahead over uniform batches reads one buffer, not one and then a few
// more to make up the framing.
func TestReadAheadOneBuffer(t *testing.T) {
	l := openT(t, t.TempDir(), Options{NoSync: true})
	defer l.Close()
	for i := uint64(1); i <= 100; i++ {
		appendUniform(t, l, i, 100, 100)
	}
	dst := make([][]byte, 0, 10000)
	allocs := testing.AllocsPerRun(20, func() {
		got, next, err := l.ReadBatches(dst[:0], 1, 10000, 1, 500_000, 4<<20)
		if err != nil || next != 5001 || len(got) != 5000 {
			t.Fatalf("read: %v, next %d, %d messages", err, next, len(got))
		}
	})
	// As in TestReadEndingAtRecordBoundary: one buffer and one index lookup
	// (plus a span buffer the race detector's pool may drop).
	assert.Less(t, allocs, 4.0, "one read buffer")

	// The cap ends it (300,000 bytes: 2,941 messages of 102).
	allocs = testing.AllocsPerRun(20, func() {
		got, next, err := l.ReadBatches(dst[:0], 1, 10000, 1, 1<<30, 300_000)
		if err != nil || next != 2942 || len(got) != 2941 {
			t.Fatalf("read: %v, next %d, %d messages", err, next, len(got))
		}
	})
	assert.Less(t, allocs, 4.0, "one read buffer")
}

// TestCommitPointKeptUntilFlush: a commit-only change stays in memory (the
// log reports it; the file, which is what a killed process leaves, does not
// have it) until FlushHardState, a term or vote change, or Close writes it.
func TestCommitPointKeptUntilFlush(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	appendUniform(t, l, 1, 10, 100)
	for i := uint64(2); i <= 10; i++ {
		appendUniform(t, l, i, 1, 100)
	}
	onFile := func() hardState {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, hardStateName))
		require.NoError(t, err)
		var best hardState
		var bestSeq uint64
		for slot := 0; slot < 2; slot++ {
			off := slot * hsSlotStride
			if len(raw) < off+hsSlotSize {
				continue
			}
			if seq, st, ok := decodeHSSlot(raw[off : off+hsSlotSize]); ok && seq > bestSeq {
				best, bestSeq = st, seq
			}
		}
		return best
	}
	hs := func(term, vote, commit uint64) *pb.HardState {
		return &pb.HardState{Term: proto.Uint64(term), Vote: proto.Uint64(vote), Commit: proto.Uint64(commit)}
	}
	reported := func() uint64 {
		t.Helper()
		got, _, err := l.InitialState()
		require.NoError(t, err)
		return got.GetCommit()
	}

	require.NoError(t, l.SetHardState(hs(1, 1, 2)))
	require.NoError(t, l.Sync())
	assert.Equal(t, hardState{1, 1, 2, 0}, onFile(), "a term/vote change is written at once")

	require.NoError(t, l.SetHardState(hs(1, 1, 5)))
	assert.Equal(t, uint64(5), reported())
	assert.Equal(t, hardState{1, 1, 2, 0}, onFile(), "a commit-only change waits, and so does the watermark of the Sync")
	require.NoError(t, l.FlushHardState())
	assert.Equal(t, hardState{1, 1, 5, 10}, onFile())
	require.NoError(t, l.FlushHardState()) // nothing to write
	assert.Equal(t, hardState{1, 1, 5, 10}, onFile())

	require.NoError(t, l.SetHardState(hs(1, 1, 6)))
	require.NoError(t, l.SetHardState(hs(2, 3, 7)))
	assert.Equal(t, hardState{2, 3, 7, 10}, onFile(), "a vote carries the newest commit")
	require.NoError(t, l.Sync())

	require.NoError(t, l.SetHardState(hs(2, 3, 9)))
	appendUniform(t, l, 11, 1, 100)
	assert.Equal(t, hardState{2, 3, 7, 10}, onFile())
	require.NoError(t, l.Close())
	assert.Equal(t, hardState{2, 3, 9, 11}, onFile(), "Close writes what waits, and the watermark of its sync")
	l = openT(t, dir, Options{})
	defer l.Close()
	assert.Equal(t, uint64(9), reported())
}

// TestRecentIDsFromMemory: the ids of the last recentIDs entries come from
// memory. With the segment's bytes overwritten behind the log's back, those
// entries still answer (older ones, read from the file, do not), so an
// apply just behind the tail costs no pread.
func TestRecentIDsFromMemory(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{NoSync: true})
	defer l.Close()
	const n = recentIDs + 20
	var want []EntryIDs
	for i := uint64(1); i <= n; i++ {
		want = append(want, appendOne(t, l, pbatch(i, 1, 7, i, int(i%3)+1)))
	}
	// Append again over the last five (a new term): their slots change.
	var ents []*pb.Entry
	for i := uint64(n - 4); i <= n; i++ {
		ents = append(ents, pbatch(i, 2, 8, i, 2))
	}
	got, err := l.Append(ents, nil)
	require.NoError(t, err)
	want = append(want[:n-5], got...)

	f, err := os.OpenFile(filepath.Join(dir, segmentName(1)), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 1<<16), 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	for i := uint64(n - recentIDs + 1); i <= n; i++ {
		ids, err := l.IDs(i)
		require.NoError(t, err, "entry %d", i)
		require.Equal(t, want[i-1], ids, "entry %d", i)
	}
	_, err = l.IDs(1)
	require.Error(t, err, "entry 1 is read from the (overwritten) file")
	_, err = l.IDs(n + 1)
	require.ErrorIs(t, err, raft.ErrUnavailable)
}

// lostTailAfterCommit is the directory of a log of entries 1-10 whose
// hardstate stores commit 10 (a term change writes it at once), after a
// power loss before the entries' sync took entries 6-10 from its segment.
func lostTailAfterCommit(t *testing.T) string {
	l := openT(t, t.TempDir(), Options{})
	m := newModel()
	m.appendN(t, l, 1, 10, 1)
	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(2), Vote: proto.Uint64(1), Commit: proto.Uint64(10)}))
	_, off, _, err := l.locate(6)
	require.NoError(t, err)
	seg := filepath.Base(l.segs[0].path)
	dir := crashImage(t, l)
	require.NoError(t, l.Close())
	require.NoError(t, os.Truncate(filepath.Join(dir, seg), off))
	return dir
}

// TestStoredCommitBeyondLostTail: a power loss can keep a hardstate whose
// commit point covers entries the log lost (a term change writes it at
// once, before the entries' sync). Open lowers the point to the log's end,
// so a snapshot above the end and below the stored point is applied, not
// refused as out of date at every start (review).
func TestStoredCommitBeyondLostTail(t *testing.T) {
	dir := lostTailAfterCommit(t)
	l := openT(t, dir, Options{})
	defer l.Close()
	last, err := l.LastIndex()
	require.NoError(t, err)
	require.Equal(t, uint64(5), last)
	hs, _, err := l.InitialState()
	require.NoError(t, err)
	assert.Equal(t, uint64(5), hs.GetCommit())
	require.NoError(t, l.ApplySnapshot(&pb.Snapshot{Data: EncodeSnapshotData(nil, 100), Metadata: &pb.SnapshotMetadata{
		Index: proto.Uint64(8), Term: proto.Uint64(2), ConfState: &pb.ConfState{Voters: []uint64{1}},
	}}), "a snapshot between the log's end and the stored commit point")
	first, err := l.FirstIndex()
	require.NoError(t, err)
	assert.Equal(t, uint64(9), first)
}

// TestReadLimitsCountFraming: the byte limits count each message with its
// framing (MessageCost), so they bound an answer's encoded size however
// small the messages, and empty messages meet a fill target.
func TestReadLimitsCountFraming(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	tiny := make([][]byte, 5000)
	for i := range tiny {
		tiny[i] = []byte{byte(i)}
	}
	empty := make([][]byte, 1000)
	for i := range empty {
		empty[i] = []byte{}
	}
	_, err := l.Append([]*pb.Entry{
		ent(1, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, 1, 0, 0, tiny)),
		ent(2, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, 5001, 0, 0, empty)),
		ent(3, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, 6001, 0, 0, empty)),
	}, nil)
	require.NoError(t, err)

	// 3,000 bytes hold 1,000 one-byte messages as an answer carries them
	// (tag, length, byte), not 3,000.
	msgs, next, err := l.ReadMessages(nil, 1, 7000, 0, 3000)
	require.NoError(t, err)
	assert.Len(t, msgs, 1000)
	assert.Equal(t, uint64(1001), next)
	var sc Scratch
	msgs, next, err = l.ReadBatchesInto(&sc, 1, 7000, 1, 1<<20, 3000)
	require.NoError(t, err)
	assert.Len(t, msgs, 1000)
	assert.Equal(t, uint64(1001), next)

	// Empty messages cost two bytes each: a fill of 10 is met within the
	// first empty batch, which the answer finishes, instead of running on
	// to the end of the log.
	msgs, next, err = l.ReadBatches(nil, 5001, 7000, 1, 10, 1<<20)
	require.NoError(t, err)
	assert.Len(t, msgs, 1000)
	assert.Equal(t, uint64(6001), next)
}

// TestSetConfStateSkipsAnEqualOne: storing the configuration already
// stored writes nothing (a new group stores its bootstrap configuration
// before raft applies the same one); a different one is written, and an
// unset auto_leave equals a false one.
func TestSetConfStateSkipsAnEqualOne(t *testing.T) {
	dir := t.TempDir()
	metaPath := filepath.Join(dir, metaTmpName)
	writes := 0
	prev := flushhook.Set(func(f *os.File, _ string) {
		if f != nil && f.Name() == metaPath {
			writes++
		}
	})
	defer flushhook.Set(prev)
	l := openT(t, dir, Options{})
	defer l.Close()
	require.NoError(t, l.SetConfState(&pb.ConfState{Voters: []uint64{1, 2, 3}}))
	require.Equal(t, 1, writes)
	require.NoError(t, l.SetConfState(&pb.ConfState{Voters: []uint64{1, 2, 3}, AutoLeave: proto.Bool(false)}))
	require.Equal(t, 1, writes, "the same configuration")
	require.NoError(t, l.SetConfState(&pb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}))
	require.Equal(t, 2, writes, "a learner more")
	_, cs, err := l.InitialState()
	require.NoError(t, err)
	require.Equal(t, []uint64{4}, cs.GetLearners())
}

// TestSetSegmentBytesWhileWriting: a topic's segment size may change (the
// metadata group applies new settings) while another goroutine writes
// and syncs its log (the replica engine's syncer), and the next roll
// follows the new size. -race found the plain field written under a sync
// that read it.
func TestSetSegmentBytesWhileWriting(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	m := newModel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			l.SetSegmentBytes(MinSegmentBytes + int64(i%2)*4096)
		}
	}()
	next := uint64(1)
	for range 20 {
		m.appendN(t, l, next, 5, 1)
		next += 5
		require.NoError(t, l.Sync())
	}
	<-done
	segs := len(l.segs)
	l.SetSegmentBytes(64 << 20)
	for l.segs[len(l.segs)-1].size < MinSegmentBytes+4096 {
		m.appendN(t, l, next, 5, 1)
		next += 5
	}
	require.NoError(t, l.Sync())
	assert.Equal(t, segs, len(l.segs), "no roll below the new size")
	m.check(t, l)
}
