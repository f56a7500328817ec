package commitlog

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
)

// Idempotent appends: the dedup table.
//
// The table maps a producer id to the state of its recent batches. It is a
// pure function of the log prefix (seeded at the log start by the table
// stored in meta or carried by a snapshot), so every replica derives the same
// verdict for every entry. See the package documentation, "Idempotent
// appends".

const (
	// DedupSeqWindow is the span of producer sequence numbers, counted
	// back from the highest one stored, within which the table remembers
	// exactly which sequences are stored (a bitmap). A batch whose
	// sequence lies further back cannot be told apart from a new one and
	// is stored: a lost message is worse than a duplicate (at least once).
	DedupSeqWindow = 64
	// DedupIDWindow is the number of most recent stored batches per
	// producer whose ids are remembered, so that a duplicate of one of them
	// is answered with its original ids. As large as the sequence window:
	// a client whose sequences in flight to a topic span less than 32
	// (the Go client's bound) has every retry answered.
	DedupIDWindow = 64
)

// The table's bound. A table that reaches dedupMaxProducers+dedupEvictSlack
// producers when a new one stores its first batch forgets all but the
// dedupMaxProducers that stored a batch most recently (by the first id of
// their newest stored batch), then adds the new one. So a producer is
// remembered at least until dedupMaxProducers other producers have stored a
// batch after its newest one; a forgotten producer that sends again is
// treated as new, like a sequence older than DedupSeqWindow: its batch is
// stored (at least once). Like every verdict this is a pure function of the
// log prefix, so the bound is part of the replicated format: every replica
// of a topic must apply the same one. Variables only so that tests can make
// them small.
var (
	dedupMaxProducers = 8192
	dedupEvictSlack   = 1024
)

// MaxSnapshotDataBytes bounds the data of a Log's Snapshot: its header and
// the largest dedup table the bound above lets a log hold (every producer
// remembering DedupIDWindow batches), about 11.5 MiB. A node's receive
// limit must hold it: raft sends a snapshot as one message.
func MaxSnapshotDataBytes() int {
	return snapshotHeaderBytes + 4 + (dedupMaxProducers+dedupEvictSlack)*(dedupProducerFixed+DedupIDWindow*dedupRecSize)
}

// dedupRec is one remembered batch: sequence and ids.
type dedupRec struct {
	seq     uint64
	firstID uint64
	count   uint32
}

// producerState is what the table keeps per producer.
type producerState struct {
	lastSeq uint64 // highest stored sequence
	// bits: bit d set means sequence lastSeq-d is stored (d < DedupSeqWindow).
	bits uint64
	// recs: the last stored batches, oldest first until there are
	// DedupIDWindow of them, then a ring whose oldest is at head. It grows
	// as the producer stores batches: a short-lived producer (a client per
	// request) keeps one or two, not 64.
	recs []dedupRec
	head uint8
}

// verdict of a batch with sequence seq: dup tells whether it is stored
// already; rec and known give the original ids when remembered.
func (p *producerState) verdict(seq uint64) (dup bool, rec dedupRec, known bool) {
	if seq > p.lastSeq {
		return false, dedupRec{}, false
	}
	d := p.lastSeq - seq
	if d >= DedupSeqWindow {
		return false, dedupRec{}, false // too old to tell: store it
	}
	if p.bits&(1<<d) == 0 {
		return false, dedupRec{}, false // a gap: never stored
	}
	for _, r := range p.recs {
		if r.seq == seq {
			return true, r, true
		}
	}
	return true, dedupRec{}, false
}

// record marks r as stored (r.seq must not be a duplicate).
func (p *producerState) record(r dedupRec) {
	if r.seq > p.lastSeq {
		shift := r.seq - p.lastSeq
		if shift >= DedupSeqWindow {
			p.bits = 0
		} else {
			p.bits <<= shift
		}
		p.bits |= 1
		p.lastSeq = r.seq
	} else {
		p.bits |= 1 << (p.lastSeq - r.seq)
	}
	if len(p.recs) < DedupIDWindow {
		p.recs = append(p.recs, r)
		return
	}
	p.recs[p.head] = r
	p.head = (p.head + 1) % DedupIDWindow
}

