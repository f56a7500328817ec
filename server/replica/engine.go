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
// queues and returns. Declared here, where it is used.
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
	if c.NodeID == 0 {
		return errors.New("replica: NodeID must be non-zero")
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
	list    []*Group // snapshot of groups for the loop; rebuilt when version changes
	version uint64
	busy    map[*Group]struct{} // groups with queued work

	tagSeq atomic.Uint64 // proposal tags: node ID in the top 16 bits

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
		busy:   make(map[*Group]struct{}),
		stopc:  make(chan struct{}),
		donec:  make(chan struct{}),
	}
	e.tagSeq.Store(rand.Uint64() & (1<<48 - 1))
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
	g := e.Group(group)
	if g == nil {
		return
	}
	g.inboxMu.Lock()
	g.inMsgs = append(g.inMsgs, m)
	g.inboxMu.Unlock()
	e.markBusy(g)
}

func (e *Engine) nextTag() uint64 {
	return e.cfg.NodeID<<48 | e.tagSeq.Add(1)&(1<<48-1)
}

func (e *Engine) markBusy(g *Group) {
	e.mu.Lock()
	e.busy[g] = struct{}{}
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
	e.busy[g] = struct{}{}
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
		e.busy[g] = struct{}{}
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
	ticker := time.NewTicker(e.cfg.TickInterval)
	defer ticker.Stop()

	var (
		list    []*Group
		version uint64 = ^uint64(0)
		busy    []*Group
		dirty   []*Group
		work    []*Group
	)
	for {
		tick := false
		select {
		case <-e.stopc:
			e.closeAll()
			return
		case <-ticker.C:
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
		busy = busy[:0]
		for g := range e.busy {
			busy = append(busy, g)
			delete(e.busy, g)
		}
		e.mu.Unlock()

		for _, g := range busy {
			if g.removing.Load() {
				g.close(ErrStopped)
				continue
			}
			g.drainInbox()
		}
		if tick {
			for _, g := range list {
				if g.fenced == nil && !g.removing.Load() {
					g.rn.Tick()
				}
			}
		}

		// Ready passes: repeat while some group has more to do (a single-node
		// group commits its own append in the pass after persisting it).
		candidates := list
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
			syncAll(dirty)
			for _, g := range work {
				g.finish()
			}
			candidates = work
		}
	}
}

// syncAll fsyncs the dirty logs, in parallel when there are several.
func syncAll(dirty []*Group) {
	switch len(dirty) {
	case 0:
		return
	case 1:
		dirty[0].sync()
		return
	}
	var wg sync.WaitGroup
	for _, g := range dirty[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.sync()
		}()
	}
	dirty[0].sync()
	wg.Wait()
}

func (e *Engine) closeAll() {
	e.mu.Lock()
	gs := make([]*Group, 0, len(e.groups))
	for _, g := range e.groups {
		gs = append(gs, g)
	}
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
		Logger:                    raftLogger{e.log},
	}
}
