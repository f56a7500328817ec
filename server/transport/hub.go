package transport

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Hub is an in-memory network for tests of multi-node Raft. Each node gets
// a HubTransport from Transport; messages travel between them through
// per-link FIFO queues, each drained by its own goroutine, so Send never
// blocks and messages of one link arrive in order. Messages are marshalled
// on Send and unmarshalled on delivery, as on the wire.
//
// Faults mirror what the GRPC transport shows its Handler:
//
//   - A cut link (Partition, Isolate), a destination that is not on the hub
//     or stopped, or a full link queue (DefaultQueueSize) behaves like a
//     broken or refused stream: the message is dropped and the sender's
//     Handler gets ReportUnreachable (once per group and destination per
//     Send call, or per message dropped in flight).
//   - SetDrop loses messages silently, as a lossy network would behind a
//     transport that does not notice: no ReportUnreachable.
//   - Every MsgSnap is reported to the sender's Handler: failed=false once
//     it was delivered, failed=true when it was dropped for any reason.
//
// Links are checked when a message is sent and again when it is delivered,
// so a partition also loses what was in flight. A Hub's methods are safe
// for concurrent use.
type Hub struct {
	mu       sync.Mutex
	nodes    map[uint64]*HubTransport
	side     map[uint64]int // partition side; absent means 0
	nextSide int
	drop     map[hubLinkKey]float64
	delay    map[hubLinkKey]time.Duration
	rng      *rand.Rand

	delivered, dropped atomic.Uint64
	inFlight           atomic.Int64
}

type hubLinkKey struct{ from, to uint64 }

// HubOption configures a Hub.
type HubOption func(*Hub)

// WithSeed seeds the Hub's random drops (default seed 1).
func WithSeed(seed uint64) HubOption {
	return func(h *Hub) { h.rng = rand.New(rand.NewPCG(seed, seed)) }
}

// NewHub returns an empty, fault-free network.
func NewHub(opts ...HubOption) *Hub {
	h := &Hub{
		nodes: make(map[uint64]*HubTransport),
		side:  make(map[uint64]int),
		drop:  make(map[hubLinkKey]float64),
		delay: make(map[hubLinkKey]time.Duration),
		rng:   rand.New(rand.NewPCG(1, 1)),
	}
	for _, o := range opts {
		o(h)
	}
	return h
}

// Transport attaches node id with Handler h to the hub. A node restarts by
// stopping its transport and attaching again; attaching an id whose
// transport is running panics.
func (h *Hub) Transport(id uint64, handler Handler) *HubTransport {
	if id == 0 || handler == nil {
		panic("transport: hub node needs a non-zero ID and a Handler")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.nodes[id]; ok {
		panic(fmt.Sprintf("transport: node %d is already on the hub", id))
	}
	t := &HubTransport{hub: h, id: id, h: handler, links: make(map[uint64]*hubLink)}
	h.nodes[id] = t
	return t
}

// Partition cuts the nodes ids off from all others, in both directions;
// they still reach each other. Successive partitions split the network
// further.
func (h *Hub) Partition(ids ...uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextSide++
	for _, id := range ids {
		h.side[id] = h.nextSide
	}
}

// Isolate cuts node id off from every other node.
func (h *Hub) Isolate(id uint64) { h.Partition(id) }

// Heal restores a perfect network: no partitions, drops or delays.
func (h *Hub) Heal() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.side)
	clear(h.drop)
	clear(h.delay)
}

// SetDrop makes the link from → to lose each message with probability p
// (0 restores it). Lost messages are not reported unreachable.
func (h *Hub) SetDrop(from, to uint64, p float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p <= 0 {
		delete(h.drop, hubLinkKey{from, to})
	} else {
		h.drop[hubLinkKey{from, to}] = p
	}
}

// SetDelay delays every message on the link from → to by d (0 restores
// it). Messages keep their order.
func (h *Hub) SetDelay(from, to uint64, d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d <= 0 {
		delete(h.delay, hubLinkKey{from, to})
	} else {
		h.delay[hubLinkKey{from, to}] = d
	}
}

// Delivered counts messages passed to a destination Handler.
func (h *Hub) Delivered() uint64 { return h.delivered.Load() }

// Dropped counts messages lost for any reason.
func (h *Hub) Dropped() uint64 { return h.dropped.Load() }

// InFlight is the number of messages queued on links, not yet delivered
// or dropped. Tests poll it to wait for a quiet network.
func (h *Hub) InFlight() int { return int(h.inFlight.Load()) }

// cut reports whether from cannot reach to right now.
func (h *Hub) cut(from, to uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cutLocked(from, to)
}

func (h *Hub) cutLocked(from, to uint64) bool {
	return h.side[from] != h.side[to] || h.nodes[to] == nil
}

// verdict decides, at send time, what happens to one message on from → to.
func (h *Hub) verdict(from, to uint64) (cut, lost bool, delay time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cutLocked(from, to) {
		return true, false, 0
	}
	k := hubLinkKey{from, to}
	if p := h.drop[k]; p > 0 && h.rng.Float64() < p {
		return false, true, 0
	}
	return false, false, h.delay[k]
}

func (h *Hub) node(id uint64) *HubTransport {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nodes[id]
}

// HubTransport is one node's transport on a Hub. It has the GRPC
// transport's Send/AddPeer/RemovePeer/Stop. Its methods are safe for
// concurrent use.
type HubTransport struct {
	hub *Hub
	id  uint64
	h   Handler

	mu      sync.RWMutex
	links   map[uint64]*hubLink // by destination, from AddPeer
	stopped bool
	wg      sync.WaitGroup // link goroutines
	inbound sync.WaitGroup // deliveries into h in progress
}

