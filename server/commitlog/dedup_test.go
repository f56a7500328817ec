package commitlog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// pbatch is entry index carrying n messages of producer pid, sequence seq.
func pbatch(index, term, pid, seq uint64, n int) *pb.Entry {
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = fmt.Appendf(nil, "p%d-s%d-m%d", pid, seq, i)
	}
	return ent(index, term, pb.EntryType_EntryNormal, EncodeBatch(nil, index, pid, seq, msgs))
}

func appendOne(t *testing.T, l *Log, e *pb.Entry) EntryIDs {
	t.Helper()
	ids, err := l.Append([]*pb.Entry{e}, nil)
	require.NoError(t, err)
	require.Len(t, ids, 1)
	return ids[0]
}

func commitTo(t *testing.T, l *Log, index uint64) {
	t.Helper()
	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(1), Commit: proto.Uint64(index)}))
}

func stored(first uint64, n uint32) EntryIDs {
	return EntryIDs{FirstID: first, Count: n, Next: first + uint64(n)}
}

func dupOf(first uint64, n uint32, next uint64) EntryIDs {
	return EntryIDs{FirstID: first, Count: n, Dup: true, Next: next}
}

func at(index uint64, ids EntryIDs) EntryIDs { ids.Index = index; return ids }

func TestDedupVerdicts(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	assert.Equal(t, at(1, stored(1, 3)), appendOne(t, l, pbatch(1, 1, 7, 1, 3)))
	assert.Equal(t, at(2, stored(4, 2)), appendOne(t, l, pbatch(2, 1, 7, 2, 2)))
	// Retry of sequence 1: no ids consumed, original ids reported.
	assert.Equal(t, at(3, dupOf(1, 3, 6)), appendOne(t, l, pbatch(3, 1, 7, 1, 3)))
	// Numbering continues without a hole.
	assert.Equal(t, at(4, stored(6, 1)), appendOne(t, l, pbatch(4, 1, 7, 3, 1)))
	// Other producers and producer 0 are independent.
	assert.Equal(t, at(5, stored(7, 1)), appendOne(t, l, pbatch(5, 1, 8, 1, 1)))
	assert.Equal(t, at(6, stored(8, 2)), appendOne(t, l, pbatch(6, 1, 0, 1, 2)))
	assert.Equal(t, at(7, stored(10, 2)), appendOne(t, l, pbatch(7, 1, 0, 1, 2)))
	// Gaps are allowed, and a skipped sequence is stored when it comes.
	assert.Equal(t, at(8, stored(12, 1)), appendOne(t, l, pbatch(8, 1, 7, 10, 1)))
	assert.Equal(t, at(9, stored(13, 1)), appendOne(t, l, pbatch(9, 1, 7, 5, 1)))
	assert.Equal(t, at(10, dupOf(13, 1, 14)), appendOne(t, l, pbatch(10, 1, 7, 5, 1)))
	// An empty batch is never a duplicate (it has no ids to protect).
	assert.Equal(t, at(11, stored(14, 0)), appendOne(t, l, pbatch(11, 1, 7, 1, 0)))
	// Beyond the sequence window: too old to tell, so stored (a late batch
	// is never lost).
	assert.Equal(t, at(12, stored(14, 1)), appendOne(t, l, pbatch(12, 1, 7, 200, 1)))
	assert.Equal(t, at(13, stored(15, 1)), appendOne(t, l, pbatch(13, 1, 7, 100, 1)))
	// Stored, in the sequence window, but older than the id window: the
	// DedupIDWindow batches stored after 200 are earlier sequences (late
	// ones, stored when they come).
	idx, next := uint64(14), uint64(16)
	for s := uint64(200 - DedupIDWindow); s < 200; s++ {
		assert.Equal(t, at(idx, stored(next, 1)), appendOne(t, l, pbatch(idx, 1, 7, s, 1)))
		idx++
		next++
	}
	assert.Equal(t, at(idx, dupOf(0, 0, next)), appendOne(t, l, pbatch(idx, 1, 7, 200, 1)))
	assert.Equal(t, at(idx+1, dupOf(next-1, 1, next)), appendOne(t, l, pbatch(idx+1, 1, 7, 199, 1)))
	last := idx + 1

	check := func(l *Log) {
		t.Helper()
		ids, err := l.IDs(3)
		require.NoError(t, err)
		assert.Equal(t, at(3, dupOf(1, 3, 6)), ids)
		ids, err = l.IDs(13)
		require.NoError(t, err)
		assert.Equal(t, at(13, stored(15, 1)), ids)
		ids, err = l.IDs(4)
		require.NoError(t, err)
		assert.Equal(t, at(4, stored(6, 1)), ids)
		ids, err = l.IDs(last)
		require.NoError(t, err)
		assert.Equal(t, at(last, dupOf(next-1, 1, next)), ids)
		assert.Equal(t, next, l.NextID())
		// Duplicates never yield messages: ids are contiguous.
		msgs, nx, err := l.ReadMessages(nil, 1, 1<<40, 0, 0)
		require.NoError(t, err)
		assert.Equal(t, next, nx)
		require.Len(t, msgs, int(next-1))
		assert.Equal(t, "p7-s1-m0", string(msgs[0]))
		assert.Equal(t, "p7-s2-m0", string(msgs[3]))
		assert.Equal(t, "p7-s3-m0", string(msgs[5]))
		for id := uint64(1); id < next; id++ {
			m, _, err := l.ReadMessages(nil, id, id, 1, 0)
			require.NoError(t, err)
			require.Len(t, m, 1)
			assert.Equal(t, msgs[id-1], m[0])
		}
		// Entries still carries the duplicate's payload.
		ents, err := l.Entries(3, 4, 1<<30)
		require.NoError(t, err)
		assert.Equal(t, pbatch(3, 1, 7, 1, 3).GetData(), ents[0].GetData())
	}
	check(l)
	require.NoError(t, l.Close())

	// Across reopen: verdicts re-derived by the scan, table rebuilt.
	l = openT(t, dir, Options{})
	defer l.Close()
	check(l)
	assert.Equal(t, at(last+1, stored(next, 2)), appendOne(t, l, pbatch(last+1, 1, 7, 2, 2)))
	assert.Equal(t, at(last+2, dupOf(7, 1, next+2)), appendOne(t, l, pbatch(last+2, 1, 8, 1, 1)))
}

