package transport

import (
	"math"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/internal/fastcodec"
)

// decodeMessage decodes a raftpb.Message as proto.Unmarshal does, except
// that the entries' data and the context alias b (capacity-limited, so an
// append to one cannot overwrite the next) instead of being copied, and
// that the optional fields of the message and of its entries share two
// allocations instead of taking one each. b must not change afterwards:
// the frame it comes from is a fresh buffer per frame (package fastcodec).
//
// A follower decoded every MsgApp's entries twice over before (the frame's
// bytes, then each entry's data): 25 % of its CPU under W1 went to
// proto.Unmarshal and its copies.
//
// Anything else goes to proto.Unmarshal: a snapshot, responses, a field it
// does not know, an enum value its enum does not define, malformed input.
// FuzzDecodeMessage checks that the outcome is proto.Unmarshal's.
func decodeMessage(b []byte, m *raftpb.Message) error {
	if decodeFast(b, m) {
		return nil
	}
	return proto.Unmarshal(b, m)
}

// msgFields holds the values a Message's optional fields point to.
type msgFields struct {
	typ                                                      raftpb.MessageType
	to, from, term, logTerm, index, commit, vote, rejectHint uint64
	reject                                                   bool
}

// entryBox is an Entry with the values its optional fields point to.
type entryBox struct {
	e           raftpb.Entry
	term, index uint64
	typ         raftpb.EntryType
}

// decodeFast decodes b into m (reset first) if it can; false leaves m to
// proto.Unmarshal. It walks the fields with fastcodec's decoder, as the
// node's codec does the frames they come in.
func decodeFast(b []byte, m *raftpb.Message) bool {
	m.Reset()
	n := fastcodec.CountBytesFields(b, 7) // entries, to size them once
	if n < 0 {
		return false
	}
	f := new(msgFields)
	var ents []entryBox
	if n > 0 {
		ents = make([]entryBox, n)
		m.Entries = make([]*raftpb.Entry, 0, n)
	}
	return fastcodec.EachField(b, func(fd fastcodec.Field) bool {
		if fd.Type == protowire.VarintType {
			v := fd.Varint
			switch fd.Num {
			case 1:
				if !known(raftpb.MessageType_name, v) {
					return false
				}
				f.typ = raftpb.MessageType(v)
				m.Type = &f.typ
			case 2:
				f.to, m.To = v, &f.to
			case 3:
				f.from, m.From = v, &f.from
			case 4:
				f.term, m.Term = v, &f.term
			case 5:
				f.logTerm, m.LogTerm = v, &f.logTerm
			case 6:
				f.index, m.Index = v, &f.index
			case 8:
				f.commit, m.Commit = v, &f.commit
			case 10:
				f.reject, m.Reject = protowire.DecodeBool(v), &f.reject
			case 11:
				f.rejectHint, m.RejectHint = v, &f.rejectHint
			case 13:
				f.vote, m.Vote = v, &f.vote
			default:
				return false
			}
			return true
		}
		switch fd.Num {
		case 7:
			e := &ents[len(m.Entries)]
			if !decodeEntry(fd.Bytes, e) {
				return false
			}
			m.Entries = append(m.Entries, &e.e)
		case 12:
			m.Context = fd.Bytes
		default: // 9 snapshot, 14 responses, unknown
			return false
		}
		return true
	})
}

func decodeEntry(b []byte, e *entryBox) bool {
	return fastcodec.EachField(b, func(fd fastcodec.Field) bool {
		switch {
		case fd.Type == protowire.VarintType && fd.Num == 1:
			if !known(raftpb.EntryType_name, fd.Varint) {
				return false
			}
			e.typ, e.e.Type = raftpb.EntryType(fd.Varint), &e.typ
		case fd.Type == protowire.VarintType && fd.Num == 2:
			e.term, e.e.Term = fd.Varint, &e.term
		case fd.Type == protowire.VarintType && fd.Num == 3:
			e.index, e.e.Index = fd.Varint, &e.index
		case fd.Type == protowire.BytesType && fd.Num == 4:
			e.e.Data = fd.Bytes
		default:
			return false
		}
		return true
	})
}

// known reports whether v is a value of the (closed, proto2) enum whose
// names are given; proto.Unmarshal keeps any other value as an unknown
// field.
func known(names map[int32]string, v uint64) bool {
	if v > math.MaxInt32 {
		return false
	}
	_, ok := names[int32(v)]
	return ok
}
