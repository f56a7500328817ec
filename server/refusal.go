package server

import (
	"slices"
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
)

// A node whose peers refuse its streams (their peerBook: its data
// directory is not the one they recorded under its raft ID) looked
// healthy: status up, health SERVING, its stale logs answering reads; only
// its log said why (review). While a member refuses it, it serves no
// client (UNAVAILABLE, clients move on), reports NOT_SERVING, names the
// refusing members in /status.json and grants no vote (voteGate), until
// they accept it again. Refusals by nodes that are no members do not
// count: a removed node's record may be stale.

// peerRefuses records that peer refuses this node's streams, or accepts
// them again (the transport's OnRefused).
func (s *Server) peerRefuses(peer uint64, refused bool) {
	s.refusalMu.Lock()
	defer s.refusalMu.Unlock()
	if refused {
		s.refusedBy[peer] = true
	} else {
		delete(s.refusedBy, peer)
	}
	s.applyRefusalLocked()
}

// applyRefusal re-judges the refusals, for a new member list.
func (s *Server) applyRefusal() {
	s.refusalMu.Lock()
	defer s.refusalMu.Unlock()
	s.applyRefusalLocked()
}

func (s *Server) applyRefusalLocked() {
	var names []string
	if len(s.refusedBy) > 0 {
		for _, n := range s.svc.Nodes() {
			if s.refusedBy[n.RaftID] {
				names = append(names, n.Name)
			}
		}
	}
	if len(names) > 0 && len(s.refusedNames) == 0 {
		s.log.Error("server: a member refuses this node's data directory: it serves no client until every member accepts it", "refused_by", names)
	} else if len(names) == 0 && len(s.refusedNames) > 0 {
		s.log.Info("server: no member refuses this node any more: it serves clients again")
	}
	s.refusedNames = names
	if s.gate != nil {
		s.gate.closed.Store(len(names) > 0)
	}
	s.svc.SetRefusedBy(names)
	s.updateServingLocked()
}

// RefusedBy names the members that refuse this node's streams (none when
// it serves).
func (s *Server) RefusedBy() []string {
	s.refusalMu.Lock()
	defer s.refusalMu.Unlock()
	return append([]string(nil), s.refusedNames...)
}

// updateServing sets the health status: NOT_SERVING on a node the cluster
// removed or a member refuses, so that probes (a load balancer,
// Kubernetes, systemd) do not take it for a serving node.
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
	if s.registry.RemovedSelf() || len(s.refusedNames) > 0 {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(forestbusv1.ForestBusService_ServiceDesc.ServiceName, st)
	s.health.SetServingStatus(forestbusv1.AdminService_ServiceDesc.ServiceName, st)
}

// voteGate is the peer transport of a node that members may refuse: while
// one does, the node grants no vote (its granted MsgVoteResp and
// MsgPreVoteResp are dropped, as a lossy link would). A refusal says that
// its log is not the one it had (a wiped directory): a peer that never
// knew the old one accepts its streams, and with the refusing member down
// that peer, which may lack entries the old log acknowledged, could be
// elected by the node's vote. Everything else goes: a node that is not
// wiped (a peer's record wrong) still follows, and acknowledges what it
// stores.
type voteGate struct {
	PeerTransport
	closed atomic.Bool // a member refuses this node
}

func (g *voteGate) Send(group string, msgs []*raftpb.Message) {
	if g.closed.Load() && slices.ContainsFunc(msgs, grantsVote) {
		msgs = slices.DeleteFunc(slices.Clone(msgs), grantsVote)
	}
	g.PeerTransport.Send(group, msgs)
}

// grantsVote reports whether m grants a vote or a pre-vote.
func grantsVote(m *raftpb.Message) bool {
	t := m.GetType()
	return (t == raftpb.MessageType_MsgVoteResp || t == raftpb.MessageType_MsgPreVoteResp) && !m.GetReject()
}
