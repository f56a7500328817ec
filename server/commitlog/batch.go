package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// KindMessages is the first byte of an entry payload that carries a batch of
// messages.
const KindMessages = 1

// BatchHeaderSize is the size of the fixed batch header that precedes the
// messages of a KindMessages payload.
const BatchHeaderSize = 29

// ErrBadBatch reports a KindMessages payload whose structure is invalid.
var ErrBadBatch = errors.New("commitlog: malformed message batch")

// BatchSize returns the encoded size of a batch holding msgs.
func BatchSize(msgs [][]byte) int {
	n := BatchHeaderSize
	for _, m := range msgs {
		n += uvarintLen(uint64(len(m))) + len(m)
	}
	return n
}

// EncodeBatch appends the batch encoding of msgs to dst and returns it. When
// dst is nil exactly one buffer of the exact size is allocated.
//
// Layout (raft Entry.Data for EntryNormal entries that carry messages):
//
//	[0]      u8  kind = KindMessages
//	[1:9]    u64 LE proposal tag (opaque to this package)
//	[9:17]   u64 LE producer id (0 = none)
//	[17:25]  u64 LE producer sequence
//	[25:29]  u32 LE number of messages
//	then, per message, uvarint length followed by the bytes.
func EncodeBatch(dst []byte, tag, producerID, producerSeq uint64, msgs [][]byte) []byte {
	size := BatchSize(msgs)
	if dst == nil {
		dst = make([]byte, 0, size)
	} else if cap(dst)-len(dst) < size {
		nd := make([]byte, len(dst), len(dst)+size)
		copy(nd, dst)
		dst = nd
	}
	dst = append(dst, KindMessages)
	dst = binary.LittleEndian.AppendUint64(dst, tag)
	dst = binary.LittleEndian.AppendUint64(dst, producerID)
	dst = binary.LittleEndian.AppendUint64(dst, producerSeq)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(msgs)))
	for _, m := range msgs {
		dst = binary.AppendUvarint(dst, uint64(len(m)))
		dst = append(dst, m...)
	}
	return dst
}

// BatchTag returns the proposal tag of a KindMessages payload. ok is false
// when data is not a KindMessages payload.
func BatchTag(data []byte) (tag uint64, ok bool) {
	if len(data) < BatchHeaderSize || data[0] != KindMessages {
		return 0, false
	}
	return binary.LittleEndian.Uint64(data[1:9]), true
}

// BatchProducer returns the producer id and sequence of a KindMessages
// payload. ok is false when data is not a KindMessages payload.
func BatchProducer(data []byte) (producerID, producerSeq uint64, ok bool) {
	if len(data) < BatchHeaderSize || data[0] != KindMessages {
		return 0, 0, false
	}
	return binary.LittleEndian.Uint64(data[9:17]), binary.LittleEndian.Uint64(data[17:25]), true
}

// BatchCount returns the number of messages in an entry payload. Payloads that
// are empty or whose kind is not KindMessages hold no messages (0, nil). For a
// KindMessages payload only the header is checked (cheap); it returns
// ErrBadBatch if the header is short or the count cannot fit in the payload.
// It never panics.
func BatchCount(data []byte) (uint32, error) {
	if len(data) == 0 || data[0] != KindMessages {
		return 0, nil
	}
	if len(data) < BatchHeaderSize {
		return 0, ErrBadBatch
	}
	n := binary.LittleEndian.Uint32(data[25:29])
	// Every message takes at least one byte (its length).
	if uint64(n) > uint64(len(data)-BatchHeaderSize) {
		return 0, ErrBadBatch
	}
	return n, nil
}

// DecodeBatch appends the messages of a KindMessages payload to dst. The
// messages are sub-slices of data (capacity-limited). Payloads of another
// kind yield no messages. It validates the whole structure and never panics.
func DecodeBatch(dst [][]byte, data []byte) ([][]byte, error) {
	n, err := BatchCount(data)
	if err != nil || n == 0 {
		if err == nil && len(data) > 0 && data[0] == KindMessages && len(data) != BatchHeaderSize {
			return dst, ErrBadBatch
		}
		return dst, err
	}
	p := data[BatchHeaderSize:]
	for i := uint32(0); i < n; i++ {
		l, k := binary.Uvarint(p)
		if k <= 0 || l > uint64(len(p)-k) {
			return dst, ErrBadBatch
		}
		end := k + int(l)
		dst = append(dst, p[k:end:end])
		p = p[end:]
	}
	if len(p) != 0 {
		return dst, ErrBadBatch
	}
	return dst, nil
}

// validateBatch fully checks a KindMessages payload without allocating and
// returns its message count.
func validateBatch(data []byte) (uint32, error) {
	n, err := BatchCount(data)
	if err != nil || len(data) == 0 || data[0] != KindMessages {
		return n, err
	}
	p := data[BatchHeaderSize:]
	for i := uint32(0); i < n; i++ {
		l, k := binary.Uvarint(p)
		if k <= 0 || l > uint64(len(p)-k) {
			return 0, ErrBadBatch
		}
		p = p[k+int(l):]
	}
	if len(p) != 0 {
		return 0, ErrBadBatch
	}
	return n, nil
}

// Snapshot data (raftpb.Snapshot.Data) layout, version 2:
//
//	[0]    u8 version (2)
//	[1:9]  u64 LE next message id at the snapshot index
//	[9:]   the dedup table at the snapshot index (see dedup.go); absent in
//	       version 1, which means an empty table
//
// Every version starts with the same 9 bytes.
const snapshotDataVersion = 2

// EncodeSnapshotData appends snapshot data carrying nextID and an empty
// dedup table to dst. Log.Snapshot carries the log's table.
func EncodeSnapshotData(dst []byte, nextID uint64) []byte {
	return encodeSnapshotData(dst, nextID, emptyDedupTable)
}

// snapshotHeaderBytes is the snapshot data's version and next id.
const snapshotHeaderBytes = 1 + 8

func encodeSnapshotData(dst []byte, nextID uint64, table []byte) []byte {
	dst = append(dst, snapshotDataVersion)
	dst = binary.LittleEndian.AppendUint64(dst, nextID)
	return append(dst, table...)
}

// DecodeSnapshotData returns the next message id carried by snapshot data
// (any version, also later ones).
func DecodeSnapshotData(data []byte) (nextID uint64, err error) {
	if len(data) >= 9 && data[0] > snapshotDataVersion {
		var v1 [9]byte // read the common prefix only
		copy(v1[:], data)
		v1[0] = 1
		data = v1[:]
	}
	nextID, _, err = decodeSnapshotData(data)
	return nextID, err
}

// decodeSnapshotData returns the next id and the encoded dedup table (not
// validated; a sub-slice of data).
func decodeSnapshotData(data []byte) (nextID uint64, table []byte, err error) {
	if len(data) < 9 || data[0] == 0 {
		return 0, nil, errors.New("commitlog: malformed snapshot data")
	}
	nextID = binary.LittleEndian.Uint64(data[1:9])
	if nextID == 0 || nextID == math.MaxUint64 {
		return 0, nil, errors.New("commitlog: malformed snapshot data")
	}
	switch data[0] {
	case 1:
		table = emptyDedupTable
	case 2:
		table = data[9:]
	default:
		return 0, nil, fmt.Errorf("commitlog: unsupported snapshot data version %d", data[0])
	}
	return nextID, table, nil
}

func uvarintLen(x uint64) int {
	return (bits.Len64(x|1) + 6) / 7
}
