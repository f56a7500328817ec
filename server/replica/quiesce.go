package replica

import (
	"bytes"
	"slices"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
)

// Quiescence: an idle group stops ticking, so it sends no heartbeats and
// costs nothing (RAFT_NOTES §5.7). A leader whose log is fully committed and
// replicated to every member, with nothing pending, quiesces after a few idle
// ticks and tells its followers with a heartbeat whose context is
// quiesceCtx; a follower that gets it from its leader stops ticking too.
// Any other message, a proposal or a membership change wakes the group.
//
// A quiesced follower still needs to notice a dead leader. Every node sends
// a liveness ping to each peer every pingEvery ticks (one message per node
// pair, on the reserved group livenessGroup); a quiesced follower whose
// leader's node has not been heard from for Engine.silenceTicks wakes up
// and, ticking again, elects a new leader. When a node's process dies, its
// peers' connections to it fail: a ping the transport reports undelivered,
// to a peer whose own pings have stopped, marks it silent at once (unheard),
// so a crashed leader is noticed within a ping interval or two instead of
// after the whole silence.

// livenessGroup carries the per-node liveness pings; no group has this name.
const livenessGroup = "\x00live"

// pingEvery is how often, in ticks, a node pings each peer (1 s at the
// default tick). Each ping costs both nodes about a dozen thread wakeups,
// most of an idle node's CPU: 3 nodes with 100 idle topics, fresh clusters
// alternating, used 0.63-1.09 % of a core (median 0.76) and 142-176
// context switches a second pinging every 5 ticks, 0.32-0.65 % (median
// 0.42) and 88-101 every 10 (perf stat, 15 s windows, 7 pairs; earlier:
// 0.95 % every 4 ticks, ~1.5 % every 3). The price is
// in the silence a quiesced follower waits out (silenceTicks) when its
// leader's node goes quiet without its connections failing (a partition, a
// frozen or powered-off host, until TCP keepalive gives up); a crashed
// process fails them, and unheard notices: after kill -9 of a node, the 30
// idle topics it led had new leaders on a survivor in 2.79-3.37 s, against
// 2.86-3.10 s pinging every 5 ticks (4 alternating pairs).
const pingEvery = 10

// silenceTicks is how long, in ticks, a quiesced follower waits to hear from
// its leader's node before it wakes and ticks: an election timeout, but at
// least two and a half ping intervals, so that one ping lost, or pings late
// by up to half an interval (a busy sender's loop), do not wake every group
// the node leads (which costs a round of heartbeats before they quiesce
// again, or an election if the leader is cut off one way).
func silenceTicks(electionTicks int) int64 {
	return max(int64(electionTicks), 2*pingEvery+pingEvery/2)
}

// quiesceAfter is how many idle ticks a leader waits before quiescing.
const quiesceAfter = 3

var quiesceCtx = []byte("forestbus-quiesce")

func isQuiesceMsg(m *raftpb.Message) bool {
	t := m.GetType()
	return (t == raftpb.MessageType_MsgHeartbeat || t == raftpb.MessageType_MsgHeartbeatResp) &&
		bytes.Equal(m.GetContext(), quiesceCtx)
}

// heard records that a message from node id arrived now.
func (e *Engine) heard(id uint64) { e.setHeard(id, e.clockTicks()) }

// unheard marks node id silent, until it is heard from again, when a
// liveness ping to it could not be delivered and its own pings have stopped
// too (nothing heard from it for more than a ping interval): its process is
// likely gone. A ping dropped while the peer's pings still arrive (a full
// send queue, a one-way fault, a stream being replaced) marks nothing. The
// loop then wakes the quiesced groups it leads (wakeSilentLeaders) instead
// of waiting out silenceTicks.
func (e *Engine) unheard(id uint64) {
	v, ok := e.lastHeard.Load(id)
	if !ok {
		return // never heard from: silent since the engine started anyway
	}
	h := v.(*atomic.Int64)
	now, last := e.clockTicks(), h.Load()
	if quiet := now - last; quiet <= pingEvery || quiet > e.silenceTicks {
		return // heard from lately, or already silent
	}
	if h.CompareAndSwap(last, now-e.silenceTicks-1) { // not if heard meanwhile
		e.silenced.Store(true)
		e.kick()
	}
}

// wakeSilentLeaders wakes the quiesced groups whose leader's node unheard
// marked silent since the last call, now rather than at the next tick (a
// ping interval away), and reports whether it woke any. Engine goroutine
// only.
func (e *Engine) wakeSilentLeaders(list []*Group) bool {
	if !e.silenced.Load() || !e.silenced.Swap(false) {
		return false
	}
	e.refreshSilence()
	return wakeWhere(list, func(g *Group) bool { return g.leaderGone() || g.quorumSilent() })
}

