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
//
// at offsets 0 and hsSlotStride (separate pages, so one torn write cannot
// damage both). The file is created whole (both slots, term 0, written to
// a temporary name, synced and renamed), so an existing file always holds
// a valid slot: one with none is damaged (ErrCorrupt), not a crash's, and
// a node must not take it for term 0 with no vote (it could vote twice in
// a term). Files of older versions were created empty and written slot 0
// first; one of under two slots without a valid one reads as term 0, as
// it did.
const (
	hsSlotSize    = 36
	hsSlotStride  = 4096
	hardStateName = "hardstate"
)

type hardState struct{ term, vote, commit uint64 }

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
		if n < off+hsSlotSize {
			continue
		}
		seq, st, ok := decodeHSSlot(raw[off : off+hsSlotSize])
		if ok && (h.anchor < 0 || seq > h.seq) {
			h.anchor, h.seq, h.cur = slot, seq, st
		}
	}
	if h.anchor < 0 && n == len(raw) {
		f.Close()
		return nil, false, fmt.Errorf("%w: hardstate %s has no valid slot", ErrCorrupt, path)
	}
	h.synced, h.disk = h.cur, h.cur
	return h, created, nil
}

// encodeHSSlot writes slot seq holding s into b.
func encodeHSSlot(b []byte, seq uint64, s hardState) {
	binary.LittleEndian.PutUint64(b[0:8], seq)
	binary.LittleEndian.PutUint64(b[8:16], s.term)
	binary.LittleEndian.PutUint64(b[16:24], s.vote)
	binary.LittleEndian.PutUint64(b[24:32], s.commit)
	binary.LittleEndian.PutUint32(b[32:36], crc32.Checksum(b[:32], castagnoli))
}

func decodeHSSlot(b []byte) (uint64, hardState, bool) {
	if crc32.Checksum(b[:32], castagnoli) != binary.LittleEndian.Uint32(b[32:36]) {
		return 0, hardState{}, false
	}
	seq := binary.LittleEndian.Uint64(b[0:8])
	if seq == 0 {
		return 0, hardState{}, false
	}
	return seq, hardState{
		term:   binary.LittleEndian.Uint64(b[8:16]),
		vote:   binary.LittleEndian.Uint64(b[16:24]),
		commit: binary.LittleEndian.Uint64(b[24:32]),
	}, true
}

func (h *hsFile) writeSlot() int {
	if h.anchor < 0 {
		return 0
	}
	return 1 - h.anchor
}

// record notes s as the latest state: written at once when term or vote
// changed (or nothing was ever written), else kept for flush.
func (h *hsFile) record(s hardState) error {
	if h.anchor >= 0 && s.term == h.disk.term && s.vote == h.disk.vote {
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
	h.unsynced = true
	if s.term != h.synced.term || s.vote != h.synced.vote || h.anchor < 0 {
		h.needSync = true
	}
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
	h.synced = h.cur
	h.needSync, h.unsynced = false, false
	return nil
}
