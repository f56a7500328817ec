package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// peersFile records, in a node's data directory, the incarnation each peer
// first came with (peerBook).
const peersFile = "peers.json"

// removedFile records, in a node's data directory, that a peer said the
// cluster removed the node (recordRemoved): the node does not apply its own
// removal (the leader sends it nothing more), so without the record it
// would serve again as a member after a restart until a peer said it
// again, and never with its peers down.
const removedFile = "removed.json"

// peerBook refuses a peer that comes back under its raft ID with another
// data directory. A node whose directory was wiped (a dead disk replaced,
// a mistaken rm) and that is started again with its old name and
// -initial-cluster takes up its old raft ID with an empty log: if it
// voted, a candidate missing acknowledged entries could win an election,
// and those entries' IDs would be given to other messages. Raft assumes
// that a node's log survives; such a node must be removed from the
// cluster and join again under a new ID. Its identity's incarnation tells
// it apart: the book records the incarnation each peer first showed, on
// disk, and refuses another one for good.
type peerBook struct {
	path string
	log  *slog.Logger

	mu     sync.Mutex
	known  map[uint64]uint64 // raft ID -> incarnation
	logged map[uint64]uint64 // the refused incarnation last logged, per raft ID
}

// openPeerBook reads the book in dir (empty when there is none yet).
func openPeerBook(dir string, log *slog.Logger) (*peerBook, error) {
	b := &peerBook{path: filepath.Join(dir, peersFile), log: log, known: map[uint64]uint64{}, logged: map[uint64]uint64{}}
	data, err := os.ReadFile(b.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return b, nil
	case err != nil:
		return nil, err
	}
	var stored map[string]string // JSON: raft ID -> incarnation, in hex
	if err := json.Unmarshal(data, &stored); err != nil {
		return nil, fmt.Errorf("server: %s: %w", b.path, err)
	}
	for id, inc := range stored {
		i, err1 := strconv.ParseUint(id, 10, 64)
		n, err2 := strconv.ParseUint(inc, 16, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("server: %s: %w", b.path, err)
		}
		b.known[i] = n
	}
	return b, nil
}

// check is transport.Config.CheckPeer: it accepts a peer's first
// incarnation (recording it) and that one only. A peer that sends none (an
// earlier version) is accepted.
func (b *peerBook) check(from, inc uint64) error {
	if inc == 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old, ok := b.known[from]
	switch {
	case !ok:
		b.known[from] = inc
		if err := b.saveLocked(); err != nil {
			// Accepted all the same: the check protects against an
			// operator's mistake, and this node's disk is failing anyway.
			b.log.Warn("server: recording a peer's data directory", "peer", from, "err", err)
		}
		return nil
	case old == inc:
		return nil
	}
	err := fmt.Errorf("node %d came back with another data directory than the one it ran with (incarnation %x, was %x): wiped, or replaced, it lost its log, and must not take part under its old raft ID; remove it from the cluster (fbctl node remove NAME) and start it again with -join", from, inc, old)
	if b.logged[from] != inc {
		b.logged[from] = inc
		b.log.Error("server: refusing a peer", "peer", from, "err", err)
	}
	return err
}

func (b *peerBook) saveLocked() error {
	stored := make(map[string]string, len(b.known))
	for id, inc := range b.known {
		stored[strconv.FormatUint(id, 10)] = strconv.FormatUint(inc, 16)
	}
	return writeFileAtomic(b.path, stored)
}

// recordRemoved records that peer said the cluster removed this node.
func (s *Server) recordRemoved(peer uint64) {
	rec := struct {
		Peer uint64    `json:"peer"`
		Time time.Time `json:"time"`
	}{peer, time.Now()}
	if err := writeFileAtomic(filepath.Join(s.cfg.DataDir, removedFile), rec); err != nil {
		s.log.Warn("server: recording this node's removal", "err", err)
	}
}

// recordedRemoved reports whether dir records this node's removal
// (recordRemoved), and the peer that said it.
func recordedRemoved(dir string) (peer uint64, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, removedFile))
	if err != nil {
		return 0, false
	}
	var rec struct {
		Peer uint64 `json:"peer"`
	}
	_ = json.Unmarshal(b, &rec) // the file's presence is the record
	return rec.Peer, true
}
