package api_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server/servertest"
)

// GetTopicDetails never reports more committed than the log holds
// (commit_id <= last_id) nor a first ID past the commit point, however
// fast the topic grows: every answer is built by Group.Details, which
// read the first, last and commit IDs in an order that let messages
// committed meanwhile show as commit_id > last_id (a review found
// {last 2691, commit 2696} within seconds of writing).
func TestDetailsConsistentWhileWriting(t *testing.T) {
	n := servertest.StartNode(t)
	c := client.New("test", []string{n.Addr()})
	t.Cleanup(c.Close)
	tp, err := n.Registry().Get("default")
	require.NoError(t, err)

	var stop atomic.Bool
	var wg sync.WaitGroup
	defer func() { stop.Store(true); wg.Wait() }()
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				_, _ = c.SendMessagesContext(testCtx(t), "default", [][]byte{[]byte("x")}, false)
			}
		})
	}
	// Bounded in time and in count; the writers run the whole while.
	start := time.Now()
	for i := 0; i < 2_000_000 && time.Since(start) < 3*time.Second; i++ {
		d := tp.Group.Details()
		require.LessOrEqual(t, d.CommitID, d.LastID, "%+v", d)
		require.LessOrEqual(t, d.FirstID, d.CommitID+1, "%+v", d)
	}
	d := tp.Group.Details()
	require.Positive(t, d.CommitID, "the writers committed nothing: the test checked nothing")
}
