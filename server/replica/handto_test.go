package replica

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/transport"
)

// timeoutNowDropper drops the MsgTimeoutNow its node sends while drop is
// set (a hand-off target that does not take over, as one standing aside),
// and keeps them while hold is set, until release.
type timeoutNowDropper struct {
	Transport
	drop, hold atomic.Bool
	mu         sync.Mutex
	kept       []*raftpb.Message
}

func (d *timeoutNowDropper) Send(group string, msgs []*raftpb.Message) {
	if drop, hold := d.drop.Load(), d.hold.Load(); drop || hold {
		msgs = slices.DeleteFunc(slices.Clone(msgs), func(m *raftpb.Message) bool {
			if m.GetType() != raftpb.MessageType_MsgTimeoutNow {
				return false
			}
			if hold {
				d.mu.Lock()
				d.kept = append(d.kept, m)
				d.mu.Unlock()
			}
			return true
		})
	}
	d.Transport.Send(group, msgs)
}

// release sends group's kept MsgTimeoutNow and stops keeping them.
func (d *timeoutNowDropper) release(group string) {
	d.hold.Store(false)
	d.mu.Lock()
	kept := d.kept
	d.kept = nil
	d.mu.Unlock()
	d.Transport.Send(group, kept)
}

// stallHandOff makes node 1 (groups[0]) hand group "g" to node 2 and
// keeps the hand-off from completing (its MsgTimeoutNow dropped), once
// node 2 is caught up and replicating.
func stallHandOff(ctx context.Context, t *testing.T, groups []*Group, dropper *timeoutNowDropper) {
	t.Helper()
	_, err := groups[0].Propose(ctx, [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, err := groups[0].Status(ctx)
		return err == nil && st.Progress[2].Match == st.GetCommit() && st.Progress[2].RecentActive
	}, 10*time.Second, time.Millisecond)
	dropper.drop.Store(true)
	asked, err := groups[0].HandTo(ctx, 2, 64)
	require.NoError(t, err)
	require.True(t, asked)
}

// queued is how many proposals and ops wait in g's inbox.
func queued(g *Group) (props, ops int) {
	g.inboxMu.Lock()
	defer g.inboxMu.Unlock()
	return len(g.inProps), len(g.inOps)
}

// heldProposals is how many proposals g holds (holdProposals) whose
// callers still wait.
func heldProposals(ctx context.Context, g *Group) int {
	var n int
	_ = g.do(ctx, func() error {
		for _, p := range g.held {
			if !p.abandoned.Load() {
				n++
			}
		}
		return nil
	})
	return n
}

// openHandCluster is a 3-node group "g" led by node 1 (index 0), with
// cfg's ticks (default 50 ms: an election timeout of 500 ms, which is
// also how long raft lets a hand-off run); node 1's MsgTimeoutNow go
// through the dropper it returns.
func openHandCluster(t *testing.T, cfg Config) ([]*Engine, []*Group, *timeoutNowDropper) {
	t.Helper()
	var dropper *timeoutNowDropper
	engines, gs := openHubTrio(t, transport.NewHub(), cfg, []string{"g"}, func(id uint64, tr Transport) Transport {
		if id != 1 {
			return tr
		}
		dropper = &timeoutNowDropper{Transport: tr}
		return dropper
	})
	return engines, []*Group{gs[0][0], gs[1][0], gs[2][0]}, dropper
}

