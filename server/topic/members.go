package topic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/forestbus/forestbus/server/replica"
)

// Membership errors.
var (
	ErrNodeNotFound = errors.New("topic: no such node")
	ErrNodeExists   = errors.New("topic: node name taken")
	// ErrLastVoter: the removal would leave the cluster without a voter.
	ErrLastVoter = errors.New("topic: the last voting member cannot be removed")
	// ErrQuorumLoss: the removal would leave fewer live voters than a
	// majority of those left (etcd's strict reconfiguration check).
	ErrQuorumLoss = errors.New("topic: the removal would leave too few live voting members for a majority")
)

// validateAddress checks a member's address: host:port.
func validateAddress(addr string) error {
	if host, port, err := net.SplitHostPort(addr); err != nil || host == "" || port == "" {
		return fmt.Errorf("%w: node address %q: want host:port", ErrInvalidMember, addr)
	}
	return nil
}

// validateMemberName checks a new member's name: the rules of topic names
// (ValidateName). Members named before the rule (-name and -initial-cluster
// take any name) keep their names: a retried AddNode of one still answers.
func validateMemberName(name string) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("%w: node name: %s", ErrInvalidMember, strings.TrimPrefix(err.Error(), ErrInvalidName.Error()+": "))
	}
	return nil
}

// AddNode adds a member: a learner of the metadata group first, promoted by
// Reconcile once it has caught up. Adding a name again with the same
// address returns the existing member (a retried call). It waits until the
// change is applied here. Errors: ErrNodeExists (the name at another
// address, or the address another member's), ErrInvalidMember (a name
// outside the topic name rules, an address not host:port), and the
// replica proposal errors.
func (r *Registry) AddNode(ctx context.Context, name, addr string) (Member, error) {
	if err := validateAddress(addr); err != nil {
		return Member{}, err
	}
	if err := r.confirmMembers(ctx); err != nil {
		return Member{}, err
	}
	for {
		r.mu.RLock()
		var found, sameAddr *Member
		for _, m := range r.members {
			if m.Name == name {
				found = &m
			} else if m.Address == addr {
				sameAddr = &m
			}
		}
		id := r.maxID + 1
		r.mu.RUnlock()
		if found == nil {
			if err := validateMemberName(name); err != nil {
				return Member{}, err
			}
		}
		if found == nil && sameAddr != nil {
			// Peers and clients would reach that member there: the new
			// one could never be reached, and the old one would be
			// asked for another's streams.
			return Member{}, fmt.Errorf("%w: %s is the address of node %q (%d)", ErrNodeExists, addr, sameAddr.Name, sameAddr.ID)
		}
		if found != nil {
			if found.Address != addr {
				return Member{}, fmt.Errorf("%w: %q is node %d at %s", ErrNodeExists, name, found.ID, found.Address)
			}
			return *found, nil
		}
		cctx, err := json.Marshal(Member{ID: id, Name: name, Address: addr})
		if err != nil {
			return Member{}, err
		}
		cc := &raftpb.ConfChangeV2{
			Changes: []*raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeType_ConfChangeAddLearnerNode.Enum(), NodeId: new(id)}},
			Context: cctx,
		}
		if err := r.meta.ProposeConfChange(ctx, cc); err != nil {
			return Member{}, err
		}
		// Raft drops a change proposed while another is pending: wait for
		// ours to apply, else propose again.
		if err := r.waitMembers(ctx, func() bool { _, ok := r.members[id]; return ok }); err != nil {
			return Member{}, err
		}
	}
}

// confirmMembers makes AddNode and RemoveNode judge by the cluster's
// member list, not by one this node has not caught up on (a node added a
// moment ago through the leader, "not found" on a lagging follower): a
// node that knows another metadata leader, still a member, passes the call
// on to it (NotLeaderError; the API forwards it, as it did every such
// call's proposal), and the leader, or a node that knows none (or only one
// the cluster has just removed), first waits for the metadata group's read
// barrier (a new leader may not have applied its predecessor's entries).
func (r *Registry) confirmMembers(ctx context.Context) error {
	if lead := r.meta.Leader(); lead != 0 && lead != r.cfg.NodeID {
		r.mu.RLock()
		_, member := r.members[lead]
		r.mu.RUnlock()
		if member { // not a leader the cluster has just removed
			return &replica.NotLeaderError{Leader: lead}
		}
	}
	return r.barrier(ctx, "the member list")
}

