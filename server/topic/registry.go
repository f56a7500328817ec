package topic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/replica"
)

// Errors returned by the registry.
var (
	ErrNotFound        = errors.New("topic: not found")
	ErrExists          = errors.New("topic: already exists")
	ErrInvalidName     = errors.New("topic: invalid name")
	ErrInvalidMember   = errors.New("topic: invalid member")
	ErrInvalidSettings = errors.New("topic: invalid settings")
	ErrTooManyTopics   = errors.New("topic: too many topics")
)

// DefaultMaxTopics is Config.MaxTopics's default.
const DefaultMaxTopics = 10000

// MaxNameLen is the longest topic name.
const MaxNameLen = 200

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// ValidateName checks a topic name: 1 to 200 characters from
// [A-Za-z0-9._-], and not "." or "..". It wraps ErrInvalidName.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %d characters, the limit is %d", ErrInvalidName, len(name), MaxNameLen)
	case !nameRE.MatchString(name):
		return fmt.Errorf("%w: %q has characters outside [A-Za-z0-9._-]", ErrInvalidName, name)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	return nil
}

// DefaultMinSegmentBytes is Config.MinSegmentBytes's default: the smallest
// segment size a topic's settings may ask for. Every retained segment
// holds a file open on every node, and the client that creates a topic
// picks its segment size: with 4 KiB segments, 80 MB written to one topic
// would hold 20,000 files open, a common per-process limit. Kafka 4.0 set
// the same floor on segment.bytes (KIP-1030).
const DefaultMinSegmentBytes = 1 << 20

// MaxSegmentBytes is the largest segment_bytes a topic's settings may ask
// for (Kafka's default segment size; its segment.bytes stops at 2 GiB).
// Retention deletes whole segments: a topic whose segments never fill
// never has anything deleted.
const MaxSegmentBytes = 1 << 30

// MaxRetentionSeconds is the longest retention_seconds a topic may have:
// the longest time.Duration.
const MaxRetentionSeconds = math.MaxInt64 / int64(time.Second)

// Settings are a topic's storage settings; zero means the node default.
type Settings struct {
	SegmentBytes     int64 `json:"segment_bytes,omitempty"`
	RetentionSeconds int64 `json:"retention_seconds,omitempty"`
	RetentionBytes   int64 `json:"retention_bytes,omitempty"`
}

// Validate checks the settings, with minSegment the smallest segment_bytes
// allowed (Config.MinSegmentBytes). It wraps ErrInvalidSettings.
func (s Settings) Validate(minSegment int64) error {
	switch {
	case s.SegmentBytes < 0 || (s.SegmentBytes > 0 && s.SegmentBytes < minSegment):
		return fmt.Errorf("%w: segment_bytes %d: must be 0 (the node's default) or at least %d", ErrInvalidSettings, s.SegmentBytes, minSegment)
	case s.SegmentBytes > MaxSegmentBytes:
		return fmt.Errorf("%w: segment_bytes %d: at most %d (1 GiB)", ErrInvalidSettings, s.SegmentBytes, int64(MaxSegmentBytes))
	case s.RetentionSeconds < 0:
		return fmt.Errorf("%w: retention_seconds %d is negative", ErrInvalidSettings, s.RetentionSeconds)
	case s.RetentionSeconds > MaxRetentionSeconds:
		return fmt.Errorf("%w: retention_seconds %d: at most %d (292 years)", ErrInvalidSettings, s.RetentionSeconds, int64(MaxRetentionSeconds))
	case s.RetentionBytes < 0:
		return fmt.Errorf("%w: retention_bytes %d is negative", ErrInvalidSettings, s.RetentionBytes)
	}
	return nil
}

// Topic is a registered topic. Group is nil while the registry replays,
// and while a topic just created starts (see start).
type Topic struct {
	Name     string
	Settings Settings
	Group    *replica.Group

	dir     string   // directory and raft group name: NAME.INDEX
	voters  []uint64 // metadata voters when it was created: its initial peers
	created uint64   // metadata index of its create command
	// start, for a topic created while the node runs, is its start (a
	// Topic with the Group replaces this one once it succeeds); nil for
	// the topics started when the registry opened. Copies share it.
	start *startState
}

// startState is the start of a topic created while the node runs (see
// Registry.start).
type startState struct {
	done  chan struct{} // closed when the start ended
	err   error         // why it failed; set before done closes
	ended bool          // the start ended; guarded by Registry.mu
}