// TestHandToAndAbort: HandTo hands a caught-up follower the leadership.
// A proposal made during a hand-off waits for its outcome instead of being
// dropped (raft drops proposals then): one the target did not take is
// called off by AbortTransfer (raft would wait an election timeout) and
// the proposal goes to raft; one the target took answers the proposal
// with the new leader (NotLeaderError, which the API forwards).
func TestHandToAndAbort(t *testing.T) {
	// Ticks of 200 ms: raft calls off a hand-off after 2 s, which the
	// steps below, made while one is under way, stay well within.
	_, groups, dropper := openHandCluster(t, Config{TickInterval: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	send := func() error {
		_, err := groups[0].Propose(ctx, [][]byte{[]byte("m")}, true)
		return err
	}
	sendLater := func() <-chan error {
		ch := make(chan error, 1)
		go func() { ch <- send() }()
		return ch
	}
	require.NoError(t, send())
	// Caught up and replicating: raft's view of the followers settles
	// with the acknowledgements.
	require.Eventually(t, func() bool {
		st, err := groups[0].Status(ctx)
		return err == nil && st.Progress[2].Match == st.GetCommit() && st.Progress[2].RecentActive
	}, 10*time.Second, time.Millisecond)

	asked, err := groups[0].HandTo(ctx, 1, 64)
	require.NoError(t, err)
	assert.False(t, asked, "not to itself")

	dropper.drop.Store(true)
	asked, err = groups[0].HandTo(ctx, 2, 64)
	require.NoError(t, err)
	require.True(t, asked)
	asked, err = groups[0].HandTo(ctx, 3, 64)
	require.NoError(t, err)
	assert.False(t, asked, "one hand-off at a time")
	res := sendLater()
	require.Eventually(t, func() bool { return heldProposals(ctx, groups[0]) == 1 }, 10*time.Second, time.Millisecond,
		"the proposal waits for the hand-off's outcome")
	aborted, err := groups[0].AbortTransfer(ctx)
	require.NoError(t, err)
	require.True(t, aborted)
	require.NoError(t, <-res, "the hand-off called off, the proposal goes to raft")
	require.NoError(t, send(), "the group takes proposals again at once")
	assert.Equal(t, uint64(1), groups[0].Leader())
	aborted, err = groups[0].AbortTransfer(ctx)
	require.NoError(t, err)
	assert.False(t, aborted, "nothing left to abort")

	dropper.drop.Store(false)
	dropper.hold.Store(true)
	asked, err = groups[0].HandTo(ctx, 2, 64)
	require.NoError(t, err)
	require.True(t, asked)
	res = sendLater()
	require.Eventually(t, func() bool { return heldProposals(ctx, groups[0]) == 1 }, 10*time.Second, time.Millisecond)
	dropper.release("g")
	var nl *NotLeaderError
	require.ErrorAs(t, <-res, &nl, "answered with the new leader")
	assert.Equal(t, uint64(2), nl.Leader)
	require.Eventually(t, func() bool {
		return groups[0].Leader() == 2 && groups[1].Leader() == 2
	}, 10*time.Second, time.Millisecond, "node 2 took over")
}

// TestHeldProposalsBounded: proposals held during a hand-off count
// against MaxUncommittedBytes as queued ones do (more are refused with
// ErrProposalDropped), and one whose caller stopped waiting is not
// proposed when the hand-off is called off.
func TestHeldProposalsBounded(t *testing.T) {
	const budget = 8 << 10
	_, groups, dropper := openHandCluster(t, Config{TickInterval: 200 * time.Millisecond, MaxUncommittedBytes: budget})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stallHandOff(ctx, t, groups, dropper)
	last := groups[0].Details().LastID

	// One caller gives up while its proposal is held.
	gone, giveUp := context.WithCancel(ctx)
	res := make(chan error, 1)
	go func() {
		_, err := groups[0].Propose(gone, [][]byte{[]byte("gone")}, true)
		res <- err
	}()
	require.Eventually(t, func() bool { return heldProposals(ctx, groups[0]) == 1 }, 10*time.Second, time.Millisecond)
	giveUp()
	require.ErrorIs(t, <-res, context.Canceled)

	// Others fill the budget, 1 KiB each: some are held, the rest
	// refused at once.
	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := groups[0].Propose(ctx, [][]byte{make([]byte, 1<<10)}, true)
			errs <- err
		}()
	}
	dropped := 0
	var held int
	require.Eventually(t, func() bool {
		for {
			select {
			case err := <-errs:
				require.ErrorIs(t, err, ErrProposalDropped, "nothing else is answered while the hand-off lasts")
				dropped++
				continue
			default:
			}
			break
		}
		held = heldProposals(ctx, groups[0])
		return held+dropped == n
	}, 10*time.Second, time.Millisecond, "every proposal held or refused")
	assert.Positive(t, held)
	assert.Positive(t, dropped, "those beyond the budget are refused")
	assert.LessOrEqual(t, held*(1<<10), budget, "no more held than the budget")

	aborted, err := groups[0].AbortTransfer(ctx)
	require.NoError(t, err)
	require.True(t, aborted)
	for range held {
		require.NoError(t, <-errs, "the held go to raft once the hand-off is called off")
	}
	assert.Equal(t, last+uint64(held), groups[0].Details().LastID, "the held stored, not the abandoned one")
}