// ordered returns the remembered records, oldest first.
func (p *producerState) ordered(dst []dedupRec) []dedupRec {
	dst = append(dst, p.recs[p.head:]...)
	return append(dst, p.recs[:p.head]...)
}

// newest is the first id of the producer's most recently stored batch: its
// rank for eviction (no two stored batches share a first id).
func (p *producerState) newest() uint64 {
	return p.recs[(int(p.head)+len(p.recs)-1)%len(p.recs)].firstID
}

// dedupUndo restores a producer's state when the entry at index is
// truncated: for a producer the entry added, none; for one it recorded a
// batch of, the fields record changed and the slot it overwrote (not the
// whole state: up to 64 slots, copied for every batch); for one it
// evicted, the state itself, out of the table since.
type dedupUndo struct {
	index   uint64
	pid     uint64
	kind    uint8 // undoAdded, undoRecorded, undoEvicted
	n, head uint8 // len(recs) and head before the record
	lastSeq uint64
	bits    uint64
	slot    dedupRec       // recs[head] before the record, when recs was full
	evicted *producerState // undoEvicted
}

const (
	undoAdded = iota
	undoRecorded
	undoEvicted
)

// dedupTable is the owner-only dedup state of a Log.
type dedupTable struct {
	producers map[uint64]*producerState
	// undo holds one record per stored producer batch above the commit
	// index, in index order, so that suffix truncation can roll the table
	// back. Records at or below the commit index are dropped (trim):
	// such entries are never truncated.
	undo []dedupUndo
}

func newDedupTable() *dedupTable {
	return &dedupTable{producers: make(map[uint64]*producerState)}
}

// apply derives the ids of entry index given the next id before it. typ
// and data are the entry's; n is its validated message count. track records
// an undo record for a stored producer batch.
func (t *dedupTable) apply(index uint64, data []byte, n uint32, nextID uint64, track bool) EntryIDs {
	ids := EntryIDs{Index: index, FirstID: nextID, Count: n, Next: nextID + uint64(n)}
	if n == 0 {
		return ids // no messages: no ids to protect, never deduplicated
	}
	pid, seq, ok := BatchProducer(data)
	if !ok || pid == 0 {
		return ids
	}
	p := t.producers[pid]
	if p != nil {
		if dup, r, known := p.verdict(seq); dup {
			ids.Dup, ids.FirstID, ids.Count, ids.Next = true, 0, 0, nextID
			if known {
				ids.FirstID, ids.Count = r.firstID, r.count
			}
			return ids
		}
	}
	if p == nil {
		if len(t.producers) >= dedupMaxProducers+dedupEvictSlack {
			t.evict(index, track)
		}
		p = &producerState{}
		t.producers[pid] = p
		if track {
			t.undo = append(t.undo, dedupUndo{index: index, pid: pid, kind: undoAdded})
		}
	} else if track {
		u := dedupUndo{index: index, pid: pid, kind: undoRecorded,
			n: uint8(len(p.recs)), head: p.head, lastSeq: p.lastSeq, bits: p.bits}
		if len(p.recs) == DedupIDWindow {
			u.slot = p.recs[p.head]
		}
		t.undo = append(t.undo, u)
	}
	p.record(dedupRec{seq: seq, firstID: nextID, count: n})
	return ids
}

