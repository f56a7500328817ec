//go:build linux

package commitlog

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
)

// TestJournalNotUsedWhereSyncfsIsRefused: where syncfs is refused (a
// seccomp filter), logs sync on their own instead of through the node
// journal, whose checkpoint needs syncfs: a failed checkpoint fences every
// journaled log of the node.
func TestJournalNotUsedWhereSyncfsIsRefused(t *testing.T) {
	if !syncfsWorks {
		t.Skip("a kernel before 5.8: no log uses the journal")
	}
	root := t.TempDir()
	dev := deviceOf(root)
	require.NotZero(t, dev)
	// This process synced the filesystem at its first start already:
	// forget that, and refuse syncfs from now on.
	startSynced.mu.Lock()
	delete(startSynced.devs, dev)
	startSynced.mu.Unlock()
	syncfsFunc = func(f *os.File) error {
		return &os.PathError{Op: "syncfs", Path: f.Name(), Err: syscall.EPERM}
	}
	t.Cleanup(func() {
		syncfsFunc = syncfs
		syncfsRefused.Delete(dev)
	})

	j, err := OpenJournal(filepath.Join(root, "journal"), root, JournalOptions{Bytes: 4096})
	require.NoError(t, err)
	defer j.Close()
	var logs []*Log
	for i := range 3 {
		l := openT(t, filepath.Join(root, "topics", string(rune('a'+i))), Options{Journal: j})
		defer l.Close()
		require.Empty(t, l.jpath, "log %d journaled", i)
		logs = append(logs, l)
	}
	for index := uint64(1); index <= 20; index++ {
		for _, l := range logs {
			_, err := l.Append([]*pb.Entry{ent(index, 1, pb.EntryType_EntryNormal, EncodeBatch(nil, index, 0, 0, msgsFor(index, 2)))}, nil)
			require.NoError(t, err)
		}
		for i, err := range SyncMany(logs, nil) {
			require.NoError(t, err, "log %d, index %d", i, index)
		}
	}
}
