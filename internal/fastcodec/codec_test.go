package fastcodec

import (
	"fmt"
	"runtime"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	peerv1 "github.com/forestbus/forestbus/gen/forestbus/peer/v1"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

func seeds() [][]byte {
	var out [][]byte
	for _, m := range []proto.Message{
		&forestbusv1.SendMessagesRequest{Topic: "t", Messages: [][]byte{[]byte("a"), {}, []byte("ccc")}, WaitForCommit: true, ProducerId: 7, Sequence: 9},
		&forestbusv1.SendMessagesRequest{},
		&forestbusv1.ProduceRequest{RequestId: 12, Batch: &forestbusv1.SendMessagesRequest{Topic: "p", Messages: [][]byte{[]byte("m1"), []byte("m2")}, WaitForCommit: true, ProducerId: 3, Sequence: 4}},
		&forestbusv1.ProduceRequest{RequestId: 1, Batch: &forestbusv1.SendMessagesRequest{}},
		&forestbusv1.GetMessagesResponse{Messages: [][]byte{[]byte("x"), []byte("yy")}, NextId: 3, CommitId: -1},
		&forestbusv1.SubscribeResponse{Messages: [][]byte{[]byte("z")}, FirstId: 1 << 40, CommitId: 5},
		&peerv1.StreamRequest{ClusterId: "c", From: 1, To: 2, Messages: []*peerv1.RaftMessage{{Group: "g", Message: []byte{8, 3}}, {Message: []byte{}}, {Group: "h"}}},
		&peerv1.StreamRequest{Messages: []*peerv1.RaftMessage{{Group: "only"}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	// An unknown field, a repeated scalar field and a bad UTF-8 topic.
	out = append(out, protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), []byte("u")))
	out = append(out, protowire.AppendVarint(protowire.AppendTag(protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 1), 2, protowire.VarintType), 2))
	out = append(out, protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{0xff}))
	// A ProduceRequest whose batch appears twice (proto merges the two).
	one, err := proto.Marshal(&forestbusv1.ProduceRequest{RequestId: 5, Batch: &forestbusv1.SendMessagesRequest{Topic: "a", Messages: [][]byte{[]byte("x")}}})
	if err != nil {
		panic(err)
	}
	two, err := proto.Marshal(&forestbusv1.ProduceRequest{Batch: &forestbusv1.SendMessagesRequest{Messages: [][]byte{[]byte("y")}, Sequence: 2}})
	if err != nil {
		panic(err)
	}
	out = append(out, append(one, two...))
	// Payloads around the lengths bytesAt decodes inline (one and two
	// length bytes) and beyond (three: the general path), a non-minimal
	// two-byte length, and lengths running past the end.
	var sizes [][]byte
	for _, n := range []int{0, 1, 127, 128, 129} {
		sizes = append(sizes, make([]byte, n))
	}
	for _, m := range []proto.Message{
		&forestbusv1.GetMessagesResponse{Messages: sizes, NextId: 9, CommitId: 9},
		&forestbusv1.SendMessagesRequest{Topic: "s", Messages: sizes},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		out = append(out, b, b[:len(b)-1])
	}
	out = append(out,
		[]byte{0x0a, 0x81, 0x00, 'a'},       // length 1 in two bytes
		[]byte{0x0a, 0x02, 'a'},             // one byte short
		[]byte{0x0a, 0x80, 0x01},            // 128 bytes announced, none there
		[]byte{0x0a, 0xff, 0xff, 0x7f, 'a'}, // a three-byte length, short
		[]byte{0x0a},                        // a tag alone
		// Varints at 64 bits: the largest ten-byte one, a tenth byte over
		// 1 (overflow), and eleven bytes.
		[]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		[]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02},
		[]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80, 0x00},
		// Huge lengths announced on a message and on another field, with
		// nothing behind them.
		[]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x07},
		[]byte{0x12, 0xff, 0xff, 0xff, 0xff, 0x07},
		[]byte{0x4a, 0xff, 0xff, 0xff, 0xff, 0x0f},
	)
	return out
}

