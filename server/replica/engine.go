package replica

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
)

// Transport carries raft messages to other nodes. Send must not block: it
// queues and returns, and may read the messages (and their entries) after
// it returns; nothing modifies them (raft does not change what it has
// handed out in a Ready). Declared here, where it is used.
type Transport interface {
	Send(group string, msgs []*raftpb.Message)
}

// Config configures an Engine. Zero fields take the documented defaults.
type Config struct {
	// NodeID is this node's raft ID: non-zero, stable, never reused.
	NodeID uint64
	// TickInterval is the raft tick. Default 100 ms.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks. Default 10.
	ElectionTicks int
	// HeartbeatTicks is the heartbeat interval in ticks. Default 1.
	HeartbeatTicks int
	// MaxUncommittedBytes bounds a leader's uncommitted entries per group;
	// proposals beyond it fail with ErrProposalDropped. Default 64 MiB.
	MaxUncommittedBytes uint64
	// Transport sends messages to peers; nil for a single-node cluster.
	Transport Transport
	// Logger; default slog.Default().
	Logger *slog.Logger
	// CommitNoticeDelay is how long a leader may hold back an append that
	// carries no entries, only a new commit index, before sending it: an
	// append with entries that follows within the delay carries the commit
	// index anyway, and the held one is dropped (see holdNotice). Under load
	// that halves the messages, and the follower work, of every commit; an
	// idle follower learns of a commit up to this much later (a tick later
	// if the replacing append is lost). Default 20 ms; negative: send at
	// once.
	CommitNoticeDelay time.Duration
	// Journal is the node's commitlog journal, nil when there is none.
	// While one of its checkpoints waits for logs to write the records
	// they hold in memory (commitlog write-behind), the loop writes them.
	Journal *commitlog.Journal
	// AnnounceLater: the engine's pings carry no incarnation and ask for
	// no leaders (pingAsks) until Announce, which the node calls once it
	// has opened its groups. Peers react to a restart at once (they
	// campaign, they heartbeat): messages for groups not open yet would be
	// dropped. Off: the engine announces itself when it starts.
	AnnounceLater bool
}

