package replica

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// TestRaftCopiesProposals: batchPool hands a proposal's buffer to the next
// proposal as soon as raft has stepped its MsgProp, which is safe only
// because raft copies proposed entries. If a raft upgrade stops copying
// them, this fails (and batchPool must go).
func TestRaftCopiesProposals(t *testing.T) {
	st := raft.NewMemoryStorage()
	require.NoError(t, st.ApplySnapshot(&raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: new(uint64(1)), Term: new(uint64(1)), ConfState: &raftpb.ConfState{Voters: []uint64{1}},
	}}))
	rn, err := raft.NewRawNode(&raft.Config{
		ID: 1, ElectionTick: 10, HeartbeatTick: 1, Storage: st,
		MaxSizePerMsg: 1 << 20, MaxInflightMsgs: 16, Logger: raftLogger{l: slog.New(slog.DiscardHandler)},
	})
	require.NoError(t, err)
	require.NoError(t, rn.Campaign())
	// Become leader: persist and advance until raft says so.
	for rn.Status().RaftState != raft.StateLeader {
		require.True(t, rn.HasReady())
		rd := rn.Ready()
		require.NoError(t, st.Append(rd.Entries))
		rn.Advance(rd)
	}
	if rn.HasReady() {
		rd := rn.Ready()
		require.NoError(t, st.Append(rd.Entries))
		rn.Advance(rd)
	}

	buf := []byte("the batch as proposed")
	want := bytes.Clone(buf)
	require.NoError(t, rn.Step(&raftpb.Message{
		Type: raftpb.MessageType_MsgProp.Enum(), From: new(uint64(1)),
		Entries: []*raftpb.Entry{{Data: buf}},
	}))
	copy(buf, "the next batch, reusing")
	rd := rn.Ready()
	var found bool
	for _, e := range rd.Entries {
		if len(e.GetData()) > 0 {
			require.Equal(t, want, e.GetData(), "raft kept the proposer's buffer")
			found = true
		}
	}
	require.True(t, found, "the proposal is in the Ready")
}