func TestDedupTruncation(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	appendOne(t, l, pbatch(1, 1, 7, 1, 2))
	commitTo(t, l, 1)
	assert.Equal(t, at(2, stored(3, 2)), appendOne(t, l, pbatch(2, 1, 7, 2, 2)))
	assert.Equal(t, at(3, dupOf(3, 2, 5)), appendOne(t, l, pbatch(3, 1, 7, 2, 2)))

	// Truncating the duplicate: a new batch at its index is stored.
	assert.Equal(t, at(3, stored(5, 1)), appendOne(t, l, pbatch(3, 2, 7, 3, 1)))
	ids, err := l.IDs(3)
	require.NoError(t, err)
	assert.Equal(t, at(3, stored(5, 1)), ids)

	// Truncating the original (and what follows): the retried batch is no
	// longer a duplicate and gets fresh ids.
	assert.Equal(t, at(2, stored(3, 0)), appendOne(t, l, ent(2, 3, pb.EntryType_EntryNormal, nil)))
	assert.Equal(t, at(3, stored(3, 2)), appendOne(t, l, pbatch(3, 3, 7, 2, 2)))
	assert.Equal(t, at(4, stored(5, 1)), appendOne(t, l, pbatch(4, 3, 7, 3, 1)))
	assert.Equal(t, at(5, dupOf(3, 2, 6)), appendOne(t, l, pbatch(5, 3, 7, 2, 2)))
	// Producer 7's sequence 1 is committed and stays a duplicate.
	assert.Equal(t, at(6, dupOf(1, 2, 6)), appendOne(t, l, pbatch(6, 3, 7, 1, 2)))

	// A truncation that removes a producer's only batch forgets it.
	assert.Equal(t, at(7, stored(6, 1)), appendOne(t, l, pbatch(7, 3, 9, 1, 1)))
	assert.Equal(t, at(7, stored(6, 0)), appendOne(t, l, ent(7, 4, pb.EntryType_EntryNormal, nil)))
	assert.Equal(t, at(8, stored(6, 1)), appendOne(t, l, pbatch(8, 4, 9, 1, 1)))
}

// TestDedupTruncationRestoresOverwrittenSlot: a batch recorded into a full
// id window overwrites the oldest remembered batch; truncating it brings
// that one back, with its ids.
func TestDedupTruncationRestoresOverwrittenSlot(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	for s := uint64(1); s <= DedupIDWindow; s++ { // entry s, id s
		appendOne(t, l, pbatch(s, 1, 7, s, 1))
	}
	commitTo(t, l, DedupIDWindow)
	w := uint64(DedupIDWindow)
	assert.Equal(t, at(w+1, stored(w+1, 1)), appendOne(t, l, pbatch(w+1, 1, 7, w+2, 1)))
	appendOne(t, l, ent(w+1, 2, pb.EntryType_EntryNormal, nil)) // truncates it
	assert.Equal(t, at(w+2, dupOf(1, 1, w+1)), appendOne(t, l, pbatch(w+2, 2, 7, 1, 1)))
}

