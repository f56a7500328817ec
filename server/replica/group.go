package replica

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	"github.com/forestbus/forestbus/server/commitlog"
)

// KindCommand marks an entry that carries a state-machine command for a
// group with an Apply hook (the metadata group). Layout: [0] KindCommand,
// [1:9] proposal tag, then the command payload. Message batches use
// commitlog.KindMessages and commitlog.EncodeBatch.
const KindCommand byte = 2

// KindTruncate marks an entry that moves a topic's retention floor:
// [0] KindTruncate, [1:9] proposal tag, [9:17] u64 LE raft index, [17:25]
// u64 LE message id. Every node applying it stops serving messages below the
// id and deletes its whole segments below the index (see Group.Truncate).
const KindTruncate byte = 3

const tagEnd = 9 // data[1:9] holds the proposal tag for every kind

// GroupConfig describes a group to AddGroup.
type GroupConfig struct {
	// Name identifies the group on this node and on the wire.
	Name string
	// Log is the group's storage; the group owns it from now on and closes
	// it when the group stops.
	Log *commitlog.Log
	// Peers are the initial voters, used only when Log is empty (a new
	// group). Every node that bootstraps a group must use the same peers. A
	// new group without peers starts empty and waits for its leader to send
	// it the log (a node joining an existing group).
	Peers []raft.Peer
	// Campaign makes a newly bootstrapped group campaign at once instead of
	// waiting for an election timeout; set it on one node per group.
	Campaign bool
	// Apply, when set, makes this a command group: every committed
	// KindCommand entry's payload is passed to it in log order, on the
	// engine goroutine, and its error goes back to the proposer. AddGroup
	// replays the committed prefix of the log through Apply before the group
	// starts. Apply must be deterministic.
	Apply func(index uint64, payload []byte) error
	// ApplyConfChange, when set, sees every configuration change entry in
	// log order as it is applied (and during the replay of a command group),
	// with the configuration that results. Used to track membership.
	ApplyConfChange func(index uint64, cc *raftpb.ConfChangeV2, cs *raftpb.ConfState)
	// CheckConfChange, when set, decides before each configuration change
	// entry is applied (and replayed) whether it takes effect: false makes
	// raft apply it as no change (the node IDs set to 0, as etcd does with
	// a change it refuses) and ApplyConfChange does not see it. It must be
	// deterministic, a function of the entries applied before: a stale or
	// conflicting change (proposed on an outdated view) is refused alike
	// by every node.
	CheckConfChange func(cc *raftpb.ConfChangeV2) bool
	// AfterReplay, when set, runs once Apply has replayed the log and before
	// the group starts: nothing else is applied concurrently with it.
	AfterReplay func() error
	// Snapshot, when set, is what raft sends a follower that needs entries
	// the log no longer holds, in place of the log's own snapshot: a
	// command group's state as of an applied index (its checkpoint, below
	// which it compacts its log). Called on the engine goroutine.
	Snapshot func() (*raftpb.Snapshot, error)
	// RestoreSnapshot, when set, receives a snapshot (from the leader's
	// Snapshot) that raft installs on this node, on the engine goroutine,
	// before the log is reset to start after it: it must make the state
	// durable, since the log no longer holds the entries that built it.
	// The log then gets the snapshot's metadata with empty data. An error
	// fences the group.
	RestoreSnapshot func(snap *raftpb.Snapshot) error
	// OnClose, when set, runs after the group's log is closed because of
	// RemoveGroup (on a goroutine of its own, unless the engine was
	// stopping) or Stop; either way before Stop returns.
	OnClose func()
	// OnLead, when set, runs on the engine goroutine whenever this node
	// becomes the group's leader, once it has applied an entry of its own
	// term (a new leader refuses configuration changes until it has
	// applied its predecessor's entries). It may run before raft itself
	// counts that entry applied (an entry applied ahead of its Ready
	// reaches raft with the next one), so a change proposed at once can
	// still be turned into an empty entry: callers check the outcome and
	// propose again, as the reconciler does. It must not block, nor call
	// the Group's methods, which wait for the engine goroutine.
	OnLead func()
}

// Result is the outcome of a proposal.
type Result struct {
	FirstID uint64 // ID of the batch's first message
	Count   uint32 // number of messages
	Err     error
}

type reportKind uint8

const (
	reportUnreachable reportKind = iota
	reportSnapshotDone
	reportSnapshotFailed
)

type peerReport struct {
	to   uint64
	kind reportKind
}

type reply struct {
	p *proposal
	r Result
}

type proposal struct {
	tag     uint64
	data    []byte // the entry; nil once raft has it
	pooled  bool   // data came from batchPool
	wait    bool   // answer at commit, not at local append
	firstID uint64
	count   uint32
	err     error       // ErrDuplicate
	done    chan Result // buffered, 1
	start   time.Time   // when it was proposed, for the commit latency
	// abandoned: its caller stopped waiting (its context ended) before it
	// reached raft; it is then not proposed (see holdProposals).
	abandoned atomic.Bool
}

// batchPool recycles the encoded batches of proposals. raft copies the
// entries of a MsgProp as it appends them (v3.7 raft.appendEntry clones
// each; TestRaftCopiesProposals fails if that changes), and a MsgProp that
// reaches a follower is dropped, not kept to forward, because the engine
// sets DisableProposalForwarding: so a batch's buffer is free again once
// its MsgProp has been stepped. Saves the leader an allocation of every
// batch it proposes.
var batchPool sync.Pool // of *[]byte

// maxPooledBatch bounds the buffers kept in batchPool.
const maxPooledBatch = 1 << 20

func getBatch() []byte {
	if b, ok := batchPool.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return nil
}

// release returns p's batch to batchPool once raft is done with it.
func (p *proposal) release() {
	if p.pooled && cap(p.data) <= maxPooledBatch {
		b := p.data[:0]
		batchPool.Put(&b)
	}
	p.data, p.pooled = nil, false
}

func (p *proposal) reply(r Result) {
	select {
	case p.done <- r:
	default: // already answered
	}
}

// Group is one raft group. Its raft state is owned by the engine goroutine;
// the exported methods are safe for concurrent use.
type Group struct {
	name      string
	e         *Engine
	log       *commitlog.Log
	rn        *raft.RawNode
	apply     func(uint64, []byte) error
	applyConf func(uint64, *raftpb.ConfChangeV2, *raftpb.ConfState)
	checkConf func(*raftpb.ConfChangeV2) bool
	// raftHS is raft's latest HardState (engine goroutine only); the log
	// records it with the commit point cut to the applied index
	// (recordHardState).
	raftHS  struct{ term, vote, commit uint64 }
	onClose func()
	onLead  func()
	// restoreSnap is GroupConfig.RestoreSnapshot.
	restoreSnap func(*raftpb.Snapshot) error
	// applying: applyEntries is running. Engine goroutine only.
	applying bool
	// leadPending: this node became the leader and has not yet applied an
	// entry of its term (onLead is owed). Engine goroutine only.
	leadPending bool

	// held are proposals waiting out a leadership hand-off or an
	// election (holdProposals), the first since heldSince. Engine
	// goroutine only.
	held      []*proposal
	heldSince time.Time
	// heldBytes is the data held, counted against MaxUncommittedBytes
	// with the inbox's (propose).
	heldBytes atomic.Uint64

	// Queued work, guarded by inboxMu.
	inboxMu    sync.Mutex
	inProps    []*proposal
	inMsgs     []*raftpb.Message
	inReports  []peerReport
	inOps      []func()
	inBytes    uint64 // data bytes of inProps
	spareProps []*proposal
	spareMsgs  []*raftpb.Message
	closed     bool

	// Engine goroutine only.
	rd       raft.Ready
	waiters  map[uint64]*proposal
	acks     []*proposal
	ids      []commitlog.EntryIDs
	fenced   error
	isLeader bool
	// release: the heartbeat a fenced leader sends its followers
	// (releaseFollowers), and how many more pings send it again.
	release struct {
		peers []uint64
		term  uint64
		left  int
	}
	// quiesced: idle, not ticking (see quiesce.go).
	quiesced bool
	// quiesceUnacked: this leader's quiesce heartbeats whose followers
	// have not acknowledged them yet; resent every quiesceResendTicks, at
	// most quiesceResends times (resendQuiesce).
	quiesceUnacked []*raftpb.Message
	quiesceTicks   int
	quiesceResends int
	// lostQuorum: raft deposed this leader for want of a quorum since the
	// last Ready (raftLogger); the leadership log says so.
	lostQuorum bool
	idleTicks  int
	hsTicks    int    // ticks since the commit point was last written (tick)
	pass       uint64 // the engine pass that last listed it as a candidate
	lost       bool   // leadership lost in the current Ready
	// leadLearned: a Ready named a leader where none was known; finish
	// asks a read round in flight again once the answer would be right.
	leadLearned bool
	replies     []reply
	props       []*raftpb.Entry   // scratch for batched proposals
	early       []*raftpb.Message // scratch for sendAppendsEarly
	acksIn      []*raftpb.Message // scratch for stepAcks
	// aheadErr: applyAhead failed while the log was the syncer's; the
	// group is fenced once the sync completes.
	aheadErr  error
	sentEarly bool // this Ready's MsgApps went out (or were held) before the sync
	// notices: commit notices held back, at most one per follower (see
	// holdNotice), since heldAt; holding: the group is in the engine's
	// holding list.
	notices []*raftpb.Message
	heldAt  time.Time
	holding bool
	// campaignAt > 0: campaign once the applied index reaches it.
	campaignAt uint64
	// syncState: whether the current Ready waits for a sync (see
	// Engine.run). While it does, the loop leaves the group alone: its
	// inbox queues, its ticks are owed (owedTick).
	syncState syncState
	owedTick  bool
	reads     reads // read barriers (readindex.go)

	// Readable by anyone.
	lead atomic.Uint64
	// leaderless is when the group last lost its leader (unix ns), 0
	// while it has one.
	leaderless atomic.Int64
	term       atomic.Uint64
	commitID   atomic.Uint64 // last committed message ID
	openCommit uint64        // commitID when the group opened (Metrics)
	applied    atomic.Uint64 // last applied raft index
	failed     atomic.Bool
	removing   atomic.Bool // set by RemoveGroup
	queued     atomic.Bool // in the engine's busy list
	metrics    groupMetrics
	conf       atomic.Pointer[raftpb.ConfState]

	notifyMu sync.Mutex
	notifyCh chan struct{} // closed when commit advances; nil when nobody waits
	stopped  chan struct{}
}

