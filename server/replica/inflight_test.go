package replica

import (
	"fmt"
	"path/filepath"
	"sync"
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

// cutTransport drops what its node sends to node 3 while cut is set, and
// records the most entry bytes one Send hands over for node 3 (one pass of
// the engine: one Ready's appends).
type cutTransport struct {
	Transport
	cut     atomic.Bool
	mu      sync.Mutex
	maxSend int
}

func (c *cutTransport) Send(group string, msgs []*raftpb.Message) {
	keep := msgs[:0:0]
	n := 0
	for _, m := range msgs {
		if m.GetTo() == 3 {
			if c.cut.Load() {
				continue
			}
			for _, e := range m.GetEntries() {
				n += len(e.GetData())
			}
		}
		keep = append(keep, m)
	}
	c.mu.Lock()
	c.maxSend = max(c.maxSend, n)
	c.mu.Unlock()
	c.Transport.Send(group, keep)
}

// TestCatchUpIsPaced: a follower back after missing 40 MiB of entries is
// sent them a few MiB at a time, not all at once. raft bounded them only by
// message count (256 messages of up to 1 MiB), so a follower back from a
// restart made one acknowledgement send it everything it missed, up to
// 256 MiB, each message's entries read from the leader's log (from disk,
// past the tail cache) inside one pass of the engine, which serves every
// topic of the node: other topics waited seconds, and the other follower
// started an election.
func TestCatchUpIsPaced(t *testing.T) {
	hub := transport.NewHub()
	root := t.TempDir()
	ids := []uint64{1, 2, 3}
	var groups [3]*Group
	var cut *cutTransport
	// Node 1, which campaigns at once, starts last: its pre-votes to a
	// node not yet on the hub, or without the group yet, are dropped, and
	// node 2 or 3 could win the election that follows (node 1 leads: never).
	for k := len(ids) - 1; k >= 0; k-- {
		id := ids[k]
		// 50 ms ticks (elections after 0.5 s): with 10 ms ticks, under
		// -race on a loaded machine, node 2's acknowledgements of the 4 MiB
		// appends came late enough for CheckQuorum to depose node 1 while
		// it was being written to (Propose: leadership lost).
		e := startHubEngine(t, hub, id, ids, Config{TickInterval: 50 * time.Millisecond}, func(tr Transport) Transport {
			if id != 1 {
				return tr
			}
			cut = &cutTransport{Transport: tr}
			return cut
		})
		l, err := commitlog.Open(filepath.Join(root, fmt.Sprintf("n%d", id)), commitlog.Options{NoSync: true})
		require.NoError(t, err)
		g, err := e.AddGroup(GroupConfig{Name: "g", Log: l, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}, Campaign: id == 1})
		require.NoError(t, err)
		groups[k] = g
	}
	leader := groups[0]
	require.Eventually(t, func() bool {
		return leader.Leader() == 1 && groups[1].Leader() == 1 && groups[2].Leader() == 1
	}, 10*time.Second, time.Millisecond, "node 1 leads")

	cut.cut.Store(true)
	msgs := make([][]byte, 256)
	for i := range msgs {
		msgs[i] = make([]byte, 4<<10)
	}
	var last uint64
	for range 40 { // 40 MiB, committed by nodes 1 and 2
		res, err := leader.Propose(ctx10(t), msgs, true)
		require.NoError(t, err)
		last = res.FirstID + uint64(res.Count) - 1
	}
	cut.mu.Lock()
	cut.maxSend = 0
	cut.mu.Unlock()
	cut.cut.Store(false)

	require.Eventually(t, func() bool { return groups[2].CommitID() == last }, 20*time.Second, 5*time.Millisecond, "node 3 catches up")
	cut.mu.Lock()
	defer cut.mu.Unlock()
	// The cap, plus the message that crossed it and what acknowledgements
	// stepped in the same pass freed: well under the 40 MiB it missed.
	assert.LessOrEqual(t, cut.maxSend, 2*maxInflightBytes, "entry bytes sent to node 3 in one pass")
	assert.Greater(t, cut.maxSend, 0)
}
