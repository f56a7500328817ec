package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// HardState file: two fixed slots, each
//
//	u64 seq | u64 term | u64 vote | u64 commit | u32 crc32c(previous 32 bytes)
//	| u64 durable | u32 crc32c(the 32 bytes before the first crc, durable)
//
// at offsets 0 and hsSlotStride (separate pages, so one torn write cannot
// damage both). The first 36 bytes are the slot as earlier versions wrote
// it, so they still read the file; the durable watermark after it counts
// only where its own checksum holds (a slot an earlier version wrote, or
// one torn between the two parts, reads as durable 0). The file is created
// whole (both slots, term 0, written to a temporary name, synced and
// renamed), so an existing file always holds a valid slot: one with none
// is damaged (ErrCorrupt), not a crash's, and a node must not take it for
// term 0 with no vote (it could vote twice in a term). Files of older
// versions were created empty and written slot 0 first; one of under two
// slots without a valid one reads as term 0, as it did.
//
// durable is the log's durable watermark: every record of the log up to
// that index was durable (synced in its segment, or in the journal) when
// the slot was written. It is written only after the sync that made it
// true, and lowered (and the slot fsynced) before a truncation or a
// snapshot rewrites records below it, so whatever slot survives a crash
// holds a true lower bound. Open uses it to tell a crash's torn tail, which
// it cuts, from damage to records that were durable, which it refuses
// (ErrCorrupt) instead of cutting them and every durable record after them.
//
// An earlier version keeps the watermark it finds (it does not know it)
// and never lowers it: if it truncates the log and dies before it writes a
// slot (its slots carry no watermark, so its first write voids the one
// found), this version can refuse the log at the next start, though
// nothing durable was lost. Downgrading is therefore one way: a node run
// by an earlier version after this one should start again from an empty
// data directory (-join) before it runs this version again.
const (
	hsBaseSize    = 36 // the slot of earlier versions: up to the first CRC
	hsSlotSize    = 48
	hsSlotStride  = 4096
	hardStateName = "hardstate"
)

type hardState struct{ term, vote, commit, durable uint64 }

// hsFile writes the HardState alternately into two slots. The "anchor" slot
// holds the last term/vote that was made durable and is never overwritten
// until the other slot's content (with the same or newer term/vote) has been
// fsynced, so a crash can never regress term or vote below what Sync made
// durable. Commit-only changes go to the non-anchor slot and need no fsync;
// they are not even written at once: a busy topic's commit advances with
// every batch, and raft needs no stored commit point for safety (a node
// that restarts behind learns it from the leader), so a commit-only change
// waits in memory for the next term/vote write, flush or close.
type hsFile struct {
	f        *os.File
	seq      uint64
	cur      hardState // latest recorded (what the log reports)
	disk     hardState // latest written to the file
	synced   hardState // term/vote last made durable (commit may be stale)
	anchor   int       // slot holding synced term/vote; -1 when none
	needSync bool      // term or vote written but not yet fsynced
	unsynced bool      // something written since the last fsync
	buf      [hsSlotSize]byte

	// maxDurable is the highest watermark either slot may hold on disk:
	// of both slots read at open and every slot written since the last
	// lowering.
	maxDurable uint64
}