// AddGroup opens a group on its log and starts driving it. Safe to call from
// an Apply hook.
func (e *Engine) AddGroup(gc GroupConfig) (*Group, error) {
	if gc.Log == nil {
		return nil, errors.New("replica: GroupConfig.Log is nil")
	}
	hs, cs, err := gc.Log.InitialState()
	if err != nil {
		return nil, err
	}
	first, err := gc.Log.FirstIndex()
	if err != nil {
		return nil, err
	}
	last, err := gc.Log.LastIndex()
	if err != nil {
		return nil, err
	}
	commit := hs.GetCommit()
	if commit > last {
		return nil, fmt.Errorf("replica: group %q: commit index %d beyond last index %d", gc.Name, commit, last)
	}
	if commit < first-1 {
		commit = first - 1
	}
	g := &Group{
		name:      gc.Name,
		e:         e,
		log:       gc.Log,
		apply:     gc.Apply,
		applyConf: gc.ApplyConfChange,
		checkConf: gc.CheckConfChange,
		onClose:   gc.OnClose,
		onLead:    gc.OnLead,
		waiters:   make(map[uint64]*proposal),
		stopped:   make(chan struct{}),

		restoreSnap: gc.RestoreSnapshot,
	}
	g.raftHS.term, g.raftHS.vote, g.raftHS.commit = hs.GetTerm(), hs.GetVote(), commit
	// The stored term until raft's first hard state: an idle (quiesced)
	// topic's status and metrics said term 0 after a restart (review).
	g.term.Store(hs.GetTerm())
	g.leaderless.Store(time.Now().UnixNano()) // no leader known at start
	if g.apply != nil && commit >= first {
		if err := g.replay(first, commit); err != nil {
			return nil, err
		}
	}
	if gc.AfterReplay != nil {
		if err := gc.AfterReplay(); err != nil {
			return nil, err
		}
	}
	if err := StoreBootstrapConf(gc.Log, gc.Peers); err != nil {
		return nil, err
	}
	var storage raft.Storage = gc.Log
	if gc.Snapshot != nil {
		storage = snapshotStorage{gc.Log, g, gc.Snapshot}
	}
	rn, err := raft.NewRawNode(e.raftConfig(g, e.cfg.NodeID, storage, commit))
	if err != nil {
		return nil, fmt.Errorf("replica: group %q: %w", gc.Name, err)
	}
	g.rn = rn
	voters := cs.GetVoters()
	if last == 0 && len(gc.Peers) > 0 {
		if err := rn.Bootstrap(gc.Peers); err != nil {
			return nil, fmt.Errorf("replica: group %q: %w", gc.Name, err)
		}
		voters = make([]uint64, 0, len(gc.Peers)) // not cs's slice
		for _, p := range gc.Peers {
			voters = append(voters, p.ID)
		}
	}
	if (len(voters) == 1 && voters[0] == e.cfg.NodeID) || (gc.Campaign && last == 0 && len(gc.Peers) > 0) {
		// Sole voter, or the node chosen to lead a new group: no need to wait
		// an election timeout. Raft refuses to campaign while the bootstrap
		// configuration is unapplied, so a new group campaigns once it has
		// applied it (see finish).
		if last == 0 {
			g.campaignAt = uint64(len(gc.Peers))
		} else {
			_ = rn.Campaign()
		}
	}
	if last == 0 && len(gc.Peers) > 0 {
		cs = &raftpb.ConfState{Voters: voters}
	}
	g.conf.Store(cs)
	if commit >= first {
		ids, err := gc.Log.IDs(commit)
		if err != nil {
			return nil, err
		}
		g.commitID.Store(ids.Next - 1)
	} else {
		g.commitID.Store(gc.Log.FirstID() - 1)
	}
	g.openCommit = g.commitID.Load()
	g.applied.Store(commit)
	if err := e.register(g); err != nil {
		return nil, err
	}
	return g, nil
}

// StoreBootstrapConf stores in l, when it is empty and peers are given,
// the configuration that bootstrapping a group with peers makes. AddGroup
// does it on its caller's goroutine: storing it as the bootstrap entries
// are applied, on the engine goroutine, made every group of the node wait
// for its two fsyncs (the log skips storing an equal configuration again).
// A caller that must call AddGroup under a lock calls it first.
func StoreBootstrapConf(l *commitlog.Log, peers []raft.Peer) error {
	if len(peers) == 0 {
		return nil
	}
	if last, err := l.LastIndex(); err != nil || last != 0 {
		return err
	}
	ids := make([]uint64, 0, len(peers))
	for _, p := range peers {
		ids = append(ids, p.ID)
	}
	slices.Sort(ids)
	return l.SetConfState(&raftpb.ConfState{Voters: slices.Compact(ids)})
}

// replay feeds committed command entries of the log through Apply.
func (g *Group) replay(lo, hi uint64) error {
	for lo <= hi {
		ents, err := g.log.Entries(lo, hi+1, 4<<20)
		if err != nil {
			return fmt.Errorf("replica: group %q: replay: %w", g.name, err)
		}
		for _, ent := range ents {
			if payload, ok := commandPayload(ent); ok {
				_ = g.apply(ent.GetIndex(), payload) // the proposer got this error already
				continue
			}
			if g.applyConf != nil {
				if cc, err := confChange(ent); err != nil {
					return fmt.Errorf("replica: group %q: replay: %w", g.name, err)
				} else if cc != nil && (g.checkConf == nil || g.checkConf(cc)) {
					g.applyConf(ent.GetIndex(), cc, nil)
				}
			}
		}
		lo = ents[len(ents)-1].GetIndex() + 1
	}
	return nil
}

// snapshotStorage is a log whose snapshot comes from a command group's
// state (GroupConfig.Snapshot) rather than from the log. Raft asks for one
// on the engine goroutine, also while the group applies a batch of entries
// (a configuration change makes the leader send to its peers): the state
// is then ahead of the applied index, and raft is told to ask again later.
type snapshotStorage struct {
	*commitlog.Log
	g    *Group
	snap func() (*raftpb.Snapshot, error)
}

