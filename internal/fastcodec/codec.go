// Package fastcodec is the gRPC "proto" codec with fast paths for the
// messages that carry message payloads in bulk: SendMessagesRequest (server
// side), GetMessagesResponse and SubscribeResponse (client side).
//
// The stock codec copies every repeated bytes element into its own
// allocation: 500 allocations for a 500-message answer. The fast path copies
// the received message once into one buffer and points each element into it
// (capacity-limited, so appending to one cannot overwrite the next). Any
// field it does not know, or a malformed one, sends the message down the
// stock path, so the result is always what proto.Unmarshal would give
// (FuzzMatchesProto checks this).
//
// Use it with grpc.ForceCodecV2 (client) or grpc.ForceServerCodecV2 (server);
// the wire format and the content subtype ("proto") are unchanged.
package fastcodec

import (
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"

	// Registers the stock "proto" codec this one delegates to.
	_ "google.golang.org/grpc/encoding/proto"
)

// Codec implements encoding.CodecV2.
type Codec struct{}

var stock = encoding.GetCodecV2("proto")

// Name is "proto": the same content subtype as the stock codec.
func (Codec) Name() string { return "proto" }

// Marshal is the stock codec's.
func (Codec) Marshal(v any) (mem.BufferSlice, error) { return stock.Marshal(v) }

// Unmarshal decodes data into v, with the fast paths described in the
// package documentation.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *forestbusv1.SendMessagesRequest:
		return unmarshalWith(data, m, decodeSendMessagesRequest)
	case *forestbusv1.GetMessagesResponse:
		return unmarshalWith(data, m, decodeGetMessagesResponse)
	case *forestbusv1.SubscribeResponse:
		return unmarshalWith(data, m, decodeSubscribeResponse)
	}
	return stock.Unmarshal(data, v)
}

func unmarshalWith[M proto.Message](data mem.BufferSlice, m M, decode func([]byte, M) bool) error {
	buf := data.Materialize()
	if decode(buf, m) {
		return nil
	}
	return proto.Unmarshal(buf, m)
}

// Unmarshal decodes b into m like proto.Unmarshal, aliasing b for the bulk
// messages (b must not be modified afterwards).
func Unmarshal(b []byte, m proto.Message) error {
	ok := false
	switch m := m.(type) {
	case *forestbusv1.SendMessagesRequest:
		ok = decodeSendMessagesRequest(b, m)
	case *forestbusv1.GetMessagesResponse:
		ok = decodeGetMessagesResponse(b, m)
	case *forestbusv1.SubscribeResponse:
		ok = decodeSubscribeResponse(b, m)
	}
	if ok {
		return nil
	}
	return proto.Unmarshal(b, m)
}

// field is one decoded field: num and either a varint or a bytes value.
type field struct {
	num    protowire.Number
	typ    protowire.Type
	varint uint64
	bytes  []byte
}

// next decodes the field at the start of b and returns the rest; ok is false
// for anything but a well-formed varint or length-delimited field.
func next(b []byte) (f field, rest []byte, ok bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return f, nil, false
	}
	b = b[n:]
	f.num, f.typ = num, typ
	switch typ {
	case protowire.VarintType:
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return f, nil, false
		}
		f.varint = v
		return f, b[n:], true
	case protowire.BytesType:
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return f, nil, false
		}
		f.bytes = v[:len(v):len(v)]
		return f, b[n:], true
	}
	return f, nil, false
}

// countBytesFields counts the length-delimited fields numbered num, to size
// the slice once; -1 if b is malformed.
func countBytesFields(b []byte, num protowire.Number) int {
	c := 0
	for len(b) > 0 {
		f, rest, ok := next(b)
		if !ok {
			return -1
		}
		if f.num == num && f.typ == protowire.BytesType {
			c++
		}
		b = rest
	}
	return c
}

func decodeSendMessagesRequest(b []byte, m *forestbusv1.SendMessagesRequest) bool {
	n := countBytesFields(b, 2)
	if n < 0 {
		return false
	}
	m.Reset()
	if n > 0 {
		m.Messages = make([][]byte, 0, n)
	}
	for len(b) > 0 {
		f, rest, _ := next(b)
		b = rest
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			if !utf8.Valid(f.bytes) {
				return false
			}
			m.Topic = string(f.bytes)
		case f.num == 2 && f.typ == protowire.BytesType:
			m.Messages = append(m.Messages, f.bytes)
		case f.num == 3 && f.typ == protowire.VarintType:
			m.WaitForCommit = protowire.DecodeBool(f.varint)
		case f.num == 4 && f.typ == protowire.VarintType:
			m.ProducerId = f.varint
		case f.num == 5 && f.typ == protowire.VarintType:
			m.Sequence = f.varint
		default:
			return false
		}
	}
	return true
}

func decodeGetMessagesResponse(b []byte, m *forestbusv1.GetMessagesResponse) bool {
	n := countBytesFields(b, 1)
	if n < 0 {
		return false
	}
	m.Reset()
	if n > 0 {
		m.Messages = make([][]byte, 0, n)
	}
	for len(b) > 0 {
		f, rest, _ := next(b)
		b = rest
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			m.Messages = append(m.Messages, f.bytes)
		case f.num == 2 && f.typ == protowire.VarintType:
			m.NextId = int64(f.varint)
		case f.num == 3 && f.typ == protowire.VarintType:
			m.CommitId = int64(f.varint)
		default:
			return false
		}
	}
	return true
}

func decodeSubscribeResponse(b []byte, m *forestbusv1.SubscribeResponse) bool {
	n := countBytesFields(b, 1)
	if n < 0 {
		return false
	}
	m.Reset()
	if n > 0 {
		m.Messages = make([][]byte, 0, n)
	}
	for len(b) > 0 {
		f, rest, _ := next(b)
		b = rest
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			m.Messages = append(m.Messages, f.bytes)
		case f.num == 2 && f.typ == protowire.VarintType:
			m.FirstId = int64(f.varint)
		case f.num == 3 && f.typ == protowire.VarintType:
			m.CommitId = int64(f.varint)
		default:
			return false
		}
	}
	return true
}
