package fastcodec

import (
	"iter"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// SubscribeBatch receives a SubscribeResponse (pass it to RecvMsg) without
// building its slice of messages: the messages are read from the received
// bytes as Messages yields them. A reader that takes the messages one by
// one (client.Subscribe) saves the slice, a pointer per message for the
// collector to scan, and a pass over the answer.
//
// The yielded messages alias one buffer per response, capacity-limited,
// and stay valid after the next RecvMsg, as a decoded SubscribeResponse's
// would. The result is always what proto.Unmarshal into a
// SubscribeResponse would give (FuzzMatchesProto checks this).
type SubscribeBatch struct {
	// FirstID is the ID of the first message (field first_id).
	FirstID int64
	// CommitID is the node's commit point (field commit_id).
	CommitID int64

	n    int      // messages
	raw  []byte   // the response's encoding, when scan accepted it
	msgs [][]byte // the messages, when proto.Unmarshal decoded it instead
}

// Len is the number of messages.
func (b *SubscribeBatch) Len() int { return b.n }

// Messages yields the messages in order.
func (b *SubscribeBatch) Messages() iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		if b.raw == nil {
			for _, m := range b.msgs {
				if !yield(m) {
					return
				}
			}
			return
		}
		eachMessage(b.raw, 1, yield, anyField) // scan checked every field
	}
}

// unmarshal fills b from data: the fast path when it knows every field,
// proto.Unmarshal otherwise.
func (b *SubscribeBatch) unmarshal(data mem.BufferSlice) error {
	buf := data.Materialize()
	*b = SubscribeBatch{}
	if b.scan(buf) {
		b.raw = buf
		return nil
	}
	*b = SubscribeBatch{} // scan may have set fields
	var m forestbusv1.SubscribeResponse
	if err := proto.Unmarshal(buf, &m); err != nil {
		return err
	}
	b.FirstID, b.CommitID = m.GetFirstId(), m.GetCommitId()
	b.msgs, b.n = m.GetMessages(), len(m.GetMessages())
	return nil
}

// scan reads the scalar fields and counts the messages; false for anything
// decodeSubscribeResponse would send down the stock path.
func (b *SubscribeBatch) scan(buf []byte) bool {
	return eachMessage(buf, 1, func([]byte) bool { b.n++; return true }, idFields(&b.FirstID, &b.CommitID))
}
