package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
)

// leadCounts is how many of topics each node of c leads, by node index,
// as the nodes themselves say; ok is false while some topic has no
// leader or one not among c's running nodes.
func leadCounts(c *servertest.Cluster, topics []string) (counts []int, ok bool) {
	counts = make([]int, len(c.Nodes))
	for _, name := range topics {
		led := false
		for i, n := range c.Nodes {
			if n.Server == nil {
				continue
			}
			tp, err := n.Registry().Get(name)
			if err != nil || tp.Group == nil {
				return counts, false
			}
			if tp.Group.Leader() == n.RaftID() {
				counts[i]++
				led = true
			}
		}
		if !led {
			return counts, false
		}
	}
	return counts, true
}

// TestLeadersComeBack: topics' leaders are spread over the nodes; a node
// that stops hands its leaderships to the others, and once it is back,
// they hand them back (leader balancing) and the spread is restored.
// (Without balancing the restarted node led nothing.)
func TestLeadersComeBack(t *testing.T) {
	c := servertest.NewCluster(t, 3, servertest.WithConfig(func(cfg *server.Config) { cfg.LeaderBalanceInterval = 200 * time.Millisecond }))
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs())
	defer cl.Close()
	topics := []string{"default"}
	for i := range 8 {
		name := fmt.Sprint("t", i)
		require.NoError(t, cl.CreateTopic(t.Context(), name, client.TopicSettings{}))
		c.WaitTopic(name)
		topics = append(topics, name)
	}
	spread := func(ct *assert.CollectT) {
		counts, ok := leadCounts(c, topics)
		require.True(ct, ok, "every topic has a leader")
		for i, n := range counts {
			assert.GreaterOrEqual(ct, n, 2, "node %d leads at least 2 of 9 topics: %v", i, counts)
		}
	}
	require.EventuallyWithT(t, spread, 20*time.Second, 20*time.Millisecond, "leaders spread at creation")

	c.Nodes[0].Stop()
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		counts, ok := leadCounts(c, topics)
		require.True(ct, ok)
		assert.Zero(ct, counts[0])
	}, 20*time.Second, 20*time.Millisecond, "the others lead every topic")
	c.Nodes[0].Start()
	require.EventuallyWithT(t, spread, 20*time.Second, 20*time.Millisecond, "leaders spread again after the restart")
}
