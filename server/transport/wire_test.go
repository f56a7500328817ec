package transport

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	peerv1 "github.com/forestbus/forestbus/gen/forestbus/peer/v1"
)

// TestWireFrameIsAStreamRequest: a wireFrame encodes exactly what
// proto.Marshal gives for the StreamRequest holding the same messages
// marshalled one by one (what the receiving node decodes), and WireSize is
// its length.
func TestWireFrameIsAStreamRequest(t *testing.T) {
	app := &raftpb.Message{
		Type: raftpb.MessageType_MsgApp.Enum(), From: proto.Uint64(1), To: proto.Uint64(2),
		Term: proto.Uint64(3), Index: proto.Uint64(9), LogTerm: proto.Uint64(3), Commit: proto.Uint64(8),
	}
	for i := range 3 {
		app.Entries = append(app.Entries, &raftpb.Entry{
			Term: proto.Uint64(3), Index: proto.Uint64(uint64(10 + i)), Data: make([]byte, 300*(i+1)),
		})
	}
	msgs := []*raftpb.Message{
		app,
		{Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2)},
		{}, // every field unset: an empty RaftMessage.message
	}
	groups := []string{"orders", "", "a-long-topic-name-" + string(make([]byte, 200))}

	var frame wireFrame
	want := &peerv1.StreamRequest{}
	for i, m := range msgs {
		frame.msgs = append(frame.msgs, outMsg{group: groups[i], msg: m, size: proto.Size(m)})
		data, err := proto.Marshal(m)
		require.NoError(t, err)
		want.Messages = append(want.Messages, &peerv1.RaftMessage{Group: groups[i], Message: data})
	}
	got, err := frame.AppendWire(nil)
	require.NoError(t, err)
	assert.Equal(t, frame.WireSize(), len(got))
	wantBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(want)
	require.NoError(t, err)
	assert.Equal(t, wantBytes, got)

	var back peerv1.StreamRequest
	require.NoError(t, proto.Unmarshal(got, &back))
	require.Len(t, back.GetMessages(), len(msgs))
	for i, rm := range back.GetMessages() {
		assert.Equal(t, groups[i], rm.GetGroup())
		var m raftpb.Message
		require.NoError(t, proto.Unmarshal(rm.GetMessage(), &m))
		assert.True(t, proto.Equal(msgs[i], &m), "message %d", i)
	}

	// A message that changed after it was queued is refused, not sent
	// with a wrong length.
	frame.msgs[0].size--
	_, err = frame.AppendWire(nil)
	assert.Error(t, err)
}
