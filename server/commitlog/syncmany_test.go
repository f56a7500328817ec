package commitlog

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// TestSyncMany syncs several logs on one filesystem together (one syncfs
// where the kernel supports it), one closed log and a nil entry, and checks
// that every live log is left clean with its term/vote promoted, and that
// what was written reads back after reopening.
func TestSyncMany(t *testing.T) {
	root := t.TempDir()
	const n = 4
	logs := make([]*Log, n+2)
	for i := range n {
		logs[i] = openT(t, filepath.Join(root, fmt.Sprint(i)), Options{})
	}
	closed := openT(t, filepath.Join(root, "closed"), Options{})
	require.NoError(t, closed.Close())
	logs[n] = closed
	logs[n+1] = nil

	before := syncfsCalls.Load()
	for round := uint64(1); round <= 3; round++ {
		for i, l := range logs[:n] {
			msgs := msgsFor(round*10+uint64(i), 3)
			_, err := l.Append([]*pb.Entry{ent(round, round, pb.EntryType_EntryNormal, EncodeBatch(nil, round, 0, 0, msgs))}, nil)
			require.NoError(t, err)
			require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(round), Vote: proto.Uint64(uint64(i + 1)), Commit: proto.Uint64(round)}))
			require.True(t, l.needsSync())
		}
		errs := SyncMany(logs, nil)
		require.Len(t, errs, len(logs))
		for i, l := range logs[:n] {
			require.NoError(t, errs[i], "log %d", i)
			assert.False(t, l.needsSync(), "log %d still dirty", i)
			assert.Equal(t, [2]uint64{l.hs.cur.term, l.hs.cur.vote}, [2]uint64{l.hs.synced.term, l.hs.synced.vote}, "log %d: term/vote not promoted", i)
		}
		assert.ErrorIs(t, errs[n], ErrClosed)
		assert.NoError(t, errs[n+1])
	}
	if syncfsWorks {
		assert.Equal(t, before+3, syncfsCalls.Load(), "one syncfs per round")
	}

	for i, l := range logs[:n] {
		require.NoError(t, l.Close())
		l = openT(t, filepath.Join(root, fmt.Sprint(i)), Options{})
		hs, _, err := l.InitialState()
		require.NoError(t, err)
		assert.Equal(t, uint64(3), hs.GetTerm())
		assert.Equal(t, uint64(i+1), hs.GetVote())
		msgs, next, err := l.ReadMessages(nil, 1, 100, 100, 1<<20)
		require.NoError(t, err)
		assert.Equal(t, uint64(10), next)
		want := append(append(msgsFor(10+uint64(i), 3), msgsFor(20+uint64(i), 3)...), msgsFor(30+uint64(i), 3)...)
		assert.Equal(t, want, msgs)
		require.NoError(t, l.Close())
	}
}

// TestSyncManyOneLog: a single dirty log is synced on its own (fdatasync).
func TestSyncManyOneLog(t *testing.T) {
	l := openT(t, t.TempDir(), Options{})
	defer l.Close()
	_, err := l.Append([]*pb.Entry{ent(1, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, 1, 0, 0, msgsFor(1, 2)))}, nil)
	require.NoError(t, err)
	before := syncfsCalls.Load()
	errs := SyncMany([]*Log{l}, nil)
	require.NoError(t, errs[0])
	assert.False(t, l.needsSync())
	assert.Equal(t, before, syncfsCalls.Load())
}

// TestSyncManyNoSync: logs in the "os" mode are settled without a flush,
// alongside logs that do need one.
func TestSyncManyNoSync(t *testing.T) {
	root := t.TempDir()
	fast := openT(t, filepath.Join(root, "os"), Options{NoSync: true})
	defer fast.Close()
	slow := openT(t, filepath.Join(root, "fsync"), Options{})
	defer slow.Close()
	for i, l := range []*Log{fast, slow} {
		_, err := l.Append([]*pb.Entry{ent(1, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, 1, 0, 0, msgsFor(uint64(i+1), 2)))}, nil)
		require.NoError(t, err)
		require.True(t, l.needsSync())
	}
	before := syncfsCalls.Load()
	errs := SyncMany([]*Log{fast, slow}, nil)
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	assert.False(t, fast.needsSync())
	assert.False(t, slow.needsSync())
	assert.Equal(t, before, syncfsCalls.Load(), "one log to flush: its own fdatasync")
}

// TestSyncManyStopsSyncfsAfterFailure: once a syncfs on a filesystem
// fails, SyncMany never trusts syncfs there again; the logs sync their own
// files, whose fdatasync reports a failed writeback to each of them (a
// later syncfs through a descriptor that already reported the error would
// succeed and mark a log durable whose records the writeback lost).
func TestSyncManyStopsSyncfsAfterFailure(t *testing.T) {
	if !syncfsWorks {
		t.Skip("syncfs is not used on this kernel")
	}
	root := t.TempDir()
	a := openT(t, filepath.Join(root, "a"), Options{})
	b := openT(t, filepath.Join(root, "b"), Options{})
	d := a.syncDev
	require.NotNil(t, d)
	require.Same(t, d, b.syncDev, "one descriptor for the filesystem")
	saved := d.f
	require.NotNil(t, saved)
	t.Cleanup(func() {
		syncfsFunc = syncfs
		d.mu.Lock()
		d.f = saved
		d.mu.Unlock()
	})
	failed := 0
	syncfsFunc = func(f *os.File) error {
		failed++
		return &os.PathError{Op: "syncfs", Path: f.Name(), Err: syscall.EIO}
	}
	round := func(index uint64) []error {
		for _, l := range []*Log{a, b} {
			_, err := l.Append([]*pb.Entry{ent(index, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, index, 0, 0, msgsFor(index, 2)))}, nil)
			require.NoError(t, err)
		}
		return SyncMany([]*Log{a, b}, nil)
	}
	for _, err := range round(1) {
		require.NoError(t, err, "the logs' own syncs stand in for the failed syncfs")
	}
	require.Equal(t, 1, failed)
	d.mu.Lock()
	off := d.f == nil
	d.mu.Unlock()
	require.True(t, off, "syncfs is off on the filesystem")
	before := syncfsCalls.Load()
	for _, err := range round(2) {
		require.NoError(t, err)
	}
	assert.Equal(t, before, syncfsCalls.Load(), "no syncfs after a failure")
	assert.Equal(t, 1, failed)
	assert.False(t, a.needsSync())
	assert.False(t, b.needsSync())
}