// bigSeeds are payloads whose lengths take two bytes at the edge (16383)
// and three (16384, 70000: the general path), whole and cut short. They
// stay out of the fuzz corpus, where their size would slow every
// execution.
func bigSeeds() [][]byte {
	var sizes [][]byte
	for _, n := range []int{127, 16383, 16384, 70000} {
		sizes = append(sizes, make([]byte, n))
	}
	var out [][]byte
	for _, m := range []proto.Message{
		&forestbusv1.GetMessagesResponse{Messages: sizes, NextId: 9, CommitId: 9},
		&forestbusv1.SubscribeResponse{Messages: sizes, FirstId: 5},
		&forestbusv1.SendMessagesRequest{Topic: "s", Messages: sizes},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		out = append(out, b, b[:len(b)-1])
	}
	return out
}

// check decodes b with the fast codec and with proto.Unmarshal into each
// message type and wants the same outcome.
func check(t *testing.T, b []byte) {
	for _, newMsg := range []func() proto.Message{
		func() proto.Message { return &forestbusv1.SendMessagesRequest{} },
		func() proto.Message { return &forestbusv1.ProduceRequest{} },
		func() proto.Message { return &forestbusv1.GetMessagesResponse{} },
		func() proto.Message { return &forestbusv1.SubscribeResponse{} },
		func() proto.Message { return &peerv1.StreamRequest{} },
	} {
		want, got := newMsg(), newMsg()
		wantErr := proto.Unmarshal(b, want)
		gotErr := Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(append([]byte(nil), b...))}, got)
		if wantErr != nil {
			if gotErr == nil && !utf8.ValidString(sendTopic(got)) {
				continue // the one difference: see the package doc
			}
			assert.Error(t, gotErr, "%T: proto.Unmarshal failed, fast path did not", want)
			continue
		}
		require.NoError(t, gotErr, "%T", want)
		assert.True(t, proto.Equal(want, got), "%T: want %v got %v", want, want, got)
		// And back: Marshal writes what proto.Marshal does (unknown
		// fields included).
		wantBytes, err := proto.Marshal(want)
		require.NoError(t, err, "%T", want)
		gotBytes, err := Codec{}.Marshal(want)
		require.NoError(t, err, "%T", want)
		assert.Equal(t, string(wantBytes), string(gotBytes.Materialize()), "%T: Marshal", want)
		gotBytes.Free()
	}
}

// sendTopic is m's SendMessagesRequest topic: its own, or its batch's.
func sendTopic(m proto.Message) string {
	switch m := m.(type) {
	case *forestbusv1.SendMessagesRequest:
		return m.GetTopic()
	case *forestbusv1.ProduceRequest:
		return m.GetBatch().GetTopic()
	}
	return ""
}

// TestInvalidUTF8TopicDecodes: a send whose topic is not valid UTF-8
// decodes (proto.Unmarshal refuses it), so the service can refuse the name
// in an answer to that request.
func TestInvalidUTF8TopicDecodes(t *testing.T) {
	req := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{'t', 0xff})
	req = protowire.AppendBytes(protowire.AppendTag(req, 2, protowire.BytesType), []byte("m"))
	require.Error(t, proto.Unmarshal(req, &forestbusv1.SendMessagesRequest{}))
	var m forestbusv1.SendMessagesRequest
	require.NoError(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(req)}, &m))
	assert.Equal(t, "t\xff", m.GetTopic())
	assert.Equal(t, [][]byte{[]byte("m")}, m.GetMessages())

	prod := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 9)
	prod = protowire.AppendBytes(protowire.AppendTag(prod, 2, protowire.BytesType), req)
	var p forestbusv1.ProduceRequest
	require.NoError(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(prod)}, &p))
	assert.Equal(t, uint64(9), p.GetRequestId())
	assert.Equal(t, m.GetTopic(), p.GetBatch().GetTopic())
}

