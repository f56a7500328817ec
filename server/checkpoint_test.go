package server_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/commitlog"
	"github.com/forestbus/forestbus/server/servertest"
)

// smallMetaLog makes the metadata log checkpoint every 8 commands and roll
// every 4 KiB, so that a few dozen topic operations compact it.
func smallMetaLog(cfg *server.Config) {
	cfg.MetaCheckpointEvery = 8
	cfg.MetaSegmentBytes = commitlog.MinSegmentBytes
}

// topicDirs maps the node's topics to their groups (directories), once
// every one has started; nil until then.
func topicDirs(n *servertest.Node) map[string]string {
	out := map[string]string{}
	for _, t := range n.Registry().List() {
		if t.Group == nil {
			return nil
		}
		out[t.Name] = t.Group.Name()
	}
	return out
}

// requireSameTopics waits until every running node has started the same
// topics, under the same directories, and returns them.
func requireSameTopics(t *testing.T, c *servertest.Cluster) map[string]string {
	t.Helper()
	var want map[string]string
	require.Eventually(t, func() bool {
		want = nil
		for _, n := range c.Nodes {
			if n.Server == nil {
				continue
			}
			got := topicDirs(n)
			if got == nil || (want != nil && !maps.Equal(want, got)) {
				return false
			}
			want = got
		}
		return true
	}, 30*time.Second, 10*time.Millisecond)
	return want
}

// metaFirstIndex is the first index the node's metadata log holds.
func metaFirstIndex(t *testing.T, n *servertest.Node) uint64 {
	first, err := n.Registry().Meta().Log().FirstIndex()
	require.NoError(t, err)
	return first
}

// TestMetadataCheckpointsCompactTheLog: every node checkpoints the
// registry and deletes the metadata log below the checkpoint, so the log
// no longer grows with every topic operation; a restarted node rebuilds
// its topics from the checkpoint and what the log holds after it.
func TestMetadataCheckpointsCompactTheLog(t *testing.T) {
	c := servertest.NewCluster(t, 3, servertest.WithConfig(smallMetaLog))
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs())
	defer cl.Close()
	ctx := ctxT(t)
	for i := range 30 {
		require.NoError(t, cl.CreateTopic(ctx, fmt.Sprint("t", i), client.TopicSettings{}))
	}
	for i := range 20 {
		require.NoError(t, cl.RemoveTopic(ctx, fmt.Sprint("t", i)))
	}
	require.NoError(t, cl.UpdateTopic(ctx, "t25", client.TopicSettings{RetentionBytes: 1 << 30}))
	_, err := cl.SendMessagesContext(ctx, "t25", batch("m", 3), true)
	require.NoError(t, err)

	want := requireSameTopics(t, c)
	assert.Len(t, want, 11) // default, t20..t29
	for _, n := range c.Nodes {
		require.Eventually(t, func() bool { return metaFirstIndex(t, n) > 1 }, 30*time.Second, 10*time.Millisecond,
			"node %s compacts its metadata log", n.Cfg.NodeName)
		_, err := os.Stat(filepath.Join(n.Cfg.DataDir, "meta-checkpoint"))
		require.NoError(t, err)
	}

	n := c.Nodes[1]
	n.Restart()
	assert.Equal(t, want, requireSameTopics(t, c))
	tp, err := n.Registry().Get("t25")
	require.NoError(t, err)
	assert.Equal(t, int64(1<<30), tp.Settings.RetentionBytes)
	got, _, err := cl.GetMessagesContext(ctx, "t25", 1, 10, false)
	require.NoError(t, err)
	assert.Len(t, got, 3)
}

// TestMetadataSnapshotCatchesUpANode: a node down while the metadata log
// was compacted past what it holds is sent the leader's checkpoint as a
// raft snapshot: it takes it as its own, starts the topics created
// meanwhile, removes (moves aside) those removed meanwhile, and takes the
// settings changed meanwhile.
func TestMetadataSnapshotCatchesUpANode(t *testing.T) {
	c := servertest.NewCluster(t, 3, servertest.WithConfig(smallMetaLog))
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs()[:2])
	defer cl.Close()
	ctx := ctxT(t)
	for _, name := range []string{"keep", "gone", "again"} {
		require.NoError(t, cl.CreateTopic(ctx, name, client.TopicSettings{}))
	}
	before := requireSameTopics(t, c)

	down := c.Nodes[2]
	last, err := down.Registry().Meta().Log().LastIndex()
	require.NoError(t, err)
	down.Stop()
	require.NoError(t, cl.RemoveTopic(ctx, "gone"))
	require.NoError(t, cl.RemoveTopic(ctx, "again"))
	require.NoError(t, cl.CreateTopic(ctx, "again", client.TopicSettings{})) // a new directory
	require.NoError(t, cl.UpdateTopic(ctx, "keep", client.TopicSettings{RetentionBytes: 1 << 30}))
	for i := range 40 {
		require.NoError(t, cl.CreateTopic(ctx, fmt.Sprint("n", i), client.TopicSettings{}))
	}
	for i := range 10 {
		require.NoError(t, cl.RemoveTopic(ctx, fmt.Sprint("n", i)))
	}
	for _, n := range c.Nodes[:2] {
		require.Eventually(t, func() bool { return metaFirstIndex(t, n) > last+1 }, 30*time.Second, 10*time.Millisecond,
			"node %s compacts past what the stopped node holds", n.Cfg.NodeName)
	}

	down.Start()
	want := requireSameTopics(t, c)
	assert.Len(t, want, 1+3-1+30) // default, keep, again, n10..n39
	assert.NotEqual(t, before["again"], want["again"])
	assert.Greater(t, metaFirstIndex(t, down), last+1, "the node took a snapshot")
	for _, dir := range []string{before["gone"], before["again"]} {
		_, err := os.Stat(filepath.Join(down.Cfg.DataDir, "removed", dir))
		assert.NoError(t, err, "%s moved aside", dir)
		_, err = os.Stat(filepath.Join(down.Cfg.DataDir, "topics", dir))
		assert.True(t, os.IsNotExist(err), "%s no longer in topics/", dir)
	}
	tp, err := down.Registry().Get("keep")
	require.NoError(t, err)
	assert.Equal(t, int64(1<<30), tp.Settings.RetentionBytes)

	// The node serves the topics it started from the snapshot.
	dc := client.New("test", []string{down.Addr()})
	defer dc.Close()
	_, err = cl.SendMessagesContext(ctx, "n39", batch("s", 2), true)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		got, _, err := dc.GetMessagesContext(rctx, "n39", 1, 10, false)
		return err == nil && len(got) == 2
	}, 30*time.Second, 20*time.Millisecond)

	// And keeps them across a restart: its checkpoint and the log after it.
	down.Restart()
	assert.Equal(t, want, requireSameTopics(t, c))
}