func (c *Config) withDefaults() error {
	if c.NodeID == 0 || c.NodeID >= 1<<16 {
		return errors.New("replica: NodeID must be in [1, 65535]")
	}
	if c.TickInterval <= 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = 10
	}
	if c.HeartbeatTicks <= 0 {
		c.HeartbeatTicks = 1
	}
	if c.HeartbeatTicks >= c.ElectionTicks {
		return fmt.Errorf("replica: HeartbeatTicks (%d) must be below ElectionTicks (%d)", c.HeartbeatTicks, c.ElectionTicks)
	}
	if c.CommitNoticeDelay == 0 {
		c.CommitNoticeDelay = 20 * time.Millisecond
	}
	if c.MaxUncommittedBytes == 0 {
		c.MaxUncommittedBytes = 64 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Engine drives the raft groups of one node from a single goroutine (see the
// package doc). Its methods are safe for concurrent use.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	wake chan struct{}

	mu         sync.Mutex
	groups     map[string]*Group
	version    uint64         // bumped when groups changes; the loop rebuilds its list
	busy       []*Group       // groups with queued work (Group.queued set)
	closing    []*Group       // removed groups the loop has not closed yet
	closers    sync.WaitGroup // removed groups' logs closing (closeInBackground)
	closingNow chan struct{}  // a slot per such close running (maxClosing)
	// expected holds, by name, the messages that arrived for the groups
	// being opened (Expect), for AddGroup to deliver.
	expected map[string][]*raftpb.Message

	tagSeq          atomic.Uint64        // proposal tags: node ID in the top 16 bits
	epoch           time.Time            // creation: the clock silentFor measures from
	lastHeard       sync.Map             // node ID -> *atomic.Int64, tick it was last heard
	silenceTicks    int64                // silenceTicks(cfg.ElectionTicks)
	silenced        atomic.Bool          // unheard marked a peer silent since the loop last looked
	pingSoon        atomic.Bool          // ping now, not at the next interval (see pingAsks)
	asked           []uint64             // peers whose pings asked for leaders since the loop looked (see pingAsks); guarded by mu
	incarnation     uint64               // this engine's, in its pings (see noteIncarnation)
	announced       atomic.Bool          // pings carry incarnation and asks (Announce)
	standAside      atomic.Bool          // StandAside
	incarnations    map[uint64]uint64    // peers' as last pinged; guarded by mu
	upSince         map[uint64]time.Time // PeerReadySince; guarded by mu
	aside           map[uint64]bool      // peers whose last ping said they stand aside; guarded by mu
	restarted       []uint64             // peers whose incarnation changed since the loop looked; guarded by mu
	peers           []uint64             // pinged for liveness; guarded by mu
	electionTimeout time.Duration
	metrics         engineMetrics // the syncer's (Metrics)

	// Loop-only: peers' silence as of the last tick (refreshSilence).
	silence []peerSilence
	// Loop-only: groups holding commit notices (Group.notices), looked at
	// when noticeTimer fires; the timer is set whenever holding is not
	// empty.
	holding     []*Group
	noticeTimer *time.Timer
	// Loop-only: fenced leaders still sending their followers the
	// heartbeat that releases them (Group.releaseFollowers).
	releasing []*Group
	// Loop-only: leadership changes not logged yet.
	leaders leadershipLog

	stopc   chan struct{}
	donec   chan struct{}
	started bool
	stopped bool
}

// NewEngine returns an engine; Start runs it.
func NewEngine(cfg Config) (*Engine, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:        cfg,
		log:        cfg.Logger,
		wake:       make(chan struct{}, 1),
		groups:     make(map[string]*Group),
		closingNow: make(chan struct{}, maxClosing),
		stopc:      make(chan struct{}),
		donec:      make(chan struct{}),
	}
	if cfg.Journal != nil {
		cfg.Journal.OnWait(e.kick)
	}
	e.leaders.log = cfg.Logger
	e.noticeTimer = time.NewTimer(time.Hour)
	e.noticeTimer.Stop()
	e.epoch = time.Now()
	e.incarnation = uint64(e.epoch.UnixNano())
	e.incarnations = make(map[uint64]uint64)
	e.upSince = make(map[uint64]time.Time)
	e.aside = make(map[uint64]bool)
	e.tagSeq.Store(rand.Uint64() & (1<<48 - 1))
	e.electionTimeout = time.Duration(cfg.ElectionTicks) * cfg.TickInterval
	e.silenceTicks = silenceTicks(cfg.ElectionTicks)
	return e, nil
}

// NodeID is this node's raft ID.
func (e *Engine) NodeID() uint64 { return e.cfg.NodeID }

// Start starts the loop goroutine. It does nothing on an engine started or
// stopped already.
func (e *Engine) Start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started || e.stopped {
		return
	}
	e.started = true
	if !e.cfg.AnnounceLater {
		e.announced.Store(true)
	}
	go e.run()
}

// Announce makes the engine's pings carry its incarnation and ask for
// leaders, from a ping sent at once (see Config.AnnounceLater).
func (e *Engine) Announce() {
	e.announced.Store(true)
	e.pingSoon.Store(true)
	e.kick()
}

// Stop stops the loop, fails pending callers with ErrStopped and closes every
// group's log. It waits for the loop to exit.
func (e *Engine) Stop() {
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		<-e.donec
		return
	}
	e.stopped = true
	e.expected = nil
	started := e.started
	e.mu.Unlock()
	close(e.stopc)
	if started {
		<-e.donec
	} else {
		e.closeAll()
		close(e.donec)
	}
}

// Group returns the named group, or nil.
func (e *Engine) Group(name string) *Group {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.groups[name]
}

