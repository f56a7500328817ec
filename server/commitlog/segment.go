package commitlog

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

const (
	segmentSuffix = ".log"
	// indexInterval is the spacing of sparse index points within a segment.
	indexInterval = 4096
	// spanSize bounds the bytes read to scan headers from one index point:
	// every record between two points starts less than indexInterval bytes
	// after the first.
	spanSize = indexInterval + recHeaderSize
)

// indexPoint locates one record: its raft index, first message id and offset.
type indexPoint struct {
	index   uint64
	firstID uint64
	off     int64
}

// segment is one file of records. Fields are written only by the owner
// goroutine while holding Log.mu for writing.
type segment struct {
	first  uint64 // raft index of the first record (the file's name)
	last   uint64 // raft index of the last record; first-1 when empty
	size   int64  // bytes of valid records
	alloc  int64  // bytes of the file allocated (records, then preallocation); >= size when preallocating
	f      *os.File
	path   string
	points []indexPoint // sparse index; points[0] is the first record
	dirty  bool         // written since the last fsync
	// dropped: the page cache of [0, dropped) was dropped; flushing: the
	// writeback of [0, flushing) was started (NoSync). Log.dropCache;
	// owner-only.
	dropped, flushing int64
	// held is the end of the records, [size-len(held), size), kept in
	// memory and not yet written to f (a journaled log's write-behind,
	// see holdBytes). Only the last segment holds records.
	held []byte
	// startTable is the encoded dedup table as of the segment's first
	// record (as meta's baseTable is of the log's), so that DeleteBefore
	// need not read the segments it deletes to find the table at the new
	// start; nil when too large to keep (segmentTableMax). Owner-only.
	startTable []byte
}

// segmentTableMax is the largest dedup table a segment keeps in memory
// (startTable): about 5,000 producers of one batch, 800 of 64 or more.
// tableBytes counts the tables the process's segments keep, and no new one
// is kept while it is past tableBudget (a variable for tests): a node of
// many topics, of many segments each, keeps them for the first segments it
// made and replays the headers for the rest, as DeleteBefore did for all.
const segmentTableMax = 1 << 20

var (
	tableBytes  atomic.Int64
	tableBudget int64 = 64 << 20
)

// tableAt returns the encoding of t to keep as a segment's startTable, or
// nil when it is larger than segmentTableMax.
func tableAt(t *dedupTable) []byte {
	if len(t.producers)*dedupProducerFixed > segmentTableMax || tableBytes.Load() >= tableBudget {
		return nil
	}
	b := t.encode(nil)
	if len(b) > segmentTableMax {
		return nil
	}
	tableBytes.Add(int64(len(b)))
	return b
}

// close closes s's file and lets its startTable go.
func (s *segment) close() error {
	tableBytes.Add(-int64(len(s.startTable)))
	s.startTable = nil
	return s.f.Close()
}

func (s *segment) empty() bool { return s.last < s.first }

// readAt fills p with s's records from offset off: from the file, and from
// held past what the file has. The caller holds Log.mu or owns the log.
func (s *segment) readAt(p []byte, off int64) error {
	w := s.size - int64(len(s.held)) // end of the records in the file
	n := 0
	if off < w {
		k := min(int64(len(p)), w-off)
		m, err := s.f.ReadAt(p[:k], off)
		if int64(m) < k {
			return fmt.Errorf("commitlog: read %s at %d: %w", s.path, off, err)
		}
		n = m
	}
	if n < len(p) {
		rel := off + int64(n) - w
		if rel < 0 || rel+int64(len(p)-n) > int64(len(s.held)) {
			return fmt.Errorf("commitlog: read %s at %d: %w", s.path, off, io.ErrUnexpectedEOF)
		}
		copy(p[n:], s.held[rel:])
	}
	return nil
}

func segmentName(first uint64) string { return fmt.Sprintf("%020d%s", first, segmentSuffix) }

func parseSegmentName(name string) (uint64, bool) {
	if len(name) != 20+len(segmentSuffix) || !strings.HasSuffix(name, segmentSuffix) {
		return 0, false
	}
	n, err := strconv.ParseUint(name[:20], 10, 64)
	return n, err == nil && n > 0
}

