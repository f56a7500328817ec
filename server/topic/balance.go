package topic

import (
	"context"
	"slices"

	"github.com/forestbus/forestbus/server/replica"
)

// Leaders are spread over the nodes when topics are created: the voter
// picked by a topic's create index campaigns first (startGroup). A node
// that stops hands its leaderships to the others, and nothing gave them
// back: after a rolling restart one node led every topic, and did every
// topic's leader work alone. BalanceLeaders moves each topic back to its
// preferred leader, as Kafka's preferred-replica election does.

// preferredLeader is the voter that should lead a topic created at
// metadata index created whose group's voters are voters: the one at the
// create index modulo their number, in ID order (what startGroup picks
// when the voters are the cluster's), or 0 with no voter.
func preferredLeader(created uint64, voters []uint64) uint64 {
	if len(voters) == 0 {
		return 0
	}
	if !slices.IsSorted(voters) {
		voters = slices.Sorted(slices.Values(voters))
	}
	return voters[created%uint64(len(voters))]
}

// Handed is one hand-off BalanceLeaders asked for.
type Handed struct {
	Topic string
	Group *replica.Group
	To    uint64 // the preferred leader
}

// BalanceLeaders asks, for the topics this node leads whose preferred
// leader is another voter, that the leadership be handed to it: when ready
// says that node may take it (up for a while, not refused, a member) and
// raft sees it caught up (replica.Group.HandTo, within maxLag entries). It
// asks for at most limit hand-offs and returns them; it does not wait for
// them. The metadata group is left where it is: it carries little work.
func (r *Registry) BalanceLeaders(ctx context.Context, limit int, maxLag uint64, ready func(id uint64) bool) []Handed {
	var out []Handed
	for _, t := range r.List() {
		if len(out) >= limit || ctx.Err() != nil {
			break
		}
		g := t.Group
		if g == nil || g.Leader() != r.cfg.NodeID { // a fenced group leads nothing
			continue
		}
		to := preferredLeader(t.created, g.ConfState().GetVoters())
		if to == 0 || to == r.cfg.NodeID || !ready(to) {
			continue
		}
		if asked, err := g.HandTo(ctx, to, maxLag); err == nil && asked {
			out = append(out, Handed{Topic: t.Name, Group: g, To: to})
		}
	}
	return out
}
