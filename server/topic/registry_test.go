package topic

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/replica"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "default", "orders.v1", "A-b_c.9", strings.Repeat("x", MaxNameLen), "..."} {
		assert.NoError(t, ValidateName(ok), ok)
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "ü", "a\x00", strings.Repeat("x", MaxNameLen+1), "a:b"} {
		assert.ErrorIs(t, ValidateName(bad), ErrInvalidName, "%q", bad)
	}
}

func TestSettingsValidate(t *testing.T) {
	const minSegment = DefaultMinSegmentBytes
	assert.NoError(t, Settings{}.Validate(minSegment))
	assert.NoError(t, Settings{SegmentBytes: minSegment, RetentionSeconds: 60, RetentionBytes: 1}.Validate(minSegment))
	for _, bad := range []Settings{
		{SegmentBytes: -1},
		{SegmentBytes: minSegment - 1},
		{SegmentBytes: 4096},
		{SegmentBytes: MaxSegmentBytes + 1}, // never rolls: retention never deletes
		{SegmentBytes: math.MaxInt64},
		{RetentionSeconds: -1},
		{RetentionSeconds: MaxRetentionSeconds + 1},
		{RetentionSeconds: 18446744074}, // 584 years: as a Duration, 290 ms
		{RetentionBytes: -1},
	} {
		assert.ErrorIs(t, bad.Validate(minSegment), ErrInvalidSettings, "%+v", bad)
	}
	assert.NoError(t, Settings{SegmentBytes: 4096}.Validate(4096))
	assert.NoError(t, Settings{RetentionSeconds: MaxRetentionSeconds}.Validate(minSegment))
	assert.NoError(t, Settings{SegmentBytes: MaxSegmentBytes}.Validate(minSegment))
}

// TestRetentionAgeSaturates: a retention stored before Validate refused
// values past a Duration keeps messages for ever; converted as it was, 584
// years became 290 ms and deleted every message.
func TestRetentionAgeSaturates(t *testing.T) {
	assert.Equal(t, time.Minute, retentionAge(60))
	assert.Equal(t, time.Duration(MaxRetentionSeconds)*time.Second, retentionAge(MaxRetentionSeconds))
	for _, sec := range []int64{MaxRetentionSeconds + 1, 18446744074, math.MaxInt64} {
		assert.Equal(t, time.Duration(math.MaxInt64), retentionAge(sec), "%d s", sec)
	}
}

// TestCheckConfChange: membership changes proposed on an outdated view are
// refused at apply, by every node alike.
func TestCheckConfChange(t *testing.T) {
	r := &Registry{
		members: map[uint64]Member{
			1: {ID: 1, Name: "n1", Address: "127.0.0.1:1"},
			2: {ID: 2, Name: "n2", Address: "127.0.0.1:2"},
			3: {ID: 3, Name: "n3", Address: "127.0.0.1:3"}, // a learner
		},
		voters: []uint64{1, 2},
	}
	change := func(typ raftpb.ConfChangeType, id uint64, m *Member) *raftpb.ConfChangeV2 {
		cc := &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: typ.Enum(), NodeId: new(id)}}}
		if m != nil {
			cc.Context, _ = json.Marshal(m)
		}
		return cc
	}
	learner, voter, remove := raftpb.ConfChangeType_ConfChangeAddLearnerNode, raftpb.ConfChangeType_ConfChangeAddNode, raftpb.ConfChangeType_ConfChangeRemoveNode
	for _, tc := range []struct {
		name string
		cc   *raftpb.ConfChangeV2
		ok   bool
	}{
		{"a new node", change(learner, 4, &Member{ID: 4, Name: "n4", Address: "127.0.0.1:4"}), true},
		{"the same add again (a retry)", change(learner, 3, &Member{ID: 3, Name: "n3", Address: "127.0.0.1:3"}), true},
		{"an ID another node holds", change(learner, 3, &Member{ID: 3, Name: "n5", Address: "127.0.0.1:5"}), false},
		{"a name another ID holds", change(learner, 4, &Member{ID: 4, Name: "n3", Address: "127.0.0.1:3"}), false},
		{"a voter as a learner again", change(learner, 2, &Member{ID: 2, Name: "n2", Address: "127.0.0.1:2"}), false},
		{"a learner's promotion", change(voter, 3, nil), true},
		{"a voter's removal", change(remove, 2, nil), true},
		{"a learner's removal", change(remove, 3, nil), true},
	} {
		assert.Equal(t, tc.ok, r.checkConfChange(tc.cc), tc.name)
	}
	r.voters = []uint64{1}
	assert.False(t, r.checkConfChange(change(remove, 1, nil)), "the last voter's removal")
	assert.True(t, r.checkConfChange(change(remove, 3, nil)), "a learner's removal beside the last voter")
}