func TestDedupAcrossRetentionAndReopen(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentBytes: MinSegmentBytes, NoSync: true}
	l := openT(t, dir, opts)
	const n = 300
	for s := uint64(1); s <= n; s++ {
		appendOne(t, l, pbatch(s, 1, 7, s, 5)) // entry s holds ids 5s-4 .. 5s
	}
	appendOne(t, l, pbatch(n+1, 1, 8, 1, 1))
	commitTo(t, l, n+1)
	require.NoError(t, l.DeleteBefore(n))
	fi, _ := l.FirstIndex()
	// The originals of the retries below are deleted: the answers come
	// from the table at the log start.
	require.Greater(t, fi, uint64(n-DedupIDWindow+1))

	check := func(l *Log, index uint64) {
		t.Helper()
		next := l.NextID()
		// A retry of a batch whose entry was deleted, still remembered.
		assert.Equal(t, at(index, dupOf(5*(n-1)-4, 5, next)), appendOne(t, l, pbatch(index, 1, 7, n-1, 5)))
		// The oldest sequence in the window, deleted too: its ids are
		// remembered (in order, the id window spans the sequence window).
		assert.Equal(t, at(index+1, dupOf(5*(n-63)-4, 5, next)), appendOne(t, l, pbatch(index+1, 1, 7, n-63, 5)))
		assert.Equal(t, at(index+2, dupOf(5*n+1, 1, next)), appendOne(t, l, pbatch(index+2, 1, 8, 1, 1)))
		assert.Equal(t, next, l.NextID())
	}
	// Delete everything but the active segment, so that the originals of
	// the retries below are gone from the files.
	check(l, n+2)
	commitTo(t, l, n+4)
	last := l.segs[len(l.segs)-1].first
	require.NoError(t, l.DeleteBefore(n+10))
	fi, _ = l.FirstIndex()
	require.Equal(t, last, fi)
	require.NoError(t, l.Close())
	l = openT(t, dir, opts)
	check(l, n+5)
	ids, err := l.IDs(n + 5)
	require.NoError(t, err)
	assert.True(t, ids.Dup)
	require.NoError(t, l.Close())
	l = openT(t, dir, opts)
	defer l.Close()
	check(l, n+8)
}

func TestDedupSnapshot(t *testing.T) {
	opts := Options{SegmentBytes: MinSegmentBytes, NoSync: true}
	a := openT(t, t.TempDir(), opts)
	defer a.Close()
	const n = 200
	for s := uint64(1); s <= n; s++ {
		appendOne(t, a, pbatch(s, 1, 7, s, 5))
	}
	commitTo(t, a, n)
	require.NoError(t, a.DeleteBefore(n))
	snap, err := a.Snapshot()
	require.NoError(t, err)
	si := snap.GetMetadata().GetIndex()
	require.Greater(t, si, uint64(10))
	nextID, err := DecodeSnapshotData(snap.GetData())
	require.NoError(t, err)
	assert.Equal(t, 5*si+1, nextID)

	dir := t.TempDir()
	b := openT(t, dir, opts)
	require.NoError(t, b.ApplySnapshot(snap))
	check := func(b *Log, index uint64) {
		t.Helper()
		next := b.NextID()
		assert.Equal(t, at(index, dupOf(5*(n-1)-4, 5, next)), appendOne(t, b, pbatch(index, 1, 7, n-1, 5)))
		assert.Equal(t, at(index+1, dupOf(5*(n-63)-4, 5, next)), appendOne(t, b, pbatch(index+1, 1, 7, n-63, 5)))
	}
	// Straight after the restore, a retry is answered from the snapshot's table.
	d := openT(t, t.TempDir(), opts)
	defer d.Close()
	require.NoError(t, d.ApplySnapshot(snap))
	assert.Equal(t, at(si+1, dupOf(5*si-4, 5, 5*si+1)), appendOne(t, d, pbatch(si+1, 1, 7, si, 5)))
	assert.Equal(t, at(si+2, stored(5*si+1, 5)), appendOne(t, d, pbatch(si+2, 1, 7, si+1, 5)))
	// The restored log derives the same ids as the original for the rest.
	ents, err := a.Entries(si+1, n+1, 1<<40)
	require.NoError(t, err)
	got, err := b.Append(ents, nil)
	require.NoError(t, err)
	for _, g := range got {
		want, err := a.IDs(g.Index)
		require.NoError(t, err)
		assert.Equal(t, want, g)
	}
	check(b, n+1)
	require.NoError(t, b.Close())
	b = openT(t, dir, opts)
	defer b.Close()
	check(b, n+3)

	// Version 1 snapshot data: empty table.
	c := openT(t, t.TempDir(), opts)
	defer c.Close()
	require.NoError(t, c.ApplySnapshot(&pb.Snapshot{Data: EncodeSnapshotData(nil, 100),
		Metadata: &pb.SnapshotMetadata{Index: proto.Uint64(10), Term: proto.Uint64(1), ConfState: &pb.ConfState{}}}))
	assert.Equal(t, at(11, stored(100, 5)), appendOne(t, c, pbatch(11, 1, 7, si, 5)))
	// A malformed table is rejected.
	bad := append(encodeSnapshotData(nil, 100, emptyDedupTable), 1)
	err = c.ApplySnapshot(&pb.Snapshot{Data: bad,
		Metadata: &pb.SnapshotMetadata{Index: proto.Uint64(20), Term: proto.Uint64(1), ConfState: &pb.ConfState{}}})
	assert.Error(t, err)
}

