package replica

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/transport"
)

// timeoutNowDropper drops the MsgTimeoutNow its node sends while drop is
// set: a hand-off target that does not take over (as one standing aside).
type timeoutNowDropper struct {
	Transport
	drop atomic.Bool
}

func (d *timeoutNowDropper) Send(group string, msgs []*raftpb.Message) {
	if d.drop.Load() {
		msgs = slices.DeleteFunc(slices.Clone(msgs), func(m *raftpb.Message) bool {
			return m.GetType() == raftpb.MessageType_MsgTimeoutNow
		})
	}
	d.Transport.Send(group, msgs)
}

// openHandCluster is a 3-node group "g" led by node 1 (index 0), with
// 50 ms ticks (election timeout 500 ms); node 1's MsgTimeoutNow go through
// the dropper it returns.
func openHandCluster(t *testing.T) ([]*Engine, []*Group, *timeoutNowDropper) {
	t.Helper()
	hub := transport.NewHub()
	ids := []uint64{1, 2, 3}
	root := t.TempDir()
	var dropper *timeoutNowDropper
	engines, groups := make([]*Engine, 3), make([]*Group, 3)
	for k := 2; k >= 0; k-- { // node 1, which campaigns, last (see openNoticeCluster)
		id := ids[k]
		cfg := Config{TickInterval: 50 * time.Millisecond}
		engines[k] = startHubEngine(t, hub, id, ids, cfg, func(tr Transport) Transport {
			if id != 1 {
				return tr
			}
			dropper = &timeoutNowDropper{Transport: tr}
			return dropper
		})
		l, err := commitlog.Open(filepath.Join(root, fmt.Sprint("n", id)), commitlog.Options{})
		require.NoError(t, err)
		g, err := engines[k].AddGroup(GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}, Campaign: id == 1})
		require.NoError(t, err)
		groups[k] = g
	}
	require.Eventually(t, func() bool {
		return groups[0].Leader() == 1 && groups[1].Leader() == 1 && groups[2].Leader() == 1
	}, 10*time.Second, time.Millisecond)
	return engines, groups, dropper
}

// TestHandToAndAbort: HandTo hands a caught-up follower the leadership;
// one that does not take it leaves the group dropping proposals until
// AbortTransfer ends the hand-off (raft would wait an election timeout).
func TestHandToAndAbort(t *testing.T) {
	_, groups, dropper := openHandCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	send := func() error {
		_, err := groups[0].Propose(ctx, [][]byte{[]byte("m")}, true)
		return err
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
	assert.ErrorIs(t, send(), ErrProposalDropped, "raft drops proposals while it hands off")
	aborted, err := groups[0].AbortTransfer(ctx)
	require.NoError(t, err)
	require.True(t, aborted)
	require.NoError(t, send(), "the group takes proposals again at once")
	assert.Equal(t, uint64(1), groups[0].Leader())
	aborted, err = groups[0].AbortTransfer(ctx)
	require.NoError(t, err)
	assert.False(t, aborted, "nothing left to abort")

	dropper.drop.Store(false)
	asked, err = groups[0].HandTo(ctx, 2, 64)
	require.NoError(t, err)
	require.True(t, asked)
	require.Eventually(t, func() bool {
		return groups[0].Leader() == 2 && groups[1].Leader() == 2
	}, 10*time.Second, time.Millisecond, "node 2 took over")
}

// TestTransferSkipsPeersStandingAside: TransferLeadership hands off to no
// voter whose pings say it stands aside (stopping or refused: it would
// ignore the transfer, and the group would drop proposals meanwhile).
func TestTransferSkipsPeersStandingAside(t *testing.T) {
	engines, groups, _ := openHandCluster(t)
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
