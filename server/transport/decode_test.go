package transport

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func decodeSeeds() [][]byte {
	u := func(v uint64) *uint64 { return &v }
	mt := func(t raftpb.MessageType) *raftpb.MessageType { return &t }
	et := func(t raftpb.EntryType) *raftpb.EntryType { return &t }
	yes := true
	var out [][]byte
	for _, m := range []*raftpb.Message{
		{Type: mt(raftpb.MsgApp), To: u(2), From: u(1), Term: u(7), LogTerm: u(6), Index: u(41), Commit: u(40), Entries: []*raftpb.Entry{
			{Term: u(7), Index: u(42), Type: et(raftpb.EntryNormal), Data: []byte("batch one")},
			{Term: u(7), Index: u(43), Data: []byte{}},
			{Term: u(7), Index: u(44)},
			{Type: et(raftpb.EntryConfChangeV2), Data: []byte{1, 2, 3}},
		}},
		{Type: mt(raftpb.MsgAppResp), To: u(1), From: u(2), Term: u(7), Index: u(44), Reject: &yes, RejectHint: u(40), LogTerm: u(5)},
		{Type: mt(raftpb.MsgHeartbeat), To: u(3), From: u(1), Term: u(7), Commit: u(44), Context: []byte("ctx")},
		{Type: mt(raftpb.MsgHeartbeatResp), Context: []byte{}},
		{Type: mt(raftpb.MsgVote), Term: u(8), Vote: u(2), LogTerm: u(7), Index: u(44)},
		{Type: mt(raftpb.MsgHup)},
		{},
		// The fallback: a snapshot and responses.
		{Type: mt(raftpb.MsgSnap), Snapshot: &raftpb.Snapshot{Data: []byte("s"), Metadata: &raftpb.SnapshotMetadata{Index: u(9), Term: u(2)}}},
		{Type: mt(raftpb.MsgStorageAppend), Responses: []*raftpb.Message{{Type: mt(raftpb.MsgStorageAppendResp), Index: u(3)}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	tag := protowire.AppendTag
	// An enum value MessageType does not define, an unknown field, a field
	// of the wrong wire type, a field given twice, a truncated entry.
	out = append(out, protowire.AppendVarint(tag(nil, 1, protowire.VarintType), 99))
	out = append(out, protowire.AppendVarint(tag(nil, 30, protowire.VarintType), 1))
	out = append(out, protowire.AppendBytes(tag(nil, 2, protowire.BytesType), []byte("x")))
	out = append(out, protowire.AppendVarint(tag(protowire.AppendVarint(tag(nil, 4, protowire.VarintType), 1), 4, protowire.VarintType), 2))
	out = append(out, protowire.AppendBytes(tag(nil, 7, protowire.BytesType), []byte{0x10}))
	return out
}

// checkDecode wants decodeMessage's outcome to be proto.Unmarshal's, also
// into a message that held another one before.
func checkDecode(t *testing.T, b []byte) {
	want := new(raftpb.Message)
	wantErr := proto.Unmarshal(b, want)
	prev, err := proto.Marshal(&raftpb.Message{Entries: []*raftpb.Entry{{Data: []byte("old")}}, Context: []byte("old")})
	require.NoError(t, err)
	got := new(raftpb.Message)
	require.NoError(t, proto.Unmarshal(prev, got))
	gotErr := decodeMessage(append([]byte(nil), b...), got)
	if wantErr != nil {
		assert.Error(t, gotErr, "proto.Unmarshal failed, decodeMessage did not")
		return
	}
	require.NoError(t, gotErr)
	assert.True(t, proto.Equal(want, got), "want %v\ngot  %v", want, got)
}

func TestDecodeMessageMatchesProto(t *testing.T) {
	for _, b := range decodeSeeds() {
		checkDecode(t, b)
	}
}

// TestDecodeMessageAliases: entries' data point into the frame, capacity-
// limited, and an append to one leaves the next intact.
func TestDecodeMessageAliases(t *testing.T) {
	b := decodeSeeds()[0]
	var m raftpb.Message
	require.True(t, decodeFast(b, &m), "a MsgApp takes the fast path")
	d := m.Entries[0].Data
	require.Equal(t, "batch one", string(d))
	assert.Equal(t, len(d), cap(d))
	_ = append(d, 'X')
	assert.Equal(t, []byte{}, m.Entries[1].Data)
	b[bytes.Index(b, []byte{1, 2, 3})+2] = 'Z'
	assert.Equal(t, []byte{1, 2, 'Z'}, m.Entries[3].Data, "data is not aliased")
}

func FuzzDecodeMessage(f *testing.F) {
	for _, b := range decodeSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkDecode(t, b) })
}

func BenchmarkDecodeMessage(b *testing.B) {
	u := func(v uint64) *uint64 { return &v }
	m := &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: u(2), From: u(1), Term: u(3), LogTerm: u(3), Index: u(100), Commit: u(99)}
	for i := range 10 {
		m.Entries = append(m.Entries, &raftpb.Entry{Term: u(3), Index: u(uint64(101 + i)), Type: raftpb.EntryNormal.Enum(), Data: make([]byte, 10_000)})
	}
	raw, err := proto.Marshal(m)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		decode func([]byte, *raftpb.Message) error
	}{{"proto", func(b []byte, m *raftpb.Message) error { return proto.Unmarshal(b, m) }}, {"fast", decodeMessage}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				var m raftpb.Message
				if err := c.decode(raw, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
