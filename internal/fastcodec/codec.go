// Package fastcodec is the gRPC "proto" codec with fast paths for the
// messages that carry message payloads in bulk: SendMessagesRequest and
// ProduceRequest (server side), GetMessagesResponse and SubscribeResponse
// (client side; SubscribeBatch reads the latter without a slice of its
// messages), and the peer stream's StreamRequest (raft messages between
// nodes).
//
// The stock codec copies every repeated bytes element into its own
// allocation: 500 allocations for a 500-message answer. The fast path copies
// the received message once into one buffer and points each element into it
// (capacity-limited, so appending to one cannot overwrite the next). Any
// field it does not know, or a malformed one, sends the message down the
// stock path, so the result is always what proto.Unmarshal would give
// (FuzzMatchesProto checks this), with two exceptions in a
// SendMessagesRequest (also in a ProduceRequest), which the service then
// refuses in the answer to that request (a decoding error would end a
// Produce stream with INTERNAL instead, and leave its other requests in
// flight unanswered):
//   - a topic that is not valid UTF-8 is decoded as it is, where
//     proto.Unmarshal fails (INVALID_ARGUMENT: topic names are ASCII);
//   - of more than MaxSendMessages messages, only the first
//     MaxSendMessages+1 are kept (BATCH_TOO_LARGE).
//
// Both hold on the fast path only: a request the fast path does not take
// (an unknown field, a repeated batch) is decoded by proto.Unmarshal,
// which fails on such a topic, and refused before it for more than
// MaxSendMessages messages.
//
// On the sending side it encodes WireMarshalers with their own methods, and
// gives back the buffers a server handler lent with its answer once the
// answer is encoded (Lend).
//
// Use it with grpc.ForceCodecV2 (client) or grpc.ForceServerCodecV2 (server);
// the wire format and the content subtype ("proto") are unchanged.
package fastcodec

import (
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	peerv1 "github.com/forestbus/forestbus/gen/forestbus/peer/v1"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/internal/bufpool"

	// Registers the stock "proto" codec this one delegates to.
	_ "google.golang.org/grpc/encoding/proto"
)

// MaxSendMessages is the most messages a SendMessagesRequest (also in a
// ProduceRequest) may hold; the service refuses a batch of more
// (BATCH_TOO_LARGE). Decoding keeps the first MaxSendMessages+1 of a
// larger one and drops the rest: a request of tiny messages costs ~24
// bytes of memory per message decoded (a slice header) for the 2 or more
// bytes it takes on the wire, so a 64 MiB request of empty messages held
// 800 MB before any limit was checked. Decoded as far as that, the batch
// is refused as too large all the same.
const MaxSendMessages = 1 << 20

// Codec implements encoding.CodecV2.
type Codec struct{}

var stock = encoding.GetCodecV2("proto")

// Name is "proto": the same content subtype as the stock codec.
func (Codec) Name() string { return "proto" }

// WireMarshaler is a message that writes its own wire encoding. Marshal
// sends it into one pooled buffer, as the stock codec does a proto.Message.
type WireMarshaler interface {
	// WireSize is the length AppendWire will append.
	WireSize() int
	// AppendWire appends the encoding to b.
	AppendWire(b []byte) ([]byte, error)
}

// Marshal is the stock codec's, with the module's buffer pool, and encodes
// a WireMarshaler with its own methods. It then releases v's buffers if v
// was lent (Lend).
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	defer repay(v)
	if w, ok := v.(WireMarshaler); ok {
		n := w.WireSize()
		return encode(n, func(b []byte) ([]byte, error) { return appendWire(w, b, n) })
	}
	m, ok := v.(proto.Message)
	if !ok {
		return stock.Marshal(v) // and its error
	}
	// The stock codec's encoding, into this module's pool rather than
	// grpc-go's default one, which clears every buffer it hands out (a
	// GetMessages answer's ~3 MiB, for one).
	opts := proto.MarshalOptions{UseCachedSize: true}
	return encode(proto.Size(m), func(b []byte) ([]byte, error) { return opts.MarshalAppend(b, m) })
}