func (s snapshotStorage) Snapshot() (*raftpb.Snapshot, error) {
	if s.g.applying {
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return s.snap()
}

// confChange decodes a configuration change entry (nil for other entries).
func confChange(ent *raftpb.Entry) (*raftpb.ConfChangeV2, error) {
	switch ent.GetType() {
	case raftpb.EntryType_EntryConfChange:
		var cc raftpb.ConfChange
		if err := proto.Unmarshal(ent.Data, &cc); err != nil {
			return nil, fmt.Errorf("conf change at %d: %w", ent.GetIndex(), err)
		}
		return cc.AsV2(), nil
	case raftpb.EntryType_EntryConfChangeV2:
		var cc raftpb.ConfChangeV2
		if err := proto.Unmarshal(ent.Data, &cc); err != nil {
			return nil, fmt.Errorf("conf change at %d: %w", ent.GetIndex(), err)
		}
		return &cc, nil
	}
	return nil, nil
}

func commandPayload(ent *raftpb.Entry) ([]byte, bool) {
	if ent.GetType() != raftpb.EntryType_EntryNormal || len(ent.Data) < tagEnd || ent.Data[0] != KindCommand {
		return nil, false
	}
	return ent.Data[tagEnd:], true
}

func entryTag(ent *raftpb.Entry) (uint64, bool) {
	if ent.GetType() != raftpb.EntryType_EntryNormal || len(ent.Data) < tagEnd {
		return 0, false
	}
	if k := ent.Data[0]; k != commitlog.KindMessages && k != KindCommand && k != KindTruncate {
		return 0, false
	}
	return binary.LittleEndian.Uint64(ent.Data[1:tagEnd]), true
}

// Name is the group's name.
func (g *Group) Name() string { return g.name }

// Log is the group's storage (read-only use: reads and stats).
func (g *Group) Log() *commitlog.Log { return g.log }

// ElectionTimeout is the engine's election timeout (ElectionTicks ticks).
func (g *Group) ElectionTimeout() time.Duration { return g.e.electionTimeout }

// Leader is the raft ID of the group's leader, 0 when unknown, and 0 once
// the group is fenced (Failed): it follows no leader any more and leads
// nothing, though raft's last word may have named this node. (Status
// pages showed two leaders, and the node's own rounds — retention,
// membership, leader balancing, the hand-off at stop — took it for one.)
func (g *Group) Leader() uint64 {
	if g.failed.Load() {
		return raft.None
	}
	return g.lead.Load()
}

// CutOff reports whether the group has known no leader for two election
// timeouts: a node cut off from its peers (it loses its leader after an
// election timeout, also when the group was quiesced: see quiesce.go), or
// a group without a quorum; or a fenced group (Failed). Its commit point
// may lag the cluster's, so readers waiting at its tail are sent elsewhere
// (api: NO_LEADER).
func (g *Group) CutOff() bool {
	if g.failed.Load() {
		return true // fenced: it follows no leader any more (see fence)
	}
	since := g.leaderless.Load()
	return since != 0 && time.Since(time.Unix(0, since)) > 2*g.e.electionTimeout
}

// Joining reports whether the group has no configuration yet: this node
// joined the group after it was created (it was not among the voters that
// bootstrapped it), and the leader has not yet sent it the log's start, a
// snapshot or the first entries. Until then its log says nothing of the
// topic (first ID 1, commit 0, where the cluster may have trimmed IDs
// 1-940 long ago): Read answers ErrNoLeader, so readers go to another node.
func (g *Group) Joining() bool {
	cs := g.conf.Load()
	return cs == nil || (len(cs.GetVoters()) == 0 && len(cs.GetLearners()) == 0)
}

// errJoining answers reads on a Joining group.
var errJoining = fmt.Errorf("%w: this node joined the topic's group and has not yet received its log from the leader", ErrNoLeader)

// Failed reports whether the group is fenced after a storage error: it
// takes no writes and its commit point no longer moves.
func (g *Group) Failed() bool { return g.failed.Load() }

// Term is the group's current raft term as last seen by the engine.
func (g *Group) Term() uint64 { return g.term.Load() }

// CommitID is the ID of the last committed message (0 when none).
func (g *Group) CommitID() uint64 { return g.commitID.Load() }

// Applied is the last applied raft index.
func (g *Group) Applied() uint64 { return g.applied.Load() }

// enqueue runs add (which appends to the inbox) under the inbox lock and
// queues the group for the engine; it reports false, without running add,
// once the group is closed.
func (g *Group) enqueue(add func()) bool {
	g.inboxMu.Lock()
	if g.closed {
		g.inboxMu.Unlock()
		return false
	}
	add()
	g.inboxMu.Unlock()
	g.e.markBusy(g)
	return true
}

// WaitLeader returns once the group knows a leader, or with ctx's error.
func (g *Group) WaitLeader(ctx context.Context) error {
	return g.waitLead(ctx, func(lead uint64) bool { return lead != raft.None })
}

// waitLead waits until ok holds for the group's leader. Leader changes wake
// the commit waiters too.
func (g *Group) waitLead(ctx context.Context, ok func(lead uint64) bool) error {
	for {
		ch := g.commitWait()
		if ok(g.lead.Load()) {
			return nil
		}
		select {
		case <-ch:
		case <-g.stopped:
			return ErrStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// do runs fn on the engine goroutine, where the raft state lives, and
// waits for it. fn runs only if its caller still waits when the loop
// reaches it, and then the caller gets its answer, whatever ctx does
// meanwhile: a caller that gave up has fn's effects withdrawn, and one
// that gets an error may read what fn would have set, untouched. (An op
// whose caller had gone ran anyway: HandTo answered "canceled, not asked"
// for a hand-off raft then made, which nobody aborted, and read its
// answer while the loop wrote it; a review found it.)
func (g *Group) do(ctx context.Context, fn func() error) error {
	done := make(chan error, 1)
	var claim atomic.Int32 // opRuns or opAbandoned, by whichever comes first
	op := func() {
		if !claim.CompareAndSwap(0, opRuns) {
			return
		}
		if g.fenced != nil {
			done <- ErrStorageFailed
			return
		}
		done <- fn()
	}
	if !g.enqueue(func() { g.inOps = append(g.inOps, op) }) {
		return ErrStopped
	}
	var err error
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		err = ctx.Err()
	case <-g.stopped:
		err = ErrStopped
	}
	if claim.CompareAndSwap(0, opAbandoned) {
		return err
	}
	return <-done // fn runs now on the loop: its answer is due
}

// do's claims on an op.
const (
	opRuns      = 1
	opAbandoned = 2
)

// await queues op for the engine goroutine and waits for its answer on
// done (buffered), for ctx to end, or for the group to stop.
func (g *Group) await(ctx context.Context, op func(), done <-chan error) error {
	if !g.enqueue(func() { g.inOps = append(g.inOps, op) }) {
		return ErrStopped
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-g.stopped:
		return ErrStopped
	}
}

// ProposeConfChange proposes a configuration change. It returns once raft
// took the proposal; the change is in force when it is applied (see
// GroupConfig.ApplyConfChange and Status). Raft silently turns a change
// proposed while another is pending into a no-op, so callers check the
// outcome. Errors: ErrNotLeader, ErrNoLeader, ErrProposalDropped.
func (g *Group) ProposeConfChange(ctx context.Context, cc *raftpb.ConfChangeV2) error {
	if err := g.awaitLeader(ctx); err != nil {
		return err
	}
	return g.do(ctx, func() error {
		if !g.isLeader {
			return g.checkLeader()
		}
		if err := g.rn.ProposeConfChange(cc); err != nil {
			if errors.Is(err, raft.ErrProposalDropped) {
				return ErrProposalDropped
			}
			return err
		}
		return nil
	})
}

// Truncate replicates a retention cut: every node stops serving messages
// below beforeID and deletes its whole segments below the raft index
// beforeIndex (the entry holding beforeID). Only the leader may propose it;
// both must be committed (the caller takes them from the leader's log).
// It returns once the cut is applied here.
func (g *Group) Truncate(ctx context.Context, beforeIndex, beforeID uint64) error {
	if err := g.awaitLeader(ctx); err != nil {
		return err
	}
	if beforeID > g.commitID.Load()+1 {
		return fmt.Errorf("replica: truncate at id %d above the commit point %d", beforeID, g.commitID.Load())
	}
	tag := g.e.nextTag()
	data := make([]byte, tagEnd+16)
	data[0] = KindTruncate
	binary.LittleEndian.PutUint64(data[1:tagEnd], tag)
	binary.LittleEndian.PutUint64(data[tagEnd:], beforeIndex)
	binary.LittleEndian.PutUint64(data[tagEnd+8:], beforeID)
	_, err := g.propose(ctx, tag, data, false, true)
	return err
}

// Compact deletes the whole segments of the log below index (capped at the
// applied index, and at raft's, which applyAhead may be ahead of: raft
// still reads the entries above it from the log) on this node. A follower
// that later needs a deleted entry is sent a snapshot.
func (g *Group) Compact(ctx context.Context, index uint64) error {
	return g.do(ctx, func() error {
		index = min(index, g.applied.Load(), g.rn.BasicStatus().Applied)
		if err := g.log.DeleteBefore(index); err != nil {
			g.fence(err)
			return err
		}
		return nil
	})
}

// TransferLeadership hands the group's leadership to its most caught-up
// voter and returns once another node leads, or ctx ends. It does nothing
// when this node does not lead or has no other voter. A voter that does
// not take over within an election timeout (raft then aborts the
// transfer; a node that stands aside ignores it, see StandAside) is
// skipped, and the next one asked: a review saw hand-offs that all went
// to a node its peers refused, and waited out their whole limit.
func (g *Group) TransferLeadership(ctx context.Context) error {
	self := g.e.cfg.NodeID
	var tried []uint64
	for {
		var to uint64
		err := g.do(ctx, func() error {
			if !g.isLeader {
				return nil
			}
			st := g.rn.Status()
			var best uint64
			for id, pr := range st.Progress {
				if id == self || slices.Contains(tried, id) || !g.mayTakeOver(id, pr) {
					continue
				}
				if to == 0 || pr.Match > best {
					to, best = id, pr.Match
				}
			}
			if to != 0 {
				g.quiesced = false
				g.rn.TransferLeader(to)
			}
			return nil
		})
		if err != nil || to == 0 {
			if err == nil && len(tried) > 0 && g.lead.Load() == self {
				return fmt.Errorf("replica: no voter took over the leadership (asked %v)", tried)
			}
			return err
		}
		tried = append(tried, to)
		// Raft gives a transfer an election timeout; a tick or two more
		// for the new leader's first message to arrive.
		actx, cancel := context.WithTimeout(ctx, g.e.electionTimeout+2*g.e.cfg.TickInterval)
		err = g.waitLead(actx, func(lead uint64) bool { return lead != self }) // handed over, or lost
		cancel()
		if err == nil || ctx.Err() != nil || errors.Is(err, ErrStopped) {
			return err
		}
	}
}

// HandTo asks raft to hand the group's leadership to voter to, when this
// node leads, no other hand-off is under way, and to is active, being
// replicated to, and at most maxLag entries behind this node's log: raft
// then sends it MsgTimeoutNow within a round trip, and proposals are
// dropped (ErrProposalDropped) only that long. It reports whether it
// asked; it does not wait for the outcome (see TransferLeadership).
func (g *Group) HandTo(ctx context.Context, to, maxLag uint64) (bool, error) {
	var asked bool
	err := g.do(ctx, func() error {
		if !g.isLeader || to == g.e.cfg.NodeID || g.fenced != nil {
			return nil
		}
		st := g.rn.Status()
		pr, ok := st.Progress[to]
		if st.LeadTransferee != raft.None || !ok || !g.mayTakeOver(to, pr) {
			return nil
		}
		last, err := g.log.LastIndex()
		if err != nil || last > pr.Match+maxLag {
			return nil
		}
		g.quiesced = false
		g.rn.TransferLeader(to)
		asked = true
		return nil
	})
	return asked, err
}

// mayTakeOver reports whether voter id, whose progress on this leader is
// pr, can take the leadership soon: a voter, active, being replicated to,
// and not standing aside (stopping or refused: it would ignore the
// transfer, StandAside). A stopped or lagging node cannot. Engine
// goroutine only.
func (g *Group) mayTakeOver(id uint64, pr tracker.Progress) bool {
	// PeerLive: a quiesced leader has not ticked, so raft's RecentActive
	// may be an old word for a node silent since (dead, cut off).
	return !pr.IsLearner && pr.RecentActive && pr.State == tracker.StateReplicate && !g.e.peerAside(id) && g.e.PeerLive(id)
}

// AbortTransfer ends a leadership hand-off this node's raft still waits
// for (HandTo's, when the target did not take over), so the group takes
// proposals again now rather than after an election timeout. It reports
// whether one was pending.
func (g *Group) AbortTransfer(ctx context.Context) (bool, error) {
	var aborted bool
	err := g.do(ctx, func() error {
		if g.isLeader && g.rn.BasicStatus().LeadTransferee != raft.None {
			g.rn.TransferLeader(g.e.cfg.NodeID) // raft: a transfer to the leader aborts the pending one
			aborted = true
		}
		return nil
	})
	return aborted, err
}

// RequestLeadership asks the group's leader to hand leadership to this node
// (raft forwards a follower's transfer request to the leader). Used when the
// leader is no longer a member of the cluster.
func (g *Group) RequestLeadership(ctx context.Context) error {
	if g.e.standAside.Load() {
		return nil // it would not take it (StandAside)
	}
	return g.do(ctx, func() error {
		if !g.isLeader {
			g.quiesced = false
			g.rn.TransferLeader(g.e.cfg.NodeID)
		}
		return nil
	})
}

// Status is the group's raft status (with follower progress on a leader).
func (g *Group) Status(ctx context.Context) (raft.Status, error) {
	var st raft.Status
	err := g.do(ctx, func() error {
		st = g.rn.Status()
		return nil
	})
	if err != nil {
		return raft.Status{}, err
	}
	return st, nil
}

// ConfState is the group's configuration as last applied on this node.
func (g *Group) ConfState() *raftpb.ConfState { return g.conf.Load() }

// Stopped is closed once the group has stopped.
func (g *Group) Stopped() <-chan struct{} { return g.stopped }

// awaitLeader is checkLeader, but while no leader is known (an election
// under way, or a group just opened) it waits up to an election timeout.
func (g *Group) awaitLeader(ctx context.Context) error {
	err := g.checkLeader()
	if !errors.Is(err, ErrNoLeader) {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 2*g.e.electionTimeout)
	defer cancel()
	if g.WaitLeader(wctx) != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return g.checkLeader()
}

func (g *Group) checkLeader() error {
	if g.failed.Load() {
		return ErrStorageFailed
	}
	lead := g.lead.Load()
	if lead == g.e.cfg.NodeID {
		return nil
	}
	if lead == raft.None {
		return ErrNoLeader
	}
	return &NotLeaderError{Leader: lead}
}

// Propose appends a batch of messages. With wait it returns once the batch is
// committed, else once it is in the leader's log (synced, in fsync mode).
// Errors: ErrNotLeader (*NotLeaderError), ErrNoLeader, ErrProposalDropped,
// ErrLeadershipLost, ErrStorageFailed, ErrStopped, ctx errors.
func (g *Group) Propose(ctx context.Context, msgs [][]byte, wait bool) (Result, error) {
	return g.ProposeFrom(ctx, 0, 0, msgs, wait)
}

// ProposeFrom is Propose for an idempotent producer: a batch whose
// (producerID, seq) the log already holds is not stored again, and the
// answer carries the IDs the first copy got. producerID 0 disables the
// check. Errors: as Propose, plus ErrDuplicate when the first copy is too
// old for its IDs to be remembered.
func (g *Group) ProposeFrom(ctx context.Context, producerID, seq uint64, msgs [][]byte, wait bool) (Result, error) {
	if err := g.awaitLeader(ctx); err != nil {
		return Result{}, err
	}
	tag := g.e.nextTag()
	data := commitlog.EncodeBatch(getBatch(), tag, producerID, seq, msgs)
	return g.propose(ctx, tag, data, true, wait)
}

// ProposeCommand proposes a command to a group with an Apply hook and waits
// until it is applied on this node; it returns Apply's error.
func (g *Group) ProposeCommand(ctx context.Context, payload []byte) error {
	if err := g.awaitLeader(ctx); err != nil {
		return err
	}
	tag := g.e.nextTag()
	data := make([]byte, tagEnd+len(payload))
	data[0] = KindCommand
	binary.LittleEndian.PutUint64(data[1:tagEnd], tag)
	copy(data[tagEnd:], payload)
	_, err := g.propose(ctx, tag, data, false, true)
	return err
}

func (g *Group) propose(ctx context.Context, tag uint64, data []byte, pooled, wait bool) (Result, error) {
	p := &proposal{tag: tag, data: data, pooled: pooled, wait: wait, done: make(chan Result, 1), start: time.Now()}
	full := false
	ok := g.enqueue(func() {
		// The queue in front of raft is bounded like raft's own
		// uncommitted budget: backpressure, not an unbounded queue.
		held := g.heldBytes.Load()
		if g.inBytes+held+uint64(len(data)) > g.e.cfg.MaxUncommittedBytes && (len(g.inProps) > 0 || held > 0) {
			full = true
			return
		}
		g.inBytes += uint64(len(data))
		g.inProps = append(g.inProps, p)
	})
	if !ok {
		return Result{}, ErrStopped
	}
	if full {
		p.release()
		return Result{}, ErrProposalDropped
	}
	select {
	case r := <-p.done:
		return r, r.Err
	case <-ctx.Done():
		p.abandoned.Store(true)
		return Result{}, ctx.Err()
	case <-g.stopped:
		select {
		case r := <-p.done: // answered as the group stopped
			return r, r.Err
		default:
			return Result{}, ErrStopped
		}
	}
}

// MaxReadMessages caps the messages of one read, whatever its count and
// byte limits allow: a message costs a reader ~24 bytes of memory (a slice
// header) besides its payload, so an answer of 4 MiB of empty messages
// (2 bytes each on the wire) held 2 million of them, ~50 MB, on the node
// and on the client. The cap costs a reader of 100-byte messages nothing
// (4 MiB holds ~41,000 of them).
const MaxReadMessages = 1 << 16

// ReadResult is the answer to Read.
type ReadResult struct {
	Messages [][]byte
	NextID   uint64
	CommitID uint64
}

// Read returns committed messages from id (0 reads as 1): at least one when
// one is committed at id, up to maxCount messages (and MaxReadMessages) and
// maxBytes (each message counted by commitlog.MessageCost). Below the first retained ID it returns no messages and NextID =
// first retained ID. When nothing is committed at id and wait > 0, it waits
// up to wait for a commit, then returns an empty result. Errors: ErrStopped
// (group removed while waiting), ErrStorageFailed (nothing committed at id
// and the group is fenced: its commit point no longer moves; a read
// waiting when the group is fenced gets it at once), ErrNoLeader (the
// group is Joining), ctx errors.
func (g *Group) Read(ctx context.Context, id uint64, maxCount, maxBytes int, wait time.Duration) (ReadResult, error) {
	return g.read(ctx, id, maxCount, 0, maxBytes, wait, false, nil)
}

// ReadInto is Read into sc's reusable buffers (commitlog.Log.ReadInto): the
// messages are valid until the next ReadInto with sc.
func (g *Group) ReadInto(ctx context.Context, sc *commitlog.Scratch, id uint64, maxCount, maxBytes int, wait time.Duration) (ReadResult, error) {
	return g.read(ctx, id, maxCount, 0, maxBytes, wait, false, sc)
}

// ReadBatchesInto is Read with count and fill (bytes, as maxBytes) as
// targets instead of caps, into sc's reusable buffers: the answer holds at
// least count messages and fill bytes when that much is committed, and ends
// on a stored batch boundary (commitlog.Log.ReadBatchesInto), so it may
// hold more (never more than maxBytes). The messages are valid
// until the next read with sc.
func (g *Group) ReadBatchesInto(ctx context.Context, sc *commitlog.Scratch, id uint64, count, fill, maxBytes int, wait time.Duration) (ReadResult, error) {
	return g.read(ctx, id, count, fill, maxBytes, wait, true, sc)
}

func (g *Group) read(ctx context.Context, id uint64, maxCount, fill, maxBytes int, wait time.Duration, whole bool, sc *commitlog.Scratch) (ReadResult, error) {
	if id == 0 {
		id = 1
	}
	if g.Joining() {
		return ReadResult{}, errJoining
	}
	if wait > 0 && id > g.commitID.Load() {
		if err := g.AwaitCommit(ctx, id, wait); err != nil {
			return ReadResult{}, err
		}
	}
	commit := g.commitID.Load()
	if first := g.log.FirstID(); id < first {
		return ReadResult{NextID: first, CommitID: commit}, nil
	}
	if id > commit {
		if g.failed.Load() {
			// Fenced: this node's commit point moves no more, while the
			// cluster's may. An empty answer at its tail would keep the
			// reader here for ever: send it to another node.
			return ReadResult{NextID: id, CommitID: commit}, ErrStorageFailed
		}
		return ReadResult{NextID: id, CommitID: commit}, nil // the wait ended
	}
	var (
		msgs [][]byte
		next uint64
		err  error
	)
	hi := min(commit, id+MaxReadMessages-1) // the message cap
	switch {
	case whole:
		msgs, next, err = g.log.ReadBatchesInto(sc, id, hi, maxCount, fill, maxBytes)
	case sc != nil:
		msgs, next, err = g.log.ReadInto(sc, id, hi, maxCount, maxBytes)
	default:
		msgs, next, err = g.log.ReadMessages(nil, id, hi, maxCount, maxBytes)
	}
	if errors.Is(err, commitlog.ErrCompacted) {
		return ReadResult{NextID: g.log.FirstID(), CommitID: commit}, nil
	}
	if errors.Is(err, commitlog.ErrClosed) {
		return ReadResult{}, ErrStopped
	}
	if err != nil {
		return ReadResult{}, err
	}
	return ReadResult{Messages: msgs, NextID: next, CommitID: commit}, nil
}

// AwaitCommit waits until id is committed, up to wait, so that a reader
// at the tail can wait without holding read buffers and then read (with no
// wait) into pooled ones. It returns nil when id is committed, when the
// wait ends, and when a read would answer at once anyway (the group is
// fenced or Joining); errors: ErrStopped (the group was removed), ctx
// errors.
func (g *Group) AwaitCommit(ctx context.Context, id uint64, wait time.Duration) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ch := g.commitWait()
		if g.commitID.Load() >= id || g.failed.Load() || g.Joining() {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-ch:
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-g.stopped:
			return ErrStopped
		}
	}
}

// commitWait returns a channel closed at the next commit advance.
func (g *Group) commitWait() <-chan struct{} {
	g.notifyMu.Lock()
	defer g.notifyMu.Unlock()
	if g.notifyCh == nil {
		g.notifyCh = make(chan struct{})
	}
	return g.notifyCh
}

func (g *Group) notifyCommit() {
	g.notifyMu.Lock()
	if g.notifyCh != nil {
		close(g.notifyCh)
		g.notifyCh = nil
	}
	g.notifyMu.Unlock()
}

// Details describes the group's log as seen on this node.
type Details struct {
	FirstID, LastID, CommitID uint64
	Leader, Term              uint64
}

// Details reports the group's IDs and leader, consistent with one another
// (FirstID <= CommitID+1 <= LastID+1) although the engine moves them
// while they are read: the commit ID is read before the last ID (a
// committed message is in the log, which never drops below the commit
// point), and it is at least the ID before the first one (a snapshot
// moves the log's first ID before the group's commit ID; the snapshot's
// messages are committed).
func (g *Group) Details() Details {
	first := g.log.FirstID()
	commit := g.commitID.Load()
	if first > 0 {
		commit = max(commit, first-1)
	}
	return Details{
		FirstID:  first,
		LastID:   g.log.NextID() - 1,
		CommitID: commit,
		Leader:   g.Leader(),
		Term:     g.term.Load(),
	}
}

// --- engine goroutine only below ---

// holdProposals reports, by raft's state st, whether the proposals at
// hand wait rather than be answered now: while this leader hands its
// leadership over (raft drops proposals then, and the producer would
// retry after its backoff), and while this follower knows no leader (as
// during the hand-off's election). Once the new leader is known they get its name
// (NotLeaderError, which the API forwards to it at once), or, if the
// hand-off was called off, go to raft. A wait lasts an election timeout
// and two ticks at most (raft's own bound on a hand-off); then they are
// answered as before (ErrProposalDropped, ErrNoLeader). The group is
// looked at again when its leadership changes and at every tick while
// some are held.
func (g *Group) holdProposals(st raft.BasicStatus) bool {
	var wait bool
	switch {
	case g.fenced != nil:
	case st.RaftState == raft.StateLeader:
		wait = st.LeadTransferee != raft.None
	default:
		wait = st.Lead == raft.None
	}
	if !wait {
		return false
	}
	if g.heldSince.IsZero() {
		g.heldSince = time.Now()
	}
	return time.Since(g.heldSince) < g.e.electionTimeout+2*g.e.cfg.TickInterval
}

func (g *Group) drainInbox() {
	g.inboxMu.Lock()
	props, msgs, reports, ops := g.inProps, g.inMsgs, g.inReports, g.inOps
	g.inProps, g.inMsgs, g.inReports, g.inOps = g.spareProps[:0], g.spareMsgs[:0], nil, nil
	// The proposals taken stay counted until the pass has held or stepped
	// them (heldBytes is stored exactly at its end): propose must not see
	// them as gone meanwhile.
	g.heldBytes.Add(g.inBytes)
	g.inBytes = 0
	g.inboxMu.Unlock()

	if g.isLeader && (len(ops) > 0 || len(reports) > 0 || len(props) > 0) {
		// A leader's work may need raft ticking. A quiesced follower's
		// does not (raft drops its proposals; the operations that need it
		// ticking, RequestLeadership, wake it themselves): woken, it would
		// hear nothing from its quiesced leader, campaign after an
		// election timeout, and lose its leader meanwhile.
		g.quiesced = false
	}
	for _, op := range ops {
		op()
	}

	if g.fenced == nil {
		for _, r := range reports {
			switch r.kind {
			case reportUnreachable:
				g.rn.ReportUnreachable(r.to)
			case reportSnapshotDone:
				g.rn.ReportSnapshot(r.to, raft.SnapshotFinish)
			case reportSnapshotFailed:
				g.rn.ReportSnapshot(r.to, raft.SnapshotFailure)
			}
		}
	}

	for i, m := range msgs {
		if g.fenced == nil {
			if m.GetType() == raftpb.MessageType_MsgHeartbeatResp && isQuiesceMsg(m) {
				// A follower acknowledging quiescence. Not for raft: v3.7
				// reads a heartbeat context as a ReadIndex counter.
				g.ackQuiesce(m)
				msgs[i] = nil
				continue
			}
			if m.GetType() == raftpb.MessageType_MsgHeartbeat && g.lostLog(m) {
				msgs[i] = nil
				continue
			}
			_ = g.rn.Step(m)
			switch {
			case !isQuiesceMsg(m):
				g.quiesced = false
			case m.GetType() == raftpb.MessageType_MsgHeartbeat && m.GetFrom() == g.lead.Load() && !g.isLeader:
				g.quiesced = true // the leader went idle
				g.quiesceUnacked = g.quiesceUnacked[:0]
			}
		}
		msgs[i] = nil
	}
	// All queued proposals go to raft as one MsgProp: one append, one
	// MsgApp per follower.
	if len(g.held) > 0 {
		props = append(g.held, props...) // the held first: they came first
		g.held = nil
	}
	var heldBytes uint64
	// raft's state now: the messages just stepped may have changed it
	// since the last Ready (g.isLeader, g.lead).
	var st raft.BasicStatus
	if len(props) > 0 && g.fenced == nil {
		st = g.rn.BasicStatus()
	}
	hold := len(props) > 0 && g.holdProposals(st)
	ents := g.props[:0]
	for i, p := range props {
		switch {
		case p.abandoned.Load():
			// Its caller has gone and may send it again: not proposed.
			// (Held, it would have been stored up to a second later.)
			p.release()
			props[i] = nil
		case g.fenced != nil:
			p.reply(Result{Err: ErrStorageFailed})
			props[i] = nil
		case hold:
			g.held = append(g.held, p)
			heldBytes += uint64(len(p.data))
			props[i] = nil
		case st.RaftState != raft.StateLeader:
			var err error = ErrNoLeader
			if st.Lead != raft.None {
				err = &NotLeaderError{Leader: st.Lead}
			}
			p.reply(Result{Err: err})
			props[i] = nil
		default:
			g.waiters[p.tag] = p
			ents = append(ents, &raftpb.Entry{Data: p.data})
		}
	}
	// Stored once, not cleared and added up: propose must not see the
	// held as none meanwhile.
	g.heldBytes.Store(heldBytes)
	if len(g.held) == 0 {
		g.heldSince = time.Time{} // the next wait starts its own clock
	}
	if len(ents) > 0 {
		err := g.rn.Step(&raftpb.Message{
			Type:    raftpb.MessageType_MsgProp.Enum(),
			From:    new(g.e.cfg.NodeID),
			Entries: ents,
		})
		if err != nil {
			if errors.Is(err, raft.ErrProposalDropped) {
				err = ErrProposalDropped
			}
			for _, p := range props {
				if p != nil {
					delete(g.waiters, p.tag)
					p.reply(Result{Err: err})
				}
			}
		}
	}
	for _, p := range props {
		if p != nil {
			p.release() // raft has its own copy (or dropped it)
		}
	}
	clear(ents)
	g.props = ents[:0]
	clear(props)
	g.inboxMu.Lock()
	g.spareProps, g.spareMsgs = props[:0], msgs[:0]
	g.inboxMu.Unlock()
}

// lostLog fences the group when a leader's heartbeat says this node has
// stored entries its log does not hold: the node lost data (its directory
// was wiped, or restored from an older copy, while it kept its identity).
// raft would panic there and take every topic of the node down, in a crash
// loop; one group stops instead, with an error that says what happened and
// what to do. A leader's heartbeat carries min(the follower's acknowledged
// index, the commit index), entries that are durable on this node and
// committed, so never truncated: a healthy log always reaches it.
func (g *Group) lostLog(m *raftpb.Message) bool {
	last, err := g.log.LastIndex()
	if err != nil || m.GetCommit() <= last || m.GetTerm() < g.rn.BasicStatus().GetTerm() {
		return false
	}
	g.fence(fmt.Errorf("replica: group %q: node %d, leader in term %d, says this node stored entries up to index %d, but its log ends at %d: this node's data was lost; remove the node from the cluster and add it back as a new one",
		g.name, m.GetFrom(), m.GetTerm(), m.GetCommit(), last))
	return true
}

func (g *Group) fence(err error) {
	if g.fenced != nil {
		return
	}
	g.fenced = err
	g.failed.Store(true)
	g.e.log.Error("group fenced after storage error", "group", g.name, "err", err)
	// The group stops, its log stays open: the records it holds in memory
	// go to the file now, so that no journal checkpoint waits for them.
	// (A log that fails that write pins the journal instead.)
	_ = g.log.FlushHeld()
	for _, r := range g.replies {
		r.p.reply(Result{Err: ErrStorageFailed})
	}
	g.replies = g.replies[:0]
	for _, p := range g.held {
		p.reply(Result{Err: ErrStorageFailed})
	}
	g.held, g.heldSince = nil, time.Time{}
	g.heldBytes.Store(0)
	g.failWaiters(ErrStorageFailed)
	g.failReads(ErrStorageFailed)
	g.notifyCommit() // reads waiting at the tail: see read
	g.releaseFollowers()
}

// releaseFollowers runs when a leader's group is fenced. It sends nothing
// from now on, while its node goes on pinging, so a follower that
// quiesced would wait for it for ever: the node is not silent. A last
// heartbeat that is not a quiesce message wakes the followers; they then
// hear nothing more, time out and elect a leader between them. (Commit 0:
// a heartbeat never lowers a follower's commit index.) The transport may
// drop a message, so the engine sends the heartbeat again at its next
// releaseResends pings (resendReleases). One that arrives after the
// election is refused by raft (its term is old), but it wakes the group
// there if it had quiesced again: a round of heartbeats at most.
func (g *Group) releaseFollowers() {
	if !g.isLeader || g.e.cfg.Transport == nil {
		return
	}
	st := g.rn.Status()
	if st.RaftState != raft.StateLeader {
		return
	}
	for id := range st.Progress {
		if id != g.e.cfg.NodeID {
			g.release.peers = append(g.release.peers, id)
		}
	}
	if len(g.release.peers) == 0 {
		return
	}
	g.release.term = st.HardState.GetTerm()
	g.sendRelease()
	g.release.left = releaseResends
	g.e.releasing = append(g.e.releasing, g)
}

// sendRelease sends releaseFollowers' heartbeat.
func (g *Group) sendRelease() {
	self := g.e.cfg.NodeID
	msgs := make([]*raftpb.Message, 0, len(g.release.peers))
	for _, id := range g.release.peers {
		msgs = append(msgs, &raftpb.Message{
			Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: new(self), To: new(id),
			Term: new(g.release.term), Commit: new(uint64(0)),
		})
	}
	g.e.cfg.Transport.Send(g.name, msgs)
}

// releaseResends is how many times releaseFollowers sends its heartbeat
// again, a ping interval apart.
const releaseResends = 3

func (g *Group) failWaiters(err error) {
	for tag, p := range g.waiters {
		p.reply(Result{Err: err})
		delete(g.waiters, tag)
	}
	g.acks = g.acks[:0]
}

// persist takes a Ready and writes it to the log. It reports whether the log
// needs a sync.
func (g *Group) persist() bool {
	rd := g.rn.Ready()
	g.rd = rd
	if !raft.IsEmptyHardState(rd.HardState) {
		g.term.Store(rd.HardState.GetTerm())
	}
	if rd.SoftState != nil {
		was := g.lead.Swap(rd.SoftState.Lead)
		leader := rd.SoftState.RaftState == raft.StateLeader
		g.e.leaders.note(g.name, g.term.Load(), was, rd.SoftState.Lead, g.isLeader, leader, g.lostQuorum)
		g.lostQuorum = false
		if was != rd.SoftState.Lead {
			defer g.notifyCommit() // wakes WaitLeader
			if was == raft.None {
				g.leadLearned = true
			}
			if rd.SoftState.Lead == raft.None {
				g.leaderless.Store(time.Now().UnixNano())
			} else {
				g.leaderless.Store(0)
			}
		}
		if g.isLeader && !leader {
			g.lost = true // waiters fail after this Ready's commits are answered
		}
		if len(g.held) > 0 {
			g.e.markBusy(g) // the held proposals: answer or propose them
		}
		if leader != g.isLeader {
			g.leadPending = leader && g.onLead != nil
		}
		g.isLeader = leader
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		snap := rd.Snapshot
		if g.restoreSnap != nil {
			if err := g.restoreSnap(snap); err != nil {
				g.fence(err)
				return false
			}
			// The state is the hook's; the log keeps the position.
			snap = &raftpb.Snapshot{Metadata: rd.Snapshot.Metadata, Data: commitlog.EncodeSnapshotData(nil, 1)}
		}
		if err := g.log.ApplySnapshot(snap); err != nil {
			g.fence(err)
			return false
		}
	}
	if len(rd.Entries) > 0 {
		ids, err := g.log.Append(rd.Entries, g.ids[:0])
		g.ids = ids
		if err != nil {
			g.fence(err)
			return false
		}
		for i, id := range ids {
			if id.Count > 0 && !id.Dup {
				g.metrics.appendedMsgs.Add(uint64(id.Count))
				g.metrics.appendedBytes.Add(uint64(len(rd.Entries[i].Data)))
			}
		}
		if len(g.waiters) > 0 {
			for i, ent := range rd.Entries {
				tag, ok := entryTag(ent)
				if !ok {
					continue
				}
				p := g.waiters[tag]
				if p == nil {
					continue
				}
				p.firstID, p.count = ids[i].FirstID, ids[i].Count
				if ids[i].Dup && ids[i].FirstID == 0 {
					p.err = ErrDuplicate
				}
				if !p.wait {
					g.acks = append(g.acks, p)
				}
			}
		}
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		g.raftHS.term, g.raftHS.vote, g.raftHS.commit = rd.HardState.GetTerm(), rd.HardState.GetVote(), rd.HardState.GetCommit()
		if err := g.recordHardState(); err != nil {
			g.fence(err)
			return false
		}
	}
	g.sendAppendsEarly()
	return len(rd.Entries) > 0 || rd.MustSync || !raft.IsEmptySnap(rd.Snapshot)
}

// sendAppendsEarly sends a leader's MsgApps as soon as its entries are
// written, before they are synced: the leader's disk write and its
// followers' overlap (Raft thesis §10.2.1). This is safe because the leader
// counts its own copy toward a commit only once it is durable (raft steps
// that acknowledgement in at Advance); everything else in the Ready —
// votes, responses, heartbeats — still waits for the sync.
func (g *Group) sendAppendsEarly() {
	g.sentEarly = false
	if !g.isLeader || g.e.cfg.Transport == nil {
		return
	}
	early := g.early[:0]
	for _, m := range g.rd.Messages {
		if m.GetType() != raftpb.MessageType_MsgApp {
			continue
		}
		g.sentEarly = true
		if len(m.GetEntries()) == 0 && g.e.cfg.CommitNoticeDelay > 0 && g.apply == nil {
			g.holdNotice(m)
			continue
		}
		g.dropNotice(m.GetTo())
		early = append(early, m)
	}
	if len(early) > 0 {
		g.e.cfg.Transport.Send(g.name, early)
	}
	clear(early)
	g.early = early[:0]
}

// holdNotice holds back m, a leader's append without entries: it only
// tells the follower of a new commit index (or probes one that is up to
// date). A commit advances when the followers acknowledge an append, and
// under load the leader sends them its next append a moment later, which
// carries the commit index too: the held notice is then dropped
// (dropNotice), saving a message and its acknowledgement per follower and
// commit, and the follower a Ready. The group's notices that nothing
// replaces go out Config.CommitNoticeDelay after the first of them was
// held (sendNotices); a quiescing leader drops them, its quiesce heartbeat
// carries the commit index. Holding a message back is safe: raft tolerates
// delay and loss, and the commit index only tells a follower which entries
// it may apply. The leader's commits, and the answers to its producers, do
// not wait for it. A group with an Apply hook (the metadata group) does not
// hold its notices: topics created or removed reach every node at once, so
// that a producer that created a topic finds it on any node.
func (g *Group) holdNotice(m *raftpb.Message) {
	// The time counts from the first notice held: a notice that replaces
	// an older one for the same follower keeps its time, or notices made
	// more often than CommitNoticeDelay (a probe's empty append answers
	// every heartbeat response) would never go out.
	if len(g.notices) == 0 {
		g.heldAt = time.Now()
	}
	g.dropNotice(m.GetTo())
	g.notices = append(g.notices, m)
	if !g.holding {
		g.holding = true
		e := g.e
		if len(e.holding) == 0 {
			e.noticeTimer.Reset(e.cfg.CommitNoticeDelay)
		}
		e.holding = append(e.holding, g)
	}
}

// dropNotice drops the notice held for follower to, if any.
func (g *Group) dropNotice(to uint64) {
	for i, n := range g.notices {
		if n.GetTo() == to {
			g.notices = slices.Delete(g.notices, i, i+1)
			return
		}
	}
}

// dropNotices drops every notice the group holds.
func (g *Group) dropNotices() {
	clear(g.notices)
	g.notices = g.notices[:0]
}

// sendNotices runs when the notice timer fires. It sends the commit
// notices a group has held for Config.CommitNoticeDelay (see holdNotice),
// those of a group that still leads in the term they were made in, and
// sets the timer for the groups whose notices are younger: a notice held
// a moment ago is likely to be replaced by an append soon. Engine
// goroutine only.
func (e *Engine) sendNotices() {
	now := time.Now()
	var next time.Duration
	keep := e.holding[:0]
	for _, g := range e.holding {
		if len(g.notices) > 0 && g.isLeader && g.fenced == nil && !g.removing.Load() {
			if wait := g.heldAt.Add(e.cfg.CommitNoticeDelay).Sub(now); wait > 0 {
				keep = append(keep, g)
				if next == 0 || wait < next {
					next = wait
				}
				continue
			}
			term := g.term.Load()
			g.notices = slices.DeleteFunc(g.notices, func(m *raftpb.Message) bool { return m.GetTerm() != term })
			e.cfg.Transport.Send(g.name, g.notices) // notices exist only with a transport
		}
		g.dropNotices()
		g.holding = false
	}
	clear(e.holding[len(keep):])
	e.holding = keep
	if len(keep) > 0 {
		e.noticeTimer.Reset(next)
	}
}

// laterMessages is the part of msgs not sent by sendAppendsEarly.
func (g *Group) laterMessages(msgs []*raftpb.Message) []*raftpb.Message {
	if !g.sentEarly {
		return msgs
	}
	rest := g.early[:0]
	for _, m := range msgs {
		if m.GetType() != raftpb.MessageType_MsgApp {
			rest = append(rest, m)
		}
	}
	g.early = rest[:0]
	return rest
}

// finish sends, answers, applies and advances: the part of the Ready
// contract that follows a durable write.
func (g *Group) finish() {
	if g.fenced != nil {
		return
	}
	rd := g.rd
	g.rd = raft.Ready{}
	if msgs := g.laterMessages(rd.Messages); len(msgs) > 0 && g.e.cfg.Transport != nil {
		g.e.cfg.Transport.Send(g.name, msgs)
	}
	for i, p := range g.acks {
		p.reply(Result{FirstID: p.firstID, Count: p.count, Err: p.err})
		delete(g.waiters, p.tag)
		g.acks[i] = nil
	}
	g.acks = g.acks[:0]
	if !raft.IsEmptySnap(rd.Snapshot) {
		g.afterSnapshot(rd.Snapshot)
	}
	// Skip what applyCommitted and applyAhead applied before.
	if ents := unapplied(rd.CommittedEntries, g.applied.Load()); len(ents) > 0 {
		if err := g.applyEntries(ents); err != nil {
			g.fence(err)
			return
		}
		if g.apply != nil {
			// A state machine's commands (the metadata group's topics
			// and members) are rare: their commit point goes to the
			// file at once, so that a node killed and restarted replays
			// every command it had applied. Otherwise it would serve
			// without them (a topic it had created, "not found") until
			// it heard from the group's leader.
			if err := g.log.FlushHardState(); err != nil {
				g.fence(err)
				return
			}
		}
	}
	if g.lost {
		g.lost = false
		g.failWaiters(ErrLeadershipLost)
	}
	g.rn.Advance(rd)
	g.readStates(rd.ReadStates)
	if g.leadLearned {
		// raft dropped the round's request while no leader was known:
		// ask again as soon as the answer would be right (a new leader
		// first commits an entry of its term), rather than after
		// readRoundTicks, which a quiesced group does not count: a node
		// just started waited for its first barrier until its caller
		// gave up.
		if rd := g.reads.inFlight; rd == nil {
			g.leadLearned = false
		} else if g.mayAskRead() {
			g.leadLearned = false
			g.askRead(rd)
		}
	}
	if g.campaignAt > 0 && g.applied.Load() >= g.campaignAt {
		g.campaignAt = 0
		_ = g.rn.Campaign()
	}
}

// applyCommitted applies the Ready's committed entries before the pass's
// fsync instead of after it, so that a commit is answered without waiting
// for the write of the proposals that arrived meanwhile. Committed entries
// are durable on a majority already, and this node wrote them (persist runs
// first); only its own copy of the newest ones may still be unsynced. A
// crash then loses nothing acknowledged: raft restores them from the
// majority, and the hardstate's commit point is cut to the durable log on
// open. Groups with an Apply hook (the metadata group, whose hooks open
// and remove topics) and Readies with a snapshot or a configuration change
// keep the textbook order: apply after the sync.
func (g *Group) applyCommitted() {
	rd := &g.rd
	if g.fenced != nil || g.apply != nil || !raft.IsEmptySnap(rd.Snapshot) {
		return
	}
	ents := unapplied(rd.CommittedEntries, g.applied.Load()) // applyAhead's
	if len(ents) == 0 {
		return
	}
	for _, ent := range ents {
		switch ent.GetType() {
		case raftpb.EntryType_EntryConfChange, raftpb.EntryType_EntryConfChangeV2:
			return
		}
	}
	if err := g.applyEntries(ents); err != nil {
		g.fence(err)
	}
}

// unapplied is the part of ents above index applied.
func unapplied(ents []*raftpb.Entry, applied uint64) []*raftpb.Entry {
	for len(ents) > 0 && ents[0].GetIndex() <= applied {
		ents = ents[1:]
	}
	return ents
}

// stepAcks runs on a leader whose Ready waits for a sync: it steps the
// followers' append acknowledgements queued meanwhile and applies what they
// commit (applyAhead), instead of leaving both until after the sync and the
// next Ready. Two followers' durable copies are a majority without the
// leader's own, so their commit and its answers need not wait for the
// leader's fsync (Raft thesis §10.2.1, as for sendAppendsEarly). raft
// allows Step between Ready and Advance (raft.Node steps there too). The
// log may be the syncer's, so nothing here writes it: every other message,
// proposal, report and operation stays in the inbox for after the sync.
func (g *Group) stepAcks() {
	g.inboxMu.Lock()
	acks, n := g.acksIn[:0], 0
	for _, m := range g.inMsgs {
		if m.GetType() == raftpb.MessageType_MsgAppResp {
			acks = append(acks, m)
		} else {
			g.inMsgs[n] = m
			n++
		}
	}
	clear(g.inMsgs[n:])
	g.inMsgs = g.inMsgs[:n]
	g.inboxMu.Unlock()
	if len(acks) == 0 {
		return
	}
	g.quiesced = false
	for i, m := range acks {
		_ = g.rn.Step(m)
		acks[i] = nil
	}
	g.acksIn = acks[:0]
	g.applyAhead()
}

// maxAheadBytes bounds the entries one applyAhead reads and applies.
const maxAheadBytes = 4 << 20

// applyAhead applies the entries raft has committed beyond the applied
// index without waiting for the Ready that will carry them (whose
// CommittedEntries then skip them), while this node has led since the
// current Ready: a leader's log is raft's log, never cut, so the entries it
// wrote up to the commit index are the committed ones. Only message batches
// and empty entries, in groups without an Apply hook: applying them writes
// nothing to the log (truncations and configuration changes do).
func (g *Group) applyAhead() {
	st := g.rn.BasicStatus()
	if !g.isLeader || st.RaftState != raft.StateLeader || st.GetTerm() != g.term.Load() || g.apply != nil || g.fenced != nil || g.aheadErr != nil {
		return
	}
	lo := g.applied.Load() + 1
	last, err := g.log.LastIndex()
	hi := min(st.GetCommit(), last)
	if err != nil || hi < lo {
		return
	}
	// At most a few MiB at a time (the next acknowledgement goes on): a
	// leader elected with a long committed tail must not stall the loop.
	ents, err := g.log.Entries(lo, hi+1, maxAheadBytes)
	if err != nil {
		return // the Ready will carry them
	}
	for i, ent := range ents {
		if ent.GetType() != raftpb.EntryType_EntryNormal || len(ent.Data) > 0 && ent.Data[0] != commitlog.KindMessages {
			ents = ents[:i]
			break
		}
	}
	if len(ents) > 0 {
		g.aheadErr = g.applyEntries(ents)
	}
}

// releaseCache lets the log forget the cached entries raft will not read
// back: those applied here and, on a leader, held by every follower (a
// follower behind is sent from the cache until it catches up).
func (g *Group) releaseCache(applied uint64) {
	upto := applied
	if g.isLeader {
		g.rn.WithProgress(func(_ uint64, _ raft.ProgressType, pr tracker.Progress) {
			upto = min(upto, pr.Match)
		})
	}
	g.log.ReleaseCache(upto)
}

// flushHeld writes the records the log holds in memory (commitlog
// write-behind) to its segment when force is set or the group is quiesced:
// an idle group keeps no buffer, and a journal checkpoint does not wait for
// it. Also for a fenced group (its log may still be writable).
func (g *Group) flushHeld(force bool) {
	if !g.log.Holding() || !force && !g.quiesced {
		return
	}
	if err := g.log.FlushHeld(); err != nil {
		g.fence(err)
	}
}

func (g *Group) afterSnapshot(snap *raftpb.Snapshot) {
	idx := snap.GetMetadata().GetIndex()
	if cs := snap.GetMetadata().GetConfState(); cs != nil {
		g.conf.Store(cs)
	}
	g.applied.Store(idx)
	g.commitID.Store(g.log.FirstID() - 1)
	g.notifyCommit()
}

// recordHardState records raft's hard state in the log, with the commit
// point cut to the index this group has applied. A group restarts with
// raft taking everything up to the stored commit point as applied
// (Config.Applied): a point above the applied index, recorded when a Ready
// arrived and stored by a stop or a flush before its entries were applied
// (those with a configuration change wait for the sync), would skip that
// change for good, and the node would run on an old configuration (a
// review found it). Raft needs no stored commit point; a restarted node
// learns the rest from the leader. Term and vote are recorded as raft
// gave them (written at once, synced before any message that depends on
// them); a commit-only change is kept in memory until the next flush.
func (g *Group) recordHardState() error {
	return g.log.SetHardStateParts(g.raftHS.term, g.raftHS.vote, min(g.raftHS.commit, g.applied.Load()))
}

func (g *Group) applyEntries(ents []*raftpb.Entry) error {
	// Raft may ask for a snapshot in the middle (applying a configuration
	// change sends to the peers): a command group's state is then newer
	// than its applied index (snapshotStorage).
	g.applying = true
	defer func() { g.applying = false }()
	for _, ent := range ents {
		switch ent.GetType() {
		case raftpb.EntryType_EntryConfChange, raftpb.EntryType_EntryConfChangeV2:
			cc, err := confChange(ent)
			if err != nil {
				return fmt.Errorf("replica: group %q: %w", g.name, err)
			}
			refused := g.checkConf != nil && !g.checkConf(cc)
			if refused {
				g.e.log.Warn("replica: configuration change refused", "group", g.name, "index", ent.GetIndex(), "change", cc.String())
				cc = voidConfChange()
			}
			cs := g.rn.ApplyConfChange(cc)
			// Stored unless equal to the stored one: a new group's
			// bootstrap entries (raft applied them at Bootstrap, and
			// AddGroup stored the result) store nothing.
			if err := g.log.SetConfState(cs); err != nil {
				return err
			}
			g.conf.Store(cs)
			if g.applyConf != nil && !refused {
				g.applyConf(ent.GetIndex(), cc, cs)
			}
		default:
			var applyErr error
			if payload, ok := commandPayload(ent); ok && g.apply != nil {
				applyErr = g.apply(ent.GetIndex(), payload)
			}
			if len(ent.Data) > 0 && ent.Data[0] == commitlog.KindMessages {
				g.metrics.committedBytes.Add(uint64(len(ent.Data)))
			}
			if len(ent.Data) == tagEnd+16 && ent.Data[0] == KindTruncate {
				index := binary.LittleEndian.Uint64(ent.Data[tagEnd:])
				id := binary.LittleEndian.Uint64(ent.Data[tagEnd+8:])
				if err := g.log.SetFloor(id); err != nil {
					return err
				}
				if err := g.log.DeleteBefore(min(index, ent.GetIndex())); err != nil {
					return err
				}
			}
			if len(g.waiters) > 0 {
				if tag, ok := entryTag(ent); ok {
					if p := g.waiters[tag]; p != nil && p.wait {
						g.metrics.observe(time.Since(p.start))
						if applyErr == nil {
							applyErr = p.err
						}
						g.replies = append(g.replies, reply{p, Result{FirstID: p.firstID, Count: p.count, Err: applyErr}})
						delete(g.waiters, tag)
					}
				}
			}
		}
	}
	last := ents[len(ents)-1].GetIndex()
	ids, err := g.log.IDs(last)
	if err != nil {
		return err
	}
	g.commitID.Store(ids.Next - 1)
	g.applied.Store(last)
	if err := g.recordHardState(); err != nil {
		return err
	}
	g.releaseCache(last)
	g.notifyCommit()
	if g.leadPending && ents[len(ents)-1].GetTerm() == g.term.Load() { // cleared when the lead is lost
		g.leadPending = false
		g.onLead()
	}
	// Answer only now, so a proposer that reads right after its answer sees
	// its own messages.
	for i, r := range g.replies {
		r.p.reply(r.r)
		g.replies[i] = reply{}
	}
	g.replies = g.replies[:0]
	return nil
}

// close stops the group: callers get err, the log is closed.
func (g *Group) close(err error) {
	if g.stop(err) {
		g.closeLog()
	}
}

// closeInBackground is close with the log's close, and what waits for it,
// on a goroutine of its own: closing a log syncs it (its held records, the
// hardstate, and whatever its segments hold that only the journal made
// durable: 0.3 ms for an idle topic, ~20 ms for one with 32 MiB journaled,
// measured), which the loop's other groups need not wait for when a topic
// is removed. The group is out of the loop's hands by then (removing). At
// most maxClosing such closes run at once, so that a burst of removals
// does not crowd the other groups' syncs; Engine.Stop waits for them.
func (g *Group) closeInBackground(err error) {
	if !g.stop(err) {
		return
	}
	g.e.closers.Add(1)
	go func() {
		defer g.e.closers.Done()
		g.e.closingNow <- struct{}{}
		defer func() { <-g.e.closingNow }()
		g.closeLog()
	}()
}

// maxClosing bounds the removed groups' logs closing at once.
const maxClosing = 2

// stop fails the group's callers with err; it reports false if the group
// was already stopped.
func (g *Group) stop(err error) bool {
	g.inboxMu.Lock()
	if g.closed {
		g.inboxMu.Unlock()
		return false
	}
	g.closed = true
	props := append(g.held, g.inProps...)
	g.held = nil
	g.heldBytes.Store(0)
	g.inProps = nil
	g.inOps = nil // their callers wait on g.stopped
	g.inboxMu.Unlock()
	for _, p := range props {
		p.reply(Result{Err: err})
	}
	g.failWaiters(err)
	return true
}

// closeLog closes the stopped group's log, then ends its Stopped channel
// and runs OnClose.
func (g *Group) closeLog() {
	if cerr := g.log.Close(); cerr != nil {
		g.e.log.Warn("closing group log", "group", g.name, "err", cerr)
	}
	close(g.stopped)
	g.notifyCommit()
	if g.onClose != nil {
		g.onClose()
	}
}

// voidConfChange is a change refused: one simple change of node 0, which
// raft skips (etcd's way to refuse a change), leaving the configuration
// as it is.
func voidConfChange() *raftpb.ConfChangeV2 {
	return &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeType_ConfChangeAddNode.Enum(), NodeId: new(uint64)}}}
}