// wakeWhere wakes the quiesced groups of list, neither fenced nor being
// removed, for which pick reports true, and reports whether it woke any.
// Engine goroutine only.
func wakeWhere(list []*Group, pick func(*Group) bool) bool {
	woke := false
	for _, g := range list {
		if g.quiesced && g.fenced == nil && !g.removing.Load() && pick(g) {
			g.quiesced = false
			woke = true
		}
	}
	return woke
}

// campaignFirst starts an election at once, instead of after an election
// timeout, when this node is the first of the group's voters, in ID order,
// other than gone (the leader whose node restarted) and silent peers: one
// voter campaigns, not all at once (a split vote would cost a timeout).
// The restarted node, which follows no leader, grants its vote; the other
// followers, still in their leader's lease, refuse theirs, so this wins in
// a group of three and otherwise waits out the timeout as before (after a
// leader's node went silent none would grant it: no use there). A leader
// that is in fact alive loses nothing: its followers refuse the pre-vote.
// Engine goroutine only.
func (g *Group) campaignFirst(gone uint64) {
	cs := g.conf.Load()
	if cs == nil {
		return
	}
	first := raft.None
	for _, id := range cs.GetVoters() {
		if id != gone && g.e.PeerLive(id) && (first == raft.None || id < first) {
			first = id
		}
	}
	if first == g.e.cfg.NodeID {
		_ = g.rn.Campaign()
	}
}

// setHeard records tick as when node id was last heard from.
func (e *Engine) setHeard(id uint64, tick int64) {
	if v, ok := e.lastHeard.Load(id); ok {
		v.(*atomic.Int64).Store(tick)
		return
	}
	v := new(atomic.Int64)
	v.Store(tick)
	if v2, loaded := e.lastHeard.LoadOrStore(id, v); loaded {
		v2.(*atomic.Int64).Store(tick)
	}
}

// clockTicks is the time since the engine started, in ticks of the wall
// clock: the loop does not tick while every group is quiesced, so silence
// is judged by the clock, not by counting the loop's ticks.
func (e *Engine) clockTicks() int64 {
	return int64(time.Since(e.epoch) / e.cfg.TickInterval)
}

// silentFor is how many ticks have passed since node id was last heard.
func (e *Engine) silentFor(id uint64) int64 {
	v, ok := e.lastHeard.Load(id)
	if !ok {
		return e.clockTicks()
	}
	return e.clockTicks() - v.(*atomic.Int64).Load()
}

// PeerLive reports whether node id was heard from (a raft message or a
// liveness ping, sent every pingEvery ticks) within the silence a quiesced
// follower waits out before it takes its leader for gone; this node is
// always live. Safe for concurrent use.
func (e *Engine) PeerLive(id uint64) bool {
	return id == e.cfg.NodeID || e.silentFor(id) <= e.silenceTicks
}

// refreshSilence notes, once per tick, which peers have been silent for
// longer than silenceTicks, so that checking thousands of quiesced
// groups costs a few comparisons each. Engine goroutine only.
func (e *Engine) refreshSilence() {
	e.mu.Lock()
	peers := e.peers
	e.mu.Unlock()
	e.silence = e.silence[:0]
	for _, id := range peers {
		e.silence = append(e.silence, peerSilence{id: id, silent: e.silentFor(id) > e.silenceTicks})
	}
}

type peerSilence struct {
	id     uint64
	silent bool
}

// leaderSilent reports whether node id has been silent for longer than
// silenceTicks (as of the last refreshSilence for peers).
func (e *Engine) leaderSilent(id uint64) bool {
	for _, p := range e.silence {
		if p.id == id {
			return p.silent
		}
	}
	return e.silentFor(id) > e.silenceTicks
}

// SetPeers sets the nodes the engine pings for liveness, and pings them
// at once (see pingAsks). It installs a new slice, never writing into
// the old one: the loop reads the slice it took under e.mu after releasing
// the lock (refreshSilence, pingPeers).
func (e *Engine) SetPeers(ids []uint64) {
	peers := slices.Clone(ids)
	e.mu.Lock()
	e.peers = peers
	e.mu.Unlock()
	e.pingSoon.Store(true)
	e.kick()
}

