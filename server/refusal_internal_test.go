package server

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"go.etcd.io/raft/v3/raftpb"
)

// sentRecorder is a PeerTransport that records what it is given.
type sentRecorder struct {
	PeerTransport
	sent []*raftpb.Message
}

func (r *sentRecorder) Send(_ string, msgs []*raftpb.Message) { r.sent = append(r.sent, msgs...) }

// TestVoteGate: a closed gate drops granted votes and pre-votes and
// requests for them, only, and leaves the caller's slice (raft's Ready) as
// it was; it ignores a leadership transfer to the node, and answers to
// the votes it asked for. A stopping node's gate ignores only leadership
// transfers to it.
func TestVoteGate(t *testing.T) {
	mk := func(typ raftpb.MessageType, reject bool) *raftpb.Message {
		return &raftpb.Message{Type: typ.Enum(), Reject: &reject}
	}
	grant, preGrant := mk(raftpb.MessageType_MsgVoteResp, false), mk(raftpb.MessageType_MsgPreVoteResp, false)
	reject, preReject := mk(raftpb.MessageType_MsgVoteResp, true), mk(raftpb.MessageType_MsgPreVoteResp, true)
	vote, preVote := mk(raftpb.MessageType_MsgVote, false), mk(raftpb.MessageType_MsgPreVote, false)
	app, appResp := mk(raftpb.MessageType_MsgApp, false), mk(raftpb.MessageType_MsgAppResp, false)
	timeoutNow := mk(raftpb.MessageType_MsgTimeoutNow, false)
	msgs := []*raftpb.Message{grant, app, preGrant, vote, reject, appResp, preVote, preReject, timeoutNow}
	orig := append([]*raftpb.Message(nil), msgs...)

	rec := &sentRecorder{}
	g := &voteGate{PeerTransport: rec}
	g.Send("g", msgs)
	assert.Equal(t, orig, rec.sent, "open: everything goes")
	for _, m := range msgs {
		assert.False(t, g.dropsInbound(m), "open: %v comes in", m.GetType())
	}

	rec.sent = nil
	g.closed.Store(true)
	g.Send("g", msgs)
	assert.Equal(t, []*raftpb.Message{app, reject, appResp, preReject, timeoutNow}, rec.sent, "closed: no vote, no campaign")
	assert.Equal(t, orig, msgs, "the caller's slice is untouched")
	for _, m := range msgs {
		typ := m.GetType()
		in := typ == raftpb.MessageType_MsgTimeoutNow || typ == raftpb.MessageType_MsgVoteResp || typ == raftpb.MessageType_MsgPreVoteResp
		assert.Equal(t, in, g.dropsInbound(m), "closed: %v", typ)
	}

	// A stopping node only ignores leadership transfers to it, and sends
	// everything.
	g.closed.Store(false)
	g.stopping.Store(true)
	rec.sent = nil
	g.Send("g", msgs)
	assert.Equal(t, orig, rec.sent, "stopping: everything goes")
	for _, m := range msgs {
		assert.Equal(t, m.GetType() == raftpb.MessageType_MsgTimeoutNow, g.dropsInbound(m), "stopping: %v", m.GetType())
	}
}