func TestDedupTableEncoding(t *testing.T) {
	tb := newDedupTable()
	for i := uint64(1); i <= 30; i++ {
		data := EncodeBatch(nil, 0, i%4+1, i*3, [][]byte{{1}})
		tb.apply(i, data, 1, i, false)
	}
	enc := tb.encode(nil)
	back, err := decodeDedupTable(enc)
	require.NoError(t, err)
	assert.Equal(t, enc, back.encode(nil))
	require.Len(t, back.producers, 4)
	for pid, p := range tb.producers {
		q := back.producers[pid]
		assert.Equal(t, p.lastSeq, q.lastSeq)
		assert.Equal(t, p.bits, q.bits)
		assert.Equal(t, p.ordered(nil), q.ordered(nil))
	}
	for k := range enc {
		_, err := decodeDedupTable(enc[:k])
		assert.Error(t, err, "prefix %d", k)
	}
	// A producer without a remembered batch has no eviction rank: the
	// table never holds one.
	noBatch := binary.LittleEndian.AppendUint32(nil, 1)
	for _, v := range []uint64{5, 1, 1} { // producer, highest sequence, bitmap
		noBatch = binary.LittleEndian.AppendUint64(noBatch, v)
	}
	_, err = decodeDedupTable(append(noBatch, 0))
	assert.Error(t, err, "a producer with n = 0")
}

// refEnt is an entry of the reference model.
type refEnt struct {
	term     uint64
	batch    bool
	pid, seq uint64
	n        int
}

// refIDs derives the ids of every entry from scratch, straight from the
// definition: a batch of a non-zero producer with messages is a duplicate if
// its sequence is stored already and lies less than DedupSeqWindow below the
// highest stored one (an older one is stored again); its original ids are known if it is among the last
// DedupIDWindow stored batches of the producer. A new producer's first
// stored batch, when dedupMaxProducers+dedupEvictSlack producers are
// known, first forgets all but the dedupMaxProducers whose newest stored
// batch is the most recent.
func refIDs(ents []refEnt, firstID uint64) []EntryIDs {
	type prod struct {
		stored map[uint64]bool
		max    uint64
		recent []dedupRec
	}
	forget := func(ps map[uint64]*prod) {
		var pids []uint64
		for pid := range ps {
			pids = append(pids, pid)
		}
		newest := func(pid uint64) uint64 { r := ps[pid].recent; return r[len(r)-1].firstID }
		sort.Slice(pids, func(a, b int) bool { return newest(pids[a]) > newest(pids[b]) })
		for _, pid := range pids[dedupMaxProducers:] {
			delete(ps, pid)
		}
	}
	ps := map[uint64]*prod{}
	next := firstID
	out := make([]EntryIDs, len(ents))
	for i, e := range ents {
		ids := EntryIDs{Index: uint64(i + 1), FirstID: next, Next: next}
		if e.batch {
			ids.Count, ids.Next = uint32(e.n), next+uint64(e.n)
		}
		if e.batch && e.pid != 0 && e.n > 0 {
			p := ps[e.pid]
			if p != nil && p.stored[e.seq] && !(e.seq < p.max && p.max-e.seq >= DedupSeqWindow) {
				ids = EntryIDs{Index: ids.Index, Dup: true, Next: next}
				for _, r := range p.recent {
					if r.seq == e.seq {
						ids.FirstID, ids.Count = r.firstID, r.count
					}
				}
			} else {
				if p == nil {
					if len(ps) >= dedupMaxProducers+dedupEvictSlack {
						forget(ps)
					}
					p = &prod{stored: map[uint64]bool{}}
					ps[e.pid] = p
				}
				p.stored[e.seq] = true
				p.max = max(p.max, e.seq)
				p.recent = append(p.recent, dedupRec{seq: e.seq, firstID: next, count: uint32(e.n)})
				if len(p.recent) > DedupIDWindow {
					p.recent = p.recent[1:]
				}
			}
		}
		out[i] = ids
		next = ids.Next
	}
	return out
}