// Step delivers a raft message from a peer to the named group. Unknown groups
// drop the message, unless they are expected (Expect).
func (e *Engine) Step(group string, m *raftpb.Message) {
	e.heard(m.GetFrom())
	if group == livenessGroup {
		e.notePeerState(m.GetFrom(), m.GetIndex(), m.GetReject())
		if m.GetCommit() == pingAsks {
			e.noteAsk(m.GetFrom())
		}
		return
	}
	e.mu.Lock()
	g := e.groups[group]
	if g == nil {
		if buf, ok := e.expected[group]; ok {
			if len(buf) == maxExpectedMsgs {
				buf = append(buf[:0], buf[1:]...) // keep the newest
			}
			e.expected[group] = append(buf, m)
		}
		e.mu.Unlock()
		return
	}
	e.mu.Unlock()
	g.enqueue(func() { g.inMsgs = append(g.inMsgs, m) })
}

// maxExpectedMsgs bounds the messages kept for one expected group.
const maxExpectedMsgs = 256

// Expect announces a group that AddGroup will open shortly, while its log
// is being created: the messages its peers send it meanwhile (a new group's
// first votes: dropped, they cost the group an election timeout) are kept,
// the newest maxExpectedMsgs, and delivered when it opens. Forget drops
// them if it does not.
func (e *Engine) Expect(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped || e.groups[name] != nil {
		return
	}
	if e.expected == nil {
		e.expected = make(map[string][]*raftpb.Message)
	}
	if _, ok := e.expected[name]; !ok {
		e.expected[name] = nil
	}
}

// Forget withdraws Expect(name) for a group that will not open.
func (e *Engine) Forget(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.expected, name)
}

// ReportUnreachable tells the named group that a message to peer `to` could
// not be delivered, so its leader probes instead of streaming to it. For
// the liveness pings it marks the peer silent (see unheard).
func (e *Engine) ReportUnreachable(group string, to uint64) {
	if group == livenessGroup {
		e.unheard(to) // the loop wakes the quiesced groups it leads
		return
	}
	e.report(group, peerReport{to: to, kind: reportUnreachable})
}

// ReportSnapshot tells the named group how sending a snapshot to peer `to`
// ended. The transport must call it for every MsgSnap it was given.
func (e *Engine) ReportSnapshot(group string, to uint64, failed bool) {
	kind := reportSnapshotDone
	if failed {
		kind = reportSnapshotFailed
	}
	e.report(group, peerReport{to: to, kind: kind})
}

func (e *Engine) report(group string, r peerReport) {
	if g := e.Group(group); g != nil {
		g.enqueue(func() { g.inReports = append(g.inReports, r) })
	}
}

func (e *Engine) nextTag() uint64 {
	return e.cfg.NodeID<<48 | e.tagSeq.Add(1)&(1<<48-1)
}

// markBusy queues g for the loop's next pass. Only the first call after a
// pass takes the engine lock.
func (e *Engine) markBusy(g *Group) {
	if !g.queued.CompareAndSwap(false, true) {
		return
	}
	e.mu.Lock()
	e.busy = append(e.busy, g)
	e.mu.Unlock()
	e.kick()
}

// kick wakes the loop for a pass.
func (e *Engine) kick() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Engine) register(g *Group) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return ErrStopped
	}
	if _, ok := e.groups[g.name]; ok {
		return fmt.Errorf("replica: group %q already running", g.name)
	}
	if buf, ok := e.expected[g.name]; ok {
		delete(e.expected, g.name)
		g.inMsgs = append(g.inMsgs, buf...) // g is not running yet
	}
	e.groups[g.name] = g
	e.version++
	g.queued.Store(true)
	e.busy = append(e.busy, g)
	e.kick()
	return nil
}