// listSegments returns the first indexes of the segment files in dir, sorted.
func listSegments(dir string) ([]uint64, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("commitlog: list segments: %w", err)
	}
	var out []uint64
	for _, de := range des {
		if n, ok := parseSegmentName(de.Name()); ok && de.Type().IsRegular() {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

func createSegment(dir string, first uint64) (*segment, error) {
	path := filepath.Join(dir, segmentName(first))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("commitlog: create segment: %w", err)
	}
	return &segment{first: first, last: first - 1, f: f, path: path}, nil
}

// errTorn marks a record that is incomplete or fails validation.
var errTorn = errors.New("torn or corrupt record")

// scanSegment reads every record of s.f, validating CRC, index contiguity,
// message id contiguity and the message count. It fills s.points, s.last and
// s.size with the valid prefix and returns the next message id. A bad record
// stops the scan and is reported with errTorn (s reflects the valid prefix).
// Each record's dedup verdict is derived again (l.dedup) and must match its
// stored count; a mismatch is reported as ErrCorrupt. Duplicates are
// recorded in l.dups.
func (l *Log) scanSegment(s *segment, nextID uint64) (uint64, error) {
	runs := &l.terms
	fi, err := s.f.Stat()
	if err != nil {
		return nextID, fmt.Errorf("commitlog: stat segment: %w", err)
	}
	fileSize := fi.Size()
	r := bufio.NewReaderSize(io.NewSectionReader(s.f, 0, fileSize), 1<<20)
	var hdr [recHeaderSize]byte
	var data []byte
	var off int64
	lastPoint := int64(-indexInterval)
	expect := s.first
	for off < fileSize {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nextID, errTorn
			}
			return nextID, fmt.Errorf("commitlog: read segment: %w", err)
		}
		h := parseHeader(hdr[:])
		if h.length < recRestSize || h.size() > fileSize-off || h.index != expect ||
			h.firstID != nextID || !validEntryType(h.typ) {
			return nextID, errTorn
		}
		n := h.dataLen()
		if cap(data) < n {
			data = make([]byte, n)
		}
		data = data[:n]
		if _, err := io.ReadFull(r, data); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nextID, errTorn
			}
			return nextID, fmt.Errorf("commitlog: read segment: %w", err)
		}
		crc := crc32.Update(crc32.Checksum(hdr[recPrefixSize:], castagnoli), castagnoli, data)
		if crc != h.crc {
			return nextID, errTorn
		}
		cnt, err := entryCount(entryTypeOf(h.typ), data)
		if err != nil || (cnt != h.count && h.count != 0) {
			return nextID, errTorn
		}
		ids := l.dedup.apply(h.index, data, cnt, nextID, h.index > l.hs.cur.commit)
		if ids.Next-nextID != uint64(h.count) {
			return nextID, fmt.Errorf("%w: %s: dedup verdict of entry %d (duplicate %v) differs from its stored count %d",
				ErrCorrupt, s.path, h.index, ids.Dup, h.count)
		}
		if ids.Dup {
			l.dups = append(l.dups, dupRec{index: h.index, firstID: ids.FirstID, count: ids.Count})
		}
		if off-lastPoint >= indexInterval {
			s.points = append(s.points, indexPoint{index: h.index, firstID: nextID, off: off})
			lastPoint = off
		}
		addTerm(runs, h.index, h.term)
		nextID += uint64(h.count)
		off += h.size()
		s.last, s.size = h.index, off
		expect++
	}
	return nextID, nil
}

// zeroTail reports whether every byte of s's file after its valid records
// is zero: what preallocation leaves, as opposed to a torn or corrupt record.
func zeroTail(s *segment) (bool, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(s.f, s.size, math.MaxInt64-s.size), 1<<20)
	for {
		b, err := r.ReadByte()
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("commitlog: read segment: %w", err)
		}
		if b != 0 {
			return false, nil
		}
	}
}

// termRun says entries from start on have term (until the next run).
type termRun struct{ start, term uint64 }

func addTerm(runs *[]termRun, index, term uint64) {
	if rs := *runs; len(rs) == 0 || rs[len(rs)-1].term != term {
		*runs = append(rs, termRun{start: index, term: term})
	}
}

var spanPool = sync.Pool{New: func() any { b := make([]byte, spanSize); return &b }}

// scanSpan reads the headers following point p in s and calls match on each
// until it returns true; it returns that record's offset and header. The
// target must lie before the next index point.
func scanSpan(s *segment, p indexPoint, match func(*recHeader) bool) (int64, recHeader, error) {
	bp := spanPool.Get().(*[]byte)
	defer spanPool.Put(bp)
	buf := *bp
	want := min(int64(len(buf)), s.size-p.off)
	if err := s.readAt(buf[:want], p.off); err != nil {
		return 0, recHeader{}, err
	}
	if off, h, ok := matchHeader(buf[:want], p.off, match); ok {
		return off, h, nil
	}
	return 0, recHeader{}, fmt.Errorf("commitlog: index inconsistent with %s near offset %d", s.path, p.off)
}

// matchHeader walks the record headers in buf, read from file offset base,
// until match returns true, and returns that record's offset and header.
func matchHeader(buf []byte, base int64, match func(*recHeader) bool) (int64, recHeader, bool) {
	for pos := 0; pos+recHeaderSize <= len(buf); {
		h := parseHeader(buf[pos:])
		if h.length < recRestSize {
			break
		}
		if match(&h) {
			return base + int64(pos), h, true
		}
		pos += int(h.size())
	}
	return 0, recHeader{}, false
}
