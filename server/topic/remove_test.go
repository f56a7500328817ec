package topic

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/server/replica"
)

// hardStateFile is the name of a log's hardstate file: a log's close syncs
// the commit point it holds, which nothing else of an idle log syncs.
const hardStateFile = "hardstate"

// removeStalled creates topics a and b on a one-node registry, sends b a
// message, and removes b with its log's close stalled at its hardstate's
// sync: it returns once the close waits there.
func removeStalled(t *testing.T) (e *replica.Engine, r *Registry, ctx context.Context, dir string, release func()) {
	t.Helper()
	dir = t.TempDir()
	e, r, ctx = openSingle(t, dir)
	require.NoError(t, r.Create(ctx, "a", Settings{}))
	require.NoError(t, r.Create(ctx, "b", Settings{}))
	requireFirstSend(ctx, t, r, "b")

	stalled, release := stallFlush(t, dir, "b", hardStateFile)
	require.NoError(t, r.Remove(ctx, "b"))
	select {
	case <-stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the removed topic's log never synced at its close")
	}
	return e, r, ctx, dir, release
}

// TestRemoveDoesNotStallOtherTopics: a removed topic's log closes (its
// final syncs, a few ms) off the engine goroutine, so the node's other
// topics commit meanwhile; it closed in the loop, and every group of the
// node waited for it. Its files go aside once it has closed.
func TestRemoveDoesNotStallOtherTopics(t *testing.T) {
	_, r, ctx, dir, release := removeStalled(t)

	a, err := r.Lookup(ctx, "a")
	require.NoError(t, err)
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := a.Group.Propose(pctx, [][]byte{[]byte("x")}, true)
	pcancel()
	require.NoError(t, err, "a send to another topic while b's log closes")
	require.EqualValues(t, 1, res.FirstID)
	require.Empty(t, dirsIn(t, dir, "removed", "b"), "b's files stay until its log has closed")

	release()
	require.Eventually(t, func() bool { return len(dirsIn(t, dir, "removed", "b")) == 1 }, 10*time.Second, 5*time.Millisecond,
		"b's files moved aside once its log closed")
	require.Empty(t, dirsIn(t, dir, "topics", "b"))
}

// TestStopWaitsForRemovedTopicsClose: the engine's Stop returns only once
// the logs of removed topics have closed (the node's journal closes after
// it, and must find them closed).
func TestStopWaitsForRemovedTopicsClose(t *testing.T) {
	e, _, _, dir, release := removeStalled(t)

	requireWaitsFor(t, "Stop", e.Stop, "a removed topic's log's close", release)
	require.Len(t, dirsIn(t, dir, "removed", "b"), 1, "b's files moved aside before Stop returned")
}
