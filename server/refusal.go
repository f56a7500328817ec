package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// A node whose peers refuse its streams (their peerBook: its data
// directory is not the one they recorded under its raft ID) looked
// healthy: status up, health SERVING, its stale logs answering reads; only
// its log said why (review). While a peer refuses it, it serves no
// client (UNAVAILABLE, clients move on), reports NOT_SERVING, names the
// refusing peers in /status.json and takes no part in elections: it
// grants no vote, starts none, takes no leadership handed to it
// (voteGate) and hands off what it leads (shedLeadership), until they
// accept it again. A refusal by a node the cluster removed since counts
// too: its record of this node's first directory stays true (raft IDs
// are never reused), and removing the one member that knew it must not
// let a wiped node vote again (review).

// refusedFile records, in a node's data directory, the peers that refuse
// it (their raft IDs), until each accepts it again: a refused node
// restarted while the peers that refuse it are down would otherwise
// vote again, which the refusal exists to prevent. Deleting it (the node
// stopped) lifts the refusal until a peer refuses the node again.
const refusedFile = "refused.json"

// refusalRecord is refusedFile's content.
type refusalRecord struct {
	Peers []uint64 `json:"peers"` // raft IDs
}

// loadRefusals reads refusedFile into s.refusedBy (before any peer runs).
// An unreadable one fails the start, as an unreadable peers.json does:
// ignoring it would let the node vote while the peers that refuse it
// are down, which the record exists to prevent (review).
func (s *Server) loadRefusals() error {
	path := filepath.Join(s.cfg.DataDir, refusedFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // none recorded
	}
	if err != nil {
		return err
	}
	var rec refusalRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("server: %s: %w (it lists the peers that refuse this node; if its data directory is its own, delete the file)", path, err)
	}
	for _, id := range rec.Peers {
		s.refusedBy[id] = true
	}
	if len(rec.Peers) > 0 {
		s.log.Warn("server: peers refused this node before it stopped: it serves no client and takes no part in elections until they accept it", "peers", rec.Peers)
	}
	return nil
}

// saveRefusalsLocked records s.refusedBy in refusedFile (none: no file).
func (s *Server) saveRefusalsLocked() {
	path := filepath.Join(s.cfg.DataDir, refusedFile)
	var err error
	if len(s.refusedBy) == 0 {
		if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	} else {
		peers := slices.Sorted(maps.Keys(s.refusedBy))
		err = writeFileAtomic(path, refusalRecord{Peers: peers})
	}
	if err != nil {
		s.log.Error("server: recording the peers that refuse this node", "err", err)
	}
}

// peerRefuses records that peer refuses this node's streams, or accepts
// them again (the transport's OnRefused).
func (s *Server) peerRefuses(peer uint64, refused bool) {
	s.refusalMu.Lock()
	defer s.refusalMu.Unlock()
	if s.refusedBy[peer] != refused {
		if refused {
			s.refusedBy[peer] = true
		} else {
			delete(s.refusedBy, peer)
		}
		s.saveRefusalsLocked()
	}
	s.applyRefusalLocked()
}

// peerName is peer's name as a member, or "node ID" for one no longer
// (or not yet) known.
func (s *Server) peerName(id uint64) string {
	for _, n := range s.svc.Nodes() {
		if n.RaftID == id {
			return n.Name
		}
	}
	return fmt.Sprintf("node %d", id)
}

// applyRefusal re-judges the refusals' names, for a new member list.
func (s *Server) applyRefusal() {
	s.refusalMu.Lock()
	defer s.refusalMu.Unlock()
	s.applyRefusalLocked()
}

func (s *Server) applyRefusalLocked() {
	var names []string
	for _, id := range slices.Sorted(maps.Keys(s.refusedBy)) {
		names = append(names, s.peerName(id))
	}
	if len(names) > 0 && len(s.refusedNames) == 0 {
		s.log.Error("server: a peer refuses this node's data directory: it serves no client and takes no part in elections until every such peer accepts it", "refused_by", names)
	} else if len(names) == 0 && len(s.refusedNames) > 0 {
		s.log.Info("server: no peer refuses this node any more: it serves clients again")
	}
	s.refusedNames = names
	s.gate.closed.Store(len(names) > 0)
	if s.engine != nil {
		s.engine.StandAside(len(names) > 0 || s.gate.stopping.Load()) // a stopping node stays aside
	}
	if len(names) > 0 {
		select {
		case s.shed <- struct{}{}:
		default:
		}
	}
	s.svc.SetRefusedBy(names)
	s.updateServingLocked()
}

