package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

const (
	metaName    = "meta"
	metaTmpName = "meta.tmp"
	metaMagic   = "FBCL"
	metaVersion = 1
	metaFixed   = 4 + 1 + 8 + 8 + 8 + 4 // magic, version, first index, prev term, first id, cs length
)

// logStart describes where the retained log begins.
type logStart struct {
	firstIndex uint64 // raft index of the first retained entry
	prevTerm   uint64 // term of firstIndex-1
	firstID    uint64 // message id of the first message at or after firstIndex
}

func encodeMeta(st logStart, cs *pb.ConfState) ([]byte, error) {
	csb, err := proto.Marshal(cs)
	if err != nil {
		return nil, fmt.Errorf("commitlog: encode confstate: %w", err)
	}
	b := make([]byte, 0, metaFixed+len(csb)+4)
	b = append(b, metaMagic...)
	b = append(b, metaVersion)
	b = binary.LittleEndian.AppendUint64(b, st.firstIndex)
	b = binary.LittleEndian.AppendUint64(b, st.prevTerm)
	b = binary.LittleEndian.AppendUint64(b, st.firstID)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(csb)))
	b = append(b, csb...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	return b, nil
}

var errBadMeta = errors.New("commitlog: corrupt meta file")

func decodeMeta(b []byte) (logStart, *pb.ConfState, error) {
	if len(b) < metaFixed+4 || string(b[:4]) != metaMagic {
		return logStart{}, nil, errBadMeta
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return logStart{}, nil, errBadMeta
	}
	if b[4] != metaVersion {
		return logStart{}, nil, fmt.Errorf("commitlog: unsupported meta version %d", b[4])
	}
	st := logStart{
		firstIndex: binary.LittleEndian.Uint64(b[5:13]),
		prevTerm:   binary.LittleEndian.Uint64(b[13:21]),
		firstID:    binary.LittleEndian.Uint64(b[21:29]),
	}
	n := binary.LittleEndian.Uint32(b[29:33])
	if uint64(n) != uint64(len(body)-metaFixed) || st.firstIndex == 0 || st.firstID == 0 {
		return logStart{}, nil, errBadMeta
	}
	cs := &pb.ConfState{}
	if err := proto.Unmarshal(body[metaFixed:], cs); err != nil {
		return logStart{}, nil, fmt.Errorf("commitlog: decode confstate: %w", err)
	}
	return st, cs, nil
}

func readMeta(dir string) (logStart, *pb.ConfState, bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, metaName))
	if errors.Is(err, os.ErrNotExist) {
		return logStart{firstIndex: 1, firstID: 1}, &pb.ConfState{}, false, nil
	}
	if err != nil {
		return logStart{}, nil, false, fmt.Errorf("commitlog: read meta: %w", err)
	}
	st, cs, err := decodeMeta(b)
	return st, cs, true, err
}

// writeMeta replaces the meta file atomically and durably: write a temporary
// file, fsync it, rename it over meta, fsync the directory. It always fsyncs
// (also with NoSync): the ordering of retention relies on it, and it is rare.
func writeMeta(dir string, st logStart, cs *pb.ConfState) error {
	b, err := encodeMeta(st, cs)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, metaTmpName)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("commitlog: write meta: %w", err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("commitlog: write meta: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, metaName)); err != nil {
		return fmt.Errorf("commitlog: write meta: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("commitlog: sync dir: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("commitlog: sync dir: %w", err)
	}
	return nil
}
