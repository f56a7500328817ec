package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/internal/flushhook"
)

const (
	metaName    = "meta"
	metaTmpName = "meta.tmp"
	metaMagic   = "FBCL"
	metaVersion = 2
	metaFixed   = 4 + 1 + 8 + 8 + 8 + 4 // magic, version, first index, prev term, first id, cs length
)

// logStart describes where the retained log begins.
type logStart struct {
	firstIndex uint64 // raft index of the first retained entry
	prevTerm   uint64 // term of firstIndex-1
	firstID    uint64 // message id of the first message at or after firstIndex
}

// encodeMeta encodes version 2: version 1's fields, then u32 length and the
// dedup table as of the log start (encoded, see dedup.go).
func encodeMeta(st logStart, cs *pb.ConfState, table []byte) ([]byte, error) {
	csb, err := proto.Marshal(cs)
	if err != nil {
		return nil, fmt.Errorf("commitlog: encode confstate: %w", err)
	}
	b := make([]byte, 0, metaFixed+len(csb)+4+len(table)+4)
	b = append(b, metaMagic...)
	b = append(b, metaVersion)
	b = binary.LittleEndian.AppendUint64(b, st.firstIndex)
	b = binary.LittleEndian.AppendUint64(b, st.prevTerm)
	b = binary.LittleEndian.AppendUint64(b, st.firstID)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(csb)))
	b = append(b, csb...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(table)))
	b = append(b, table...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	return b, nil
}

var errBadMeta = errors.New("commitlog: corrupt meta file")

// decodeMeta decodes versions 1 (no dedup table: empty) and 2. The table is
// returned encoded; it is not validated here.
func decodeMeta(b []byte) (logStart, *pb.ConfState, []byte, error) {
	if len(b) < metaFixed+4 || string(b[:4]) != metaMagic {
		return logStart{}, nil, nil, errBadMeta
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return logStart{}, nil, nil, errBadMeta
	}
	if b[4] != 1 && b[4] != metaVersion {
		return logStart{}, nil, nil, fmt.Errorf("commitlog: unsupported meta version %d", b[4])
	}
	st := logStart{
		firstIndex: binary.LittleEndian.Uint64(b[5:13]),
		prevTerm:   binary.LittleEndian.Uint64(b[13:21]),
		firstID:    binary.LittleEndian.Uint64(b[21:29]),
	}
	n := binary.LittleEndian.Uint32(b[29:33])
	rest := body[metaFixed:]
	if uint64(n) > uint64(len(rest)) || st.firstIndex == 0 || st.firstID == 0 {
		return logStart{}, nil, nil, errBadMeta
	}
	csb, rest := rest[:n], rest[n:]
	table := emptyDedupTable
	if b[4] == 1 {
		if len(rest) != 0 {
			return logStart{}, nil, nil, errBadMeta
		}
	} else {
		if len(rest) < 4 || uint64(binary.LittleEndian.Uint32(rest)) != uint64(len(rest)-4) {
			return logStart{}, nil, nil, errBadMeta
		}
		table = rest[4:]
	}
	cs := &pb.ConfState{}
	if err := proto.Unmarshal(csb, cs); err != nil {
		return logStart{}, nil, nil, fmt.Errorf("commitlog: decode confstate: %w", err)
	}
	return st, cs, table, nil
}

func readMeta(dir string) (logStart, *pb.ConfState, []byte, bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, metaName))
	if errors.Is(err, os.ErrNotExist) {
		return logStart{firstIndex: 1, firstID: 1}, &pb.ConfState{}, emptyDedupTable, false, nil
	}
	if err != nil {
		return logStart{}, nil, nil, false, fmt.Errorf("commitlog: read meta: %w", err)
	}
	st, cs, table, err := decodeMeta(b)
	return st, cs, table, true, err
}

// writeMeta replaces the meta file atomically and durably: write a temporary
// file, fsync it, rename it over meta, fsync the directory. It always fsyncs
// (also with NoSync): the ordering of retention relies on it, and it is rare.
func writeMeta(dir string, st logStart, cs *pb.ConfState, table []byte) error {
	b, err := encodeMeta(st, cs, table)
	if err != nil {
		return err
	}
	if err := writeFileSynced(dir, metaName, b); err != nil {
		return fmt.Errorf("commitlog: write meta: %w", err)
	}
	return nil
}

// writeFileSynced replaces dir/name atomically and durably: it writes
// name.tmp, fsyncs it, renames it over name and fsyncs the directory.
// WriteFileSynced replaces dir/name with data durably: written to a
// temporary name and fsynced, renamed, and dir fsynced; a crash leaves the
// old file or the new one, whole.
func WriteFileSynced(dir, name string, data []byte) error { return writeFileSynced(dir, name, data) }

func writeFileSynced(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err = f.Write(data); err == nil {
		if err = f.Sync(); err == nil {
			flushhook.Flushed(f, "")
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// MkdirAll is os.MkdirAll that makes dir's path durable: after creating a
// directory it fsyncs the parent, so that a power loss cannot drop the new
// name, and with it every file synced inside. The first MkdirAll of a
// process on a filesystem syncs that filesystem first (startSync): a path
// found rather than created may have names no sync covered. Open and
// OpenJournal create their directories with it; a node creates the
// directories above them with it too.
func MkdirAll(dir string) error {
	dir = filepath.Clean(dir)
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("commitlog: %s is not a directory", d)
			}
			if err := startSync(d); err != nil {
				return err
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || filepath.Dir(d) == d {
			return err
		}
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := syncDir(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

// syncDir makes dir's entries durable; tests watch it.
var syncDir = syncDirOS

func syncDirOS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("commitlog: sync dir: %w", err)
	}
	err = d.Sync()
	if err == nil {
		flushhook.Flushed(nil, dir)
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("commitlog: sync dir: %w", err)
	}
	return nil
}