// evict forgets all but the dedupMaxProducers producers whose newest stored
// batch is the most recent, as part of applying entry index (with undo
// records when track is set; the entry's own, for the producer it adds,
// follows them). Ranks are distinct (no two stored batches share a first
// id); ties, which a valid table cannot have, fall to the producer id, so
// that map order never decides.
func (t *dedupTable) evict(index uint64, track bool) {
	type ranked struct{ newest, pid uint64 }
	all := make([]ranked, 0, len(t.producers))
	for pid, p := range t.producers {
		all = append(all, ranked{p.newest(), pid})
	}
	slices.SortFunc(all, func(a, b ranked) int {
		return cmp.Or(cmp.Compare(a.newest, b.newest), cmp.Compare(a.pid, b.pid))
	})
	for _, r := range all[:len(all)-dedupMaxProducers] {
		if track {
			t.undo = append(t.undo, dedupUndo{index: index, pid: r.pid, kind: undoEvicted, evicted: t.producers[r.pid]})
		}
		delete(t.producers, r.pid)
	}
}

// trim drops the undo records of entries at or below commit.
func (t *dedupTable) trim(commit uint64) {
	k := 0
	for k < len(t.undo) && t.undo[k].index <= commit {
		k++
	}
	if k > 0 {
		n := copy(t.undo, t.undo[k:])
		clear(t.undo[n:])
		t.undo = t.undo[:n]
	}
}

// rollback undoes the entries at index and above.
func (t *dedupTable) rollback(index uint64) {
	for len(t.undo) > 0 {
		u := &t.undo[len(t.undo)-1]
		if u.index < index {
			break
		}
		switch u.kind {
		case undoAdded:
			delete(t.producers, u.pid)
		case undoRecorded:
			p := t.producers[u.pid]
			if int(u.n) < len(p.recs) {
				p.recs = p.recs[:u.n] // the record appended
			} else {
				p.recs[u.head] = u.slot // the record overwrote it
			}
			p.head, p.lastSeq, p.bits = u.head, u.lastSeq, u.bits
		case undoEvicted:
			t.producers[u.pid] = u.evicted
		}
		*u = dedupUndo{} // let the evicted state go
		t.undo = t.undo[:len(t.undo)-1]
	}
}

// Table encoding, shared by meta (version 2) and snapshot data (version 2):
//
//	u32 number of producers, then per producer, by increasing producer id:
//	u64 producer id (non-zero)
//	u64 highest stored sequence
//	u64 bitmap: bit d set = sequence (highest - d) stored; bit 0 set
//	u8  n, number of remembered batches (<= DedupIDWindow)
//	n × { u64 sequence, u64 first id, u32 count }, oldest first
const (
	dedupProducerFixed = 8 + 8 + 8 + 1
	dedupRecSize       = 8 + 8 + 4
)

// encode appends the table's encoding to dst.
func (t *dedupTable) encode(dst []byte) []byte {
	pids := make([]uint64, 0, len(t.producers))
	for pid := range t.producers {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(pids)))
	var recs []dedupRec
	for _, pid := range pids {
		p := t.producers[pid]
		dst = binary.LittleEndian.AppendUint64(dst, pid)
		dst = binary.LittleEndian.AppendUint64(dst, p.lastSeq)
		dst = binary.LittleEndian.AppendUint64(dst, p.bits)
		dst = append(dst, uint8(len(p.recs)))
		recs = p.ordered(recs[:0])
		for _, r := range recs {
			dst = binary.LittleEndian.AppendUint64(dst, r.seq)
			dst = binary.LittleEndian.AppendUint64(dst, r.firstID)
			dst = binary.LittleEndian.AppendUint32(dst, r.count)
		}
	}
	return dst
}

var errBadDedupTable = errors.New("commitlog: malformed dedup table")

