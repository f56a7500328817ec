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

	mu      sync.Mutex
	groups  map[string]*Group
	version uint64   // bumped when groups changes; the loop rebuilds its list
	busy    []*Group // groups with queued work (Group.queued set)
	closing []*Group // removed groups the loop has not closed yet

	tagSeq          atomic.Uint64 // proposal tags: node ID in the top 16 bits
	epoch           time.Time     // creation: the clock silentFor measures from
	lastHeard       sync.Map      // node ID -> *atomic.Int64, tick it was last heard
	peers           []uint64      // pinged for liveness; guarded by mu
	electionTimeout time.Duration

	// Loop-only: peers' silence as of the last tick (refreshSilence).
	silence []peerSilence
	// Loop-only scratch for syncAll.
	syncLogs []*commitlog.Log
	syncErrs []error

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
		cfg:    cfg,
		log:    cfg.Logger,
		wake:   make(chan struct{}, 1),
		groups: make(map[string]*Group),
		stopc:  make(chan struct{}),
		donec:  make(chan struct{}),
	}
	e.epoch = time.Now()
	e.tagSeq.Store(rand.Uint64() & (1<<48 - 1))
	e.electionTimeout = time.Duration(cfg.ElectionTicks) * cfg.TickInterval
	return e, nil
}

// NodeID is this node's raft ID.
func (e *Engine) NodeID() uint64 { return e.cfg.NodeID }

// Start starts the loop goroutine.
func (e *Engine) Start() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return
	}
	e.started = true
	go e.run()
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
// drop the message.
func (e *Engine) Step(group string, m *raftpb.Message) {
	e.heard(m.GetFrom())
	if group == livenessGroup {
		return
	}
	if g := e.Group(group); g != nil {
		g.enqueue(func() { g.inMsgs = append(g.inMsgs, m) })
	}
}

// ReportUnreachable tells the named group that a message to peer `to` could
// not be delivered, so its leader probes instead of streaming to it.
func (e *Engine) ReportUnreachable(group string, to uint64) {
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
	e.groups[g.name] = g
	e.version++
	g.queued.Store(true)
	e.busy = append(e.busy, g)
	select {
	case e.wake <- struct{}{}:
	default:
	}
	return nil
}

// RemoveGroup stops the named group at the loop's next pass: pending callers
// get ErrStopped, its log is closed, then its OnClose hook runs (on the loop
// goroutine). Safe to call from an Apply hook.
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
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// run is the loop. It owns every RawNode.
func (e *Engine) run() {
	defer close(e.donec)
	// The tick timer: every TickInterval while some group is awake; while
	// all are quiesced, only at the next liveness ping (pingEvery ticks),
	// so that an idle node wakes a few times a second, not ten. armed is
	// how many ticks the pending timer stands for.
	armed := int64(1)
	var ticks int64 // ticks counted by the loop: the liveness ping cadence
	timer := time.NewTimer(e.cfg.TickInterval)
	defer timer.Stop()

	var (
		list, busy, closing []*Group
		version             uint64 = ^uint64(0)
		dirty, work         []*Group
		candidates, next    []*Group
		pass                uint64
	)
	for {
		tick := false
		select {
		case <-e.stopc:
			e.closeAll()
			return
		case <-timer.C:
			tick = true
		case <-e.wake:
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

		for _, g := range closing {
			g.close(ErrStopped)
		}
		awake := false
		for _, g := range busy {
			g.queued.Store(false) // later arrivals queue g again
			if !g.removing.Load() {
				g.drainInbox()
				awake = awake || !g.quiesced
			}
		}
		if awake && armed > 1 && !tick {
			// A group woke up while the timer slept for a ping: tick
			// again from now.
			armed = 1
			timer.Reset(e.cfg.TickInterval)
		}
		// Candidates for a Ready: groups with queued work, and groups that
		// ticked (quiesced groups do not, and cost nothing).
		pass++
		candidates = append(candidates[:0], busy...)
		for _, g := range busy {
			g.pass = pass
		}
		if tick {
			before := ticks
			ticks += armed
			if ticks/pingEvery != before/pingEvery {
				e.pingPeers()
			}
			e.refreshSilence()
			quiet := true
			for _, g := range list {
				if g.fenced != nil || g.removing.Load() {
					continue
				}
				if g.tick() && g.pass != pass {
					g.pass = pass
					candidates = append(candidates, g)
				}
				quiet = quiet && g.quiesced
			}
			armed = 1
			if quiet {
				armed = pingEvery - ticks%pingEvery
			}
			timer.Reset(time.Duration(armed) * e.cfg.TickInterval)
		}

		// Ready passes: repeat while some group has more to do (a single-node
		// group commits its own append in the pass after persisting it).
		for {
			work = work[:0]
			for _, g := range candidates {
				if g.fenced == nil && !g.removing.Load() && g.rn.HasReady() {
					work = append(work, g)
				}
			}
			if len(work) == 0 {
				break
			}
			dirty = dirty[:0]
			for _, g := range work {
				if g.persist() {
					dirty = append(dirty, g)
				}
			}
			for _, g := range work {
				g.applyCommitted()
			}
			e.syncAll(dirty)
			for _, g := range work {
				g.finish()
			}
			// A group added by an Apply hook queued itself; it is picked up
			// by the next wake.
			next = append(next[:0], work...)
			candidates = next
		}
	}
}

// syncAll makes the dirty logs durable: one syncfs per filesystem when
// several are dirty (commitlog.SyncMany), else an fdatasync each.
func (e *Engine) syncAll(dirty []*Group) {
	switch len(dirty) {
	case 0:
		return
	case 1:
		dirty[0].sync()
		return
	}
	logs := e.syncLogs[:0]
	for _, g := range dirty {
		if g.fenced == nil {
			logs = append(logs, g.log)
		} else {
			logs = append(logs, nil)
		}
	}
	e.syncErrs = commitlog.SyncMany(logs, e.syncErrs)
	for i, g := range dirty {
		if err := e.syncErrs[i]; err != nil {
			g.fence(err)
		}
	}
	clear(logs)
	e.syncLogs = logs[:0]
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

func (e *Engine) raftConfig(id uint64, log *commitlog.Log, applied uint64) *raft.Config {
	return &raft.Config{
		ID:                        id,
		ElectionTick:              e.cfg.ElectionTicks,
		HeartbeatTick:             e.cfg.HeartbeatTicks,
		Storage:                   log,
		Applied:                   applied,
		MaxSizePerMsg:             1 << 20,
		MaxInflightMsgs:           256,
		MaxCommittedSizePerReady:  64 << 20,
		MaxUncommittedEntriesSize: e.cfg.MaxUncommittedBytes,
		CheckQuorum:               true,
		PreVote:                   true,
		DisableProposalForwarding: true,
		StepDownOnRemoval:         true,
		Logger:                    raftLogger{e.log},
	}
}