// encode appends the n-byte encoding fill writes to an empty buffer of
// capacity n: from bufpool.Pool above gRPC's pooling threshold (fill writes
// every byte, so the pool's buffers need no clearing), else a plain slice.
func encode(n int, fill func([]byte) ([]byte, error)) (mem.BufferSlice, error) {
	if mem.IsBelowBufferPoolingThreshold(n) {
		b, err := fill(make([]byte, 0, n))
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	pool := bufpool.Pool
	buf := pool.Get(n)
	b, err := fill((*buf)[:0])
	if err != nil {
		pool.Put(buf)
		return nil, err
	}
	*buf = b // a tier's buffer unless fill outgrew it; Put drops others
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// appendWire is w.AppendWire(b), checked against the size w announced.
func appendWire(w WireMarshaler, b []byte, n int) ([]byte, error) {
	b, err := w.AppendWire(b)
	if err == nil && len(b) != n {
		err = fmt.Errorf("fastcodec: %T: WireSize said %d bytes, AppendWire wrote %d", w, n, len(b))
	}
	return b, err
}

// Unmarshal decodes data into v, with the fast paths described in the
// package documentation.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *forestbusv1.SendMessagesRequest:
		return unmarshalWith(data, m, decodeSendMessagesRequest)
	case *forestbusv1.ProduceRequest:
		return unmarshalWith(data, m, decodeProduceRequest)
	case *forestbusv1.GetMessagesResponse:
		return unmarshalWith(data, m, decodeGetMessagesResponse)
	case *forestbusv1.SubscribeResponse:
		return unmarshalWith(data, m, decodeSubscribeResponse)
	case *peerv1.StreamRequest:
		return unmarshalWith(data, m, decodeStreamRequest)
	case *SubscribeBatch:
		return m.unmarshal(data)
	}
	m, ok := v.(proto.Message)
	if !ok {
		return stock.Unmarshal(data, v)
	}
	// The stock codec's path, with the module's pool: a message received
	// in several buffers is gathered into one, which proto.Unmarshal copies
	// from.
	buf := data.MaterializeToBuffer(bufpool.Pool)
	defer buf.Free()
	err := proto.Unmarshal(buf.ReadOnlyData(), m)
	if err != nil {
		if fixed, ok := validUTF8Strings(buf.ReadOnlyData(), m); ok {
			return proto.Unmarshal(fixed, m)
		}
	}
	return err
}

// validUTF8Strings returns b, a message of m's type, with the bytes that
// are not UTF-8 in its top-level string fields replaced by U+FFFD, and
// whether there were any. proto.Unmarshal refuses such a string, and gRPC
// answers the refusal INTERNAL, with no ErrorInfo, before any handler
// runs: a client in a language that sends what it is given (C++, raw
// bytes from grpcurl's -d) asking GetMessages for a topic named in
// Latin-1 got a server fault, which clients take for "try another node".
// Decoded with U+FFFD in it, the name reaches the handler, which refuses
// it as any name outside [A-Za-z0-9._-] (INVALID_ARGUMENT), naming it.
// (SendMessages and Produce requests do not get here: their fast decoders
// keep the bytes as they are.)
func validUTF8Strings(b []byte, m proto.Message) ([]byte, bool) {
	fields := m.ProtoReflect().Descriptor().Fields()
	var out []byte
	fixed := false
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			return nil, false
		}
		vn := protowire.ConsumeFieldValue(num, typ, rest[n:])
		if vn < 0 {
			return nil, false
		}
		field := rest[:n+vn]
		rest = rest[n+vn:]
		if fd := fields.ByNumber(num); typ == protowire.BytesType && fd != nil && fd.Kind() == protoreflect.StringKind {
			v, _ := protowire.ConsumeBytes(field[n:])
			if !utf8.Valid(v) {
				if out == nil {
					out = append(make([]byte, 0, len(b)+8), b[:len(b)-len(rest)-len(field)]...)
				}
				out = protowire.AppendTag(out, num, typ)
				out = protowire.AppendString(out, strings.ToValidUTF8(string(v), "\uFFFD"))
				fixed = true
				continue
			}
		}
		if out != nil {
			out = append(out, field...)
		}
	}
	return out, fixed
}

func unmarshalWith[M proto.Message](data mem.BufferSlice, m M, decode func([]byte, M) bool) error {
	buf := data.Materialize()
	if decode(buf, m) {
		return nil
	}
	if n := sendMessages(buf, m); n > MaxSendMessages {
		// The stock path would decode them all (see MaxSendMessages).
		return fmt.Errorf("fastcodec: a batch of %d messages, more than %d", n, MaxSendMessages)
	}
	return proto.Unmarshal(buf, m)
}

// sendMessages counts the messages of the SendMessagesRequest b encodes
// (m's type tells), or of the batches of the ProduceRequest; 0 for other
// types and malformed messages.
func sendMessages(b []byte, m proto.Message) int {
	switch m.(type) {
	case *forestbusv1.SendMessagesRequest:
		return max(CountBytesFields(b, 2), 0)
	case *forestbusv1.ProduceRequest:
		n := 0
		EachField(b, func(f Field) bool {
			if f.Num == 2 && f.Type == protowire.BytesType {
				n += max(CountBytesFields(f.Bytes, 2), 0) // repeated batches merge
			}
			return true
		})
		return n
	}
	return 0
}