func openHardState(dir string) (*hsFile, bool, error) {
	path := filepath.Join(dir, hardStateName)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	created := false
	if errors.Is(err, fs.ErrNotExist) {
		var initial [hsSlotStride + hsSlotSize]byte
		encodeHSSlot(initial[:hsSlotSize], 1, hardState{})
		encodeHSSlot(initial[hsSlotStride:], 2, hardState{})
		if err := writeFileSynced(dir, hardStateName, initial[:]); err != nil {
			return nil, false, fmt.Errorf("commitlog: create hardstate: %w", err)
		}
		created = true
		f, err = os.OpenFile(path, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, false, fmt.Errorf("commitlog: open hardstate: %w", err)
	}
	h := &hsFile{f: f, anchor: -1}
	var raw [hsSlotStride + hsSlotSize]byte
	n, err := f.ReadAt(raw[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, false, fmt.Errorf("commitlog: read hardstate: %w", err)
	}
	for slot := 0; slot < 2; slot++ {
		off := slot * hsSlotStride
		if n < off+hsBaseSize {
			continue
		}
		seq, st, ok := decodeHSSlot(raw[off:min(n, off+hsSlotSize)])
		if ok {
			h.maxDurable = max(h.maxDurable, st.durable)
		}
		if ok && (h.anchor < 0 || seq > h.seq) {
			h.anchor, h.seq, h.cur = slot, seq, st
		}
	}
	if h.anchor < 0 && n >= hsSlotStride+hsBaseSize {
		f.Close()
		return nil, false, fmt.Errorf("%w: hardstate %s has no valid slot", ErrCorrupt, path)
	}
	h.synced, h.disk = h.cur, h.cur
	return h, created, nil
}

// encodeHSSlot writes slot seq holding s into b (hsSlotSize bytes).
func encodeHSSlot(b []byte, seq uint64, s hardState) {
	binary.LittleEndian.PutUint64(b[0:8], seq)
	binary.LittleEndian.PutUint64(b[8:16], s.term)
	binary.LittleEndian.PutUint64(b[16:24], s.vote)
	binary.LittleEndian.PutUint64(b[24:32], s.commit)
	binary.LittleEndian.PutUint32(b[32:36], crc32.Checksum(b[:32], castagnoli))
	binary.LittleEndian.PutUint64(b[36:44], s.durable)
	binary.LittleEndian.PutUint32(b[44:48], durableCRC(b))
}

// durableCRC is the second checksum of slot b: of its fields and the
// watermark, without the first checksum between them. (A CRC over data
// followed by its own CRC is the same for all data, so a checksum of the
// first 44 bytes would not tie the watermark to the fields before it.)
func durableCRC(b []byte) uint32 {
	return crc32.Update(crc32.Checksum(b[:32], castagnoli), castagnoli, b[36:44])
}

// decodeHSSlot reads a slot from b: hsSlotSize bytes, or hsBaseSize for the
// end of a file an earlier version wrote (durable 0).
func decodeHSSlot(b []byte) (uint64, hardState, bool) {
	if len(b) < hsBaseSize || crc32.Checksum(b[:32], castagnoli) != binary.LittleEndian.Uint32(b[32:36]) {
		return 0, hardState{}, false
	}
	seq := binary.LittleEndian.Uint64(b[0:8])
	if seq == 0 {
		return 0, hardState{}, false
	}
	st := hardState{
		term:   binary.LittleEndian.Uint64(b[8:16]),
		vote:   binary.LittleEndian.Uint64(b[16:24]),
		commit: binary.LittleEndian.Uint64(b[24:32]),
	}
	if len(b) >= hsSlotSize && durableCRC(b) == binary.LittleEndian.Uint32(b[44:48]) {
		st.durable = binary.LittleEndian.Uint64(b[36:44])
	}
	return seq, st, true
}

func (h *hsFile) writeSlot() int {
	if h.anchor < 0 {
		return 0
	}
	return 1 - h.anchor
}

// record notes s as the latest state: written at once when term or vote
// changed (or nothing was ever written), else kept for flush.
//
// A leader records commit-only changes while the syncer goroutine syncs
// its log (sync): record then reads and writes only what sync leaves
// alone (cur, disk, seq), and sync reads disk, which only write changes.
func (h *hsFile) record(s hardState) error {
	if h.seq > 0 && s.term == h.disk.term && s.vote == h.disk.vote {
		h.cur = s
		return nil
	}
	return h.write(s)
}

// pending reports whether record kept a commit-only change in memory.
func (h *hsFile) pending() bool { return h.cur != h.disk }

// flush writes a commit-only change that record kept in memory.
func (h *hsFile) flush() error {
	if !h.pending() {
		return nil
	}
	return h.write(h.cur)
}

// write stores s in the non-anchor slot (pwrite, no fsync).
func (h *hsFile) write(s hardState) error {
	h.seq++
	b := h.buf[:]
	encodeHSSlot(b, h.seq, s)
	if _, err := h.f.WriteAt(b, int64(h.writeSlot()*hsSlotStride)); err != nil {
		return fmt.Errorf("commitlog: write hardstate: %w", err)
	}
	h.cur, h.disk = s, s
	h.maxDurable = max(h.maxDurable, s.durable)
	h.unsynced = true
	if s.term != h.synced.term || s.vote != h.synced.vote || h.anchor < 0 {
		h.needSync = true
	}
	return nil
}

// lowerDurable lowers the durable watermark to at most index in both
// slots, each written and fsynced (also with NoSync), before the caller
// rewrites records above it: no slot a crash can leave may hold a
// watermark over records that are no longer the durable ones. (One slot
// would do while the anchor only moves after an fsync; with NoSync it
// moves without one, and the other slot could come back as it was.)
//
// The watermark held in memory for the next slot comes down too when no
// slot needs rewriting: Log.foldDurable raises it without a write (a
// commit-only SetHardState), and left high it went into the next slot
// written (a new term's, or Close's) over the cut records, and the log
// then refused to open (a review found it: a follower's uncommitted tail
// replaced by a new leader's shorter one, then a clean restart).
func (h *hsFile) lowerDurable(index uint64) error {
	h.cur.durable = min(h.cur.durable, index)
	if h.maxDurable <= index {
		return nil
	}
	s := h.cur
	s.durable = min(s.durable, index)
	for range 2 {
		if err := h.write(s); err != nil {
			return err
		}
		if err := h.sync(false, true); err != nil {
			return err
		}
	}
	h.maxDurable = s.durable
	return nil
}

// sync makes the written slot durable when term/vote changed (or always when
// force is set) and promotes it to anchor. With noSync the fsync is skipped
// but the bookkeeping is the same.
func (h *hsFile) sync(noSync, force bool) error {
	if !h.unsynced || (!h.needSync && !force) {
		return nil
	}
	if !noSync {
		if err := fdatasync(h.f); err != nil {
			return fmt.Errorf("commitlog: sync hardstate: %w", err)
		}
	}
	h.anchor = h.writeSlot()
	h.synced = h.disk
	h.needSync, h.unsynced = false, false
	return nil
}