// RemoveGroup stops the named group at the loop's next pass: pending callers
// get ErrStopped, then its log is closed and its OnClose hook runs, on a
// goroutine of their own (Stop waits for them). Safe to call from an Apply
// hook.
func (e *Engine) RemoveGroup(name string) {
	e.mu.Lock()
	g := e.groups[name]
	if g != nil {
		delete(e.groups, name)
		e.version++
		g.removing.Store(true)
		e.closing = append(e.closing, g)
	}
	e.mu.Unlock()
	e.kick()
}

// syncState says where a group's current Ready stands with its sync.
type syncState uint8

const (
	syncNone     syncState = iota // no Ready waits for a sync
	syncPending                   // persisted; in the next sync
	syncInFlight                  // in the sync the syncer is running
)

// syncBatch is the sync the syncer goroutine is running: the logs of the
// groups whose Readies wait for it (nil for a fenced group), and what
// syncing each returned. The loop and the syncer hand it back and forth;
// while the syncer has it, the loop touches neither it nor those groups.
type syncBatch struct {
	groups []*Group
	logs   []*commitlog.Log
	errs   []error
}

// syncer runs the loop's syncs, one at a time, until in closes
// (commitlog.SyncMany: the node's journal for the logs that use it, else an
// fdatasync per log or a syncfs per filesystem), and times them.
func syncer(in <-chan *syncBatch, out chan<- *syncBatch, m *engineMetrics) {
	for b := range in {
		t0 := time.Now()
		b.errs = commitlog.SyncMany(b.logs, b.errs)
		m.observeSync(time.Since(t0), len(b.groups))
		out <- b
	}
}