// checkBatch decodes b into a SubscribeBatch and wants what proto.Unmarshal
// into a SubscribeResponse gives; and again borrowing (SubscribeBatch.Borrow)
// with b whole and cut into pieces of 1, 3 and 16 bytes, so that fields,
// their tags, lengths and varints straddle pieces (gRPC hands over a
// message received in several DATA frames in pieces).
func checkBatch(t *testing.T, b []byte) {
	var want forestbusv1.SubscribeResponse
	wantErr := proto.Unmarshal(b, &want)
	for _, c := range []struct {
		borrow bool
		size   int
	}{{false, 0}, {true, 0}, {true, 1}, {true, 3}, {true, 16}} {
		got := SubscribeBatch{Borrow: c.borrow}
		gotErr := Codec{}.Unmarshal(split(b, c.size), &got)
		if wantErr != nil {
			assert.Error(t, gotErr, "SubscribeBatch %+v: proto.Unmarshal failed, the batch did not", c)
			continue
		}
		require.NoError(t, gotErr, "SubscribeBatch %+v", c)
		assert.Equal(t, want.GetFirstId(), got.FirstID)
		assert.Equal(t, want.GetCommitId(), got.CommitID)
		assert.Equal(t, len(want.GetMessages()), got.Len())
		var msgs [][]byte
		for m := range got.Messages() {
			if got.raw != nil || got.held != nil { // the stock path allocates each message
				assert.Equal(t, len(m), cap(m), "capacity-limited")
			}
			msgs = append(msgs, m)
		}
		require.Len(t, msgs, len(want.GetMessages()))
		for i, m := range want.GetMessages() {
			assert.Equal(t, string(m), string(msgs[i]), "message %d, %+v", i, c)
		}
		got.Release()
	}
}

// split cuts b into pieces of size bytes (one piece for 0), each a copy.
func split(b []byte, size int) mem.BufferSlice {
	if size == 0 || len(b) == 0 {
		return mem.BufferSlice{mem.SliceBuffer(append([]byte(nil), b...))}
	}
	var s mem.BufferSlice
	for len(b) > 0 {
		k := min(size, len(b))
		s = append(s, mem.SliceBuffer(append([]byte(nil), b[:k]...)))
		b = b[k:]
	}
	return s
}

// countingPool is a mem.BufferPool that counts the buffers given back.
type countingPool struct{ puts int }

func (p *countingPool) Get(n int) *[]byte { b := make([]byte, n); return &b }
func (p *countingPool) Put(*[]byte)       { p.puts++ }

// TestHugeLengthAllocatesNothing: a length announced on the wire is
// checked against the bytes there before anything is allocated for it.
func TestHugeLengthAllocatesNothing(t *testing.T) {
	for _, raw := range [][]byte{
		{0x0a, 0xff, 0xff, 0xff, 0xff, 0x07, 'a', 'b'}, // a message of 2 GiB - 1
		{0x12, 0xff, 0xff, 0xff, 0xff, 0x07, 'a', 'b'}, // field 2 as bytes
		{0x4a, 0xff, 0xff, 0xff, 0x7f, 'a', 'b'},       // an unknown field
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		b := SubscribeBatch{Borrow: true}
		assert.Error(t, Codec{}.Unmarshal(split(raw, 3), &b), "%x", raw)
		runtime.ReadMemStats(&after)
		assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "%x: bytes allocated", raw)
	}
}

