package commitlog

import (
	"encoding/binary"
	"hash/crc32"

	pb "go.etcd.io/raft/v3/raftpb"
)

const (
	recPrefixSize = 8                           // u32 length + u32 crc
	recRestSize   = 8 + 8 + 1 + 8 + 4           // index, term, type, first id, count
	recHeaderSize = recPrefixSize + recRestSize // 37
	maxRecordData = 1<<31 - recHeaderSize - 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type recHeader struct {
	length  uint32 // bytes after the 8-byte prefix (header rest + data)
	crc     uint32
	index   uint64
	term    uint64
	typ     uint8
	firstID uint64
	count   uint32
}

// size is the full size of the record on disk.
func (h *recHeader) size() int64 { return recPrefixSize + int64(h.length) }

func (h *recHeader) dataLen() int { return int(h.length) - recRestSize }

func parseHeader(b []byte) recHeader {
	_ = b[recHeaderSize-1]
	return recHeader{
		length:  binary.LittleEndian.Uint32(b[0:4]),
		crc:     binary.LittleEndian.Uint32(b[4:8]),
		index:   binary.LittleEndian.Uint64(b[8:16]),
		term:    binary.LittleEndian.Uint64(b[16:24]),
		typ:     b[24],
		firstID: binary.LittleEndian.Uint64(b[25:33]),
		count:   binary.LittleEndian.Uint32(b[33:37]),
	}
}

// appendRecord appends the framed record for e to dst.
func appendRecord(dst []byte, e *pb.Entry, firstID uint64, count uint32) []byte {
	data := e.GetData()
	start := len(dst)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(recRestSize+len(data)))
	dst = append(dst, 0, 0, 0, 0) // crc placeholder
	dst = binary.LittleEndian.AppendUint64(dst, e.GetIndex())
	dst = binary.LittleEndian.AppendUint64(dst, e.GetTerm())
	dst = append(dst, uint8(e.GetType()))
	dst = binary.LittleEndian.AppendUint64(dst, firstID)
	dst = binary.LittleEndian.AppendUint32(dst, count)
	dst = append(dst, data...)
	crc := crc32.Checksum(dst[start+recPrefixSize:], castagnoli)
	binary.LittleEndian.PutUint32(dst[start+4:start+8], crc)
	return dst
}

// entryCount returns the number of messages carried by an entry of type typ
// with payload data, validating KindMessages payloads fully.
func entryCount(typ pb.EntryType, data []byte) (uint32, error) {
	if typ != pb.EntryType_EntryNormal {
		return 0, nil
	}
	return validateBatch(data)
}

func validEntryType(t uint8) bool {
	return t <= uint8(pb.EntryType_EntryConfChangeV2)
}

func entryTypeOf(t uint8) pb.EntryType { return pb.EntryType(t) }