// Config configures a Registry.
type Config struct {
	// Dir is the node's data directory.
	Dir string
	// Engine runs the groups.
	Engine *replica.Engine
	// NodeID is this node's raft ID.
	NodeID uint64
	// Members are the cluster's initial members, used to bootstrap the
	// metadata group of a new cluster (every initial member passes the same
	// list). Empty for a node that joins an existing cluster: it learns the
	// members from the metadata log.
	Members []Member
	// OnMembers, when set, is called with the member list whenever it
	// changes (on the engine goroutine; it must not block).
	OnMembers func([]Member)
	// OnCaughtUp, when set, is called once, by the first CaughtUp that
	// succeeds, before it returns.
	OnCaughtUp func()
	// Log holds the defaults for every topic's log (SegmentBytes, NoSync).
	Log commitlog.Options
	// DefaultRetention and DefaultRetentionBytes apply to topics whose
	// settings leave them 0; 0 here means keep for ever.
	DefaultRetention      time.Duration
	DefaultRetentionBytes int64
	// MaxTopics caps the topics Create adds: a create while the cluster
	// holds that many fails with ErrTooManyTopics. The metadata leader
	// checks it, counting the topics it has applied and the creates it has
	// proposed since; a create that came through a leader change may pass
	// it by the creates in flight then. Ensure (the node's default topic)
	// is not capped. 0 means DefaultMaxTopics; negative, no cap.
	MaxTopics int
	// MinSegmentBytes is the smallest segment_bytes a topic's settings may
	// give in Create and Update (topics already created keep theirs). The
	// node that takes the call checks it: give every node the same. 0 or
	// less means DefaultMinSegmentBytes; it is never below
	// commitlog.MinSegmentBytes.
	MinSegmentBytes int64
	// MetaCheckpointEvery is how many applied metadata commands apart the
	// node checkpoints the registry and compacts the metadata log (see
	// "Metadata checkpoints" in checkpoint.go); 0 means
	// DefaultMetaCheckpointEvery.
	MetaCheckpointEvery uint64
	// MetaSegmentBytes is the metadata log's segment size; 0 means
	// DefaultMetaSegmentBytes.
	MetaSegmentBytes int64
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Member is a node of the cluster, as recorded in the context of the
// metadata group's configuration changes.
type Member struct {
	ID      uint64 `json:"id"`
	Name    string `json:"name"`
	Address string `json:"address"`
	// Learner: not (yet) a voter of the metadata group (Members sets it;
	// never stored).
	Learner bool `json:"-"`
}

// Registry maps topic names to their groups. Safe for concurrent use.
type Registry struct {
	cfg  Config
	log  *slog.Logger
	meta *replica.Group

	mu      sync.RWMutex
	topics  map[string]*Topic
	members map[uint64]Member
	voters  []uint64 // metadata group voters, sorted
	maxID   uint64   // highest raft ID ever added: IDs are never reused
	// removedSelf: the metadata log removed this node from the cluster
	// (set by markRemovedSelf, which also ends removal).
	removedSelf atomic.Bool
	removal     context.Context // done once removedSelf is set
	removedNow  context.CancelFunc
	replaying   bool
	// changes counts membership changes, topic creations and this node
	// taking a group's lead, so that the reconciler knows when a round may
	// find work (ChangeCount); changed
	// (capacity 1) is signalled with each (Changed).
	changes atomic.Uint64
	changed chan struct{}
	// creating counts, by name, the creates this node has proposed (as
	// the metadata leader, for the topic cap) and not yet answered; a
	// name already in topics no longer counts towards the cap.
	creating map[string]int
	// starts counts the topic starts running (start), and the metadata
	// log's compactions; Close waits for them.
	starts sync.WaitGroup
	// cpIndex is the index of the latest metadata checkpoint; 0 before
	// the first. Guarded by mu.
	cpIndex uint64
	// removing holds the directories of removed topics whose files are
	// not moved aside yet (checkpointState.Removing). Guarded by mu.
	removing map[string]struct{}
	// caughtUp: the metadata group passed a read barrier since the
	// registry opened (CaughtUp).
	caughtUp atomic.Bool
}

// CaughtUp returns nil once this node has applied every metadata command
// the cluster had committed at some moment after the registry opened; the
// first calls wait for the metadata group's read barrier (bounded as
// Lookup's; replica.ErrNoLeader when it does not confirm in time), the
// later ones cost an atomic load. Until then, the topics this node knows
// are those of its own metadata log, which may be behind the cluster's: a
// node down while a topic was removed and created again under the same
// name restarted with the old one, and served its messages under the new
// topic's name and IDs until it caught up (a review found it). The API
// serves topic calls only once it has.
func (r *Registry) CaughtUp(ctx context.Context) error {
	if r.caughtUp.Load() {
		return nil
	}
	if err := r.barrier(ctx, "the topic list since this node started"); err != nil {
		return err
	}
	if r.caughtUp.CompareAndSwap(false, true) && r.cfg.OnCaughtUp != nil {
		r.cfg.OnCaughtUp()
	}
	return nil
}

// IsCaughtUp reports whether CaughtUp has succeeded (it then returns at
// once).
func (r *Registry) IsCaughtUp() bool { return r.caughtUp.Load() }

// ChangeCount increases whenever the member set changes, a topic group
// opens on this node or this node becomes a group's leader.
func (r *Registry) ChangeCount() uint64 { return r.changes.Load() }

// Changed is signalled whenever ChangeCount increases: a receive returns at
// once if it moved since the last receive (one signal stands for any number
// of changes), so a reconciler can sleep until there is work. It has one
// receiver (the server's reconciler): two would take each other's signals.
func (r *Registry) Changed() <-chan struct{} { return r.changed }

// noteChange increases ChangeCount and signals Changed.
func (r *Registry) noteChange() {
	r.changes.Add(1)
	select {
	case r.changed <- struct{}{}:
	default: // a signal is already pending
	}
}

// metaGroup is the metadata group's name on the wire; no topic can have it.
const metaGroup = ""

type command struct {
	Op       string   `json:"op"` // create, update, remove
	Name     string   `json:"name"`
	Settings Settings `json:"settings"`
}

// Open opens the metadata group, rebuilds the registry from its log and
// opens every topic's group.
func Open(cfg Config) (*Registry, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MinSegmentBytes <= 0 {
		cfg.MinSegmentBytes = DefaultMinSegmentBytes
	}
	cfg.MinSegmentBytes = max(cfg.MinSegmentBytes, commitlog.MinSegmentBytes)
	if cfg.MetaCheckpointEvery == 0 {
		cfg.MetaCheckpointEvery = DefaultMetaCheckpointEvery
	}
	if cfg.MetaSegmentBytes <= 0 {
		cfg.MetaSegmentBytes = DefaultMetaSegmentBytes
	}
	r := &Registry{cfg: cfg, log: cfg.Logger, topics: make(map[string]*Topic), members: make(map[uint64]Member), changed: make(chan struct{}, 1),
		removing: make(map[string]struct{})}
	r.removal, r.removedNow = context.WithCancel(context.Background())
	for _, d := range []string{"topics", "removed"} {
		if err := commitlog.MkdirAll(filepath.Join(cfg.Dir, d)); err != nil {
			return nil, err
		}
	}
	cp, st, err := readCheckpoint(cfg.Dir)
	if err != nil {
		return nil, err
	}
	r.replaying = true
	if cp != nil {
		r.setStateLocked(st)
		r.cpIndex = cp.GetMetadata().GetIndex()
	}
	metaLog, err := commitlog.Open(filepath.Join(cfg.Dir, "meta"), commitlog.Options{
		SegmentBytes: cfg.MetaSegmentBytes, NoSync: cfg.Log.NoSync, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("topic: opening metadata log: %w", err)
	}
	if cp != nil {
		if err := alignWithCheckpoint(metaLog, cp); err != nil {
			_ = metaLog.Close()
			return nil, fmt.Errorf("topic: metadata log: %w", err)
		}
	}
	var peers []raft.Peer
	for _, m := range cfg.Members {
		ctx, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		peers = append(peers, raft.Peer{ID: m.ID, Context: ctx})
	}
	meta, err := cfg.Engine.AddGroup(replica.GroupConfig{
		Name: metaGroup, Log: metaLog, Peers: peers, Apply: r.apply,
		ApplyConfChange: r.applyConfChange,
		CheckConfChange: r.checkConfChange,
		Snapshot:        r.snapshot,
		RestoreSnapshot: r.restoreSnapshot,
		OnLead:          r.noteChange, // promotions are the leader's to make
		// Start the replayed topics before the metadata group runs, so no
		// live command is applied while they start.
		AfterReplay: func() error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.replaying = false
			for _, t := range r.topics {
				if err := r.startLocked(t); err != nil {
					return err
				}
			}
			return nil
		},
	})
	if err != nil {
		_ = metaLog.Close()
		return nil, err
	}
	r.mu.Lock()
	r.meta = meta
	r.mu.Unlock()
	return r, nil
}

// Groups returns the metadata group and every topic's group.
func (r *Registry) Groups() []*replica.Group {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := []*replica.Group{r.meta}
	for _, t := range r.topics {
		if t.Group != nil {
			out = append(out, t.Group)
		}
	}
	return out
}

// Meta is the metadata group.
func (r *Registry) Meta() *replica.Group { return r.meta }

// RemovedSelf reports whether the cluster removed this node (its
// metadata log applied the node's removal): its logs then fall behind,
// and its reads are stale.
func (r *Registry) RemovedSelf() bool { return r.removedSelf.Load() }

// Removal is done once the cluster removed this node (RemovedSelf): waits
// that would answer from its logs, which follow the topics no more, end
// on it.
func (r *Registry) Removal() context.Context { return r.removal }

// Removed reports whether the cluster removed node id, as this node has
// applied the metadata log: raft IDs are given in order and never reused,
// so an ID up to the highest given that is no member any more was
// removed. (A node added after this node's last applied entry has a
// higher ID: not removed.)
func (r *Registry) Removed(id uint64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, member := r.members[id]
	return id != 0 && id <= r.maxID && !member
}

// PeerSaysRemoved records this node's removal as a peer told it (the
// peer's Removed), and reports whether it is news: a node stopped before
// it applied its own removal, and started again on its old data
// directory, would otherwise serve its stale logs for ever. Its groups
// run on: a topic may count it as a voter until the cluster changes that
// topic's configuration.
func (r *Registry) PeerSaysRemoved(peer uint64) bool {
	if !r.markRemovedSelf() {
		return false
	}
	r.log.Error("a peer says the cluster removed this node: it answers clients UNAVAILABLE from now on; stop it, and start it again only with a new data directory and -join", "peer", peer)
	return true
}

// markRemovedSelf records this node's removal; true the first time.
func (r *Registry) markRemovedSelf() bool {
	if r.removedSelf.Swap(true) {
		return false
	}
	r.removedNow()
	return true
}

// Get returns the named topic. Errors: ErrNotFound.
func (r *Registry) Get(name string) (*Topic, error) {
	r.mu.RLock()
	t := r.topics[name]
	r.mu.RUnlock()
	if t == nil || t.Group == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return t, nil
}

// Lookup is Get for a caller that must not take a topic for missing
// because this node is behind: it creates topics only as it applies the
// metadata log, and a node that restarted, or was cut off, may not have
// applied a create that the cluster committed. A name this node does not
// know is looked up again after the metadata group's read barrier
// (replica.Group.ReadIndex), once this node has applied every command
// committed when it asked. A topic this node is starting is waited for.
// Errors: ErrNotFound; replica.ErrNoLeader (wrapping why) when the barrier
// or the start could not complete within metaWait (or before ctx ended);
// replica.ErrStorageFailed (wrapping why) when the topic failed to start on
// this node, and replica.ErrStopped when the node stopped first.
func (r *Registry) Lookup(ctx context.Context, name string) (*Topic, error) {
	ctx, cancel := r.metaWait(ctx)
	defer cancel()
	t, err := r.started(ctx, name)
	if !errors.Is(err, ErrNotFound) {
		return t, err
	}
	if berr := r.meta.ReadIndex(ctx); berr != nil {
		return nil, fmt.Errorf("%w: topic %q is not known on this node, and the metadata group did not confirm the topic list: %v",
			replica.ErrNoLeader, name, berr)
	}
	return r.started(ctx, name)
}

// started is Get, after waiting for the start of the topic if this node is
// starting it. Errors: as Lookup's, but for the barrier.
func (r *Registry) started(ctx context.Context, name string) (*Topic, error) {
	r.mu.RLock()
	t := r.topics[name]
	r.mu.RUnlock()
	if t != nil && t.Group == nil && t.start != nil {
		select {
		case <-t.start.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: topic %q is starting on this node: %v", replica.ErrNoLeader, name, ctx.Err())
		}
		if err := t.start.err; err != nil {
			if !errors.Is(err, replica.ErrStopped) {
				// This node cannot serve it; the others may: clients
				// are told UNAVAILABLE (STORAGE_FAILED) and move on.
				err = fmt.Errorf("%w: %w", replica.ErrStorageFailed, err)
			}
			return nil, fmt.Errorf("topic %q did not start on this node: %w", name, err)
		}
	}
	return r.Get(name)
}

// Close waits for the topic starts in progress. Call it after stopping
// the engine (a start then fails and closes its log), before closing the
// journal the logs use.
func (r *Registry) Close() {
	r.starts.Wait()
}

// ListConfirmed is List once this node has applied every metadata command
// the cluster had committed when it was called (a metadata read barrier):
// a listing taken right after a create or update acknowledged through any
// node shows it. Errors: replica.ErrNoLeader when the metadata group does
// not confirm in time.
func (r *Registry) ListConfirmed(ctx context.Context) ([]*Topic, error) {
	if err := r.barrier(ctx, "the topic list"); err != nil {
		return nil, err
	}
	return r.List(), nil
}

// List returns every topic, sorted by name, as this node has applied them.
func (r *Registry) List() []*Topic {
	r.mu.RLock()
	out := make([]*Topic, 0, len(r.topics))
	for _, t := range r.topics {
		out = append(out, t)
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Topic) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Create creates a topic through the metadata group and returns once this
// node has applied it. Errors: ErrInvalidName, ErrInvalidSettings,
// ErrExists, ErrTooManyTopics, and the replica proposal errors.
func (r *Registry) Create(ctx context.Context, name string, s Settings) error {
	return r.create(ctx, name, s, true)
}

// create is Create; capped applies the topic cap (Ensure's creates, which
// the node's configuration asks for, do not).
func (r *Registry) create(ctx context.Context, name string, s Settings, capped bool) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := s.Validate(r.cfg.MinSegmentBytes); err != nil {
		return err
	}
	if capped {
		// Who leads decides who counts: wait for a leader to be known.
		wctx, cancel := r.metaWait(ctx)
		err := r.meta.WaitLeader(wctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w: the metadata group knows no leader", replica.ErrNoLeader)
		}
		if err != nil {
			return err
		}
		release, err := r.roomForTopic(name)
		if err != nil {
			return err
		}
		defer release()
	}
	if err := r.propose(ctx, command{Op: "create", Name: name, Settings: s}); err != nil {
		return err
	}
	// Answer once the topic can take messages: its group knows a leader.
	t, err := r.started(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil // removed again meanwhile
	}
	if err != nil {
		return err
	}
	return t.Group.WaitLeader(ctx)
}

// roomForTopic fails with ErrTooManyTopics when the metadata leader, this
// node, holds MaxTopics topics, counting the creates it has proposed and
// not yet applied, and name is not one of them (creating an existing
// topic fails with ErrExists, as before). Else it counts the create as
// pending until release. A create applied but not yet released counts
// once, as a topic: counting it as pending too refused creates under a
// burst while there was room (TestTopicCapHoldsUnderABurst, now and
// then). A node that does not lead the metadata group does not check: its
// proposal fails with NOT_LEADER and the call goes to the leader, whose
// cap counts.
func (r *Registry) roomForTopic(name string) (release func(), err error) {
	limit := r.cfg.MaxTopics
	if limit == 0 {
		limit = DefaultMaxTopics
	}
	if limit < 0 || r.meta.Leader() != r.cfg.NodeID {
		return func() {}, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.topics)
	for pending := range r.creating {
		if r.topics[pending] == nil {
			n++ // proposed, not applied yet
		}
	}
	// A name that exists, or whose create is under way, adds no topic: its
	// create fails with ErrExists, as before.
	adds := r.topics[name] == nil && r.creating[name] == 0
	if n >= limit && adds {
		r.log.Warn("topic: create refused: the cluster holds its cap of topics", "topic", name, "topics", len(r.topics), "limit", limit)
		return nil, fmt.Errorf("%w: the cluster holds %d topics (limit %d)", ErrTooManyTopics, len(r.topics), limit)
	}
	if r.creating == nil {
		r.creating = make(map[string]int)
	}
	r.creating[name]++
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.creating[name]--; r.creating[name] == 0 {
			delete(r.creating, name)
		}
	}, nil
}