// barrier waits until this node has applied every metadata command the
// cluster had committed when it was called (the metadata group's read
// index), so that the state read next (of, for the error) is the
// cluster's. Errors:
// replica.ErrNoLeader when the group does not confirm in time.
func (r *Registry) barrier(ctx context.Context, of string) error {
	wctx, cancel := r.metaWait(ctx)
	defer cancel()
	if err := r.meta.ReadIndex(wctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err() // the caller gave up first
		}
		if wctx.Err() != nil {
			err = errors.New("no leader with a quorum answered in time")
		}
		return fmt.Errorf("%w: the metadata group did not confirm %s: %v", replica.ErrNoLeader, of, err)
	}
	return nil
}

// metaWait bounds how long a call waits for the metadata group to know a
// leader or to confirm a read barrier: two election timeouts, and at
// least minMetaWait (a barrier over a slow link takes a round trip to the
// leader and its heartbeat round). A cluster that lost its metadata
// quorum then answers replica.ErrNoLeader, and the client can ask
// elsewhere or retry; it does not wait for the caller's deadline, which
// grpcurl does not set.
func (r *Registry) metaWait(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, max(minMetaWait, 2*r.meta.ElectionTimeout()))
}

// minMetaWait is metaWait's floor: the default two election timeouts.
const minMetaWait = 2 * time.Second

// RemoveNode removes the named member from the metadata group; Reconcile
// removes it from the topic groups. It waits until the change is applied
// here. Errors: ErrNodeNotFound, ErrLastVoter, ErrQuorumLoss (the voters
// left, as the metadata leader hears them, would not have a live majority)
// and the replica proposal errors.
func (r *Registry) RemoveNode(ctx context.Context, name string) error {
	if err := r.confirmMembers(ctx); err != nil {
		return err
	}
	r.mu.RLock()
	var id uint64
	for _, m := range r.members {
		if m.Name == name {
			id = m.ID
		}
	}
	r.mu.RUnlock()
	if id == 0 {
		return fmt.Errorf("%w: %q", ErrNodeNotFound, name)
	}
	removed := func() bool { _, ok := r.members[id]; return !ok }
	for {
		// Checked on every round: a removal applied meanwhile may have
		// left this node the last voter, and the apply refuses the change
		// then (checkConfChange).
		r.mu.RLock()
		left := slices.DeleteFunc(slices.Clone(r.voters), func(v uint64) bool { return v == id })
		last := len(left) == 0 && len(r.voters) > 0
		r.mu.RUnlock()
		if last {
			return fmt.Errorf("%w: %q", ErrLastVoter, name)
		}
		// Removing a live voter while others are down can leave a
		// configuration that commits nothing until they return: refuse
		// it, as etcd does. Removing a dead one is how it is replaced.
		// Only the metadata leader judges: it hears from every live
		// voter. A follower, cut off or removed itself, may hear none;
		// it passes the call on (NOT_LEADER), and the leader checks.
		if r.meta.Leader() == r.cfg.NodeID && !r.removedSelf.Load() {
			if err := r.removalKeepsQuorums(name, id, left); err != nil {
				return err
			}
		}
		cc := &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: raftpb.ConfChangeType_ConfChangeRemoveNode.Enum(), NodeId: new(id)}}}
		if err := r.meta.ProposeConfChange(ctx, cc); err != nil {
			return err
		}
		// As in AddNode: raft drops a change proposed while another is
		// pending (a learner's promotion, say), so wait for ours to apply,
		// else propose again. Proposing once, as this did, let RemoveNode
		// answer OK for a removal that never happened.
		if err := r.waitMembers(ctx, removed); err != nil {
			return err
		}
		r.mu.RLock()
		done := removed()
		r.mu.RUnlock()
		if done {
			return nil
		}
	}
}

