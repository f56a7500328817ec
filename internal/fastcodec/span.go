package fastcodec

import (
	"math"

	"google.golang.org/grpc/mem"
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

// spans reads a message laid out over gRPC's pieces as one stream.
type spans struct {
	cur  []byte          // the unread rest of the current piece
	rest mem.BufferSlice // the pieces after it
	left int             // bytes unread in all, cur included
}

// newSpans reads pieces in order; they must stay valid while it is used.
func newSpans(pieces mem.BufferSlice) spans {
	s := spans{rest: pieces, left: pieces.Len()}
	s.fill()
	return s
}

// fill makes cur the next non-empty piece when cur is used up.
func (s *spans) fill() {
	for len(s.cur) == 0 && len(s.rest) > 0 {
		s.cur, s.rest = s.rest[0].ReadOnlyData(), s.rest[1:]
	}
}

// skip consumes n bytes of cur.
func (s *spans) skip(n int) {
	s.cur, s.left = s.cur[n:], s.left-n
}

// done reports whether every byte has been read.
func (s *spans) done() bool { return s.left == 0 }

// varint reads a varint, which may straddle pieces: the few bytes it may
// take are gathered first when the current piece is shorter than the
// longest varint.
func (s *spans) varint() (uint64, bool) {
	s.fill()
	b := s.cur
	if len(b) < protowire.SizeVarint(math.MaxUint64) && s.left > len(b) {
		var buf [10]byte // protowire.SizeVarint(math.MaxUint64)
		k := copy(buf[:], b)
		for _, p := range s.rest {
			k += copy(buf[k:], p.ReadOnlyData())
			if k == len(buf) {
				break
			}
		}
		b = buf[:k]
	}
	v, n := protowire.ConsumeVarint(b)
	if n < 0 {
		return 0, false
	}
	s.take(n, false)
	return v, true
}

// take reads n bytes: aliased, capacity-limited, when the current piece
// holds them all; else copied into a new slice, or skipped (nil) when keep
// is false. ok is false when fewer than n remain (checked before anything
// is allocated: n comes from the wire).
func (s *spans) take(n int, keep bool) (v []byte, ok bool) {
	s.fill()
	if n <= len(s.cur) {
		v = s.cur[:n:n]
		s.skip(n)
		return v, true
	}
	if n > s.left {
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
		s.skip(k)
		n -= k
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
		s.fill()
		if v, rest, ok := bytesAt(s.cur, tag); ok {
			s.skip(len(s.cur) - len(rest))
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