// TestBorrowHoldsPiecesUntilRelease: a borrowing batch keeps gRPC's
// buffers from their pool after gRPC frees its reference, so nothing
// overwrites the messages it yields, and gives them back at Release; a
// batch that does not borrow gives them back at once (it copied them), and
// so does a borrowing one whose response goes down the stock path.
func TestBorrowHoldsPiecesUntilRelease(t *testing.T) {
	msgs := zeros(300, 100)
	for i, m := range msgs {
		m[0], m[99] = byte(i), byte(i>>8)
	}
	fast, err := proto.Marshal(&forestbusv1.SubscribeResponse{Messages: msgs, FirstId: 7, CommitId: 400})
	require.NoError(t, err)
	slow := protowire.AppendVarint(protowire.AppendTag(append([]byte(nil), fast...), 9, protowire.VarintType), 1)
	const piece = 4 << 10 // above gRPC's pooling threshold, so NewBuffer pools it
	for _, c := range []struct {
		name   string
		raw    []byte
		borrow bool
		held   bool
		shared bool // pieces split off one buffer, as gRPC's reader does
	}{
		{"borrowed", fast, true, true, false},
		{"borrowed, pieces of one buffer", fast, true, true, true},
		{"copied", fast, false, false, false},
		{"borrowed, stock path", slow, true, false, false},
	} {
		pool := &countingPool{}
		var data mem.BufferSlice
		if c.shared {
			buf := pool.Get(len(c.raw))
			copy(*buf, c.raw)
			rest := mem.NewBuffer(buf, pool)
			for rest.Len() > piece {
				var left mem.Buffer
				left, rest = mem.SplitUnsafe(rest, piece)
				data = append(data, left)
			}
			data = append(data, rest)
		}
		for rest := c.raw; !c.shared && len(rest) > 0; {
			k := min(piece, len(rest))
			buf := pool.Get(k)
			copy(*buf, rest)
			data = append(data, mem.NewBuffer(buf, pool))
			rest = rest[k:]
		}
		// Every piece goes back to the pool (counted) only if NewBuffer
		// pooled it, which the last, shortest one must be long enough for.
		require.False(t, mem.IsBelowBufferPoolingThreshold(data[len(data)-1].Len()), "%s: the last piece is pooled", c.name)
		wantPuts := len(data)
		if c.shared {
			wantPuts = 1
		}
		b := SubscribeBatch{Borrow: c.borrow}
		require.NoError(t, Codec{}.Unmarshal(data, &b), c.name)
		data.Free() // what gRPC does when Unmarshal returns
		if c.held {
			assert.Zero(t, pool.puts, "%s: a piece went back to its pool before Release", c.name)
		} else {
			assert.Equal(t, wantPuts, pool.puts, "%s: pieces kept", c.name)
		}
		i := 0
		for m := range b.Messages() {
			require.Less(t, i, len(msgs), c.name)
			assert.Equal(t, string(msgs[i]), string(m), "%s: message %d", c.name, i)
			i++
		}
		assert.Equal(t, len(msgs), i, c.name)
		b.Release()
		b.Release()
		assert.Equal(t, wantPuts, pool.puts, "%s: every piece back after Release, once", c.name)
	}
}

func TestMatchesProto(t *testing.T) {
	for _, b := range append(seeds(), bigSeeds()...) {
		check(t, b)
		checkBatch(t, b)
	}
}

// TestSubscribeBatchStops: Messages stops when the loop breaks, on both
// paths, and a batch reused for the next response forgets the last one.
func TestSubscribeBatchStops(t *testing.T) {
	fast, err := proto.Marshal(&forestbusv1.SubscribeResponse{Messages: [][]byte{[]byte("a"), []byte("b"), []byte("c")}, FirstId: 4, CommitId: 9})
	require.NoError(t, err)
	// An unknown field sends the response down the stock path.
	slow := protowire.AppendVarint(protowire.AppendTag(append([]byte(nil), fast...), 7, protowire.VarintType), 1)
	for _, c := range []struct {
		raw    []byte
		borrow bool
	}{{fast, false}, {slow, false}, {fast, true}, {slow, true}} {
		raw := c.raw
		b := SubscribeBatch{Borrow: c.borrow}
		require.NoError(t, Codec{}.Unmarshal(split(raw, 2), &b))
		var seen []string
		for m := range b.Messages() {
			seen = append(seen, string(m))
			if len(seen) == 2 {
				break
			}
		}
		assert.Equal(t, []string{"a", "b"}, seen)
		require.NoError(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0x10, 0x05})}, &b))
		assert.Equal(t, 0, b.Len())
		assert.Equal(t, int64(5), b.FirstID)
		assert.Equal(t, int64(0), b.CommitID)
		for range b.Messages() {
			t.Fatal("a heartbeat has no messages")
		}
	}
}

// TestAliasing: the decoded messages share one buffer, but appending to one
// cannot overwrite the next.
func TestAliasing(t *testing.T) {
	b, err := proto.Marshal(&forestbusv1.GetMessagesResponse{Messages: [][]byte{[]byte("aa"), []byte("bb")}, NextId: 3})
	require.NoError(t, err)
	var m forestbusv1.GetMessagesResponse
	require.NoError(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &m))
	require.Len(t, m.Messages, 2)
	assert.Equal(t, len(m.Messages[0]), cap(m.Messages[0]))
	_ = append(m.Messages[0], 'X')
	assert.Equal(t, "bb", string(m.Messages[1]))
	assert.Equal(t, int64(3), m.NextId)
}

