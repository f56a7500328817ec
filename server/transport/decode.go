package transport

import (
	"math"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
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
// proto.Unmarshal.
func decodeFast(b []byte, m *raftpb.Message) bool {
	m.Reset()
	n := 0 // entries, to size them once; and a first check of the framing
	for p := b; len(p) > 0; {
		num, typ, k := protowire.ConsumeTag(p)
		if k < 0 {
			return false
		}
		p = p[k:]
		switch typ {
		case protowire.VarintType:
			_, k = protowire.ConsumeVarint(p)
		case protowire.BytesType:
			_, k = protowire.ConsumeBytes(p)
			if num == 7 {
				n++
			}
		default:
			return false
		}
		if k < 0 {
			return false
		}
		p = p[k:]
	}
	f := new(msgFields)
	var ents []entryBox
	if n > 0 {
		ents = make([]entryBox, n)
		m.Entries = make([]*raftpb.Entry, 0, n)
	}
	for len(b) > 0 {
		num, typ, k := protowire.ConsumeTag(b)
		b = b[k:]
		if typ == protowire.VarintType {
			v, k := protowire.ConsumeVarint(b)
			b = b[k:]
			switch num {
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
			continue
		}
		v, k := protowire.ConsumeBytes(b)
		b = b[k:]
		switch num {
		case 7:
			e := &ents[len(m.Entries)]
			if !decodeEntry(v, e) {
				return false
			}
			m.Entries = append(m.Entries, &e.e)
		case 12:
			m.Context = v[:len(v):len(v)]
		default: // 9 snapshot, 14 responses, unknown
			return false
		}
	}
	return true
}

func decodeEntry(b []byte, e *entryBox) bool {
	for len(b) > 0 {
		num, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return false
		}
		b = b[k:]
		switch {
		case typ == protowire.VarintType:
			v, k := protowire.ConsumeVarint(b)
			if k < 0 {
				return false
			}
			b = b[k:]
			switch num {
			case 1:
				if !known(raftpb.EntryType_name, v) {
					return false
				}
				e.typ, e.e.Type = raftpb.EntryType(v), &e.typ
			case 2:
				e.term, e.e.Term = v, &e.term
			case 3:
				e.index, e.e.Index = v, &e.index
			default:
				return false
			}
		case typ == protowire.BytesType && num == 4:
			v, k := protowire.ConsumeBytes(b)
			if k < 0 {
				return false
			}
			b = b[k:]
			e.e.Data = v[:len(v):len(v)]
		default:
			return false
		}
	}
	return true
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
