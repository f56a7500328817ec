//go:build linux

package commitlog

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/internal/powerloss"
)

// TestPowerLossAfterJournalClose: a checkpointed journal file must not
// come back after a power loss that follows a clean Close. Close voids
// the current file, and with it the barrier of a truncation journaled
// there; a renamed old file that reappeared (its rename not yet durable)
// would replay the records the truncation cut and overwrite the entries
// synced since (found in review: entries 4.. came back with the old term
// and the log grew back to its old end).
func TestPowerLossAfterJournalClose(t *testing.T) {
	if !syncfsWorks {
		t.Skip("syncfs is not available: logs do not use the journal")
	}
	for _, closeJournal := range []bool{true, false} {
		t.Run(map[bool]string{true: "journal closed", false: "journal open"}[closeJournal], func(t *testing.T) {
			root := t.TempDir()
			d := powerloss.Watch(t, root)
			jdir := filepath.Join(root, "journal")
			j, err := OpenJournal(jdir, root, JournalOptions{Bytes: 4 << 10})
			require.NoError(t, err)
			A := openT(t, filepath.Join(root, "topics", "a"), Options{Journal: j})
			B := openT(t, filepath.Join(root, "topics", "b"), Options{Journal: j})
			mA, mB := newModel(), newModel()
			mA.appendN(t, A, 1, 2, 1)
			require.NoError(t, A.Sync())
			mB.appendN(t, B, 1, 2, 1)
			require.NoError(t, B.Sync())
			// Journal both logs' records until a file is retired and
			// checkpointed.
			first := j.epoch
			for i := 0; ; i++ {
				require.Less(t, i, 1000, "the journal never moved to a new file")
				mA.appendN(t, A, mA.last+1, 3, 1)
				mB.appendN(t, B, mB.last+1, 3, 1)
				for _, e := range SyncMany([]*Log{A, B}, nil) {
					require.NoError(t, e)
				}
				require.NoError(t, A.FlushHeld())
				require.NoError(t, B.FlushHeld())
				j.mu.Lock()
				moved := j.epoch != first
				j.mu.Unlock()
				if moved {
					break
				}
			}
			j.mu.Lock()
			require.NoError(t, j.waitCheckpoint())
			j.mu.Unlock()
			// A new term replaces A's suffix from index 4, whose records
			// are in the checkpointed file.
			require.NoError(t, A.SetHardState(&pb.HardState{Term: proto.Uint64(2), Vote: proto.Uint64(1), Commit: proto.Uint64(0)}))
			mA.appendN(t, A, 4, 2, 2)
			require.NoError(t, A.Sync())
			require.NoError(t, A.Close())
			require.NoError(t, B.Close())
			if closeJournal {
				require.NoError(t, j.Close())
			}
			dst := t.TempDir()
			d.Lose(t, dst, nil)
			j2, err := OpenJournal(filepath.Join(dst, "journal"), dst, JournalOptions{Bytes: 4 << 10})
			require.NoError(t, err)
			defer j2.Close()
			l := openT(t, filepath.Join(dst, "topics", "a"), Options{Journal: j2})
			defer l.Close()
			last, err := l.LastIndex()
			require.NoError(t, err)
			require.Equal(t, mA.last, last, "the recovered log's end")
			got, err := l.Entries(1, last+1, 1<<62)
			require.NoError(t, err)
			for k, e := range got {
				idx := uint64(k + 1)
				require.True(t, proto.Equal(mA.ents[idx], e), "entry %d: want term %d, got term %d", idx, mA.ents[idx].GetTerm(), e.GetTerm())
			}
		})
	}
}

// TestJournalReplayStaysUnderBase: an entry naming a path outside the
// journal's base (one the journal never writes: damage, or an entry forged
// in message bytes that a recycled file still holds) is ignored by replay,
// which must not open a log, nor create its files, anywhere else.
func TestJournalReplayStaysUnderBase(t *testing.T) {
	root := t.TempDir()
	base := filepath.Join(root, "data")
	outside := filepath.Join(root, "outside")
	require.NoError(t, os.MkdirAll(outside, 0o755))
	jdir := filepath.Join(base, "journal")
	j, err := OpenJournal(jdir, base, JournalOptions{})
	require.NoError(t, err)
	entry := j.appendEntry(j.saltEntry(), kindRecords, "../outside", []byte("records"))
	_, err = j.f.WriteAt(entry, 0)
	require.NoError(t, err)
	// A crash: the files stay as they are.
	require.NoError(t, j.f.Close())
	require.NoError(t, j.fs.Close())

	j, err = OpenJournal(jdir, base, JournalOptions{})
	require.NoError(t, err)
	defer j.Close()
	left, err := os.ReadDir(outside)
	require.NoError(t, err)
	require.Empty(t, left, "replay wrote outside its base")
}