// pingAsks, in a ping's Commit, asks the peer for its leaders. A node that
// restarts knows no leader for its groups, and a quiesced leader sends
// nothing that would tell it: its groups would wait out an election
// timeout (1-2 s) and start an election, whose messages wake the leaders;
// meanwhile every call to the node waits for a leader. Instead a node's
// pings ask while some group of its has known no leader for a short while
// (askFor), and a node that gets such a ping wakes the quiesced groups it
// leads that have the asker as a member (wakeAskedLeaders): they heartbeat
// once and quiesce again, and the asking groups learn their leaders. A
// node asks only once it has announced itself (Engine.Announce, when its
// groups are open), which pings at once, as do new peers (SetPeers).
// Builds without this ignore the field.
const pingAsks = 1

// askFor is how long a group without a leader makes its node's pings ask
// (pingAsks), in election timeouts: long enough for a restarted node's
// first pings, bounded so that a group that cannot get a leader (a node
// removed from the cluster but still running, a group fenced on a
// majority) does not wake its peers' leaders every second for ever.
const askFor = 3

// asking reports whether some group in list, not fenced nor being
// removed, has known no leader for less than askFor election timeouts.
// Engine goroutine only.
func (e *Engine) asking(list []*Group) bool {
	now := time.Now().UnixNano()
	for _, g := range list {
		if since := g.leaderless.Load(); since != 0 && now-since < askFor*int64(e.electionTimeout) &&
			g.fenced == nil && !g.removing.Load() && g.lead.Load() == raft.None {
			return true
		}
	}
	return false
}

// noteAsk records that node id's ping asked for leaders (pingAsks).
func (e *Engine) noteAsk(id uint64) {
	e.mu.Lock()
	if !slices.Contains(e.asked, id) {
		e.asked = append(e.asked, id)
	}
	e.mu.Unlock()
	e.kick()
}

// wakeAskedLeaders wakes the quiesced groups this node leads that have a
// peer among their members that asked for leaders since the last call,
// and reports whether it woke any. Engine goroutine only.
func (e *Engine) wakeAskedLeaders(list []*Group) bool {
	ids := e.take(&e.asked)
	if len(ids) == 0 {
		return false
	}
	return wakeWhere(list, func(g *Group) bool { return g.isLeader && g.hasMember(ids) })
}

// take empties the node list *ids, guarded by e.mu, and returns what it
// held.
func (e *Engine) take(ids *[]uint64) []uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := *ids
	*ids = nil
	return out
}

// hasMember reports whether one of ids is a voter or learner of g as last
// applied here.
func (g *Group) hasMember(ids []uint64) bool {
	cs := g.conf.Load()
	for _, id := range ids {
		if slices.Contains(cs.GetVoters(), id) || slices.Contains(cs.GetLearners(), id) {
			return true
		}
	}
	return false
}

// resendReleases sends, with a ping, the heartbeat of each fenced leader
// that still has resends left (Group.releaseFollowers).
func (e *Engine) resendReleases() {
	keep := e.releasing[:0]
	for _, g := range e.releasing {
		if g.removing.Load() {
			continue
		}
		g.sendRelease()
		if g.release.left--; g.release.left > 0 {
			keep = append(keep, g)
		}
	}
	clear(e.releasing[len(keep):])
	e.releasing = keep
}

// PeerReadySince is since when node id has been taking leadership, by its
// liveness pings: the local time its ping first carried its current
// incarnation, or first stopped saying it stands aside (so, no remote
// clock); zero while it does not take leadership: before its
// first announced ping, while it restarts (its pings carry no incarnation
// until its groups are open), and while it stands aside (refused, or
// stopping: see StandAside). Safe for concurrent use.
func (e *Engine) PeerReadySince(id uint64) time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.aside[id] {
		return time.Time{}
	}
	return e.upSince[id]
}

// peerAside reports whether node id's last ping said it stands aside.
func (e *Engine) peerAside(id uint64) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.aside[id]
}

// notePeerState records what a ping from node id says of it: its
// incarnation (noteIncarnation) and whether it stands aside.
func (e *Engine) notePeerState(id, inc uint64, aside bool) {
	e.mu.Lock()
	wasAside := e.aside[id]
	e.aside[id] = aside
	switch {
	case inc == 0:
		delete(e.upSince, id) // starting: not announced yet
	case e.incarnations[id] != inc || e.upSince[id].IsZero() || wasAside && !aside:
		e.upSince[id] = time.Now()
	}
	e.mu.Unlock()
	e.noteIncarnation(id, inc)
}