func (e refEnt) entry(index uint64) *pb.Entry {
	if !e.batch {
		return ent(index, e.term, pb.EntryType_EntryNormal, nil)
	}
	return pbatch(index, e.term, e.pid, e.seq, e.n)
}

// TestDedupProperty runs random appends (with conflicting suffixes),
// commits, retention, reopens and snapshot restores against refIDs.
func TestDedupProperty(t *testing.T) {
	seeds := 30
	if testing.Short() {
		seeds = 5
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { dedupProperty(t, uint64(seed), 4) })
	}
}

// TestDedupPropertyEviction is TestDedupProperty with a table bound of 3
// (+2) producers and 12 producers sending: forgetting, and truncations that
// bring forgotten producers back.
func TestDedupPropertyEviction(t *testing.T) {
	smallDedupBound(t, 3, 2)
	seeds := 30
	if testing.Short() {
		seeds = 5
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { dedupProperty(t, uint64(seed), 12) })
	}
}

// smallDedupBound sets the dedup table's bound for the test.
func smallDedupBound(t *testing.T, keep, slack int) {
	oldKeep, oldSlack := dedupMaxProducers, dedupEvictSlack
	dedupMaxProducers, dedupEvictSlack = keep, slack
	t.Cleanup(func() { dedupMaxProducers, dedupEvictSlack = oldKeep, oldSlack })
}

// dedupProperty runs one random history of producers 1..pids-1 (and 0).
func dedupProperty(t *testing.T, seed, pids uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	dir := t.TempDir()
	opts := Options{SegmentBytes: MinSegmentBytes, NoSync: true}
	l := openT(t, dir, opts)
	defer func() { l.Close() }()
	var hist []refEnt // entries 1..len(hist)
	var commit, term uint64 = 0, 1
	seqs := map[uint64]uint64{}

	verify := func() {
		t.Helper()
		want := refIDs(hist, 1)
		fi, _ := l.FirstIndex()
		li, _ := l.LastIndex()
		require.Equal(t, uint64(len(hist)), li)
		for i := fi; i <= li; i++ {
			got, err := l.IDs(i)
			require.NoError(t, err)
			require.Equal(t, want[i-1], got, "seed %d entry %d", seed, i)
		}
		next := uint64(1)
		if len(want) > 0 {
			next = want[len(want)-1].Next
		}
		require.Equal(t, next, l.NextID())
		if l.FirstID() < next {
			msgs, nx, err := l.ReadMessages(nil, l.FirstID(), next, 0, 0)
			require.NoError(t, err)
			require.Equal(t, next, nx)
			require.Len(t, msgs, int(next-l.FirstID()))
		}
	}

	for step := 0; step < 120; step++ {
		switch op := rng.IntN(20); {
		case op < 13: // append, possibly replacing an uncommitted suffix
			start := uint64(len(hist)) + 1
			fi, _ := l.FirstIndex()
			if lo := max(commit+1, fi); rng.IntN(3) == 0 && lo <= uint64(len(hist)) {
				start = lo + rng.Uint64N(uint64(len(hist))-lo+1)
				term++
			}
			hist = hist[:start-1]
			var ents []*pb.Entry
			for k := rng.IntN(6) + 1; k > 0; k-- {
				e := refEnt{term: term, batch: rng.IntN(8) != 0}
				if e.batch {
					e.pid = rng.Uint64N(pids)
					e.n = rng.IntN(4)
					if e.n == 0 && rng.IntN(2) == 0 {
						e.n = 1
					}
					switch r := rng.IntN(10); {
					case r < 5:
						seqs[e.pid] += rng.Uint64N(3) + 1
						e.seq = seqs[e.pid]
					case r < 9:
						e.seq = seqs[e.pid] - min(seqs[e.pid], rng.Uint64N(12))
					default:
						e.seq = seqs[e.pid] - min(seqs[e.pid], rng.Uint64N(200))
					}
				}
				hist = append(hist, e)
				ents = append(ents, e.entry(uint64(len(hist))))
			}
			want := refIDs(hist, 1)
			got, err := l.Append(ents, nil)
			require.NoError(t, err)
			for i, g := range got {
				require.Equal(t, want[start-1+uint64(i)], g, "seed %d step %d", seed, step)
			}
		case op < 16: // commit
			if uint64(len(hist)) > commit {
				commit += rng.Uint64N(uint64(len(hist))-commit) + 1
				require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(term), Commit: proto.Uint64(commit)}))
			}
		case op < 18: // retention
			require.NoError(t, l.DeleteBefore(commit+1))
		case op < 19: // reopen
			require.NoError(t, l.Close())
			l = openT(t, dir, opts)
		default: // restore a fresh log from this log's snapshot and replay the rest
			snap, err := l.Snapshot()
			require.NoError(t, err)
			if snap.GetMetadata().GetIndex() == 0 {
				break
			}
			ents, err := l.Entries(snap.GetMetadata().GetIndex()+1, uint64(len(hist))+1, 1<<40)
			require.NoError(t, err)
			hs, _, err := l.InitialState()
			require.NoError(t, err)
			require.NoError(t, l.Close())
			dir = t.TempDir()
			l = openT(t, dir, opts)
			require.NoError(t, l.ApplySnapshot(snap))
			if len(ents) > 0 {
				_, err = l.Append(ents, nil)
				require.NoError(t, err)
			}
			require.NoError(t, l.SetHardState(hs))
		}
		verify()
	}
}