func FuzzMatchesProto(f *testing.F) {
	for _, b := range seeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check(t, b)
		checkBatch(t, b)
	})
}

// TestBytesAtMatchesNext: wherever bytesAt decodes a field, next decodes
// the same value and rest.
func TestBytesAtMatchesNext(t *testing.T) {
	inline := 0
	for _, b := range append(seeds(), bigSeeds()...) {
		for i := range b {
			v, rest, ok := bytesAt(b[i:], 0x0a)
			if !ok {
				continue
			}
			inline++
			f, frest, fok := next(b[i:])
			require.True(t, fok, "seed %x at %d", b, i)
			assert.Equal(t, protowire.Number(1), f.Num)
			assert.Equal(t, protowire.BytesType, f.Type)
			assert.Equal(t, f.Bytes, v)
			assert.Equal(t, len(v), cap(v), "capacity-limited")
			assert.Equal(t, len(frest), len(rest))
		}
	}
	assert.Greater(t, inline, 10)
	_, _, ok := bytesAt([]byte{0x12, 0x00}, 0x0a)
	assert.False(t, ok, "another tag")
	_, _, ok = bytesAt([]byte{0x0a, 0x00}, 0)
	assert.False(t, ok, "no one-byte tag")
	assert.Equal(t, byte(0x0a), oneByteTag(1))
	assert.Equal(t, byte(0x7a), oneByteTag(15))
	assert.Equal(t, byte(0), oneByteTag(16))
}

// zeros is n messages of size zero bytes each.
func zeros(n, size int) [][]byte {
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = make([]byte, size)
	}
	return msgs
}

func BenchmarkUnmarshalGetMessagesResponse(b *testing.B) {
	raw, err := proto.Marshal(&forestbusv1.GetMessagesResponse{Messages: zeros(500, 100), NextId: 501, CommitId: 1000})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		codec encoding.CodecV2
	}{{"stock", stock}, {"fast", Codec{}}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				var m forestbusv1.GetMessagesResponse
				if err := c.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(raw)}, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUnmarshalSubscribe: a 4,096-message stream response (the
// node's default batch) decoded into a SubscribeResponse and into a
// SubscribeBatch, and its messages visited.
func BenchmarkUnmarshalSubscribe(b *testing.B) {
	raw, err := proto.Marshal(&forestbusv1.SubscribeResponse{Messages: zeros(4096, 100), FirstId: 1, CommitId: 5000})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("response", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			var m forestbusv1.SubscribeResponse
			if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(raw)}, &m); err != nil {
				b.Fatal(err)
			}
			n := 0
			for _, msg := range m.GetMessages() {
				n += len(msg)
			}
			if n != 4096*100 {
				b.Fatal(n)
			}
		}
	})
	// A batch, copying the response whole, and borrowing it in the 16 KiB
	// pieces gRPC receives it in.
	for _, c := range []struct {
		name   string
		borrow bool
		data   mem.BufferSlice
	}{{"batch", false, mem.BufferSlice{mem.SliceBuffer(raw)}}, {"borrowed", true, split(raw, 16<<10)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				m := SubscribeBatch{Borrow: c.borrow}
				if err := (Codec{}).Unmarshal(c.data, &m); err != nil {
					b.Fatal(err)
				}
				n := 0
				for msg := range m.Messages() {
					n += len(msg)
				}
				if n != 4096*100 {
					b.Fatal(n)
				}
				m.Release()
			}
		})
	}
}

// wire is a WireMarshaler writing fixed bytes, announcing size.
type wire struct {
	data []byte
	size int
}

func (w wire) WireSize() int                       { return w.size }
func (w wire) AppendWire(b []byte) ([]byte, error) { return append(b, w.data...), nil }

