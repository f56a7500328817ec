package fastcodec

import (
	"iter"
	"slices"

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
// The yielded messages are capacity-limited. Without Borrow they alias one
// buffer per response and stay valid after the next RecvMsg, as a decoded
// SubscribeResponse's would; with it they alias gRPC's receive buffers (a
// message that straddles two is copied) and are valid until Release. The
// result is always what proto.Unmarshal into a SubscribeResponse would
// give (FuzzMatchesProto checks this).
type SubscribeBatch struct {
	// FirstID is the ID of the first message (field first_id).
	FirstID int64
	// CommitID is the node's commit point (field commit_id).
	CommitID int64

	// Borrow, set before RecvMsg, reads the response where gRPC received
	// it (span.go) instead of copying it into a new buffer: the messages
	// are then valid only until Release, which gives gRPC's buffers back
	// for the next responses. Without it they stay valid for good.
	Borrow bool

	n    int             // messages
	raw  []byte          // the response's encoding, when scan accepted it
	held mem.BufferSlice // the same, borrowed: gRPC's pieces, referenced until Release
	msgs [][]byte        // the messages, when proto.Unmarshal decoded it instead
}

// Release gives back the buffers a borrowing batch holds, to the pool
// gRPC took them from: the messages it yielded must no longer be used (the
// buffers carry other data from then on). It does nothing for a batch that
// holds none (one that does not borrow, or whose response went down the
// stock path), and may be called more than once.
func (b *SubscribeBatch) Release() {
	if len(b.held) == 0 {
		return
	}
	b.held.Free()
	b.held, b.n = nil, 0
}

// Len is the number of messages.
func (b *SubscribeBatch) Len() int { return b.n }

// Messages yields the messages in order.
func (b *SubscribeBatch) Messages() iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		if b.held != nil {
			eachSpan(newSpans(b.held), 1, true, yield, anyField) // scanned
			return
		}
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
	b.Release() // a batch reused without it
	*b = SubscribeBatch{Borrow: b.Borrow}
	if b.Borrow {
		if eachSpan(newSpans(data), 1, false, b.count, idFields(&b.FirstID, &b.CommitID)) {
			data.Ref()                  // gRPC frees its own reference when this returns
			b.held = slices.Clone(data) // data's slice is gRPC's
			return nil
		}
		*b = SubscribeBatch{Borrow: true} // the walk may have set fields
		return b.unmarshalStock(data.Materialize())
	}
	buf := data.Materialize()
	if b.scan(buf) {
		b.raw = buf
		return nil
	}
	*b = SubscribeBatch{} // scan may have set fields
	return b.unmarshalStock(buf)
}

// count counts a message (a walk that only counts them).
func (b *SubscribeBatch) count([]byte) bool {
	b.n++
	return true
}

// unmarshalStock decodes buf with proto.Unmarshal, for the responses the
// fast paths refuse.
func (b *SubscribeBatch) unmarshalStock(buf []byte) error {
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
	return eachMessage(buf, 1, b.count, idFields(&b.FirstID, &b.CommitID))
}