// noteIncarnation records the incarnation a ping from node id carries, in
// its Index: the start time of its engine (0 from builds without it). A
// new one means the node restarted, so it leads no group any more, though
// its quiesced followers still take it for their leader: they would learn
// otherwise only from its election, after its election timeout, and then
// wait out theirs before granting a vote (still in their leader's lease).
// The loop wakes them (wakeFollowersOfRestarted), and the first of them
// campaigns at once (campaignFirst).
func (e *Engine) noteIncarnation(id, inc uint64) {
	if inc == 0 {
		return
	}
	e.mu.Lock()
	old := e.incarnations[id]
	e.incarnations[id] = inc
	changed := old != 0 && old != inc
	if changed {
		e.restarted = append(e.restarted, id)
	}
	e.mu.Unlock()
	if changed {
		e.kick()
	}
}

// wakeFollowersOfRestarted wakes the quiesced groups whose leader is a node
// that restarted since the last call (noteIncarnation), and reports whether
// it woke any. Engine goroutine only.
func (e *Engine) wakeFollowersOfRestarted(list []*Group) bool {
	ids := e.take(&e.restarted)
	if len(ids) == 0 {
		return false
	}
	return wakeWhere(list, func(g *Group) bool {
		if lead := g.lead.Load(); !g.isLeader && slices.Contains(ids, lead) {
			g.campaignFirst(lead) // woken as well: it ticks, whoever campaigns
			return true
		}
		return false
	})
}

// pingPeers sends the liveness pings, asking for leaders when a group in
// list knows none (see pingAsks). Engine goroutine only.
func (e *Engine) pingPeers(list []*Group) {
	if e.cfg.Transport == nil {
		return
	}
	e.mu.Lock()
	peers := e.peers
	e.mu.Unlock()
	var ask, inc uint64
	aside := e.standAside.Load() // Reject: takes no leadership (PeerReadySince)
	if e.announced.Load() {
		inc = e.incarnation
		if e.asking(list) {
			ask = pingAsks
		}
	}
	for _, id := range peers {
		if id == e.cfg.NodeID {
			continue
		}
		e.cfg.Transport.Send(livenessGroup, []*raftpb.Message{{
			Type: raftpb.MessageType_MsgHeartbeat.Enum(), From: new(e.cfg.NodeID), To: new(id),
			Commit: new(ask), Index: new(inc), Reject: new(aside),
		}})
	}
}

// hardStateTicks is how often (in ticks) a group writes the commit point its
// log keeps in memory: a pwrite per busy topic per tick was a tenth of the
// node's pwrites in W4 at 100 topics once the records were written behind
// (1 s at the default tick; raft brings a restarted node's commit point
// forward anyway).
const hardStateTicks = 10

// tick advances a group's clock, or, when it is quiesced, checks that its
// leader is alive; elapsed is the number of ticks since the engine last
// ticked (more than 1 while every group is quiesced). It reports whether
// the group may have a Ready. Engine goroutine only.
func (g *Group) tick(elapsed int) bool {
	if len(g.held) > 0 {
		g.e.markBusy(g) // a hand-off raft called off, or the wait's end (holdProposals)
	}
	// A commit point the log kept in memory reaches its file within
	// hardStateTicks (see commitlog.Log.SetHardState), so a node killed
	// then restarts from at most that far behind, also on a topic that
	// went idle. (Counted in ticks, not calls: while every group is
	// quiesced the engine ticks once a ping interval.)
	if g.hsTicks += elapsed; g.hsTicks >= hardStateTicks {
		g.hsTicks = 0
		if err := g.log.FlushHardState(); err != nil {
			g.fence(err)
			return false
		}
	}
	asked := g.tickReads(elapsed)
	if g.quiesced {
		if g.leaderGone() || g.quorumSilent() {
			// The leader went quiet: tick, and elect. Or this leader's
			// voters did: tick, so that CheckQuorum deposes it.
			g.quiesced = false
		} else if g.awaitsQuiesceAcks() {
			g.resendQuiesce()
		}
		return asked
	}
	// Judge idleness before ticking: a leader's tick queues heartbeats.
	if g.maybeQuiesce() {
		return true // the quiesce heartbeats went out; nothing else to do
	}
	g.rn.Tick()
	return true
}

// leaderGone reports whether g follows no leader, or one whose node has
// been silent for silenceTicks (as of the last refreshSilence). Engine
// goroutine only.
func (g *Group) leaderGone() bool {
	lead := g.lead.Load()
	return lead != g.e.cfg.NodeID && (lead == raft.None || g.e.leaderSilent(lead))
}

