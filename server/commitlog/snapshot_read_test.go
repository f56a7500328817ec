package commitlog

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// TestReadDuringApplySnapshot reads the log the way replica.Group.read does
// (ids capped at the commit point a reader loaded before the snapshot) in
// every state ApplySnapshot leaves it in between taking its lock: the hook
// on segment removal runs on the owner, outside l.mu, at each removal
// after the segments above the snapshot are cut (step 1: segs shortened,
// lastIndex and nextID not yet) and at each after the switch to the new
// start (step 3).
// Each read must return the committed messages or ErrCompacted with the
// new first id; never another error. Deterministic: no goroutines.
func TestReadDuringApplySnapshot(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	defer l.Close()
	m := newModel()
	for len(l.segs) < 5 {
		m.appendN(t, l, m.last+1, 5, 1)
	}
	// Commit ends inside the second segment; the snapshot is at its last
	// entry, so the segments after it start above the snapshot (step 1
	// removes them) and the first two remain until step 3.
	idx := l.segs[1].last
	commit := idx - 1
	require.NoError(t, l.SetHardState(&pb.HardState{Term: proto.Uint64(1), Commit: proto.Uint64(commit)}))
	commitID := m.ids[commit].Next - 1
	newFirst := m.ids[idx].Next
	firstID := l.FirstID()

	var states []string
	removeSegment = func(path string) error {
		st := "after step 1"
		if l.start.firstIndex == idx+1 {
			st = "after step 3"
		}
		states = append(states, st)
		for id := firstID; id <= commitID; id++ {
			msgs, next, err := l.ReadMessages(nil, id, commitID, 3, 0)
			if errors.Is(err, ErrCompacted) {
				require.Equal(t, newFirst, next, "%s: id %d: next", st, id)
				continue
			}
			require.NoError(t, err, "%s: read of id %d (commit id %d)", st, id, commitID)
			require.NotEmpty(t, msgs, "%s: id %d", st, id)
			for k, msg := range msgs {
				require.Equal(t, m.msgs[id+uint64(k)], msg, "%s: message %d", st, id+uint64(k))
			}
			require.Equal(t, id+uint64(len(msgs)), next)
		}
		// A sequential reader from the start, as a subscription reads.
		sc := new(Scratch)
		for id := firstID; id <= commitID; {
			msgs, next, err := l.ReadBatchesInto(sc, id, commitID, 2, 64, 0)
			if errors.Is(err, ErrCompacted) {
				require.Equal(t, newFirst, next, "%s: id %d: next", st, id)
				break
			}
			require.NoError(t, err, "%s: batch read of id %d", st, id)
			require.Len(t, msgs, int(next-id), "%s: batch read of id %d", st, id)
			require.Equal(t, m.msgs[id], msgs[0], "%s: message %d", st, id)
			id = next
		}
		return removeSegmentOS(path)
	}
	t.Cleanup(func() { removeSegment = removeSegmentOS })

	require.NoError(t, l.ApplySnapshot(&pb.Snapshot{Data: EncodeSnapshotData(nil, newFirst), Metadata: &pb.SnapshotMetadata{
		Index: proto.Uint64(idx), Term: proto.Uint64(1), ConfState: &pb.ConfState{Voters: []uint64{1}},
	}}))
	require.Contains(t, states, "after step 1")
	require.Contains(t, states, "after step 3")
}
