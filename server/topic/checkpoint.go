package topic

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/server/commitlog"
)

// Metadata checkpoints. The metadata log would otherwise grow with every
// topic created, updated or removed and every membership change, and a
// restart would replay all of it. Every MetaCheckpointEvery applied
// commands, each node writes the registry's state as of the command it
// just applied (a checkpoint: topics, members, voters; raft's snapshot of
// the metadata group, with its index, term and configuration) to
// checkpointName in the data directory, durably, and then deletes the
// metadata log's whole segments below that index (replica.Group.Compact).
// Apply is deterministic, so every node's checkpoint at an index holds the
// same state; each node takes its own.
//
//   - Open restores the registry from the checkpoint and skips the log's
//     entries up to its index (the log keeps some: it is cut at segment
//     boundaries). It first makes the log agree with the checkpoint
//     (alignWithCheckpoint), moves aside the files of topics whose removal
//     was still under way when the checkpoint was taken (Removing), and
//     knows the node was removed from the cluster when the checkpoint's
//     members lack an ID it gave out.
//   - A follower that needs entries the leader no longer holds is sent a
//     snapshot of the leader's registry taken when raft asks
//     (GroupConfig.Snapshot), at the applied index, with the configuration
//     as of it (a node added since the last checkpoint is in it). It
//     writes it as its own checkpoint before its log is reset to start
//     after it (GroupConfig.RestoreSnapshot), then makes the registry the
//     checkpoint's: topics it lacks are started, topics the checkpoint
//     lacks (removed meanwhile, or removed and created again under a new
//     directory) are removed and their files moved aside, settings are
//     updated and the members replaced.
//   - With -sync os the metadata log is fsynced before a checkpoint is
//     written (Log.SyncNow), so that a crash does not leave the log ending
//     below it.
//
// File: "FBCP" | u32 version 1 | u32 crc32c(snapshot) | raftpb.Snapshot,
// whose data is the JSON of checkpointState.
const checkpointName = "meta-checkpoint"

// DefaultMetaCheckpointEvery is Config.MetaCheckpointEvery's default.
const DefaultMetaCheckpointEvery = 10000

// DefaultMetaSegmentBytes is the metadata log's default segment size:
// compaction deletes whole segments, so the log keeps about one to two of
// them.
const DefaultMetaSegmentBytes = 16 << 20

const (
	checkpointMagic   = "FBCP"
	checkpointVersion = 1
	checkpointHeader  = 12
)

// compactTimeout bounds one compaction of the metadata log after a
// checkpoint (it waits for the engine loop).
const compactTimeout = time.Minute

// checkpointState is the registry as of a checkpoint's index.
type checkpointState struct {
	Topics  []checkpointTopic `json:"topics"`
	Members []Member          `json:"members"`
	Voters  []uint64          `json:"voters"`
	MaxID   uint64            `json:"max_id"`
	// Removing are the directories of removed topics whose files were not
	// yet moved aside (their groups close in the background): Open moves
	// them aside, since it no longer replays their removal.
	Removing []string `json:"removing,omitempty"`
}

// MaxCheckpointTopicBytes bounds a topic's share of the metadata group's
// snapshot (the registry's JSON checkpoint, which raft sends to a peer as
// one message): its entry, with a name of MaxNameLen, its directory, its
// settings and up to 64 voters, and the entry of its removal while that is
// pending. A node's receive limit holds this many bytes per topic it may
// hold (Config.MaxTopics), and a MiB for the rest.
const MaxCheckpointTopicBytes = 2 << 10

type checkpointTopic struct {
	Name     string   `json:"name"`
	Settings Settings `json:"settings"`
	Dir      string   `json:"dir"`
	Voters   []uint64 `json:"voters"`
	Created  uint64   `json:"created"`
}

// stateLocked encodes the registry's state. The caller holds r.mu.
func (r *Registry) stateLocked() ([]byte, error) {
	st := checkpointState{Members: r.membersLocked(), Voters: slices.Clone(r.voters), MaxID: r.maxID,
		Removing: slices.Sorted(maps.Keys(r.removing))}
	for _, t := range r.topics {
		st.Topics = append(st.Topics, checkpointTopic{Name: t.Name, Settings: t.Settings, Dir: t.dir, Voters: t.voters, Created: t.created})
	}
	slices.SortFunc(st.Topics, func(a, b checkpointTopic) int { return strings.Compare(a.Name, b.Name) })
	return json.Marshal(st)
}

