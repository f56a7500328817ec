package fastcodec

import (
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Decoding in place, over the pieces a message was received in.
//
// gRPC hands the codec a received message in the pieces it read it in: one
// pooled buffer per HTTP/2 DATA frame, up to 16 KiB each, so a 400 KiB
// Subscribe response arrives in ~25 pieces (a compressed one in the
// decompressor's pieces, or one). A SubscribeBatch that borrows
// (SubscribeBatch.Borrow) walks the pieces where they lie instead of
// gathering them into one new buffer: each message points into the piece
// that holds it, and only the few that straddle two pieces are copied.

// spans reads a message laid out over several byte slices as one stream.
type spans struct {
	cur  []byte   // the unread rest of the current piece
	rest [][]byte // the pieces after it
}

// newSpans reads pieces in order; they must stay valid while it is used.
func newSpans(pieces [][]byte) spans {
	s := spans{rest: pieces}
	s.fill()
	return s
}

// fill makes cur the next non-empty piece when cur is used up.
func (s *spans) fill() {
	for len(s.cur) == 0 && len(s.rest) > 0 {
		s.cur, s.rest = s.rest[0], s.rest[1:]
	}
}

// done reports whether every byte has been read.
func (s *spans) done() bool {
	s.fill()
	return len(s.cur) == 0
}

// maxVarintLen is the longest varint encoding.
const maxVarintLen = 10

// varint reads a varint, which may straddle pieces.
func (s *spans) varint() (uint64, bool) {
	s.fill()
	if len(s.cur) >= maxVarintLen {
		v, n := protowire.ConsumeVarint(s.cur)
		if n < 0 {
			return 0, false
		}
		s.cur = s.cur[n:]
		return v, true
	}
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		s.fill()
		if len(s.cur) == 0 {
			return 0, false
		}
		c := s.cur[0]
		s.cur = s.cur[1:]
		if shift == 63 && c > 1 {
			return 0, false // beyond 64 bits, which ConsumeVarint refuses too
		}
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v, true
		}
	}
	return 0, false
}

// take reads n bytes: aliased, capacity-limited, when the current piece
// holds them all; else copied into a new slice, or skipped (nil) when keep
// is false. ok is false when fewer than n remain (checked before anything
// is allocated: n comes from the wire).
func (s *spans) take(n int, keep bool) (v []byte, ok bool) {
	s.fill()
	if n <= len(s.cur) {
		v, s.cur = s.cur[:n:n], s.cur[n:]
		return v, true
	}
	left := len(s.cur)
	for _, p := range s.rest {
		left += len(p)
	}
	if n > left {
		return nil, false
	}
	if keep {
		v = make([]byte, 0, n)
	}
	for n > 0 {
		s.fill()
		k := min(n, len(s.cur))
		if keep {
			v = append(v, s.cur[:k]...)
		}
		s.cur, n = s.cur[k:], n-k
	}
	return v, true
}

// eachSpan is eachMessage over pieces: fn gets every length-delimited
// field numbered num, scalar every other field, in order. With keep false,
// an element that straddles pieces is skipped, not copied, and fn gets nil
// for it (a walk that only counts).
func eachSpan(s spans, num protowire.Number, keep bool, fn func([]byte) bool, scalar func(Field) bool) bool {
	tag := oneByteTag(num)
	for !s.done() {
		// The common element, whole in the current piece.
		if v, rest, ok := bytesAt(s.cur, tag); ok {
			s.cur = rest
			if !fn(v) {
				return false
			}
			continue
		}
		key, ok := s.varint()
		if !ok || key>>3 < uint64(protowire.MinValidNumber) || key>>3 > uint64(protowire.MaxValidNumber) {
			return false
		}
		f := Field{Num: protowire.Number(key >> 3), Type: protowire.Type(key & 7)}
		switch f.Type {
		case protowire.VarintType:
			if f.Varint, ok = s.varint(); !ok || !scalar(f) {
				return false
			}
		case protowire.BytesType:
			l, ok := s.varint()
			if !ok || l > math.MaxInt32 { // beyond any message gRPC accepts
				return false
			}
			isMsg := f.Num == num
			if f.Bytes, ok = s.take(int(l), keep || !isMsg); !ok {
				return false
			}
			if isMsg {
				if !fn(f.Bytes) {
					return false
				}
			} else if !scalar(f) {
				return false
			}
		default:
			return false
		}
	}
	return true
}