// BenchmarkAppendProducer is BenchmarkAppend/nosync with a producer id and
// increasing sequences: one dedup table lookup and undo record per entry.
func BenchmarkAppendProducer(b *testing.B) { benchAppendProducers(b, false) }

// BenchmarkAppendNewProducers is BenchmarkAppendProducer with a new
// producer for every batch: the table at its bound forgets 1,024 producers
// every 1,024 batches (one sort of the table).
func BenchmarkAppendNewProducers(b *testing.B) { benchAppendProducers(b, true) }

func benchAppendProducers(b *testing.B, fresh bool) {
	l := openT(b, b.TempDir(), Options{})
	defer l.Close()
	msgs := make([][]byte, 100)
	for i := range msgs {
		msgs[i] = make([]byte, 100)
	}
	data := EncodeBatch(nil, 1, 77, 0, msgs)
	e := &pb.Entry{Term: proto.Uint64(1), Index: proto.Uint64(0), Type: pb.EntryType_EntryNormal.Enum(), Data: data}
	ents := []*pb.Entry{e}
	var ids []EntryIDs
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		idx := uint64(i) + 1
		*e.Index = idx
		if fresh {
			EncodeBatch(data[:0], 1, idx, 1, msgs) // producer = index
		} else {
			EncodeBatch(data[:0], 1, 77, idx, msgs) // sequence = index
		}
		var err error
		if ids, err = l.Append(ents, ids[:0]); err != nil || ids[0].Dup {
			b.Fatal(err)
		}
		if idx%64 == 0 { // raft commits as it goes: undo records are dropped
			if err := l.SetHardState(&pb.HardState{Term: proto.Uint64(1), Commit: proto.Uint64(idx)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)*100/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(len(l.dedup.producers)), "producers")
}

func TestMetaVersion1(t *testing.T) {
	// A version 1 meta (written before idempotent appends) reads as an
	// empty dedup table.
	st := logStart{firstIndex: 5, prevTerm: 2, firstID: 9}
	v2, err := encodeMeta(st, &pb.ConfState{Voters: []uint64{1}}, emptyDedupTable)
	require.NoError(t, err)
	body := v2[:len(v2)-4-4-len(emptyDedupTable)]
	v1 := append([]byte{}, body...)
	v1[4] = 1
	v1 = append(v1, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(v1[len(v1)-4:], crc32.Checksum(v1[:len(v1)-4], castagnoli))
	gst, cs, table, err := decodeMeta(v1)
	require.NoError(t, err)
	assert.Equal(t, st, gst)
	assert.Equal(t, []uint64{1}, cs.GetVoters())
	assert.Equal(t, emptyDedupTable, table)
	gst, _, table, err = decodeMeta(v2)
	require.NoError(t, err)
	assert.Equal(t, st, gst)
	assert.Equal(t, emptyDedupTable, table)
	v2[len(v2)-5] ^= 1
	_, _, _, err = decodeMeta(v2)
	assert.Error(t, err)
}

// TestDuplicatesDoNotStretchARead: a read of tiny messages between large
// duplicates (a client picks its producer pair, so it can store 4 MiB of
// duplicate after each 1-byte message; duplicates are stored whole and take
// no IDs) stops within its scan budget, not at the commit point: the read
// holds the log's read lock, and the engine that appends to every topic
// waits for it (a review read 208 MiB, 13 buffers, for 64 bytes).
func TestDuplicatesDoNotStretchARead(t *testing.T) {
	l := openT(t, t.TempDir(), Options{NoSync: true})
	defer l.Close()
	big := bytes.Repeat([]byte{'x'}, 4<<20)
	idx := uint64(0)
	const pairs = 64
	for s := uint64(1); s <= pairs; s++ {
		idx++
		appendOne(t, l, ent(idx, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, idx, 9, s, [][]byte{{byte(s)}})))
		idx++
		ids := appendOne(t, l, ent(idx, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, idx, 9, s, [][]byte{big})))
		require.True(t, ids.Dup)
	}
	sc := new(Scratch)
	const fill, maxBytes = 3 << 20, 4<<20 - 1<<10
	msgs, next, err := l.ReadBatchesInto(sc, 1, l.NextID()-1, 100, fill, maxBytes)
	require.NoError(t, err)
	require.NotEmpty(t, msgs)
	assert.Equal(t, uint64(len(msgs))+1, next)
	read := 0
	for _, b := range sc.bufs {
		read += len(b)
	}
	r := readState{fill: fill, maxBytes: maxBytes}
	assert.LessOrEqual(t, int64(read), r.scanBudget()+int64(len(big))+(1<<20), "bytes read for %d messages", len(msgs))
	for i, m := range msgs {
		assert.Equal(t, []byte{byte(i + 1)}, m)
	}
}

