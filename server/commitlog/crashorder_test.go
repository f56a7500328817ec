package commitlog

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// failRemovalAt makes the n-th segment removal from now (0: the next) and
// every later one fail, as a crash there would stop them.
func failRemovalAt(t *testing.T, n int) {
	calls := 0
	removeSegment = func(path string) error {
		calls++
		if calls > n {
			return errors.New("injected: crashed before this removal")
		}
		return removeSegmentOS(path)
	}
	t.Cleanup(func() { removeSegment = removeSegmentOS })
}

var removeSegmentOS = removeSegment

// segmentedLog is a log of at least four segments, closed, and its model.
func segmentedLog(t *testing.T, dir string) *model {
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	m := newModel()
	for len(l.segs) < 4 {
		m.appendN(t, l, m.last+1, 5, 1)
	}
	require.NoError(t, l.Close())
	return m
}

// reopenContiguous opens dir as after a crash and checks that the log holds
// the model's entries up to keep, and then a contiguous run of what was
// there before (the suffix a truncation had not removed yet).
func reopenContiguous(t *testing.T, dir string, m *model, keep uint64) {
	l, err := Open(dir, Options{SegmentBytes: MinSegmentBytes})
	require.NoError(t, err, "the log after a crash part way")
	defer l.Close()
	last, err := l.LastIndex()
	require.NoError(t, err)
	require.GreaterOrEqual(t, last, keep)
	got, err := l.Entries(1, last+1, 1<<62)
	require.NoError(t, err)
	for k, e := range got {
		idx := uint64(k + 1)
		require.True(t, proto.Equal(m.ents[idx], e), "entry %d", idx)
	}
}

// crashPartWay runs op on a log of four segments or more with the n-th
// segment removal failing (a crash there), then checks the files open as a
// contiguous log holding the model's entries up to the index op keeps.
func crashPartWay(t *testing.T, n int, op func(l *Log) (keep uint64, err error)) {
	dir := t.TempDir()
	m := segmentedLog(t, dir)
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	failRemovalAt(t, n)
	keep, err := op(l)
	require.ErrorContains(t, err, "injected", "the injected failure")
	l.Close()
	reopenContiguous(t, dir, m, keep)
}

// TestTruncateCrashLeavesContiguousLog: a truncation that stops after any
// of its segment removals (a crash) leaves segments Open accepts. It used
// to cut the segment holding the truncation point first and remove the
// later segments oldest first, so a crash in between left a gap (review).
func TestTruncateCrashLeavesContiguousLog(t *testing.T) {
	for n := 0; n < 2; n++ { // two segments or more follow the cut one
		t.Run(fmt.Sprintf("after %d removals", n), func(t *testing.T) {
			crashPartWay(t, n, func(l *Log) (uint64, error) {
				s := l.segs[1]
				at := s.first + (s.last-s.first)/2 + 1
				_, err := l.Append([]*pb.Entry{ent(at, 2, pb.EntryType_EntryNormal, nil)}, nil)
				return at - 1, err
			})
		})
	}
}

// TestSnapshotCrashLeavesContiguousLog: the same for the segments
// ApplySnapshot removes above the snapshot before recording the new start.
func TestSnapshotCrashLeavesContiguousLog(t *testing.T) {
	for n := 0; n < 3; n++ { // three segments or more start above the snapshot
		t.Run(fmt.Sprintf("after %d removals", n), func(t *testing.T) {
			crashPartWay(t, n, func(l *Log) (uint64, error) {
				idx := l.segs[0].last // the segments after the first start above it
				return idx, l.ApplySnapshot(&pb.Snapshot{Data: EncodeSnapshotData(nil, 1000), Metadata: &pb.SnapshotMetadata{
					Index: proto.Uint64(idx), Term: proto.Uint64(1), ConfState: &pb.ConfState{Voters: []uint64{1}},
				}})
			})
		})
	}
}

// TestSuffixRemovalsAreDurableInOrder: between two segment removals of a
// truncation or of ApplySnapshot's suffix, the directory is synced, so a
// filesystem that persists unlinks out of order cannot leave a gap after
// a power loss (removing newest first only orders them in the page cache).
func TestSuffixRemovalsAreDurableInOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(l *Log) error
	}{
		{"truncation", func(l *Log) error {
			s := l.segs[1]
			_, err := l.Append([]*pb.Entry{ent(s.first+1, 2, pb.EntryType_EntryNormal, nil)}, nil)
			return err
		}},
		{"snapshot", func(l *Log) error {
			return l.ApplySnapshot(&pb.Snapshot{Data: EncodeSnapshotData(nil, 1000), Metadata: &pb.SnapshotMetadata{
				Index: proto.Uint64(l.segs[0].last), Term: proto.Uint64(1), ConfState: &pb.ConfState{Voters: []uint64{1}},
			}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			segmentedLog(t, dir)
			l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
			defer l.Close()
			var events []string
			removeSegment = func(path string) error {
				events = append(events, "remove")
				return removeSegmentOS(path)
			}
			syncDir = func(d string) error {
				if d == dir {
					events = append(events, "sync")
				}
				return syncDirOS(d)
			}
			t.Cleanup(func() { removeSegment, syncDir = removeSegmentOS, syncDirOS })
			require.NoError(t, tc.op(l))
			removals := 0
			for i, e := range events {
				if e != "remove" {
					continue
				}
				removals++
				if removals > 1 {
					require.Equal(t, "sync", events[i-1], "a removal follows another unsynced: %v", events)
				}
			}
			require.GreaterOrEqual(t, removals, 2, "events %v", events)
		})
	}
}