// removalKeepsQuorums returns ErrQuorumLoss when removing member id (name)
// would leave the metadata group's voters, left, or a topic group's
// voters without a live majority. A topic group's voters are not always
// the metadata group's: a node added to the cluster votes in the metadata
// group as soon as it holds its small log, and stays a learner of a topic
// until it holds the topic's log. Judged by the metadata group alone, the
// removal of a live voter while another was down went through, the
// reconciler then removed it from a topic whose new node was still
// learning, and that topic was left with one live voter of two: no
// leader, and no commit to promote the learner with, until the down node
// came back (a review found it). The topic groups' configurations are
// this node's view of them (it holds every topic).
func (r *Registry) removalKeepsQuorums(name string, id uint64, left []uint64) error {
	short := func(voters []uint64) (n, live int, ok bool) {
		for _, v := range voters {
			if r.cfg.Engine.PeerLive(v) {
				live++
			}
		}
		return len(voters), live, len(voters) == 0 || live >= len(voters)/2+1
	}
	if n, live, ok := short(left); !ok {
		return fmt.Errorf("%w: removing %q leaves %d voters, %d of them live", ErrQuorumLoss, name, n, live)
	}
	if !r.cfg.Engine.PeerLive(id) {
		// Removing a voter that is down leaves every group the live
		// voters it has, fewer voters to count: no group's majority gets
		// harder to reach (the replacement of a dead node). This node's
		// copies of the topics need not be current for that.
		return nil
	}
	r.mu.RLock()
	topics := make([]*Topic, 0, len(r.topics))
	for _, t := range r.topics {
		if t.Group != nil {
			topics = append(topics, t)
		}
	}
	r.mu.RUnlock()
	for _, t := range topics {
		voters := t.Group.ConfState().GetVoters()
		if !slices.Contains(voters, r.cfg.NodeID) {
			if id == r.cfg.NodeID {
				continue // removing a node that does not vote there yet
			}
			// This node still learns the topic (it joined a moment
			// ago): its copy of the configuration is behind the
			// leader's, which may count more voters or fewer.
			return fmt.Errorf("%w: removing %q: this node does not vote in topic %q yet (it is catching up on it), so it cannot judge that topic's quorum: retry",
				ErrQuorumLoss, name, t.Name)
		}
		if !slices.Contains(voters, id) {
			continue // not a voter there: its quorum does not change
		}
		voters = slices.DeleteFunc(slices.Clone(voters), func(v uint64) bool { return v == id })
		if n, live, ok := short(voters); !ok {
			return fmt.Errorf("%w: removing %q leaves topic %q with %d voters, %d of them live (a member still learning the topic votes once it holds the topic's log: retry then)",
				ErrQuorumLoss, name, t.Name, n, live)
		}
	}
	return nil
}

