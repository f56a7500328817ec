package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"github.com/forestbus/forestbus/server/topic"
)

// ErrClusterMismatch: the data directory belongs to another cluster or node.
var ErrClusterMismatch = errors.New("server: data directory belongs to another cluster or node")

// identity is the node's identity, stored in DataDir/identity.json on first
// start and checked on every later start.
type identity struct {
	ClusterID string `json:"cluster_id"`
	NodeName  string `json:"node_name"`
	RaftID    uint64 `json:"raft_id"`
	// Initial lists the members of the new cluster this node started as
	// one of; empty for a node that joined a running cluster (and in files
	// written before the field existed). A later start passes them to the
	// metadata group, which bootstraps with them only if its log is empty:
	// the first start died after writing this file and before the log held
	// its first entries. Without them that node would wait for ever for a
	// leader to tell it the members.
	Initial []topic.Member `json:"initial_cluster,omitempty"`
	// Incarnation is a random number chosen when the directory was first
	// used. It goes with the node's peer streams: a node whose directory
	// was wiped and that started again under its old raft ID comes with
	// another one, and its peers refuse it (peerBook). A directory of a
	// version that had none gets one derived from its identity at its
	// next start (derivedIncarnation), so that a backup of it taken before
	// the upgrade, restored later, comes with the same one.
	Incarnation incarnation `json:"incarnation,omitempty"`
}

// incarnation is stored as a hexadecimal string, as in peers.json: as a
// JSON number it would exceed what many JSON readers hold exactly (2^53).
// A number (written by this version's first builds) is read too.
type incarnation uint64

func (i incarnation) MarshalJSON() ([]byte, error) {
	return json.Marshal(strconv.FormatUint(uint64(i), 16))
}

func (i *incarnation) UnmarshalJSON(b []byte) error {
	var hex string
	if err := json.Unmarshal(b, &hex); err != nil {
		var n uint64
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("incarnation: %s: want a hexadecimal string", b)
		}
		*i = incarnation(n)
		return nil
	}
	n, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		return fmt.Errorf("incarnation: %w", err)
	}
	*i = incarnation(n)
	return nil
}

const identityFile = "identity.json"

// HasIdentity reports whether dir, a node's data directory, holds its
// identity: the node has started there before (and knows its place in the
// cluster).
func HasIdentity(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, identityFile))
	return err == nil
}

// loadIdentity reads the data dir's identity, creating it when the directory
// is new. A different cluster ID or node name is refused.
func loadIdentity(dir string, want identity) (identity, error) {
	path := filepath.Join(dir, identityFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		want.Incarnation = incarnation(newIncarnation())
		if err := writeFileAtomic(path, want); err != nil {
			return identity{}, err
		}
		return want, nil
	case err != nil:
		return identity{}, err
	}
	var got identity
	if err := json.Unmarshal(b, &got); err != nil {
		return identity{}, fmt.Errorf("server: %s: %w", path, err)
	}
	if got.ClusterID != want.ClusterID {
		return identity{}, fmt.Errorf("%w: %s holds cluster %q, this node was started for cluster %q (use another -data directory, or -cluster %s)",
			ErrClusterMismatch, dir, got.ClusterID, want.ClusterID, got.ClusterID)
	}
	if got.NodeName != want.NodeName {
		return identity{}, fmt.Errorf("%w: %s holds node %q, this node was started as %q (use another -data directory, or -name %s)",
			ErrClusterMismatch, dir, got.NodeName, want.NodeName, got.NodeName)
	}
	if got.Incarnation == 0 { // written by a version without it
		got.Incarnation = derivedIncarnation(got)
		if err := writeFileAtomic(path, got); err != nil {
			return identity{}, err
		}
	}
	return got, nil
}

// derivedIncarnation is the incarnation of a directory a version without
// incarnations created: a hash of its identity, so that the same
// directory, or a backup of it from before the upgrade, always gets the
// same one. A wiped directory starts with a new identity file, and a
// random incarnation.
func derivedIncarnation(id identity) incarnation {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s\x00%s\x00%d", id.ClusterID, id.NodeName, id.RaftID)
	for _, m := range id.Initial {
		fmt.Fprintf(h, "\x00%d=%s@%s", m.ID, m.Name, m.Address)
	}
	if n := h.Sum64(); n != 0 {
		return incarnation(n)
	}
	return 1
}

// newIncarnation returns a random non-zero incarnation.
func newIncarnation() uint64 {
	for {
		if n := rand.Uint64(); n != 0 {
			return n
		}
	}
}

func writeFileAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