// Field is one decoded field: its number and either a varint or a bytes
// value (capacity-limited, aliasing the input). Package transport decodes
// raft messages with it too (EachField, CountBytesFields).
type Field struct {
	Num    protowire.Number
	Type   protowire.Type
	Varint uint64
	Bytes  []byte
}

// next decodes the field at the start of b and returns the rest; ok is false
// for anything but a well-formed varint or length-delimited field.
func next(b []byte) (f Field, rest []byte, ok bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return f, nil, false
	}
	b = b[n:]
	f.Num, f.Type = num, typ
	switch typ {
	case protowire.VarintType:
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return f, nil, false
		}
		f.Varint = v
		return f, b[n:], true
	case protowire.BytesType:
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return f, nil, false
		}
		f.Bytes = v[:len(v):len(v)]
		return f, b[n:], true
	}
	return f, nil, false
}

// oneByteTag is the tag byte of length-delimited field num when it fits in
// one byte (num < 16), else 0 (no fast path).
func oneByteTag(num protowire.Number) byte {
	if num < 1 || num > 15 {
		return 0
	}
	return byte(protowire.EncodeTag(num, protowire.BytesType))
}

// bytesAt decodes the length-delimited field at the start of b when it
// begins with tag (see oneByteTag; a length of one or two bytes inline):
// the common element of a payload list, 10,000 of them in an answer, with
// no call per element. ok is false when b does not start with tag; then,
// and for anything unusual, the caller uses next.
func bytesAt(b []byte, tag byte) (v, rest []byte, ok bool) {
	if len(b) < 2 || b[0] != tag || tag == 0 {
		return nil, nil, false
	}
	var l, n int
	switch {
	case b[1] < 0x80:
		l, n = int(b[1]), 2
	case len(b) > 2 && b[2] < 0x80:
		l, n = int(b[1]&0x7f)|int(b[2])<<7, 3
	default:
		return nil, nil, false
	}
	if l > len(b)-n {
		return nil, nil, false
	}
	e := n + l
	return b[n:e:e], b[e:], true
}

// eachMessage walks b's fields in order: fn gets the value of every
// length-delimited field numbered num (a payload list's elements, decoded
// in place by bytesAt when they can be), scalar every other field. False
// when b is malformed or fn or scalar returns false.
func eachMessage(b []byte, num protowire.Number, fn func([]byte) bool, scalar func(Field) bool) bool {
	tag := oneByteTag(num)
	for len(b) > 0 {
		v, rest, ok := bytesAt(b, tag)
		if !ok {
			var f Field
			if f, rest, ok = next(b); !ok {
				return false
			}
			if f.Num != num || f.Type != protowire.BytesType {
				if !scalar(f) {
					return false
				}
				b = rest
				continue
			}
			v = f.Bytes
		}
		if !fn(v) {
			return false
		}
		b = rest
	}
	return true
}

// anyField accepts every field (a walk that only counts or yields messages).
func anyField(Field) bool { return true }

// CountBytesFields counts the length-delimited fields numbered num, to size
// a slice once; -1 if b is malformed.
func CountBytesFields(b []byte, num protowire.Number) int {
	c := 0
	if !eachMessage(b, num, func([]byte) bool { c++; return true }, anyField) {
		return -1
	}
	return c
}

// decode walks b once to count the msgNum elements (sizing *msgs exactly),
// then again to alias them into *msgs, handing every other field to
// scalar, which reports whether it knows the field. The caller has reset
// the message; false sends it down the stock path.
func decode(b []byte, msgNum protowire.Number, msgs *[][]byte, scalar func(Field) bool) bool {
	return decodeUpTo(b, msgNum, msgs, scalar, math.MaxInt)
}

// decodeUpTo is decode keeping at most limit elements: the rest are walked
// over (and checked) but not kept.
func decodeUpTo(b []byte, msgNum protowire.Number, msgs *[][]byte, scalar func(Field) bool, limit int) bool {
	n := CountBytesFields(b, msgNum)
	if n < 0 {
		return false
	}
	if n = min(n, limit); n > 0 {
		*msgs = make([][]byte, 0, n)
	}
	return eachMessage(b, msgNum, func(v []byte) bool {
		if len(*msgs) < limit {
			*msgs = append(*msgs, v)
		}
		return true
	}, scalar)
}