// setStateLocked makes the registry the checkpoint's state st. While the
// registry replays (Open) it only records it; on a running node it
// starts, removes and updates topics to match (see the package's
// "Metadata checkpoints"). The caller holds r.mu.
func (r *Registry) setStateLocked(st checkpointState) {
	next := make(map[string]*Topic, len(st.Topics))
	for _, ct := range st.Topics {
		next[ct.Name] = &Topic{Name: ct.Name, Settings: ct.Settings, dir: ct.Dir, voters: ct.Voters, created: ct.Created}
	}
	for _, t := range r.replacedByLocked(st) {
		r.removeTopicLocked(t)
	}
	for name, nt := range next {
		switch t := r.topics[name]; {
		case t == nil:
			r.addTopicLocked(nt)
		case t.Settings != nt.Settings:
			r.updateTopicLocked(t, nt.Settings)
		}
	}
	r.members = make(map[uint64]Member, len(st.Members))
	for _, m := range st.Members {
		r.members[m.ID] = m
	}
	r.voters = slices.Sorted(slices.Values(st.Voters))
	r.maxID = st.MaxID
	if _, member := r.members[r.cfg.NodeID]; !member && r.cfg.NodeID != 0 && r.cfg.NodeID <= st.MaxID && r.markRemovedSelf() {
		// IDs are never reused: an ID the cluster gave out and no longer
		// has was removed (a node joining later has a higher one).
		r.log.Error("this node was removed from the cluster (metadata checkpoint): it answers clients UNAVAILABLE; stop it, and start it again only with a new data directory and -join")
	}
	if r.replaying {
		for _, dir := range st.Removing {
			r.moveAside(&Topic{Name: dir, dir: dir})
		}
	}
	r.noteChange()
}

// replacedByLocked returns the registry's topics that state st lacks, or
// holds under another directory (removed, or removed and created again):
// those setStateLocked removes. The caller holds r.mu.
func (r *Registry) replacedByLocked(st checkpointState) []*Topic {
	dirs := make(map[string]string, len(st.Topics))
	for _, ct := range st.Topics {
		dirs[ct.Name] = ct.Dir
	}
	var out []*Topic
	for name, t := range r.topics {
		if dir, ok := dirs[name]; !ok || dir != t.dir {
			out = append(out, t)
		}
	}
	return out
}

// maybeCheckpointLocked takes a checkpoint at index, the command apply
// has just applied, when MetaCheckpointEvery commands have been applied
// since the last one, and then compacts the metadata log below it. A
// checkpoint that fails is logged, and the next command tries again. The
// caller (apply, on the engine goroutine) holds r.mu.
func (r *Registry) maybeCheckpointLocked(index uint64) {
	if r.replaying || r.meta == nil || index < r.cpIndex+r.cfg.MetaCheckpointEvery {
		return
	}
	snap, err := r.checkpointLocked(index)
	if err == nil && r.cfg.Log.NoSync {
		// The checkpoint is fsynced, and the log below it is deleted: the
		// log must not end below it after a crash ("os" mode syncs
		// nothing of its own), or new commands would take indexes the
		// checkpoint covers, and be skipped.
		err = r.meta.Log().SyncNow()
	}
	if err == nil {
		err = writeCheckpoint(r.cfg.Dir, snap)
	}
	if err != nil {
		r.log.Error("metadata checkpoint", "index", index, "err", err)
		return
	}
	r.cpIndex = index
	r.log.Info("metadata checkpoint", "index", index, "topics", len(r.topics))
	meta := r.meta
	r.starts.Add(1)
	go func() {
		defer r.starts.Done()
		ctx, cancel := context.WithTimeout(context.Background(), compactTimeout)
		defer cancel()
		if err := meta.Compact(ctx, index); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			r.log.Warn("compacting the metadata log", "index", index, "err", err)
		}
	}()
}

// checkpointLocked builds raft's snapshot of the registry as of index, the
// last entry applied. The caller holds r.mu (read or write).
func (r *Registry) checkpointLocked(index uint64) (*raftpb.Snapshot, error) {
	term, err := r.meta.Log().Term(index)
	if err != nil {
		return nil, err
	}
	cs := r.meta.ConfState()
	if cs == nil {
		return nil, errors.New("no configuration applied yet")
	}
	data, err := r.stateLocked()
	if err != nil {
		return nil, err
	}
	return &raftpb.Snapshot{
		Data: data,
		Metadata: &raftpb.SnapshotMetadata{
			ConfState: proto.Clone(cs).(*raftpb.ConfState),
			Index:     proto.Uint64(index),
			Term:      proto.Uint64(term),
		},
	}, nil
}

