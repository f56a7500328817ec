package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"

	"go.etcd.io/raft/v3"
)

// Read barriers (ReadIndex). A caller asks; the engine gathers the callers
// that asked while no round was in flight into one round, one raft
// ReadIndex request: the leader answers with its commit index once a
// quorum confirmed it still leads (ReadOnlySafe), and the round's callers
// return once this node has applied that index. Rounds are one at a time,
// so any number of callers costs the leader one heartbeat round per round
// trip. raft drops a request when the node knows no leader, and the
// transport may lose one: a round unanswered for readRoundTicks is asked
// again, under a new request ID, and an answer to any of the round's
// requests answers it (every caller of the round asked before the first),
// so a round trip slower than readRoundTicks still completes.
// readRoundTicks is how long (in ticks) a read round waits for its answer
// before it is asked again: an election timeout.
const readRoundTicks = 10

// readPrefix starts a read round's raft request context.
var readPrefix = []byte("fb-read:")

// readWaiter is a ReadIndex caller: done is buffered (capacity 1), gone
// is its ctx's Done.
type readWaiter struct {
	done chan error
	gone <-chan struct{}
}

// readRound is one read round, asked as raft ReadIndex requests first..last
// (asked again when unanswered), and the callers it answers.
type readRound struct {
	first, last uint64
	waiters     []readWaiter
	index       uint64 // the leader's answer: wait until applied
	ticks       int    // ticks since it was last asked (in flight)
}

// reads is a group's read barrier state. Engine goroutine only.
type reads struct {
	waiting   []readWaiter // asked since the round in flight started
	inFlight  *readRound
	confirmed []*readRound // answered, index not applied yet
	seq       uint64
}

// ReadIndex returns once this node has applied every entry the group had
// committed when it was called, as the group's leader confirms: state read
// after it reflects every command committed before the call, wherever it
// was proposed. It needs the leader and a quorum; errors: ctx's error when
// they do not answer in time, ErrStopped, ErrStorageFailed.
func (g *Group) ReadIndex(ctx context.Context) error {
	done := make(chan error, 1)
	op := func() {
		if g.fenced != nil {
			done <- ErrStorageFailed
			return
		}
		g.reads.waiting = append(g.reads.waiting, readWaiter{done, ctx.Done()})
		g.startRead()
	}
	return g.await(ctx, op, done)
}

// startRead asks raft for a read index for the callers waiting, unless a
// round is in flight. A leader woken from quiescence ticks again (raft's
// reply takes a heartbeat round).
func (g *Group) startRead() {
	r := &g.reads
	if r.inFlight != nil || len(r.waiting) == 0 || g.fenced != nil || !g.mayAskRead() {
		return
	}
	r.inFlight = &readRound{waiters: r.waiting}
	r.waiting = nil
	g.askRead(r.inFlight)
}

// mayAskRead reports whether raft's answer to a ReadIndex request now
// would be right. raft answers the only voter of a group at once with its
// commit index, even before it has committed an entry of its term (a
// larger group's leader holds the request until then): after a restart
// that index can be below entries committed before it. The finish that
// commits the entry asks (readStates).
func (g *Group) mayAskRead() bool {
	if st := g.rn.BasicStatus(); st.RaftState == raft.StateLeader {
		if term, err := g.log.Term(st.GetCommit()); err != nil || term != st.GetTerm() {
			return false
		}
	}
	return true
}

// askRead sends raft a ReadIndex request for round rd, under a new ID.
func (g *Group) askRead(rd *readRound) {
	r := &g.reads
	if r.seq == 0 {
		// Distinct from the rounds of this node's earlier processes,
		// whose late answers would otherwise match this one's first.
		r.seq = g.e.incarnation
	}
	r.seq++
	if rd.first == 0 {
		rd.first = r.seq
	}
	rd.last, rd.ticks = r.seq, 0
	if g.isLeader {
		g.quiesced = false
	}
	g.rn.ReadIndex(binary.BigEndian.AppendUint64(bytes.Clone(readPrefix), r.seq))
}

// readStates takes the answers of a Ready's read states and answers the
// rounds whose index is applied. After the Ready's entries are applied.
func (g *Group) readStates(states []raft.ReadState) {
	r := &g.reads
	for _, rs := range states {
		ctx := rs.RequestCtx
		if r.inFlight == nil || !bytes.HasPrefix(ctx, readPrefix) || len(ctx) != len(readPrefix)+8 {
			continue
		}
		if id := binary.BigEndian.Uint64(ctx[len(readPrefix):]); id < r.inFlight.first || id > r.inFlight.last {
			continue // an answered round's
		}
		r.inFlight.index = rs.Index
		r.confirmed = append(r.confirmed, r.inFlight)
		r.inFlight = nil
	}
	g.answerReads()
	g.startRead()
}

// answerReads answers the confirmed rounds whose index is applied.
func (g *Group) answerReads() {
	r := &g.reads
	if len(r.confirmed) == 0 {
		return
	}
	applied := g.applied.Load()
	k := 0
	for _, rd := range r.confirmed {
		if rd.index > applied {
			r.confirmed[k] = rd
			k++
			continue
		}
		for _, w := range rd.waiters {
			w.done <- nil
		}
	}
	clear(r.confirmed[k:])
	r.confirmed = r.confirmed[:k]
}

// tickReads asks a round again that went unanswered for readRoundTicks,
// and reports whether it did.
func (g *Group) tickReads(elapsed int) bool {
	rd := g.reads.inFlight
	if rd == nil {
		return false
	}
	// The first tick of a round counts one: the engine's timer may have
	// covered many ticks, most of them before the round was asked.
	if rd.ticks == 0 {
		elapsed = 1
	}
	if rd.ticks += elapsed; rd.ticks < readRoundTicks {
		return false
	}
	// Callers that gave up go: without a leader or a quorum, the round is
	// asked again for as long as that lasts, and the earlier requests'
	// answers still count.
	rd.waiters = live(rd.waiters)
	g.reads.waiting = live(g.reads.waiting)
	if len(rd.waiters) == 0 {
		g.reads.inFlight = nil
		g.startRead()
		return true
	}
	if !g.mayAskRead() {
		rd.ticks = 0
		return false
	}
	g.askRead(rd)
	return true
}

// live drops the callers whose context ended from ws.
func live(ws []readWaiter) []readWaiter {
	return slices.DeleteFunc(ws, func(w readWaiter) bool {
		select {
		case <-w.gone:
			return true
		default:
			return false
		}
	})
}

// failReads answers every read caller with err (a fenced group).
func (g *Group) failReads(err error) {
	r := &g.reads
	answer := func(ws []readWaiter) {
		for _, w := range ws {
			w.done <- err
		}
	}
	answer(r.waiting)
	if r.inFlight != nil {
		answer(r.inFlight.waiters)
	}
	for _, rd := range r.confirmed {
		answer(rd.waiters)
	}
	*r = reads{seq: r.seq}
}
