package replica

import (
	"errors"
	"fmt"
)

// Errors returned by Group methods.
var (
	// ErrNotLeader: this node does not lead the group. The returned error is
	// a *NotLeaderError naming the leader when one is known.
	ErrNotLeader = errors.New("replica: not the leader")
	// ErrNoLeader: the group has no leader at the moment (election under way).
	ErrNoLeader = errors.New("replica: no leader")
	// ErrLeadershipLost: the leader lost leadership while the proposal was in
	// flight; the batch may or may not be committed.
	ErrLeadershipLost = errors.New("replica: leadership lost, outcome unknown")
	// ErrProposalDropped: raft refused the proposal (uncommitted-size budget
	// exceeded or leadership in transfer).
	ErrProposalDropped = errors.New("replica: proposal dropped")
	// ErrStopped: the group was removed or the engine is stopping.
	ErrStopped = errors.New("replica: group stopped")
	// ErrDuplicate: the batch's producer sequence is already stored, too
	// long ago for its IDs to be remembered. Nothing was stored.
	ErrDuplicate = errors.New("replica: duplicate batch, original IDs no longer known")
	// ErrStorageFailed: the group's log failed and the group is fenced.
	ErrStorageFailed = errors.New("replica: storage failed, group fenced")
)

// NotLeaderError is ErrNotLeader with the leader's raft ID (0 when unknown).
type NotLeaderError struct {
	Leader uint64
}

func (e *NotLeaderError) Error() string {
	return fmt.Sprintf("replica: not the leader (leader is node %d)", e.Leader)
}

// Is makes errors.Is(err, ErrNotLeader) hold.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }
