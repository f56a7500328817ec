package commitlog

import (
	"bytes"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
)

// TestJournalReplayRejectsEntryForgedInRecycledFile: a producer's message
// holds the bytes of a journal entry framed for the epoch at which the file
// it is journaled in will be reused (epochs are predictable, the CRC is not
// keyed). When that recycled file's new valid prefix ends where the forged
// bytes lie, replay must not take them for an entry of the new epoch.
func TestJournalReplayRejectsEntryForgedInRecycledFile(t *testing.T) {
	const limit = 8 << 10
	f := newJournalFixture(t, 2, limit)
	e0 := f.j.epoch

	// The forgery: log 0's entry 3 with term 99 (raft's rule makes replay
	// replace entry 3.. with it), framed for epoch e0+2: file e0 becomes the
	// spare when the journal leaves it and is reused as e0+2.
	forger := &Journal{epoch: e0 + 2}
	forged := forger.appendEntry(nil, kindRecords, "topics/0",
		appendRecord(nil, ent(3, 99, pb.EntryType_EntryNormal, nil), 0, 0))

	next := []uint64{3, 3}
	put := func(i int, data []byte) {
		t.Helper()
		_, err := f.logs[i].Append([]*pb.Entry{ent(next[i], 1, pb.EntryType_EntryNormal, data)}, nil)
		require.NoError(t, err)
		next[i]++
	}
	other := func(n int) []byte { return append([]byte{7}, make([]byte, n-1)...) } // not a batch: no ids
	sync := func() {
		t.Helper()
		for k, err := range SyncMany(f.logs, nil) {
			require.NoError(t, err, "log %d", k)
		}
	}

	// A producer of log 1 sends the forged bytes as a message (padded, so
	// that they lie well into the file).
	msg := append(bytes.Repeat([]byte{'x'}, 3000), forged...)
	put(0, nil)
	put(1, EncodeBatch(nil, 1, 0, 0, [][]byte{msg}))
	sync()
	require.Equal(t, e0, f.j.epoch)
	for f.j.epoch == e0 {
		put(0, other(500))
		put(1, other(500))
		sync()
	}
	// What a file's first commit writes besides its entries (2 × 564 bytes).
	over := f.j.pos - 2*564
	require.GreaterOrEqual(t, over, int64(0))
	require.NoError(t, f.waitCheckpoint()) // file e0 is the spare now
	spare, err := os.ReadFile(filepath.Join(f.j.dir, journalSpare))
	require.NoError(t, err)
	F := int64(bytes.Index(spare, forged))
	require.Greater(t, F, int64(128), "the forged bytes are in the spare")

	// Fill file e0+1 so that the next commit, of exactly F bytes, moves
	// to e0+2 (the spare) and ends where the forged bytes lie.
	for f.j.pos+F-over <= limit {
		put(0, nil)
		put(1, nil)
		sync()
	}
	put(0, nil)                    // entry: 16 + 3 + 8 + 37 = 64 bytes
	put(1, other(int(F-over)-128)) // entry: 64 + len(data)
	sync()
	require.Equal(t, e0+2, f.j.epoch)
	require.Equal(t, F, f.j.pos)

	crashed := f.crash(t) // kill -9 now: every byte as written
	j, err := OpenJournal(filepath.Join(crashed, "journal"), crashed, JournalOptions{})
	require.NoError(t, err)
	defer j.Close()
	l := openT(t, f.logDir(crashed, 0), Options{Journal: j})
	defer l.Close()
	last, err := l.LastIndex()
	require.NoError(t, err)
	t.Logf("log 0 after replay: last index %d (acknowledged: %d)", last, next[0]-1)
	term, err := l.Term(3)
	require.NoError(t, err)
	require.Equal(t, uint64(1), term, "entry 3's term: replay applied the forged entry")
	require.Equal(t, next[0]-1, last, "log 0's acknowledged entries after replay")
}

// TestJournalReplaysFileOfEarlierBuild: a journal file written before
// entries were salted (no kindSalt entry, plain CRCs) is still replayed:
// the upgrade path of the salted format.
func TestJournalReplaysFileOfEarlierBuild(t *testing.T) {
	f := newJournalFixture(t, 3, 0)
	for range 3 {
		f.round(t, 4, 1)
	}
	crashed := f.crash(t)
	p := filepath.Join(crashed, "journal", filepath.Base(f.j.f.Name()))
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	kind, _, salt, off, ok := parseJournalEntry(b, f.j.epoch, 0)
	require.True(t, ok)
	require.Equal(t, byte(kindSalt), kind)
	seed := crc32.Checksum(salt, castagnoli)
	var old []byte
	for n := 0; ; n++ {
		kind, path, payload, size, ok := parseJournalEntry(b[off:], f.j.epoch, seed)
		if !ok {
			require.Equal(t, 9, n, "entries (3 logs, 3 rounds)")
			break
		}
		old = frameEntry(old, f.j.epoch, 0, kind, path, payload)
		off += size
	}
	require.NoError(t, os.WriteFile(p, append(old, make([]byte, 4096)...), 0o644))
	for i := range f.logs {
		f.loseTail(t, crashed, i, f.durable[i])
	}
	f.recover(t, crashed, f.models)
}
