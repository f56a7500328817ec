package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"time"
)

// The retention floor is the first message id readers may see. Retention
// is decided by the topic's leader and replicated as a log entry, so every
// replica moves its floor to the same id, whatever its segment boundaries;
// whole segments below the floor are then deleted (DeleteBefore). The floor
// is kept in the file "floor": u64 LE id, u32 LE crc32c of the id; written
// to a temporary file, synced and renamed.

const floorName = "floor"

func readFloor(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, floorName))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.LittleEndian.Uint32(b[8:]) {
		return 0, fmt.Errorf("%w: floor file damaged", ErrCorrupt)
	}
	return binary.LittleEndian.Uint64(b), nil
}

func writeFloor(dir string, id uint64) error {
	var b [12]byte
	binary.LittleEndian.PutUint64(b[:8], id)
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b[:8], castagnoli))
	return writeFileSynced(dir, floorName, b[:])
}

// SetFloor raises the retention floor to id (never lowers it, never past
// the next id): messages below it are no longer readable. Durable before it
// returns. Owner goroutine only.
func (l *Log) SetFloor(id uint64) error {
	if err := l.writable(); err != nil {
		return err
	}
	l.mu.RLock()
	cur, next := l.floor, l.nextID
	l.mu.RUnlock()
	id = min(id, next)
	if id <= cur {
		return nil
	}
	if err := writeFloor(l.dir, id); err != nil {
		return l.fence(fmt.Errorf("commitlog: write floor: %w", err))
	}
	l.mu.Lock()
	l.floor = id
	l.mu.Unlock()
	return nil
}

// SegmentInfo describes one segment file, for retention decisions.
type SegmentInfo struct {
	FirstIndex, LastIndex uint64 // raft indexes; LastIndex = FirstIndex-1 when empty
	FirstID               uint64 // id of its first message (or the next id, when it holds none)
	Bytes                 int64
	Modified              time.Time
}

// Segments describes the log's segments, oldest first.
func (l *Log) Segments() []SegmentInfo {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]SegmentInfo, 0, len(l.segs))
	for _, s := range l.segs {
		si := SegmentInfo{FirstIndex: s.first, LastIndex: s.last, Bytes: s.size, FirstID: l.nextID}
		if len(s.points) > 0 {
			si.FirstID = s.points[0].firstID
		}
		if fi, err := s.f.Stat(); err == nil {
			si.Modified = fi.ModTime()
		}
		out = append(out, si)
	}
	return out
}