// AddPeer lets the node send to peer id; addr is ignored. Idempotent.
func (t *HubTransport) AddPeer(id uint64, _ string) {
	if id == 0 || id == t.id {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped || t.links[id] != nil {
		return
	}
	l := &hubLink{t: t, to: id, signal: make(chan struct{}, 1), stopc: make(chan struct{}), done: make(chan struct{})}
	t.links[id] = l
	t.wg.Add(1)
	go l.run()
}

// RemovePeer stops sending to peer id; messages queued for it are dropped
// without reports.
func (t *HubTransport) RemovePeer(id uint64) {
	t.mu.Lock()
	l := t.links[id]
	delete(t.links, id)
	t.mu.Unlock()
	if l != nil {
		close(l.stopc)
		<-l.done
	}
}

// Send queues msgs of the named group and returns without blocking; see
// Hub for what is dropped and reported.
func (t *HubTransport) Send(group string, msgs []*raftpb.Message) {
	var drops []drop
	t.mu.RLock()
	if t.stopped {
		t.mu.RUnlock()
		return
	}
	for _, m := range msgs {
		to := m.GetTo()
		snap := isSnap(m)
		l := t.links[to]
		if l == nil {
			drops = append(drops, drop{to: to, snap: snap})
			continue
		}
		cut, lost, delay := t.hub.verdict(t.id, to)
		if cut || lost {
			t.hub.dropped.Add(1)
			if cut || snap {
				drops = append(drops, drop{to: to, snap: snap, silent: lost})
			}
			continue
		}
		data, err := proto.Marshal(m)
		if err != nil {
			panic(fmt.Sprintf("transport: marshal: %v", err))
		}
		if !l.enqueue(hubMsg{group: group, data: data, snap: snap, at: time.Now().Add(delay)}) {
			t.hub.dropped.Add(1)
			drops = append(drops, drop{to: to, snap: snap})
		}
	}
	t.mu.RUnlock()
	report(t.h, group, drops)
}

// Stop detaches the node from the hub: its links stop (queued messages are
// dropped without reports), messages to it are dropped as unreachable, and
// its Handler is not called after Stop returns.
func (t *HubTransport) Stop() {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		t.wg.Wait()
		t.inbound.Wait()
		return
	}
	t.stopped = true
	links := t.links
	t.links = make(map[uint64]*hubLink)
	t.mu.Unlock()

	t.hub.mu.Lock()
	if t.hub.nodes[t.id] == t {
		delete(t.hub.nodes, t.id)
	}
	t.hub.mu.Unlock()

	for _, l := range links {
		close(l.stopc)
	}
	t.wg.Wait()
	t.inbound.Wait()
}

// enter registers a delivery into t's Handler; false once stopped.
func (t *HubTransport) enter() bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.stopped {
		return false
	}
	t.inbound.Add(1)
	return true
}

type hubMsg struct {
	group string
	data  []byte
	snap  bool
	at    time.Time // deliver no earlier than this
}

// hubLink is the FIFO queue from one node to another.
type hubLink struct {
	t      *HubTransport // sender
	to     uint64
	signal chan struct{}
	stopc  chan struct{}

	done chan struct{}

	mu      sync.Mutex
	pending []hubMsg
}

func (l *hubLink) enqueue(m hubMsg) bool {
	l.mu.Lock()
	if len(l.pending) >= DefaultQueueSize {
		l.mu.Unlock()
		return false
	}
	l.pending = append(l.pending, m)
	l.mu.Unlock()
	l.t.hub.inFlight.Add(1)
	select {
	case l.signal <- struct{}{}:
	default:
	}
	return true
}

func (l *hubLink) run() {
	defer l.t.wg.Done()
	defer close(l.done)
	hub := l.t.hub
	var (
		batch []hubMsg
		next  int // batch[next:] is not delivered yet
	)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer func() {
		// Drop whatever is left, without reports: the sender is stopping.
		l.mu.Lock()
		n := len(l.pending) + len(batch) - next
		l.pending = nil
		l.mu.Unlock()
		hub.inFlight.Add(-int64(n))
		hub.dropped.Add(uint64(n))
	}()
	for {
		select {
		case <-l.stopc:
			return
		case <-l.signal:
		}
		clear(batch)
		l.mu.Lock()
		batch, l.pending = l.pending, batch[:0]
		l.mu.Unlock()
		for next = 0; next < len(batch); {
			m := batch[next]
			if wait := time.Until(m.at); wait > 0 {
				timer.Reset(wait)
				select {
				case <-l.stopc:
					timer.Stop()
					return
				case <-timer.C:
				}
			}
			next++
			l.deliver(m)
			hub.inFlight.Add(-1)
		}
	}
}

// deliver passes m to the destination's Handler, or drops and reports it.
func (l *hubLink) deliver(m hubMsg) {
	hub, from := l.t.hub, l.t
	dst := hub.node(l.to)
	if dst == nil || hub.cut(from.id, l.to) || !dst.enter() {
		hub.dropped.Add(1)
		if m.snap {
			from.h.ReportSnapshot(m.group, l.to, true)
		}
		from.h.ReportUnreachable(m.group, l.to)
		return
	}
	msg := new(raftpb.Message)
	// As GRPC decodes (m.data is this message's alone).
	if err := decodeMessage(m.data, msg); err != nil {
		panic(fmt.Sprintf("transport: unmarshal: %v", err))
	}
	dst.h.Step(m.group, msg)
	dst.inbound.Done()
	hub.delivered.Add(1)
	if m.snap {
		from.h.ReportSnapshot(m.group, l.to, false)
	}
}
