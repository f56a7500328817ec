//go:build linux

// (openPLCluster, the in-process cluster of powerloss_test.go, is Linux-only.)

package replica

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/tracker"

	"github.com/forestbus/forestbus/internal/flushhook"
)

// TestLeaderAnswersBeforeItsOwnSync: two followers' durable copies are a
// majority, so a leader whose own fdatasync is stalled still answers a
// commit (stepAcks, applyAhead) instead of waiting for its sync and the
// next Ready.
func TestLeaderAnswersBeforeItsOwnSync(t *testing.T) {
	root := t.TempDir()
	c := openPLCluster(t, root, 1)
	g := c.waitLeader(t, 0)
	_, err := g.Propose(ctx10(t), [][]byte{[]byte("first")}, true)
	require.NoError(t, err)
	// Both followers replicating and caught up: each gets the next MsgApp
	// at once (a follower still probing would get it after the sync).
	require.Eventually(t, func() bool {
		st, err := g.Status(ctx10(t))
		if err != nil || len(st.Progress) != 3 {
			return false
		}
		for _, pr := range st.Progress {
			if pr.State != tracker.StateReplicate || pr.Match != st.GetCommit() {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond)

	// Stall every flush of the leader's records (its segments, its
	// journal) until the test ends: its sync of the next batch never
	// completes before the answer.
	node := filepath.Join(root, fmt.Sprintf("n%d", g.e.NodeID())) + string(os.PathSeparator)
	release := make(chan struct{})
	var stalled atomic.Int32
	prev := flushhook.Set(func(f *os.File, _ string) {
		if f != nil && strings.HasPrefix(f.Name(), node) && (strings.HasSuffix(f.Name(), ".log") || strings.HasSuffix(f.Name(), ".wal")) {
			stalled.Add(1)
			<-release
		}
	})
	defer flushhook.Set(prev)
	var once sync.Once
	unstall := func() { once.Do(func() { close(release) }) }
	defer unstall()

	// The next batch needs the next Ready, which waits for the sync: one
	// batch, written before the stall.
	res, err := g.Propose(ctx10(t), [][]byte{[]byte("a"), []byte("b")}, true)
	require.NoError(t, err)
	assert.EqualValues(t, 2, res.FirstID)
	// The leader did sync the batch, and is stuck there.
	require.Eventually(t, func() bool { return stalled.Load() == 1 }, 10*time.Second, time.Millisecond)

	// Once the sync completes, the Ready that carries the batch as
	// committed does not apply it again (each batch counted once).
	unstall()
	_, err = g.Propose(ctx10(t), [][]byte{[]byte("c")}, true)
	require.NoError(t, err)
	require.Eventually(t, func() bool { // raft has handed out every commit
		st, err := g.Status(ctx10(t))
		return err == nil && st.Applied == st.GetCommit() && g.Applied() == st.Applied
	}, 10*time.Second, time.Millisecond)
	assert.Equal(t, g.metrics.appendedBytes.Load(), g.metrics.committedBytes.Load())
}