// run is the loop. It owns every RawNode.
//
// A Ready that must be made durable is handed to the syncer goroutine and
// the loop goes on with the other groups: a topic whose follower answered,
// whose commit advanced or whose producer sent more does not wait for
// another topic's fsync. One sync is in flight at a time; the Readies
// persisted meanwhile share the next one (group commit). A group whose
// Ready waits for a sync is left alone until it completes — its log is the
// syncer's, its inbox queues and its tick is owed — and then finishes its
// Ready, takes its inbox and runs again; only a leader's acknowledgements
// are stepped meanwhile (Group.stepAcks), which writes nothing to the log
// and reads it only through its locked readers.
func (e *Engine) run() {
	defer close(e.donec)
	syncIn := make(chan *syncBatch, 1)
	syncOut := make(chan *syncBatch, 1)
	go syncer(syncIn, syncOut, &e.metrics)
	defer close(syncIn)

	// The tick timer: every TickInterval while some group is awake; while
	// all are quiesced, only at the next liveness ping (pingEvery ticks),
	// so that an idle node wakes a few times a second, not ten. armed is
	// how many ticks the pending timer stands for.
	armed := int64(1)
	var ticks int64 // ticks counted by the loop: the liveness ping cadence
	timer := time.NewTimer(e.cfg.TickInterval)
	defer timer.Stop()
	defer e.noticeTimer.Stop()

	var (
		list, busy, closing []*Group
		version             uint64 = ^uint64(0)
		work                []*Group
		candidates, next    []*Group
		pass                uint64
		pending             []*Group   // persisted Readies for the next sync
		batch               *syncBatch = &syncBatch{}
		inFlight            bool       // the syncer has batch
		deferred            []*Group   // removed while in flight: closed after it
	)
	for {
		tick := false
		var synced *syncBatch
		select {
		case <-e.stopc:
			if inFlight {
				// The sync may wait for a journal checkpoint that waits
				// for the loop's logs.
				for _, g := range list {
					if g.syncState != syncInFlight {
						g.flushHeld(true)
					}
				}
				<-syncOut // no log closes under a sync
			}
			for _, g := range deferred {
				g.close(ErrStopped)
			}
			e.closeAll()
			e.closers.Wait() // removed groups' logs
			e.leaders.flush(true)
			return
		case <-timer.C:
			tick = true
		case <-e.noticeTimer.C:
			e.sendNotices()
		case <-e.wake:
		case synced = <-syncOut:
		}

		// Take the queued work.
		e.mu.Lock()
		if e.version != version {
			list = list[:0]
			for _, g := range e.groups {
				list = append(list, g)
			}
			version = e.version
		}
		busy = append(busy[:0], e.busy...)
		clear(e.busy)
		e.busy = e.busy[:0]
		closing = append(closing[:0], e.closing...)
		clear(e.closing)
		e.closing = e.closing[:0]
		e.mu.Unlock()

		pass++
		candidates = candidates[:0]
		awake := false
		if synced != nil {
			// The Readies in the sync are durable (or their group fenced):
			// finish them, and give their groups what queued meanwhile.
			inFlight = false
			for i, g := range synced.groups {
				g.syncState = syncNone
				if err := synced.errs[i]; err != nil {
					g.fence(err)
				}
				if err := g.aheadErr; err != nil {
					g.aheadErr = nil
					g.fence(err)
				}
				if g.removing.Load() {
					continue
				}
				g.finish()
				g.drainInbox()
				if g.owedTick && g.fenced == nil {
					g.tick(1)
				}
				g.owedTick = false
				awake = awake || !g.quiesced
				g.pass = pass
				candidates = append(candidates, g)
			}
			clear(synced.groups)
			clear(synced.logs)
			synced.groups, synced.logs = synced.groups[:0], synced.logs[:0]
			closing = append(closing, deferred...)
			clear(deferred)
			deferred = deferred[:0]
		}

		if j := e.cfg.Journal; j != nil && j.Waiting() {
			// A journal checkpoint waits for records logs hold in memory.
			for _, g := range list {
				if g.syncState != syncInFlight && g.log.HeldWanted() {
					g.flushHeld(true)
				}
			}
		}

		for _, g := range closing {
			if g.syncState == syncInFlight {
				deferred = append(deferred, g)
				continue
			}
			g.syncState = syncNone // a pending Ready is dropped with the group
			g.closeInBackground(ErrStopped)
		}
		for _, g := range busy {
			g.queued.Store(false) // later arrivals queue g again
			switch {
			case g.removing.Load():
			case g.syncState == syncNone:
				g.drainInbox()
				awake = awake || !g.quiesced
			case g.isLeader && g.fenced == nil:
				g.stepAcks() // the rest waits for the sync
			}
		}
		if e.pingSoon.Load() && e.pingSoon.Swap(false) {
			e.pingPeers(list)
		}
		if e.wakeSilentLeaders(list) || e.wakeAskedLeaders(list) || e.wakeFollowersOfRestarted(list) {
			awake = true
		}
		if awake && armed > 1 && !tick {
			// A group woke up while the timer slept for a ping: tick
			// again from now.
			armed = 1
			timer.Reset(e.cfg.TickInterval)
		}
		// Candidates for a Ready: groups with queued work, groups whose
		// sync completed, and groups that ticked (quiesced groups do not,
		// and cost nothing).
		for _, g := range busy {
			if g.pass != pass {
				g.pass = pass
				candidates = append(candidates, g)
			}
		}
		if tick {
			before := ticks
			ticks += armed
			if ticks/pingEvery != before/pingEvery {
				e.pingPeers(list)
				e.resendReleases()
			}
			e.refreshSilence()
			e.metrics.ticks.Add(1)
			quiet := true
			for _, g := range list {
				if g.fenced != nil || g.removing.Load() {
					continue
				}
				if g.syncState != syncNone {
					g.owedTick = true
					quiet = false
					continue
				}
				g.flushHeld(false)
				if g.tick(int(armed)) && g.pass != pass {
					g.pass = pass
					candidates = append(candidates, g)
				}
				quiet = quiet && g.quiesced && !g.awaitsQuiesceAcks()
			}
			armed = 1
			if quiet {
				armed = pingEvery - ticks%pingEvery
			}
			timer.Reset(time.Duration(armed) * e.cfg.TickInterval)
		}

		// Ready passes: repeat while some group has more to do without
		// waiting for a sync (a Ready that only commits and applies).
		for {
			work = work[:0]
			for _, g := range candidates {
				if g.fenced == nil && !g.removing.Load() && g.syncState == syncNone && g.rn.HasReady() {
					work = append(work, g)
				}
			}
			if len(work) == 0 {
				break
			}
			for _, g := range work {
				if g.persist() {
					g.syncState = syncPending
					pending = append(pending, g)
				}
			}
			next = next[:0]
			for _, g := range work {
				g.applyCommitted()
				if g.syncState == syncNone {
					g.finish()
					next = append(next, g)
				}
			}
			// A group added by an Apply hook queued itself; it is picked up
			// by the next wake.
			candidates, next = next, candidates
		}

		if !inFlight && len(pending) > 0 {
			for _, g := range pending {
				if g.syncState != syncPending {
					continue // removed since
				}
				g.syncState = syncInFlight
				batch.groups = append(batch.groups, g)
				if g.fenced == nil {
					batch.logs = append(batch.logs, g.log)
				} else {
					batch.logs = append(batch.logs, nil)
				}
			}
			clear(pending)
			pending = pending[:0]
			if len(batch.groups) > 0 {
				inFlight = true
				syncIn <- batch
			}
		}
		e.leaders.flush(false)
	}
}

