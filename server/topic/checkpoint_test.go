package topic

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/server/commitlog"
)

// TestCheckpointListsRemovalsInProgress: a removed topic's files are moved
// aside once its group has closed, in the background. A checkpoint taken
// meanwhile names its directory, and opening from that checkpoint (which
// no longer replays the removal) moves it aside.
func TestCheckpointListsRemovalsInProgress(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"topics/x.5", "topics/y.7", "removed"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	r := &Registry{cfg: Config{Dir: dir}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), topics: map[string]*Topic{},
		members: map[uint64]Member{}, removing: map[string]struct{}{"x.5": {}}, changed: make(chan struct{}, 1)}
	r.topics["y"] = &Topic{Name: "y", dir: "y.7"}
	data, err := r.stateLocked()
	require.NoError(t, err)
	var st checkpointState
	require.NoError(t, json.Unmarshal(data, &st))
	assert.Equal(t, []string{"x.5"}, st.Removing)

	opened := &Registry{cfg: r.cfg, log: r.log, topics: map[string]*Topic{}, members: map[uint64]Member{},
		removing: map[string]struct{}{}, changed: make(chan struct{}, 1), replaying: true}
	opened.setStateLocked(st)
	_, err = os.Stat(filepath.Join(dir, "removed", "x.5"))
	assert.NoError(t, err, "moved aside")
	_, err = os.Stat(filepath.Join(dir, "topics", "y.7"))
	assert.NoError(t, err, "a topic of the checkpoint stays")
	assert.Contains(t, opened.topics, "y")
}

// TestInstalledSnapshotKeepsOwnRemovals: the checkpoint a node writes when
// it installs the leader's snapshot lists its own removals in progress
// and those the install starts, not only the leader's, so that Open (which
// no longer replays them) moves their files aside after a crash.
func TestInstalledSnapshotKeepsOwnRemovals(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"topics/x.5", "topics/y.6", "removed"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	lg := slog.New(slog.NewTextHandler(io.Discard, nil))
	newRegistry := func(removing map[string]struct{}) *Registry {
		return &Registry{cfg: Config{Dir: dir}, log: lg, topics: map[string]*Topic{}, members: map[uint64]Member{},
			removing: removing, changed: make(chan struct{}, 1)}
	}
	data, err := newRegistry(map[string]struct{}{}).stateLocked() // the leader's: no topics
	require.NoError(t, err)
	snap := &raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{
		Index: proto.Uint64(100), Term: proto.Uint64(2), ConfState: &raftpb.ConfState{Voters: []uint64{1}}}}
	f := newRegistry(map[string]struct{}{"x.5": {}})                                                          // x.5's group is closing
	f.topics["y"] = &Topic{Name: "y", dir: "y.6", start: &startState{done: make(chan struct{}), ended: true}} // removed by the install
	require.NoError(t, f.restoreSnapshot(snap))
	require.NoError(t, os.Rename(filepath.Join(dir, "removed", "y.6"), filepath.Join(dir, "topics", "y.6"))) // a crash before the move

	_, st, err := readCheckpoint(dir)
	require.NoError(t, err)
	assert.Equal(t, []string{"x.5", "y.6"}, st.Removing)
	opened := newRegistry(map[string]struct{}{})
	opened.replaying = true
	opened.setStateLocked(st)
	for _, d := range []string{"x.5", "y.6"} {
		_, err = os.Stat(filepath.Join(dir, "removed", d))
		assert.NoError(t, err, "%s moved aside", d)
	}
}

// TestAlignResetsADivergentTail: a log that holds the checkpoint's index
// under another term (an old leader's uncommitted tail; an install cut
// short by a crash after the checkpoint was written) is reset to start
// after the checkpoint, not given a commit point over entries of another
// history.
func TestAlignResetsADivergentTail(t *testing.T) {
	l, err := commitlog.Open(filepath.Join(t.TempDir(), "meta"), commitlog.Options{})
	require.NoError(t, err)
	defer l.Close()
	require.NoError(t, l.SetConfState(&raftpb.ConfState{Voters: []uint64{1, 2, 3}}))
	var ents []*raftpb.Entry
	for i := uint64(1); i <= 10; i++ {
		ents = append(ents, &raftpb.Entry{Index: proto.Uint64(i), Term: proto.Uint64(1), Type: raftpb.EntryType_EntryNormal.Enum()})
	}
	_, err = l.Append(ents, nil)
	require.NoError(t, err)
	require.NoError(t, l.Sync())
	require.NoError(t, l.SetHardStateParts(2, 0, 3))
	cp := &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: proto.Uint64(8), Term: proto.Uint64(2), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}}}
	require.NoError(t, alignWithCheckpoint(l, cp))
	first, err := l.FirstIndex()
	require.NoError(t, err)
	assert.Equal(t, uint64(9), first, "reset to start after the checkpoint")
	term, err := l.Term(8)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), term)
	hs, _, err := l.InitialState()
	require.NoError(t, err)
	assert.Equal(t, uint64(8), hs.GetCommit())
}

// TestRemovingATopicThatNeverStarted: a topic whose files were aside
// already when the node opened (its group never started) is removed at
// once; it is not listed as a removal in progress, which no group's close
// would ever end.
func TestRemovingATopicThatNeverStarted(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "removed", "x.5"), 0o755))
	r := &Registry{cfg: Config{Dir: dir}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), topics: map[string]*Topic{},
		members: map[uint64]Member{}, removing: map[string]struct{}{}, changed: make(chan struct{}, 1)}
	x := &Topic{Name: "x", dir: "x.5"}
	r.topics["x"] = x
	r.removeTopicLocked(x)
	assert.Empty(t, r.removing)
	assert.NotContains(t, r.topics, "x")
}

// TestCheckpointTopicBound: the metadata snapshot of a registry at its
// topic cap, every topic at its largest (longest name, 64 voters, every
// setting, its removal pending), stays within MaxCheckpointTopicBytes a
// topic and a MiB: the receive limit is sized by it (a larger snapshot was
// refused by every peer, for ever, and a new member never caught up).
func TestCheckpointTopicBound(t *testing.T) {
	const topics = 1000
	voters := make([]uint64, 64)
	for i := range voters {
		voters[i] = uint64(65535 - i)
	}
	st := checkpointState{Voters: voters, MaxID: 65535}
	for i := range topics {
		name := fmt.Sprintf("%s%06d", strings.Repeat("t", MaxNameLen-6), i)
		dir := fmt.Sprintf("%s.%d", name, uint64(math.MaxUint64)-uint64(i))
		st.Topics = append(st.Topics, checkpointTopic{Name: name, Dir: dir, Voters: voters, Created: math.MaxUint64,
			Settings: Settings{SegmentBytes: MaxSegmentBytes, RetentionSeconds: MaxRetentionSeconds, RetentionBytes: math.MaxInt64}})
		st.Removing = append(st.Removing, dir)
	}
	data, err := json.Marshal(st)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(data), topics*MaxCheckpointTopicBytes)
}