// TestCapCountsAnAppliedCreateOnce: a create this node proposed, applied
// but not yet answered (its caller still waits for the topic's leader),
// counts once towards the topic cap, as a topic, not a second time as
// pending: counting it twice refused creates under a burst while there
// was room.
func TestCapCountsAnAppliedCreateOnce(t *testing.T) {
	e, err := replica.NewEngine(replica.Config{NodeID: 1})
	require.NoError(t, err)
	e.Start()
	t.Cleanup(e.Stop)
	r, err := Open(Config{Dir: t.TempDir(), Engine: e, NodeID: 1, Members: []Member{{ID: 1, Name: "n1"}},
		Log: commitlog.Options{NoSync: true}, MaxTopics: 2})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.Create(ctx, "a", Settings{}))

	r.mu.Lock()
	r.creating = map[string]int{"a": 1} // applied, its caller not answered yet
	r.mu.Unlock()
	release, err := r.roomForTopic("b")
	require.NoError(t, err, `"a" and "b" fit a cap of 2`)
	release()
	_, err = r.roomForTopic("c")
	require.NoError(t, err)
	_, err = r.roomForTopic("d")
	require.ErrorIs(t, err, ErrTooManyTopics, `"a", "c" and "d" do not`)
}

// TestPurgeRemoved: a removed topic's files are deleted once they have been
// in removed/ longer than the age given, counted from the removal (not from
// the files' last write), and kept for ever with age 0.
func TestPurgeRemoved(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"topics", "removed"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	r := &Registry{cfg: Config{Dir: dir}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	now := time.Now()
	mkdir := func(path string, mtime time.Time) {
		t.Helper()
		require.NoError(t, os.MkdirAll(path, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(path, "00000000000000000001.log"), []byte("x"), 0o644))
		require.NoError(t, os.Chtimes(path, mtime, mtime))
	}
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(dir, "removed", name))
		return err == nil
	}
	mkdir(filepath.Join(dir, "removed", "old.5"), now.Add(-2*time.Hour))
	mkdir(filepath.Join(dir, "removed", "new.7"), now)
	// Last written two hours ago, removed now.
	mkdir(filepath.Join(dir, "topics", "idle.9"), now.Add(-2*time.Hour))
	r.moveAside(&Topic{Name: "idle", dir: "idle.9"})
	require.True(t, exists("idle.9"))

	r.PurgeRemoved(now.Add(time.Minute), 0)
	assert.True(t, exists("old.5"), "age 0 keeps removed topics")

	r.PurgeRemoved(now.Add(time.Minute), time.Hour)
	assert.False(t, exists("old.5"), "removed two hours ago")
	assert.True(t, exists("new.7"))
	assert.True(t, exists("idle.9"), "removed now, though last written two hours ago")

	r.PurgeRemoved(now.Add(2*time.Hour), time.Hour)
	assert.False(t, exists("new.7"))
	assert.False(t, exists("idle.9"))
}

// TestUpdateKeepsASegmentSizeOutsideTheLimits: a topic whose segment size
// the limits now refuse (created before the floor rose, or before the 1 GiB
// cap) keeps it, and its other settings can still change with its size
// resent unchanged, as fbctl sends it. A new size must be within them.
func TestUpdateKeepsASegmentSizeOutsideTheLimits(t *testing.T) {
	_, r, ctx := openSingle(t, t.TempDir())
	require.NoError(t, r.meta.WaitLeader(ctx))
	old := Settings{SegmentBytes: MaxSegmentBytes + 1} // as an earlier version took it
	require.ErrorIs(t, r.Create(ctx, "big", old), ErrInvalidSettings)
	require.NoError(t, r.propose(ctx, command{Op: "create", Name: "big", Settings: old}))

	old.RetentionSeconds = 3600
	require.NoError(t, r.Update(ctx, "big", old))
	tp, err := r.Lookup(ctx, "big")
	require.NoError(t, err)
	assert.Equal(t, old, tp.Settings)

	old.SegmentBytes++
	assert.ErrorIs(t, r.Update(ctx, "big", old), ErrInvalidSettings, "a new size over the cap")
}
