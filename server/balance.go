package server

import (
	"context"
	"time"

	"github.com/forestbus/forestbus/server/topic"
)

// DefaultLeaderBalanceInterval is Config.LeaderBalanceInterval's default.
const DefaultLeaderBalanceInterval = 10 * time.Second

const (
	// balancePerRound caps the hand-offs one round asks for: each pauses
	// its topic's writes briefly, and 1,000 topics coming back at once
	// would be a burst of elections.
	balancePerRound = 64
	// balanceMaxLag is how far behind (raft entries) a preferred leader
	// may be and still be handed its topic: raft catches it up first, with
	// the topic's proposals dropped meanwhile.
	balanceMaxLag = 64
	// balanceAbortTicks is how long (raft ticks) a round waits for its
	// hand-offs to take effect before it aborts the rest: raft would drop
	// their topics' proposals for a whole election timeout.
	balanceAbortTicks = 5
	// balanceBackoff is how many rounds a node that did not take a topic
	// handed to it is left alone.
	balanceBackoff = 6
)

// balanceLeaders runs the leader-balancing rounds (Registry.BalanceLeaders)
// every LeaderBalanceInterval, until Stop. A node is handed topics once it
// has taken leadership (by its liveness pings: announced, not standing
// aside) for an interval. A round then waits balanceAbortTicks for its
// hand-offs, aborts those not taken, and leaves their targets alone for
// balanceBackoff rounds. A node that is refused or removed asks nothing.
func (s *Server) balanceLeaders() {
	defer s.wg.Done()
	every := s.cfg.LeaderBalanceInterval
	if every < 0 {
		return
	}
	ctx := s.stopCtx
	t := time.NewTicker(every)
	defer t.Stop()
	skipTil := map[uint64]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.gate.closed.Load() || s.registry.RemovedSelf() {
			continue
		}
		now := time.Now()
		members := map[uint64]bool{}
		for _, m := range s.registry.Members() {
			members[m.ID] = true
		}
		ready := func(id uint64) bool {
			since := s.engine.PeerReadySince(id)
			return members[id] && s.engine.PeerLive(id) && !since.IsZero() &&
				now.Sub(since) >= every && !now.Before(skipTil[id])
		}
		// Room for the wait of awaitHandOffs, however short the interval.
		rctx, rcancel := context.WithTimeout(ctx, max(every, (balanceAbortTicks+2)*s.cfg.TickInterval))
		handed := s.registry.BalanceLeaders(rctx, balancePerRound, balanceMaxLag, ready)
		if len(handed) > 0 {
			n := s.awaitHandOffs(rctx, handed, skipTil)
			s.log.Info("handed topics to their preferred leaders", "topics", len(handed), "not_taken", n)
		}
		rcancel()
	}
}

// awaitHandOffs waits up to balanceAbortTicks for the hand-offs to take
// effect, aborts the rest and backs their targets off (skipTil); it
// returns how many were not taken.
func (s *Server) awaitHandOffs(ctx context.Context, handed []topic.Handed, skipTil map[uint64]time.Time) int {
	deadline := time.Now().Add(balanceAbortTicks * s.cfg.TickInterval)
	for {
		pending := 0
		for _, h := range handed {
			if h.Group.Leader() == s.id.RaftID {
				pending++
			}
		}
		if pending == 0 {
			return 0
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(s.cfg.TickInterval / 4):
		}
	}
	notTaken := 0
	backoff := time.Now().Add(balanceBackoff * s.cfg.LeaderBalanceInterval)
	for _, h := range handed {
		if h.Group.Leader() != s.id.RaftID {
			continue
		}
		// A context of its own: the round's may have ended, and an op
		// whose caller gave up does not run.
		actx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = h.Group.AbortTransfer(actx) // none left when raft gave up already
		cancel()
		notTaken++
		skipTil[h.To] = backoff
	}
	return notTaken
}