func (e *Engine) closeAll() {
	e.mu.Lock()
	gs := make([]*Group, 0, len(e.groups)+len(e.closing))
	for _, g := range e.groups {
		gs = append(gs, g)
	}
	gs = append(gs, e.closing...)
	e.closing = nil
	e.mu.Unlock()
	for _, g := range gs {
		g.close(ErrStopped)
	}
}

// maxInflightBytes bounds the entries a leader has sent a follower and not
// yet heard back about (raft's MaxInflightBytes). Without it only the
// message count bounds them (MaxInflightMsgs × MaxSizePerMsg = 256 MiB): a
// follower catching up after a restart made one acknowledgement send it
// 256 MiB at once, each message's entries read from the leader's log
// inside the engine's pass (older than the tail cache: from disk), and a
// 1-message send to another topic waited 2.6 s (a follower ~700 MB
// behind, by hand). A follower that keeps up is not held back: at W1's
// ~62 MB/s per follower, 8 MiB is 130 ms of acknowledgements outstanding,
// and W1's slowest batches take 40–65 ms (a 1 MiB cap did hold W1 back:
// ×0.80 / 1.00 / 0.85).
const maxInflightBytes = 8 << 20

func (e *Engine) raftConfig(g *Group, id uint64, log raft.Storage, applied uint64) *raft.Config {
	return &raft.Config{
		ID:                        id,
		ElectionTick:              e.cfg.ElectionTicks,
		HeartbeatTick:             e.cfg.HeartbeatTicks,
		Storage:                   log,
		Applied:                   applied,
		MaxSizePerMsg:             1 << 20,
		MaxInflightMsgs:           256,
		MaxInflightBytes:          maxInflightBytes,
		MaxCommittedSizePerReady:  64 << 20,
		MaxUncommittedEntriesSize: e.cfg.MaxUncommittedBytes,
		CheckQuorum:               true,
		PreVote:                   true,
		DisableProposalForwarding: true,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{l: e.log, group: groupLabel(g.name), lostQuorum: &g.lostQuorum},
	}
}

// StandAside tells the engine whether this node stands aside from
// leadership (its peers refuse it, or it is stopping: the server drops the
// leadership transfers to it): while it does, RequestLeadership asks for
// nothing, since the transfer it starts would wait out an election
// timeout with the group's proposals dropped, and its pings tell its
// peers to hand it no group (PeerReadySince).
func (e *Engine) StandAside(on bool) {
	if e.standAside.Swap(on) != on {
		// Its pings say so (PeerReadySince): peers' leader balancing
		// hands it nothing meanwhile. Tell them now.
		e.pingSoon.Store(true)
		e.kick()
	}
}