// quorumSilent reports whether g leads and the nodes of a majority of its
// voters, this one aside, have been silent for silenceTicks: a quiesced
// leader does not tick, so raft's CheckQuorum would never depose it while
// its node is cut off, and it would go on calling itself the leader, its
// readers waiting at its tail, after the others elected another. Engine
// goroutine only.
func (g *Group) quorumSilent() bool {
	if !g.isLeader {
		return false
	}
	voters := g.conf.Load().GetVoters()
	live := 0
	for _, id := range voters {
		if id == g.e.cfg.NodeID || !g.e.leaderSilent(id) {
			live++
		}
	}
	return live <= len(voters)/2
}

// maybeQuiesce quiesces an idle leader and reports whether it did. Engine
// goroutine only.
func (g *Group) maybeQuiesce() bool {
	if !g.isLeader || len(g.waiters) > 0 || g.rn.HasReady() || g.quorumSilent() {
		g.idleTicks = 0
		return false
	}
	st := g.rn.BasicStatus()
	last, err := g.log.LastIndex()
	if err != nil || st.GetCommit() != last || st.LeadTransferee != raft.None {
		g.idleTicks = 0
		return false
	}
	idle := true
	g.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id != g.e.cfg.NodeID && (pr.Match != last || pr.State != tracker.StateReplicate) {
			idle = false
		}
	})
	if !idle {
		g.idleTicks = 0
		return false
	}
	g.idleTicks++
	if g.idleTicks < quiesceAfter {
		return false
	}
	g.idleTicks = 0
	g.quiesced = true
	g.dropNotices()          // the quiesce heartbeats carry the commit index
	g.log.ReleaseCache(last) // every follower has it all
	if g.e.cfg.Transport == nil {
		return true
	}
	var msgs []*raftpb.Message
	g.rn.WithProgress(func(id uint64, _ raft.ProgressType, _ tracker.Progress) {
		if id == g.e.cfg.NodeID {
			return
		}
		msgs = append(msgs, &raftpb.Message{
			Type:    raftpb.MessageType_MsgHeartbeat.Enum(),
			From:    new(g.e.cfg.NodeID),
			To:      new(id),
			Term:    new(st.GetTerm()),
			Commit:  new(last),
			Context: quiesceCtx,
		})
	})
	// A copy: ackQuiesce takes from it, and Send may read msgs later.
	g.quiesceUnacked = append(g.quiesceUnacked[:0], msgs...)
	g.quiesceTicks, g.quiesceResends = 0, 0
	g.e.cfg.Transport.Send(g.name, msgs)
	return true
}

// quiesceResendTicks is how long a quiesced leader waits for a follower's
// acknowledgement of its quiesce heartbeat before it sends it again;
// quiesceResends how many times it does. A follower whose heartbeat was
// lost keeps ticking, hears nothing, and campaigns after an election
// timeout: it loses its leader (raft's pre-candidate follows none) until
// its pre-vote wakes the leader.
const (
	quiesceResendTicks = 2
	quiesceResends     = 5
)

// awaitsQuiesceAcks reports whether g is a quiesced leader that resends
// its quiesce heartbeat (the loop ticks for it meanwhile). The list of a
// node that led the group once is not: it stopped leading (a hand-off, a
// new term) before the acknowledgements came, and, quiesced again as a
// follower, it kept its node's loop ticking for good.
func (g *Group) awaitsQuiesceAcks() bool {
	return g.isLeader && len(g.quiesceUnacked) > 0
}

// ackQuiesce takes a follower's acknowledgement of the quiesce heartbeat.
func (g *Group) ackQuiesce(m *raftpb.Message) {
	if g.quiesced && g.isLeader {
		g.quiesceUnacked = slices.DeleteFunc(g.quiesceUnacked, func(q *raftpb.Message) bool { return q.GetTo() == m.GetFrom() })
	}
}

// resendQuiesce sends the quiesce heartbeat again to the followers that
// have not acknowledged it, every quiesceResendTicks (the loop keeps
// ticking meanwhile), at most quiesceResends times. Engine goroutine only.
func (g *Group) resendQuiesce() {
	if g.quiesceTicks++; g.quiesceTicks < quiesceResendTicks {
		return
	}
	g.quiesceTicks = 0
	if g.quiesceResends++; g.quiesceResends > quiesceResends || g.e.cfg.Transport == nil {
		g.quiesceUnacked = g.quiesceUnacked[:0]
		return
	}
	msgs := slices.Clone(g.quiesceUnacked) // ackQuiesce changes the list
	g.e.cfg.Transport.Send(g.name, msgs)
}