func decodeProduceRequest(b []byte, m *forestbusv1.ProduceRequest) bool {
	m.Reset()
	return EachField(b, func(f Field) bool {
		switch {
		case f.Num == 1 && f.Type == protowire.VarintType:
			m.RequestId = f.Varint
		case f.Num == 2 && f.Type == protowire.BytesType && m.Batch == nil:
			m.Batch = new(forestbusv1.SendMessagesRequest)
			return decodeSendMessagesRequest(f.Bytes, m.Batch)
		default:
			return false // a repeated batch merges: the stock path
		}
		return true
	})
}

// EachField calls fn with every field of b, in order; false when b is
// malformed or fn returns false.
func EachField(b []byte, fn func(Field) bool) bool {
	for len(b) > 0 {
		f, rest, ok := next(b)
		if !ok || !fn(f) {
			return false
		}
		b = rest
	}
	return true
}

func decodeSendMessagesRequest(b []byte, m *forestbusv1.SendMessagesRequest) bool {
	m.Reset()
	return decodeUpTo(b, 2, &m.Messages, func(f Field) bool {
		switch {
		case f.Num == 1 && f.Type == protowire.BytesType:
			m.Topic = string(f.Bytes) // UTF-8 or not: see the package doc
		case f.Num == 3 && f.Type == protowire.VarintType:
			m.WaitForCommit = protowire.DecodeBool(f.Varint)
		case f.Num == 4 && f.Type == protowire.VarintType:
			m.ProducerId = f.Varint
		case f.Num == 5 && f.Type == protowire.VarintType:
			m.Sequence = f.Varint
		default:
			return false
		}
		return true
	}, MaxSendMessages+1)
}

// decodeIDs decodes the layout GetMessagesResponse and SubscribeResponse
// share: messages = 1, an ID = 2 (next_id, first_id), commit_id = 3.
func decodeIDs(b []byte, msgs *[][]byte, id, commitID *int64) bool {
	return decode(b, 1, msgs, idFields(id, commitID))
}

// idFields reads the scalar fields of that layout, and refuses any other.
func idFields(id, commitID *int64) func(Field) bool {
	return func(f Field) bool {
		switch {
		case f.Num == 2 && f.Type == protowire.VarintType:
			*id = int64(f.Varint)
		case f.Num == 3 && f.Type == protowire.VarintType:
			*commitID = int64(f.Varint)
		default:
			return false
		}
		return true
	}
}

func decodeGetMessagesResponse(b []byte, m *forestbusv1.GetMessagesResponse) bool {
	m.Reset()
	return decodeIDs(b, &m.Messages, &m.NextId, &m.CommitId)
}

func decodeSubscribeResponse(b []byte, m *forestbusv1.SubscribeResponse) bool {
	m.Reset()
	return decodeIDs(b, &m.Messages, &m.FirstId, &m.CommitId)
}

// decodeStreamRequest decodes a peer stream frame, each RaftMessage's
// message aliasing the received buffer (the raft messages in it are decoded
// from there, again without a copy: package transport).
func decodeStreamRequest(b []byte, m *peerv1.StreamRequest) bool {
	m.Reset()
	n := CountBytesFields(b, 4)
	if n < 0 {
		return false
	}
	var rms []peerv1.RaftMessage
	if n > 0 {
		rms = make([]peerv1.RaftMessage, n)
		m.Messages = make([]*peerv1.RaftMessage, 0, n)
	}
	return EachField(b, func(f Field) bool {
		switch {
		case f.Num == 1 && f.Type == protowire.BytesType && utf8.Valid(f.Bytes):
			m.ClusterId = string(f.Bytes)
		case f.Num == 2 && f.Type == protowire.VarintType:
			m.From = f.Varint
		case f.Num == 3 && f.Type == protowire.VarintType:
			m.To = f.Varint
		case f.Num == 4 && f.Type == protowire.BytesType:
			rm := &rms[len(m.Messages)]
			m.Messages = append(m.Messages, rm)
			return decodeRaftMessage(f.Bytes, rm)
		default:
			return false
		}
		return true
	})
}

func decodeRaftMessage(b []byte, m *peerv1.RaftMessage) bool {
	return EachField(b, func(f Field) bool {
		switch {
		case f.Num == 1 && f.Type == protowire.BytesType && utf8.Valid(f.Bytes):
			m.Group = string(f.Bytes)
		case f.Num == 2 && f.Type == protowire.BytesType:
			m.Message = f.Bytes
		default:
			return false
		}
		return true
	})
}
