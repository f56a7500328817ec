package server_test

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// firstIDs reports each running node's first retained ID of the topic.
func firstIDs(t *testing.T, c *servertest.Cluster, topic string) []int64 {
	var out []int64
	for _, n := range c.Nodes {
		if n.Server == nil {
			continue
		}
		d, err := dial(t, n).bus.GetTopicDetails(ctxT(t), &forestbusv1.GetTopicDetailsRequest{Topic: topic})
		require.NoError(t, err)
		out = append(out, d.FirstId)
	}
	return out
}

// TestRetentionIsReplicated: a topic over its byte budget loses its oldest
// segments on every node alike, including a follower that was down while it
// happened; nothing at or above the commit point goes, and a read below the
// first retained ID answers next_id = first retained ID.
func TestRetentionIsReplicated(t *testing.T) {
	c := servertest.NewCluster(t, 3,
		servertest.WithSegmentBytes(4096),
		servertest.WithConfig(func(cfg *server.Config) {
			cfg.RetentionInterval = 20 * time.Millisecond
		}))
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs(), client.WithRetryWindow(20*time.Second))
	defer cl.Close()
	require.NoError(t, cl.CreateTopic(ctxT(t), "logs", client.TopicSettings{SegmentBytes: 4096, RetentionBytes: 16 << 10}))
	c.WaitTopic("logs")

	l := leaderIndex(t, c, "logs")
	down := (l + 1) % 3
	c.Nodes[down].Stop()
	// 100 batches of 10 messages of about 200 bytes: ~200 KiB, ~50 segments.
	pad := bytes.Repeat([]byte("."), 190)
	padded := func(i int) [][]byte {
		msgs := batch(fmt.Sprint("r", i), 10)
		for j := range msgs {
			msgs[j] = append(msgs[j], pad...)
		}
		return msgs
	}
	var last int64
	for i := 0; i < 100; i++ {
		ids, err := cl.SendMessages("logs", padded(i), true)
		require.NoError(t, err)
		last = ids[len(ids)-1]
	}
	// The running nodes agree on a first ID above 1.
	require.Eventually(t, func() bool {
		ids := firstIDs(t, c, "logs")
		return ids[0] > 1 && ids[0] == ids[1]
	}, 20*time.Second, 10*time.Millisecond, "retention never cut the topic")
	c.Nodes[down].Start()
	c.WaitTopic("logs")
	var first int64
	var ids []int64
	deadline := time.Now().Add(20 * time.Second)
	for {
		ids = firstIDs(t, c, "logs")
		first = ids[0]
		if ids[0] == ids[1] && ids[1] == ids[2] {
			break
		}
		require.True(t, time.Now().Before(deadline), "the nodes report different first IDs: %v (leader %d, returning %d)", ids, l, down)
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	assert.Greater(t, first, int64(1))
	assert.LessOrEqual(t, first, last, "nothing at or above the commit point is dropped")

	for _, n := range c.Nodes {
		cc := dial(t, n)
		resp, err := cc.bus.GetMessages(ctxT(t), &forestbusv1.GetMessagesRequest{Topic: "logs", Id: 1, Quantity: 10})
		require.NoError(t, err)
		assert.Empty(t, resp.Messages)
		assert.GreaterOrEqual(t, resp.NextId, first, "node %s", n.Cfg.NodeName)
		// The retained tail is intact and equal everywhere.
		require.Eventually(t, func() bool {
			d, err := cc.bus.GetTopicDetails(ctxT(t), &forestbusv1.GetTopicDetailsRequest{Topic: "logs"})
			return err == nil && d.CommitId == last
		}, 20*time.Second, 10*time.Millisecond)
		got := readAll(t, cc, "logs", last-9, last, 100)
		assert.Equal(t, padded(99), got)
	}
	// Nodes that kept running hold less than the budget plus a segment.
	for _, n := range c.Nodes {
		tp, err := n.Registry().Get("logs")
		require.NoError(t, err)
		st := tp.Group.Log().Stats()
		assert.Less(t, st.Bytes, int64(16<<10+2*4096), "node %s keeps %d bytes", n.Cfg.NodeName, st.Bytes)
	}
}

// TestRetentionByAge: segments whose newest message is older than the
// topic's retention age are dropped; the active segment never is.
func TestRetentionByAge(t *testing.T) {
	n := servertest.StartNode(t, servertest.WithSegmentBytes(4096),
		servertest.WithConfig(func(cfg *server.Config) { cfg.RetentionInterval = 20 * time.Millisecond }))
	c := dial(t, n)
	_, err := c.admin.CreateTopic(ctxT(t), &forestbusv1.CreateTopicRequest{Name: "aged", Settings: &forestbusv1.TopicSettings{SegmentBytes: 4096, RetentionSeconds: 1}})
	require.NoError(t, err)
	pad := bytes.Repeat([]byte("x"), 500)
	var last int64
	for i := 0; i < 40; i++ {
		resp := send(t, c, "aged", [][]byte{pad, pad}, true)
		last = resp.FirstId + 1
	}
	require.Eventually(t, func() bool {
		d, err := c.bus.GetTopicDetails(ctxT(t), &forestbusv1.GetTopicDetailsRequest{Topic: "aged"})
		return err == nil && d.FirstId > 1
	}, 20*time.Second, 20*time.Millisecond, "old segments never dropped")
	d, err := c.bus.GetTopicDetails(ctxT(t), &forestbusv1.GetTopicDetailsRequest{Topic: "aged"})
	require.NoError(t, err)
	assert.LessOrEqual(t, d.FirstId, last, "the active segment stays")
	assert.Equal(t, last, d.CommitId)
}