// TestDeleteBeforeReadsNoDeletedSegment: retention finds the dedup table as
// of the new log start in memory (the table each segment started with),
// not by replaying the segments it deletes: that read them whole, from
// disk, inside the engine's pass, 64 MiB a segment, on every node and at
// every cut. The table is the one the replay gives, in a log that kept
// its segments' tables while appending and in one that rebuilt them when
// opened.
func TestDeleteBeforeReadsNoDeletedSegment(t *testing.T) {
	for _, reopen := range []bool{false, true} {
		t.Run(fmt.Sprintf("reopened=%v", reopen), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{SegmentBytes: MinSegmentBytes, NoSync: true}
			l := openT(t, dir, opts)
			for s := uint64(1); s <= 200; s++ {
				appendOne(t, l, pbatch(s, 1, 1+s%7, 1+s/7, 5))
			}
			commitTo(t, l, 200)
			if reopen {
				require.NoError(t, l.Close())
				l = openT(t, dir, opts)
			}
			t.Cleanup(func() { l.Close() })
			n := len(l.segs) / 2
			require.Greater(t, n, 2)
			want, next := replayedTable(t, l, n)
			// A read of a deleted segment now fails.
			for _, s := range l.segs[:n] {
				require.NoError(t, s.f.Close())
			}
			require.NoError(t, l.DeleteBefore(l.segs[n].first))
			assert.Equal(t, want.encode(nil), l.baseTable)
			assert.Equal(t, next, l.FirstID())
		})
	}
}

// replayedTable is what replaying l's first n segments onto its base table
// gives: the table, and the next id, at the start of segment n.
func replayedTable(t *testing.T, l *Log, n int) (*dedupTable, uint64) {
	t.Helper()
	tb, err := decodeDedupTable(l.baseTable)
	require.NoError(t, err)
	next := l.start.firstID
	for _, s := range l.segs[:n] {
		next, err = replayDedup(s, tb, next)
		require.NoError(t, err)
	}
	return tb, next
}

// TestSegmentTablesWithinBudget: past the process's budget a segment keeps
// no table, DeleteBefore then replays as before, and closing a log gives
// its tables back.
func TestSegmentTablesWithinBudget(t *testing.T) {
	before := tableBytes.Load()
	defer func(b int64) { tableBudget = b }(tableBudget)
	tableBudget = before + 300
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes, NoSync: true})
	for s := uint64(1); s <= 200; s++ {
		appendOne(t, l, pbatch(s, 1, 1+s%7, 1+s/7, 5))
	}
	commitTo(t, l, 200)
	kept := 0
	for _, s := range l.segs {
		if s.startTable != nil {
			kept++
		}
	}
	assert.Positive(t, kept)
	assert.Less(t, kept, len(l.segs)/2)
	n := len(l.segs) / 2
	require.Nil(t, l.segs[n].startTable)
	want, next := replayedTable(t, l, n)
	require.NoError(t, l.DeleteBefore(l.segs[n].first))
	assert.Equal(t, want.encode(nil), l.baseTable)
	assert.Equal(t, next, l.FirstID())
	require.NoError(t, l.Close())
	assert.Equal(t, before, tableBytes.Load())
}

