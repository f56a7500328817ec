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

// TestVoteGate: a closed gate drops granted votes and pre-votes only, and
// leaves the caller's slice (raft's Ready) as it was.
func TestVoteGate(t *testing.T) {
	mk := func(typ raftpb.MessageType, reject bool) *raftpb.Message {
		return &raftpb.Message{Type: typ.Enum(), Reject: &reject}
	}
	grant, preGrant := mk(raftpb.MessageType_MsgVoteResp, false), mk(raftpb.MessageType_MsgPreVoteResp, false)
	reject, preReject := mk(raftpb.MessageType_MsgVoteResp, true), mk(raftpb.MessageType_MsgPreVoteResp, true)
	app, appResp := mk(raftpb.MessageType_MsgApp, false), mk(raftpb.MessageType_MsgAppResp, false)
	msgs := []*raftpb.Message{grant, app, preGrant, reject, appResp, preReject}
	orig := append([]*raftpb.Message(nil), msgs...)

	rec := &sentRecorder{}
	g := &voteGate{PeerTransport: rec}
	g.Send("g", msgs)
	assert.Equal(t, orig, rec.sent, "open: everything goes")

	rec.sent = nil
	g.closed.Store(true)
	g.Send("g", msgs)
	assert.Equal(t, []*raftpb.Message{app, reject, appResp, preReject}, rec.sent, "closed: no grant goes")
	assert.Equal(t, orig, msgs, "the caller's slice is untouched")
}