// Update replaces a topic's settings. A segment size below
// Config.MinSegmentBytes passes only when it is the topic's current one (a
// topic created before the floor was raised keeps its size through updates
// of its other settings). Errors: ErrInvalidName, ErrInvalidSettings,
// ErrNotFound, and the replica proposal errors.
func (r *Registry) Update(ctx context.Context, name string, s Settings) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	r.mu.RLock()
	t := r.topics[name] // also a topic still starting
	r.mu.RUnlock()
	v := s
	if t != nil && s.SegmentBytes > 0 && s.SegmentBytes == t.Settings.SegmentBytes {
		// Its own size, resent unchanged (fbctl sends every setting): a
		// topic created before the floor rose (or before the cap) keeps
		// it, and its other settings can still change.
		v.SegmentBytes = 0
	}
	if err := v.Validate(r.cfg.MinSegmentBytes); err != nil {
		return err
	}
	return r.propose(ctx, command{Op: "update", Name: name, Settings: s})
}

// Remove stops a topic and moves its files to removed/. Errors:
// ErrInvalidName, ErrNotFound, and the replica proposal errors.
func (r *Registry) Remove(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	return r.propose(ctx, command{Op: "remove", Name: name})
}

// Ensure creates the topic unless it exists, until ctx ends. Every member
// of a cluster may call it: the metadata leader creates the topic, the
// others wait to apply the creation.
func (r *Registry) Ensure(ctx context.Context, name string, s Settings) error {
	for {
		t, err := r.started(ctx, name)
		if err == nil {
			return t.Group.WaitLeader(ctx)
		}
		if !errors.Is(err, ErrNotFound) {
			return err
		}
		err = r.create(ctx, name, s, false)
		if err == nil {
			continue // applied here: Get decides
		}
		if !errors.Is(err, ErrExists) && !errors.Is(err, replica.ErrNoLeader) && !errors.Is(err, replica.ErrLeadershipLost) &&
			!errors.Is(err, replica.ErrNotLeader) && !errors.Is(err, replica.ErrProposalDropped) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topic: creating %q: %w (last error: %v)", name, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (r *Registry) propose(ctx context.Context, c command) error {
	payload, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return r.meta.ProposeCommand(ctx, payload)
}

// apply is the metadata state machine. It runs on the engine goroutine (or
// during Open's replay) and must be deterministic.
func (r *Registry) apply(index uint64, payload []byte) error {
	var c command
	if err := json.Unmarshal(payload, &c); err != nil {
		r.log.Error("metadata: undecodable command, skipped", "index", index, "err", err)
		return fmt.Errorf("topic: undecodable command at %d: %w", index, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if index <= r.cpIndex {
		return nil // in the checkpoint the registry opened with
	}
	t := r.topics[c.Name]
	defer r.maybeCheckpointLocked(index)
	switch c.Op {
	case "create":
		if t != nil {
			return fmt.Errorf("%w: %q", ErrExists, c.Name)
		}
		r.addTopicLocked(&Topic{Name: c.Name, Settings: c.Settings, dir: fmt.Sprintf("%s.%d", c.Name, index), voters: slices.Clone(r.voters), created: index})
	case "update":
		if t == nil {
			return fmt.Errorf("%w: %q", ErrNotFound, c.Name)
		}
		r.updateTopicLocked(t, c.Settings)
	case "remove":
		if t == nil {
			return fmt.Errorf("%w: %q", ErrNotFound, c.Name)
		}
		r.removeTopicLocked(t)
	default:
		return fmt.Errorf("topic: unknown command %q at %d", c.Op, index)
	}
	return nil
}

// addTopicLocked adds a created topic and, on a running node, starts its
// group (start).
func (r *Registry) addTopicLocked(t *Topic) {
	if !r.replaying {
		t.start = &startState{done: make(chan struct{})}
		r.cfg.Engine.Expect(t.dir)
		r.starts.Add(1)
		go r.start(t)
	}
	r.topics[t.Name] = t
}

// updateTopicLocked gives topic t new settings.
func (r *Registry) updateTopicLocked(t *Topic, s Settings) {
	nt := *t
	nt.Settings = s
	r.topics[t.Name] = &nt
	if !r.replaying && nt.Group != nil && s.SegmentBytes != t.Settings.SegmentBytes {
		// The running log rolls at the new size from now on (its syncer
		// may hold the log meanwhile: SetSegmentBytes is safe for that).
		nt.Group.Log().SetSegmentBytes(r.segmentBytes(s))
	}
}

// removeTopicLocked removes topic t: its group stops, and its files are
// moved aside.
func (r *Registry) removeTopicLocked(t *Topic) {
	delete(r.topics, t.Name)
	if r.replaying || (t.Group == nil && (t.start == nil || t.start.ended)) {
		// Its group was never started (its files were aside already at
		// Open, or its start failed) and no group will close: make sure
		// its files are aside.
		r.moveAside(t)
		return
	}
	r.removing[t.dir] = struct{}{} // until closed moves its files aside
	r.cfg.Engine.RemoveGroup(t.dir)
	r.log.Info("topic removed", "topic", t.Name)
}

// checkConfChange refuses, at apply, a membership change proposed on an
// outdated view (deterministic: a function of the members applied so
// far): adding a node under an ID another node holds, or a name another ID
// holds (two AddNode calls at once, each taking the next free ID), adding
// a voter as a learner again (a stale add, which would demote it), and
// removing the last voter (raft panics on it, at every start). Raft then
// applies the entry as no change; AddNode sees its member missing and
// proposes again.
func (r *Registry) checkConfChange(cc *raftpb.ConfChangeV2) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	voters := slices.Clone(r.voters)
	for _, ch := range cc.GetChanges() {
		id := ch.GetNodeId()
		switch ch.GetType() {
		case raftpb.ConfChangeType_ConfChangeAddNode, raftpb.ConfChangeType_ConfChangeAddLearnerNode:
			if ch.GetType() == raftpb.ConfChangeType_ConfChangeAddLearnerNode && slices.Contains(voters, id) {
				return false
			}
			var m Member
			if len(cc.GetContext()) > 0 && json.Unmarshal(cc.GetContext(), &m) == nil && m.Name != "" {
				if old, ok := r.members[id]; ok && old.Name != m.Name {
					return false
				}
				for _, o := range r.members {
					if o.Name == m.Name && o.ID != id {
						return false
					}
				}
			}
			if ch.GetType() == raftpb.ConfChangeType_ConfChangeAddNode && !slices.Contains(voters, id) {
				voters = append(voters, id)
			}
		case raftpb.ConfChangeType_ConfChangeRemoveNode:
			voters = slices.DeleteFunc(voters, func(v uint64) bool { return v == id })
			if len(voters) == 0 {
				return false
			}
		}
	}
	return true
}

// applyConfChange tracks the cluster's members from the metadata group's
// configuration changes, whose context holds the Member.
func (r *Registry) applyConfChange(index uint64, cc *raftpb.ConfChangeV2, _ *raftpb.ConfState) {
	r.mu.Lock()
	if index <= r.cpIndex {
		r.mu.Unlock()
		return // in the checkpoint the registry opened with
	}
	for _, ch := range cc.GetChanges() {
		id := ch.GetNodeId()
		switch ch.GetType() {
		case raftpb.ConfChangeType_ConfChangeAddNode, raftpb.ConfChangeType_ConfChangeAddLearnerNode:
			m := Member{ID: id}
			if len(cc.GetContext()) > 0 {
				if err := json.Unmarshal(cc.GetContext(), &m); err != nil {
					r.log.Error("metadata: undecodable member context", "index", index, "err", err)
				}
				m.ID = id
			}
			if old, ok := r.members[id]; ok && m.Address == "" {
				m = old
			}
			r.members[id] = m
			r.noteChange()
			r.maxID = max(r.maxID, id)
			if ch.GetType() == raftpb.ConfChangeType_ConfChangeAddNode && !slices.Contains(r.voters, id) {
				r.voters = append(r.voters, id)
				slices.Sort(r.voters)
			}
		case raftpb.ConfChangeType_ConfChangeRemoveNode:
			r.maxID = max(r.maxID, id)
			if id == r.cfg.NodeID && r.markRemovedSelf() {
				r.log.Error("this node was removed from the cluster: it answers clients UNAVAILABLE from now on; stop it, and start it again only with a new data directory and -join")
			}
			delete(r.members, id)
			r.noteChange()
			r.voters = slices.DeleteFunc(r.voters, func(v uint64) bool { return v == id })
		}
	}
	members := r.membersLocked()
	r.mu.Unlock()
	if r.cfg.OnMembers != nil {
		r.cfg.OnMembers(members)
	}
}

func (r *Registry) membersLocked() []Member {
	out := make([]Member, 0, len(r.members))
	for _, m := range r.members {
		m.Learner = !slices.Contains(r.voters, m.ID)
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return int(a.ID) - int(b.ID) })
	return out
}

// Members returns the cluster's members, sorted by ID.
func (r *Registry) Members() []Member {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.membersLocked()
}

// segmentBytes is the segment size of a topic with settings s: its own,
// or the node's default (0: commitlog's).
func (r *Registry) segmentBytes(s Settings) int64 {
	if s.SegmentBytes > 0 {
		return s.SegmentBytes
	}
	return r.cfg.Log.SegmentBytes
}

// startLocked starts a topic of the metadata log replayed at Open.
func (r *Registry) startLocked(t *Topic) error {
	l, err := r.openLog(t)
	if err != nil || l == nil {
		return err
	}
	g, err := r.startGroup(t, l)
	if err != nil {
		return err
	}
	t.Group = g
	r.noteChange()
	return nil
}

// start starts a topic whose create command this node applied while
// running, off the engine goroutine and outside the registry's lock:
// creating a new log's directory and files and storing its configuration
// take several fsyncs, which apply, on the engine goroutine, made every
// group of the node wait for (and, under the lock, every lookup). Lookup
// waits for t.start meanwhile, and the engine keeps the messages its
// peers send the group (Engine.Expect). A topic removed (or replaced)
// before its group runs has its log closed and moved aside.
func (r *Registry) start(t *Topic) {
	defer r.starts.Done()
	defer close(t.start.done)
	l, err := r.openLog(t)
	if err == nil && l != nil {
		// Its configuration's fsyncs, before the lock that AddGroup runs
		// under.
		if err = replica.StoreBootstrapConf(l, r.bootstrapPeers(t)); err != nil {
			_ = l.Close()
		}
	}
	if err != nil || l == nil {
		r.endStart(t, err)
		return
	}
	r.mu.Lock()
	cur := r.topics[t.Name]
	if cur == nil || cur.dir != t.dir {
		r.mu.Unlock()
		if err := l.Close(); err != nil {
			r.log.Warn("closing the log of a topic removed while it started", "topic", t.Name, "err", err)
		}
		r.endStart(t, nil) // removed meanwhile: its files go aside
		return
	}
	// An update applied meanwhile may have changed the segment size; the
	// log is not the engine's yet.
	l.SetSegmentBytes(r.segmentBytes(cur.Settings))
	g, err := r.startGroup(t, l) // closes l if it fails
	if err != nil {
		r.mu.Unlock()
		r.endStart(t, err)
		return
	}
	t.start.ended = true
	nt := *cur
	nt.Group = g
	r.topics[t.Name] = &nt
	r.noteChange()
	r.mu.Unlock()
	r.log.Info("topic created", "topic", t.Name)
}

// endStart ends t's start without a group: err says why (nil when its
// files were already moved aside, or it was removed). A topic removed
// meanwhile has its files moved aside here; one removed later, by the
// remove's apply.
func (r *Registry) endStart(t *Topic, err error) {
	r.cfg.Engine.Forget(t.dir)
	if err != nil && !errors.Is(err, replica.ErrStopped) { // a node that stops fails its starts
		r.log.Error("starting topic", "topic", t.Name, "err", err)
	}
	r.mu.Lock()
	t.start.err = err
	t.start.ended = true
	cur := r.topics[t.Name]
	r.mu.Unlock()
	if cur == nil || cur.dir != t.dir {
		r.moveAside(t)
		r.removed(t)
	}
}

// openLog opens t's log; nil (and no error) when its files were already
// moved aside.
func (r *Registry) openLog(t *Topic) (*commitlog.Log, error) {
	if _, err := os.Stat(filepath.Join(r.cfg.Dir, "removed", t.dir)); err == nil {
		// Its removal was applied before a crash lost the commit index that
		// covers it; the remove command is applied again shortly. Do not
		// recreate an empty log in its place.
		r.log.Warn("topic already moved aside; waiting for its removal to be re-applied", "topic", t.Name)
		return nil, nil
	}
	opts := r.cfg.Log
	opts.SegmentBytes = r.segmentBytes(t.Settings)
	opts.Logger = r.log.With("topic", t.Name)
	l, err := commitlog.Open(filepath.Join(r.cfg.Dir, "topics", t.dir), opts)
	if err != nil {
		return nil, fmt.Errorf("topic %q: %w", t.Name, err)
	}
	return l, nil
}

// startGroup starts t's group on its log l (closed if it fails).
func (r *Registry) startGroup(t *Topic, l *commitlog.Log) (*replica.Group, error) {
	peers := r.bootstrapPeers(t)
	// Spread leaders: the voter chosen by the create index campaigns first.
	campaign := len(t.voters) > 0 && t.voters[t.created%uint64(len(t.voters))] == r.cfg.NodeID
	g, err := r.cfg.Engine.AddGroup(replica.GroupConfig{
		Name:     t.dir,
		Log:      l,
		Peers:    peers,
		Campaign: campaign,
		OnClose:  func() { r.closed(t) },
		// A new leader takes over the membership changes its predecessor
		// may have left unfinished (Reconcile).
		OnLead: r.noteChange,
	})
	if err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("topic %q: %w", t.Name, err)
	}
	return g, nil
}