// TestDedupForgetsLeastRecentProducers: a table at its bound forgets the
// producers whose newest batch is the oldest; a forgotten producer's retry
// is stored again; truncating the entry that forgot them brings them back;
// and the table stays within its bound however many producers send.
func TestDedupForgetsLeastRecentProducers(t *testing.T) {
	smallDedupBound(t, 4, 2)
	dir := t.TempDir()
	l := openT(t, dir, Options{})
	defer func() { l.Close() }()
	for pid := uint64(1); pid <= 6; pid++ { // entries 1..6, ids 1..6
		appendOne(t, l, pbatch(pid, 1, pid, 1, 1))
	}
	appendOne(t, l, pbatch(7, 1, 1, 2, 1)) // producer 1 again: id 7, its newest
	commitTo(t, l, 7)
	// Producer 7 is the 7th: the table keeps 1, 6, 5, 4 and adds 7.
	assert.Equal(t, at(8, stored(8, 1)), appendOne(t, l, pbatch(8, 1, 7, 1, 1)))
	assert.Len(t, l.dedup.producers, 5)
	for _, pid := range []uint64{4, 5, 6} {
		assert.True(t, appendOne(t, l, pbatch(9, 1, pid, 1, 1)).Dup, "producer %d kept", pid)
	}
	assert.True(t, appendOne(t, l, pbatch(9, 1, 1, 2, 1)).Dup, "producer 1 kept")
	// Producers 2 and 3 are forgotten: a retry of theirs is stored again.
	assert.Equal(t, at(9, stored(9, 1)), appendOne(t, l, pbatch(9, 1, 2, 1, 1)))

	// Truncating entry 8 brings back the producers its eviction forgot.
	appendOne(t, l, ent(8, 2, pb.EntryType_EntryNormal, nil))
	assert.Len(t, l.dedup.producers, 6)
	assert.Equal(t, at(9, dupOf(2, 1, 8)), appendOne(t, l, pbatch(9, 2, 2, 1, 1)))
	assert.Equal(t, at(10, dupOf(3, 1, 8)), appendOne(t, l, pbatch(10, 2, 3, 1, 1)))

	// Reopened, the scan forgets the same producers at the same entry.
	appendOne(t, l, pbatch(11, 2, 7, 1, 1)) // id 8: forgets 2 and 3
	require.NoError(t, l.Close())
	l = openT(t, dir, Options{})
	assert.Equal(t, at(12, stored(9, 1)), appendOne(t, l, pbatch(12, 2, 3, 1, 1)))

	// Many producers, one batch each: the table never passes its bound.
	for i := uint64(13); i < 1013; i++ {
		appendOne(t, l, pbatch(i, 2, 1000+i, 1, 1))
		require.LessOrEqual(t, len(l.dedup.producers), 6)
	}
}

// TestSnapshotDataAtItsBound: a log whose table holds as many producers as
// the bound lets it, each remembering DedupIDWindow batches, makes a
// snapshot whose data is MaxSnapshotDataBytes long: the bound a node's
// receive limit is sized by (a larger snapshot was refused by every peer,
// for ever, and a follower behind the retained log never caught up).
func TestSnapshotDataAtItsBound(t *testing.T) {
	smallDedupBound(t, 4, 2)
	l := openT(t, t.TempDir(), Options{SegmentBytes: 64 << 20, NoSync: true})
	defer l.Close()
	producers := uint64(dedupMaxProducers + dedupEvictSlack)
	var ents []*pb.Entry
	index := uint64(1)
	for seq := uint64(1); seq <= DedupIDWindow; seq++ {
		for p := uint64(1); p <= producers; p++ {
			ents = append(ents, ent(index, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, index, p, seq, [][]byte{{'x'}})))
			index++
		}
	}
	_, err := l.Append(ents, nil)
	require.NoError(t, err)
	l.SetSegmentBytes(MinSegmentBytes)
	_, err = l.Append([]*pb.Entry{ent(index, 1, pb.EntryType_EntryNormal, nil), ent(index+1, 1, pb.EntryType_EntryNormal, nil)}, nil)
	require.NoError(t, err) // rolls: every batch is in the first segment
	commitTo(t, l, index+1)
	require.NoError(t, l.DeleteBefore(index+1))
	snap, err := l.Snapshot()
	require.NoError(t, err)
	require.Equal(t, index-1, snap.GetMetadata().GetIndex(), "the snapshot covers every batch")
	assert.Equal(t, MaxSnapshotDataBytes(), len(snap.GetData()))
}