// snapshot is the metadata group's raft snapshot (GroupConfig.Snapshot),
// taken when raft asks (on the engine goroutine, between applies): the
// registry as of the group's applied index, with the configuration as of
// it, as etcd takes its snapshots. Not the last checkpoint: a node added
// since is not in that one's configuration, and raft refuses a snapshot
// that does not name it. Raft asks only for entries below the log's start,
// which only a checkpoint's compaction moves, so the applied index is
// never below it.
func (r *Registry) snapshot() (*raftpb.Snapshot, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.meta == nil {
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return r.checkpointLocked(r.meta.Applied())
}

// restoreSnapshot installs the leader's checkpoint on this node
// (GroupConfig.RestoreSnapshot): written as this node's checkpoint first,
// then made the registry's state.
func (r *Registry) restoreSnapshot(snap *raftpb.Snapshot) error {
	st, err := decodeCheckpointState(snap)
	if err != nil {
		return err
	}
	// This node's checkpoint lists its own removals in progress, and those
	// the reconcile below starts, so that a crash before their files move
	// aside leaves none in topics/ (directories are named alike on every
	// node, so the leader's list is kept too).
	r.mu.RLock()
	removing := maps.Clone(r.removing)
	for _, t := range r.replacedByLocked(st) {
		removing[t.dir] = struct{}{}
	}
	r.mu.RUnlock()
	for _, dir := range st.Removing {
		removing[dir] = struct{}{}
	}
	own := st
	own.Removing = slices.Sorted(maps.Keys(removing))
	data, err := json.Marshal(own)
	if err != nil {
		return err
	}
	if err := writeCheckpoint(r.cfg.Dir, &raftpb.Snapshot{Metadata: snap.GetMetadata(), Data: data}); err != nil {
		return err
	}
	r.mu.Lock()
	r.setStateLocked(st)
	r.cpIndex = snap.GetMetadata().GetIndex()
	members := r.membersLocked()
	r.mu.Unlock()
	r.log.Info("metadata: installed the leader's checkpoint", "index", snap.GetMetadata().GetIndex(), "topics", len(st.Topics))
	if r.cfg.OnMembers != nil {
		r.cfg.OnMembers(members)
	}
	return nil
}

// alignWithCheckpoint makes the metadata log agree with the checkpoint
// the registry opens with, so that raft never applies an entry the
// checkpoint covers again (its configuration changes would be judged by
// CheckConfChange against the registry as of the checkpoint, not as of
// them):
//
//   - a log that ends below the checkpoint, or holds another term at its
//     index, is a snapshot install that a crash cut short (the checkpoint
//     is written first): the log is reset to start after it, as the
//     install would have;
//   - a commit point below it (written without an fsync, so a power loss
//     can take it back) is raised to it: everything up to it was
//     committed and applied, and the log holds it (a metadata entry is
//     applied only once it is synced).
func alignWithCheckpoint(l *commitlog.Log, cp *raftpb.Snapshot) error {
	idx := cp.GetMetadata().GetIndex()
	last, err := l.LastIndex()
	if err != nil {
		return err
	}
	reset := last < idx
	if !reset {
		// The log holds idx; of the checkpoint's history only if its term
		// is the checkpoint's (an install cut short can leave a tail of
		// another term there).
		term, err := l.Term(idx)
		if err == nil && term != cp.GetMetadata().GetTerm() {
			reset = true
		}
	}
	if reset {
		return l.ApplySnapshot(&raftpb.Snapshot{Metadata: cp.GetMetadata(), Data: commitlog.EncodeSnapshotData(nil, 1)})
	}
	hs, _, err := l.InitialState()
	if err != nil {
		return err
	}
	if hs.GetCommit() >= idx {
		return nil
	}
	if err := l.SetHardStateParts(hs.GetTerm(), hs.GetVote(), idx); err != nil {
		return err
	}
	return l.FlushHardState()
}

func decodeCheckpointState(snap *raftpb.Snapshot) (checkpointState, error) {
	var st checkpointState
	if err := json.Unmarshal(snap.GetData(), &st); err != nil {
		return st, fmt.Errorf("topic: metadata checkpoint at %d: %w", snap.GetMetadata().GetIndex(), err)
	}
	return st, nil
}

// writeCheckpoint stores snap as the node's checkpoint, durably.
func writeCheckpoint(dir string, snap *raftpb.Snapshot) error {
	body, err := proto.Marshal(snap)
	if err != nil {
		return err
	}
	b := make([]byte, checkpointHeader, checkpointHeader+len(body))
	copy(b, checkpointMagic)
	binary.LittleEndian.PutUint32(b[4:8], checkpointVersion)
	binary.LittleEndian.PutUint32(b[8:12], crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
	if err := commitlog.WriteFileSynced(dir, checkpointName, append(b, body...)); err != nil {
		return fmt.Errorf("topic: writing the metadata checkpoint: %w", err)
	}
	return nil
}

// readCheckpoint returns the node's checkpoint (nil when it has none).
func readCheckpoint(dir string) (*raftpb.Snapshot, checkpointState, error) {
	path := filepath.Join(dir, checkpointName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, checkpointState{}, nil
	}
	if err != nil {
		return nil, checkpointState{}, fmt.Errorf("topic: reading the metadata checkpoint: %w", err)
	}
	if len(b) < checkpointHeader || string(b[:4]) != checkpointMagic || binary.LittleEndian.Uint32(b[4:8]) != checkpointVersion ||
		crc32.Checksum(b[checkpointHeader:], crc32.MakeTable(crc32.Castagnoli)) != binary.LittleEndian.Uint32(b[8:12]) {
		return nil, checkpointState{}, fmt.Errorf("%w: %s is damaged (the metadata log before it is gone: replace the node)", commitlog.ErrCorrupt, path)
	}
	snap := &raftpb.Snapshot{}
	if err := proto.Unmarshal(b[checkpointHeader:], snap); err != nil {
		return nil, checkpointState{}, fmt.Errorf("%w: %s: %w", commitlog.ErrCorrupt, path, err)
	}
	st, err := decodeCheckpointState(snap)
	if err != nil {
		return nil, checkpointState{}, fmt.Errorf("%w: %w", commitlog.ErrCorrupt, err)
	}
	return snap, st, nil
}