// bootstrapPeers are the peers t's group bootstraps with on this node:
// nodes that were voters when the topic was created bootstrap its group
// alike; a node that joined later starts it empty and is sent the log.
func (r *Registry) bootstrapPeers(t *Topic) []raft.Peer {
	if !slices.Contains(t.voters, r.cfg.NodeID) {
		return nil
	}
	peers := make([]raft.Peer, 0, len(t.voters))
	for _, id := range t.voters {
		peers = append(peers, raft.Peer{ID: id})
	}
	return peers
}

// closed runs when a topic's group has stopped. A removed topic's files
// are moved aside.
func (r *Registry) closed(t *Topic) {
	r.mu.RLock()
	cur := r.topics[t.Name]
	r.mu.RUnlock()
	if cur != nil && cur.dir == t.dir {
		return // node shutdown, not a removal
	}
	r.moveAside(t)
	r.removed(t)
}

// removed notes that a removed topic's files are aside (or never were).
func (r *Registry) removed(t *Topic) {
	r.mu.Lock()
	delete(r.removing, t.dir)
	r.mu.Unlock()
}

func (r *Registry) moveAside(t *Topic) {
	from := filepath.Join(r.cfg.Dir, "topics", t.dir)
	if _, err := os.Stat(from); errors.Is(err, os.ErrNotExist) {
		return
	}
	to := filepath.Join(r.cfg.Dir, "removed", t.dir)
	// The directory's modification time says when the topic was removed
	// (PurgeRemoved): set before the move, so that a purge never sees it
	// in removed/ with the time of its last segment, and again after it.
	now := time.Now()
	_ = os.Chtimes(from, now, now)
	if err := os.Rename(from, to); err != nil {
		r.log.Error("moving removed topic aside", "topic", t.Name, "err", err)
		return
	}
	_ = os.Chtimes(to, now, now)
}

// PurgeRemoved deletes the files of the topics moved to removed/ more than
// age before now (their directory's modification time; a directory moved
// there by a build before PurgeRemoved has the time of its last change
// instead). age 0 or less keeps them for ever. A purge that fails is
// logged and tried again at the next call.
func (r *Registry) PurgeRemoved(now time.Time, age time.Duration) {
	if age <= 0 {
		return
	}
	dir := filepath.Join(r.cfg.Dir, "removed")
	des, err := os.ReadDir(dir)
	if err != nil {
		r.log.Warn("listing removed topics", "err", err)
		return
	}
	for _, de := range des {
		fi, err := de.Info()
		if err != nil || now.Sub(fi.ModTime()) <= age {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, de.Name())); err != nil {
			r.log.Warn("purging a removed topic's files", "dir", de.Name(), "err", err)
			continue
		}
		r.log.Info("purged a removed topic's files", "dir", de.Name(), "removed", fi.ModTime())
	}
}
