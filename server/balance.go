package server

import (
	"context"
	"time"

	"github.com/forestbus/forestbus/server/topic"
)

// DefaultLeaderBalanceInterval is Config.LeaderBalanceInterval's default.
const DefaultLeaderBalanceInterval = 10 * time.Second

const (
	// balancePerRound caps the hand-offs one round asks for: each stalls
	// its topic's proposals for about a round trip, and 1,000 topics
	// coming back at once would be a burst of elections.
	balancePerRound = 64
	// balanceMaxLag is how far behind (raft entries) a preferred leader
	// may be and still be handed its topic: raft catches it up first, with
	// the topic's proposals dropped meanwhile.
	balanceMaxLag = 64
	// balanceBackoff is how many rounds a node that did not take a
	// topic handed to it is left alone (it may be stopping, or stand
	// aside: see refusal.go).
	balanceBackoff = 6
)

// balanceLeaders runs the leader-balancing rounds (Registry.BalanceLeaders)
// every LeaderBalanceInterval, until Stop. A node is handed its topics
// once it has been up (by its liveness pings) for an interval; one that
// did not take a topic asked of it by the next round is skipped for
// balanceBackoff rounds. A node that is refused or removed asks nothing.
func (s *Server) balanceLeaders() {
	defer s.wg.Done()
	every := s.cfg.LeaderBalanceInterval
	if every < 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var (
		asked   []topic.Handed // by the last round
		skipTil = map[uint64]time.Time{}
	)
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
		}
		now := time.Now()
		for _, a := range asked {
			if a.Group.Leader() == s.id.RaftID {
				skipTil[a.To] = now.Add(balanceBackoff * every)
			}
		}
		if s.gate.closed.Load() || s.registry.RemovedSelf() {
			continue
		}
		members := map[uint64]bool{}
		for _, m := range s.registry.Members() {
			members[m.ID] = true
		}
		ready := func(id uint64) bool {
			started := s.engine.PeerStartedAt(id)
			return members[id] && s.engine.PeerLive(id) && !started.IsZero() &&
				now.Sub(started) >= every && !now.Before(skipTil[id])
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		asked = s.registry.BalanceLeaders(ctx, balancePerRound, balanceMaxLag, ready)
		cancel()
		if len(asked) > 0 {
			s.log.Info("handing topics to their preferred leaders", "topics", len(asked))
		}
	}
}