// RefusedBy names the peers that refuse this node's streams (none when
// it serves).
func (s *Server) RefusedBy() []string {
	s.refusalMu.Lock()
	defer s.refusalMu.Unlock()
	return append([]string(nil), s.refusedNames...)
}

// updateServing sets the health status: NOT_SERVING on a node the cluster
// removed or a peer refuses, and on one that has not yet caught up with
// the cluster's metadata since it started (it refuses topic calls then),
// so that probes (a load balancer, Kubernetes, systemd) do not take it
// for a serving node.
func (s *Server) updateServing() {
	s.refusalMu.Lock()
	defer s.refusalMu.Unlock()
	s.updateServingLocked()
}

func (s *Server) updateServingLocked() {
	if s.health == nil {
		return // not serving yet: Start sets it
	}
	st := healthpb.HealthCheckResponse_SERVING
	if s.registry.RemovedSelf() || len(s.refusedNames) > 0 || !s.registry.IsCaughtUp() {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(forestbusv1.ForestBusService_ServiceDesc.ServiceName, st)
	s.health.SetServingStatus(forestbusv1.AdminService_ServiceDesc.ServiceName, st)
}

// voteGate is the peer transport of a node that peers may refuse: while
// one does, the node takes no part in elections. It grants no vote (its
// granted MsgVoteResp and MsgPreVoteResp are dropped, as a lossy link
// would): a refusal says that its log is not the one it had (a wiped
// directory), and a peer that never knew the old one accepts its streams;
// with the refusing member down, that peer, which may lack entries the old
// log acknowledged, could be elected by the node's vote. It starts no
// election (its MsgPreVote and MsgVote are dropped) and ignores a
// leadership transfer to it (MsgTimeoutNow, engineHandler): a refused
// leader answers clients UNAVAILABLE, and followers forward writes to it,
// so none would succeed anywhere. Everything else goes: a node that is
// not wiped (a peer's record wrong) still follows, and acknowledges what
// it stores.
type voteGate struct {
	PeerTransport
	closed atomic.Bool // a peer refuses this node
	// stopping: the node is handing its leaderships off to stop, and
	// takes none (a peer's leader balancing may hand it one meanwhile:
	// balance.go).
	stopping atomic.Bool
}

func (g *voteGate) Send(group string, msgs []*raftpb.Message) {
	if g.closed.Load() && slices.ContainsFunc(msgs, grantsVote) {
		msgs = slices.DeleteFunc(slices.Clone(msgs), grantsVote)
	}
	g.PeerTransport.Send(group, msgs)
}

// dropsInbound reports whether a message from a peer is ignored while
// this node is refused: a leadership transfer to it, and answers to
// votes it asked for before; or while it stops: a leadership transfer.
func (g *voteGate) dropsInbound(m *raftpb.Message) bool {
	if !g.closed.Load() {
		return m.GetType() == raftpb.MessageType_MsgTimeoutNow && g.stopping.Load()
	}
	switch m.GetType() {
	case raftpb.MessageType_MsgTimeoutNow, raftpb.MessageType_MsgVoteResp, raftpb.MessageType_MsgPreVoteResp:
		return true
	}
	return false
}

// grantsVote reports whether m grants a vote or a pre-vote, or asks for
// one: what a refused node does not send.
func grantsVote(m *raftpb.Message) bool {
	switch m.GetType() {
	case raftpb.MessageType_MsgVoteResp, raftpb.MessageType_MsgPreVoteResp:
		return !m.GetReject()
	case raftpb.MessageType_MsgVote, raftpb.MessageType_MsgPreVote:
		return true
	}
	return false
}

// shedLeadership hands off the leadership of every group this node leads
// while a peer refuses it: a round every second while it leads some, every
// 5 s while it leads none, until the refusal ends or Stop. A transfer can
// fail (no other voter answers this node): the next round tries again.
func (s *Server) shedLeadership() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stopc:
			return
		case <-s.shed:
		}
		for s.gate.closed.Load() {
			ctx, cancel := context.WithTimeout(s.stopCtx, 2*time.Second) // Stop ends the round
			led, failed := s.handOff(ctx)
			cancel()
			if failed > 0 {
				s.log.Debug("server: a refused node could not hand off some leaderships yet", "groups", failed)
			}
			// Again while refused, also when it led nothing: a vote it
			// asked for just before the refusal may still win it a group
			// (its own requests and the answers to them are dropped from
			// then on, so not later).
			wait := time.Second
			if led == 0 {
				wait = 5 * time.Second
			}
			select {
			case <-s.stopc:
				return
			case <-time.After(wait):
			}
		}
	}
}