// TestWireMarshaler: a WireMarshaler is sent as its own encoding, small or
// pooled, and a size that does not match what it writes is an error.
func TestWireMarshaler(t *testing.T) {
	for _, n := range []int{10, 100 << 10} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i)
		}
		bs, err := Codec{}.Marshal(wire{data, n})
		require.NoError(t, err, "size %d", n)
		assert.Equal(t, data, bs.Materialize(), "size %d", n)
		bs.Free()
		_, err = Codec{}.Marshal(wire{data, n + 1})
		assert.Error(t, err, "size %d announced one byte long", n)
	}
}

// TestMarshalPooled: a proto message above the pooling threshold is encoded
// into a buffer of the module's pool (the 1.5 MiB tier for a 1.53 MB answer;
// grpc-go's pool would size it exactly, and clear it), byte for byte what
// proto.Marshal writes.
func TestMarshalPooled(t *testing.T) {
	msgs := make([][]byte, 15000)
	for i := range msgs {
		msgs[i] = []byte(fmt.Sprintf("%0100d", i))
	}
	m := &forestbusv1.GetMessagesResponse{Messages: msgs, NextId: 15001, CommitId: 20000}
	want, err := proto.Marshal(m)
	require.NoError(t, err)
	for range 3 { // the second and third reuse the pool's buffer
		got, err := Codec{}.Marshal(m)
		require.NoError(t, err)
		require.Len(t, got, 1)
		assert.Equal(t, 3<<19, cap(got[0].ReadOnlyData()))
		assert.Equal(t, string(want), string(got.Materialize()))
		got.Free()
	}
}

// TestSendMessagesCap: of a batch of more than MaxSendMessages messages,
// decoding keeps MaxSendMessages+1 (the service refuses it as too large),
// not the millions a request of tiny messages can carry at ~24 bytes of
// memory each; the stock path, which would keep them all, refuses it.
func TestSendMessagesCap(t *testing.T) {
	req := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte("t"))
	for range MaxSendMessages + 5 {
		req = protowire.AppendBytes(protowire.AppendTag(req, 2, protowire.BytesType), nil)
	}
	var m forestbusv1.SendMessagesRequest
	require.NoError(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(req)}, &m))
	assert.Equal(t, MaxSendMessages+1, len(m.GetMessages()))
	assert.Equal(t, "t", m.GetTopic())

	prod := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), req)
	var p forestbusv1.ProduceRequest
	require.NoError(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(prod)}, &p))
	assert.Equal(t, MaxSendMessages+1, len(p.GetBatch().GetMessages()))

	// An unknown field sends a message down the stock path.
	odd := protowire.AppendVarint(protowire.AppendTag(append([]byte(nil), req...), 9, protowire.VarintType), 1)
	require.Error(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(odd)}, &m))
	odd = protowire.AppendVarint(protowire.AppendTag(append([]byte(nil), prod...), 9, protowire.VarintType), 1)
	require.Error(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(odd)}, &p))
}

// TestUnmarshalNonUTF8String: a request whose string field is not UTF-8
// decodes with U+FFFD for the bad bytes (the handler then refuses the
// name), every other field as sent, in any order; a well-formed one, and
// one malformed otherwise, decode as proto.Unmarshal has them.
func TestUnmarshalNonUTF8String(t *testing.T) {
	b := protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 7)
	b = protowire.AppendBytes(protowire.AppendTag(b, 1, protowire.BytesType), []byte("a\xffb\xfe"))
	b = protowire.AppendVarint(protowire.AppendTag(b, 3, protowire.VarintType), 9)
	var req forestbusv1.GetMessagesRequest
	require.NoError(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &req))
	assert.Equal(t, "a\uFFFDb\uFFFD", req.GetTopic())
	assert.Equal(t, int64(7), req.GetId())
	assert.Equal(t, int32(9), req.GetQuantity())

	good, err := proto.Marshal(&forestbusv1.GetMessagesRequest{Topic: "t", Id: 3, Quantity: 4})
	require.NoError(t, err)
	require.NoError(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(good)}, &req))
	assert.True(t, proto.Equal(&forestbusv1.GetMessagesRequest{Topic: "t", Id: 3, Quantity: 4}, &req))

	cut := b[:len(b)-1] // the quantity's varint cut off: no repair hides it
	assert.Error(t, Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(cut)}, &req))
}