// TestTransferSkipsPeersStandingAside: TransferLeadership hands off to no
// voter whose pings say it stands aside (stopping or refused: it would
// ignore the transfer, and the group would drop proposals meanwhile).
func TestTransferSkipsPeersStandingAside(t *testing.T) {
	engines, groups, _ := openHandCluster(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := groups[0].Propose(ctx, [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	engines[1].StandAside(true)
	engines[2].StandAside(true)
	require.Eventually(t, func() bool { return engines[0].peerAside(2) && engines[0].peerAside(3) }, 10*time.Second, time.Millisecond, "their pings say so")
	require.NoError(t, groups[0].TransferLeadership(ctx))
	assert.Equal(t, uint64(1), groups[0].Leader(), "no voter to take it")

	engines[2].StandAside(false)
	require.Eventually(t, func() bool { return !engines[0].peerAside(3) }, 10*time.Second, time.Millisecond)
	require.NoError(t, groups[0].TransferLeadership(ctx))
	require.Eventually(t, func() bool { return groups[0].Leader() == 3 }, 10*time.Second, time.Millisecond, "the one that takes it")
}

// TestHeldBudgetDuringAPass: proposals a pass has taken from the inbox
// still count against MaxUncommittedBytes while the pass runs (its ops,
// its messages) and before it holds them: others arriving meanwhile are
// refused rather than let in for a second budget.
func TestHeldBudgetDuringAPass(t *testing.T) {
	const budget = 8 << 10
	_, groups, dropper := openHandCluster(t, Config{TickInterval: 200 * time.Millisecond, MaxUncommittedBytes: budget})
	g := groups[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stallHandOff(ctx, t, groups, dropper)

	// block queues an op that holds the engine until release is closed;
	// running closes once it runs.
	block := func(release chan struct{}) (running chan struct{}) {
		running = make(chan struct{})
		go func() {
			_ = g.do(ctx, func() error { close(running); <-release; return nil })
		}()
		return running
	}
	propose := func(n int, errs chan<- error) {
		for range n {
			go func() {
				_, err := g.Propose(ctx, [][]byte{make([]byte, 1<<10)}, true)
				errs <- err
			}()
		}
	}
	first, second := make(chan struct{}), make(chan struct{})
	<-block(first)
	errs := make(chan error, 14)
	propose(6, errs) // queued behind the blocked pass
	require.Eventually(t, func() bool { props, _ := queued(g); return props == 6 }, 10*time.Second, time.Millisecond)
	// The next pass takes the six, then blocks in this op before holding
	// them.
	running := block(second)
	require.Eventually(t, func() bool { _, ops := queued(g); return ops == 1 }, 10*time.Second, time.Millisecond)
	close(first)
	<-running
	propose(6, errs) // while the six are in the pass's hands
	dropped := 0
	require.Eventually(t, func() bool {
		for {
			select {
			case err := <-errs:
				require.ErrorIs(t, err, ErrProposalDropped)
				dropped++
				continue
			default:
			}
			break
		}
		props, _ := queued(g)
		return props+dropped == 6
	}, 10*time.Second, time.Millisecond, "each queued or refused")
	close(second)
	held := 12 - dropped
	require.Eventually(t, func() bool { return heldProposals(ctx, g) == held }, 10*time.Second, time.Millisecond)
	assert.LessOrEqual(t, held*(1<<10), budget, "the six taken counted while the pass ran: no second budget let in")
	aborted, err := g.AbortTransfer(ctx)
	require.NoError(t, err)
	require.True(t, aborted)
	for range held {
		require.NoError(t, <-errs)
	}
}

// TestAbandonedOpsDoNothing: an op whose caller gave up before the loop
// reached it (its context ended) does not run. HandTo's did: the caller
// was told "canceled, not asked" while raft was asked to hand over, a
// hand-off nobody would call off (and -race saw HandTo read its answer
// while the loop wrote it). An op the loop took first answers its caller.
func TestAbandonedOpsDoNothing(t *testing.T) {
	_, groups, _ := openHandCluster(t, Config{})
	ctx := ctx10(t)
	_, err := groups[0].Propose(ctx, [][]byte{[]byte("m")}, true)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, err := groups[0].Status(ctx)
		return err == nil && st.Progress[2].Match == st.GetCommit() && st.Progress[2].RecentActive
	}, 10*time.Second, time.Millisecond, "node 2 may take over")

	gone, cancel := context.WithCancel(context.Background())
	cancel()
	asked, err := groups[0].HandTo(gone, 2, 64)
	// Ops run in order: once Status has run, HandTo's op has had its turn.
	st, serr := groups[0].Status(ctx)
	require.NoError(t, serr)
	if err != nil {
		require.ErrorIs(t, err, context.Canceled)
		assert.False(t, asked)
		assert.Equal(t, uint64(raft.None), st.LeadTransferee, "a hand-off nobody asked for is under way")
	} else {
		// The loop took the op before its caller gave up: it answered.
		assert.Equal(t, asked, st.LeadTransferee == 2 || groups[0].Leader() != 1)
	}
}