// waitMembers polls cond (under the read lock) until it holds, for up to a
// few seconds; a false result after that means the change was dropped.
func (r *Registry) waitMembers(ctx context.Context, cond func() bool) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		r.mu.RLock()
		ok := cond()
		r.mu.RUnlock()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return nil // the caller looks again and re-proposes
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Reconcile makes one round of membership changes on the groups this node
// leads: it promotes caught-up learners of the metadata group, and brings
// each topic group's configuration to the cluster's members (learner
// first, voter once caught up, removed when no longer a member). One change
// per group per round; call it periodically. It reports whether the round
// found nothing to do on this node (every group it leads is settled); then
// the next round can wait until ChangeCount moves (Changed). Nothing
// signals a leadership change: a group whose leadership moved to this node
// with work pending waits for the caller's next periodic round.
func (r *Registry) Reconcile(ctx context.Context) (settledAll bool) {
	settledAll = true
	r.mu.RLock()
	members := make(map[uint64]bool, len(r.members))
	for id := range r.members {
		members[id] = true
	}
	r.mu.RUnlock()
	groups := r.Groups() // the metadata group first
	metaConf := r.meta.ConfState()
	for i, g := range groups {
		if i == 0 && len(metaConf.GetLearners()) == 0 {
			continue // metadata group: only promotions are left to Reconcile
		}
		if g.Leader() == r.cfg.NodeID && (i == 0 || !settled(g.ConfState(), members)) {
			settledAll = false
		}
		if i > 0 && !members[r.cfg.NodeID] && g.Leader() == r.cfg.NodeID {
			// This node was removed: hand the group to a member, whose
			// reconciler then removes this node from it.
			if err := g.TransferLeadership(ctx); err != nil && ctx.Err() == nil {
				r.log.Debug("removed node could not hand off leadership", "group", g.Name(), "err", err)
			}
			continue
		}
		if lead := g.Leader(); i > 0 && lead != raft.None && lead != r.cfg.NodeID && !members[lead] && members[r.cfg.NodeID] {
			// Led by a removed node, which may not know it was removed: ask
			// for the leadership, then remove it.
			settledAll = false
			if err := g.RequestLeadership(ctx); err != nil && ctx.Err() == nil {
				r.log.Debug("leadership not requested", "group", g.Name(), "err", err)
			}
			continue
		}
		if g.Leader() != r.cfg.NodeID || (i > 0 && settled(g.ConfState(), members)) {
			continue
		}
		st, err := g.Status(ctx)
		if err != nil || st.RaftState != raft.StateLeader {
			continue
		}
		cc := nextChange(st, members, i == 0)
		if cc == nil {
			continue
		}
		if err := g.ProposeConfChange(ctx, cc); err != nil && ctx.Err() == nil {
			r.log.Debug("membership change not proposed", "group", g.Name(), "err", err)
		}
	}
	return settledAll
}

// settled reports whether a topic group's configuration already is the
// member set, all voters: nothing to do, and no need to ask raft.
func settled(cs *raftpb.ConfState, members map[uint64]bool) bool {
	if cs == nil || len(cs.GetLearners()) > 0 || len(cs.GetVoters()) != len(members) || len(cs.GetVotersOutgoing()) > 0 {
		return false
	}
	for _, id := range cs.GetVoters() {
		if !members[id] {
			return false
		}
	}
	return true
}

// nextChange picks the one configuration change a leader should make next,
// or nil. For the metadata group membership is decided by AddNode and
// RemoveNode; only promotions are left to do.
func nextChange(st raft.Status, members map[uint64]bool, meta bool) *raftpb.ConfChangeV2 {
	single := func(t raftpb.ConfChangeType, id uint64) *raftpb.ConfChangeV2 {
		return &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: t.Enum(), NodeId: new(id)}}}
	}
	cfg := st.Config
	inGroup := map[uint64]bool{}
	for id := range cfg.Voters.IDs() {
		inGroup[id] = true
	}
	learners := slices.Sorted(func(yield func(uint64) bool) {
		for id := range cfg.Learners {
			inGroup[id] = true
			if !yield(id) {
				return
			}
		}
	})
	// Promote a caught-up learner.
	for _, id := range learners {
		if !members[id] {
			continue
		}
		if pr, ok := st.Progress[id]; ok && pr.State == tracker.StateReplicate && pr.Match >= st.GetCommit() {
			return single(raftpb.ConfChangeType_ConfChangeAddNode, id)
		}
	}
	if meta {
		return nil
	}
	// Add a missing member as a learner.
	for _, id := range slices.Sorted(mapKeys(members)) {
		if !inGroup[id] {
			return single(raftpb.ConfChangeType_ConfChangeAddLearnerNode, id)
		}
	}
	// Remove a node that is no longer a member.
	for _, id := range slices.Sorted(mapKeys(inGroup)) {
		if !members[id] && id != st.ID {
			return single(raftpb.ConfChangeType_ConfChangeRemoveNode, id)
		}
	}
	return nil
}

func mapKeys(m map[uint64]bool) func(func(uint64) bool) {
	return func(yield func(uint64) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// MemberLive reports whether this node hears from the named member (see
// replica.Engine.PeerLive); false for a name that is not a member.
func (r *Registry) MemberLive(name string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, m := range r.members {
		if m.Name == name {
			return r.cfg.Engine.PeerLive(m.ID)
		}
	}
	return false
}