// decodeDedupTable decodes an encoded table; b must hold it exactly.
func decodeDedupTable(b []byte) (*dedupTable, error) {
	t := newDedupTable()
	if len(b) < 4 {
		return nil, errBadDedupTable
	}
	np := binary.LittleEndian.Uint32(b)
	b = b[4:]
	if uint64(np) > uint64(len(b))/dedupProducerFixed {
		return nil, errBadDedupTable
	}
	prev := uint64(0)
	for range np {
		if len(b) < dedupProducerFixed {
			return nil, errBadDedupTable
		}
		pid := binary.LittleEndian.Uint64(b)
		p := &producerState{
			lastSeq: binary.LittleEndian.Uint64(b[8:]),
			bits:    binary.LittleEndian.Uint64(b[16:]),
		}
		n := int(b[24])
		b = b[dedupProducerFixed:]
		// A producer is in the table only once it stored a batch: n >= 1
		// (newest, the eviction rank, reads the last one).
		if pid <= prev || p.bits&1 == 0 || n == 0 || n > DedupIDWindow || len(b) < n*dedupRecSize {
			return nil, errBadDedupTable
		}
		prev = pid
		p.recs = make([]dedupRec, n) // oldest first: head 0
		for i := range p.recs {
			p.recs[i] = dedupRec{
				seq:     binary.LittleEndian.Uint64(b),
				firstID: binary.LittleEndian.Uint64(b[8:]),
				count:   binary.LittleEndian.Uint32(b[16:]),
			}
			if p.recs[i].seq > p.lastSeq {
				return nil, errBadDedupTable
			}
			b = b[dedupRecSize:]
		}
		t.producers[pid] = p
	}
	if len(b) != 0 {
		return nil, errBadDedupTable
	}
	return t, nil
}

// emptyDedupTable is the encoding of a table with no producers.
var emptyDedupTable = []byte{0, 0, 0, 0}

// dupRec remembers the verdict of a duplicate entry in the retained log, so
// that IDs can report it after the entry is no longer the last one.
type dupRec struct {
	index   uint64
	firstID uint64 // original first id; 0 when unknown
	count   uint32 // original count
}

// findDup returns the dup record of index. Caller holds mu or is the owner.
func (l *Log) findDup(index uint64) (dupRec, bool) {
	k := sort.Search(len(l.dups), func(k int) bool { return l.dups[k].index >= index })
	if k < len(l.dups) && l.dups[k].index == index {
		return l.dups[k], true
	}
	return dupRec{}, false
}

// replayDedup applies the records of segment s to t, checking each verdict
// against the stored count. It reads headers and batch headers only.
func replayDedup(s *segment, t *dedupTable, nextID uint64) (uint64, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(s.f, 0, s.size), 256<<10)
	var hdr [recHeaderSize + BatchHeaderSize]byte
	for off := int64(0); off < s.size; {
		if _, err := io.ReadFull(r, hdr[:recHeaderSize]); err != nil {
			return nextID, fmt.Errorf("commitlog: replay %s: %w", s.path, err)
		}
		h := parseHeader(hdr[:])
		if h.length < recRestSize || h.firstID != nextID {
			return nextID, fmt.Errorf("%w: replay %s: bad record at offset %d", ErrCorrupt, s.path, off)
		}
		rest := h.dataLen()
		stored := h.count
		if entryTypeOf(h.typ) == 0 && rest >= BatchHeaderSize {
			data := hdr[recHeaderSize:]
			if _, err := io.ReadFull(r, data); err != nil {
				return nextID, fmt.Errorf("commitlog: replay %s: %w", s.path, err)
			}
			rest -= BatchHeaderSize
			if data[0] == KindMessages {
				n := binary.LittleEndian.Uint32(data[25:29])
				ids := t.apply(h.index, data, n, nextID, false)
				if ids.Next-nextID != uint64(h.count) {
					return nextID, fmt.Errorf("%w: replay %s: dedup verdict of entry %d differs from the stored count", ErrCorrupt, s.path, h.index)
				}
			}
		}
		if _, err := r.Discard(rest); err != nil {
			return nextID, fmt.Errorf("commitlog: replay %s: %w", s.path, err)
		}
		nextID += uint64(stored)
		off += h.size()
	}
	return nextID, nil
}
