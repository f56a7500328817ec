package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

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
	// used (or when a version that had none first started on it). It goes
	// with the node's peer streams: a node whose directory was wiped and
	// that started again under its old raft ID comes with another one,
	// and its peers refuse it (peerBook).
	Incarnation uint64 `json:"incarnation,omitempty"`
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
		want.Incarnation = newIncarnation()
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
		got.Incarnation = newIncarnation()
		if err := writeFileAtomic(path, got); err != nil {
			return identity{}, err
		}
	}
	return got, nil
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
