package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/transport"
)

// clusterClient starts a 3-node cluster, waits for its default topic, and
// returns it with a client of it and a context of 60 s.
func clusterClient(t *testing.T, opts ...servertest.Option) (*servertest.Cluster, *client.Client, context.Context) {
	t.Helper()
	c := servertest.NewCluster(t, 3, opts...)
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs())
	t.Cleanup(func() { cl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c, cl, ctx
}

// TestIdleTopicsGoQuiet: once 50 topics are idle, the cluster exchanges
// only the per-node liveness pings (6 links, one ping every 10 ticks), not
// heartbeats per topic, and the membership reconciler has nothing to do.
func TestIdleTopicsGoQuiet(t *testing.T) {
	hub := transport.NewHub(transport.WithSeed(3))
	c, cl, ctx := clusterClient(t, servertest.WithHub(hub))
	const topics = 50
	for i := 0; i < topics; i++ {
		require.NoError(t, cl.CreateTopic(ctx, fmt.Sprintf("idle-%d", i), client.TopicSettings{}))
		_, err := cl.SendMessagesContext(ctx, fmt.Sprintf("idle-%d", i), [][]byte{[]byte("x")}, true)
		require.NoError(t, err)
	}
	// The cluster's tick is 20 ms in servertest: 6 links × 5 pings/s = 30
	// messages/s when quiet; per-topic heartbeats would add 51 groups × 2
	// followers × 50/s × 2 (with responses) ≈ 10,000/s.
	// Measure the message rate over half-second windows until it is low.
	var rate float64
	deadline := time.Now().Add(20 * time.Second)
	for {
		start, before := time.Now(), hub.Delivered()
		<-time.After(500 * time.Millisecond) // a measurement window
		rate = float64(hub.Delivered()-before) / time.Since(start).Seconds()
		t.Logf("idle: %.0f messages/s for %d topics", rate, topics+1)
		if rate < 600 {
			break
		}
		require.True(t, time.Now().Before(deadline), "idle cluster still sends %.0f messages/s", rate)
	}

	// Every group is settled: the reconciler can rest (Reconcile reports
	// it), which is what keeps it from walking every topic twice a second.
	for _, n := range c.Nodes {
		assert.True(t, n.Server.Registry().Reconcile(ctx), "node %s", n.Cfg.NodeName)
	}

	// A quiesced topic still fails over: stop its leader and send.
	l := leaderIndex(t, c, "idle-7")
	c.Nodes[l].Stop()
	others := []string{}
	for i, a := range c.Addrs() {
		if i != l {
			others = append(others, a)
		}
	}
	cl2 := client.New("test", others, client.WithRetryWindow(20*time.Second))
	defer cl2.Close()
	ids, err := cl2.SendMessagesContext(ctx, "idle-7", [][]byte{[]byte("y")}, true)
	require.NoError(t, err)
	assert.Equal(t, int64(2), ids[0])
}

// TestReconcileReportsPendingWork: Reconcile reports "settled" only when no
// group this node leads has a membership change left: a member added (here
// one that never answers, on a loopback port nothing listens on) leaves
// the metadata group with a learner and the topic without the member.
func TestReconcileReportsPendingWork(t *testing.T) {
	n := servertest.StartNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg := n.Server.Registry()
	require.Eventually(t, func() bool { return reg.Reconcile(ctx) }, 20*time.Second, 10*time.Millisecond, "a one-node cluster settles")
	_, err := reg.AddNode(ctx, "absent", "127.0.0.1:1")
	require.NoError(t, err)
	for range 3 {
		assert.False(t, reg.Reconcile(ctx), "a learner that never catches up is work left")
	}
}

// TestIdleTopicsWriteHeldRecords: topics written together sync through the
// node's journal, so their logs hold appended records in memory
// (commitlog write-behind); once they go idle, every node writes them to
// the segment files and keeps nothing held.
func TestIdleTopicsWriteHeldRecords(t *testing.T) {
	c, cl, ctx := clusterClient(t)
	const topics = 4
	for i := range topics {
		require.NoError(t, cl.CreateTopic(ctx, fmt.Sprintf("held-%d", i), client.TopicSettings{}))
	}
	heldBytes := func() (total int) {
		for _, n := range c.Nodes {
			for i := range topics {
				if tp, err := n.Server.Registry().Get(fmt.Sprintf("held-%d", i)); err == nil {
					total += tp.Group.Log().Stats().HeldBytes
				}
			}
		}
		return total
	}
	var wg sync.WaitGroup
	for i := range topics {
		wg.Go(func() {
			for k := range 100 {
				_, err := cl.SendMessagesContext(ctx, fmt.Sprintf("held-%d", i), batch(fmt.Sprint(i, "-", k), 10), true)
				assert.NoError(t, err)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	maxHeld := 0
	for sending := true; sending; {
		select {
		case <-done:
			sending = false
		case <-time.After(time.Millisecond):
		}
		maxHeld = max(maxHeld, heldBytes())
	}
	assert.Positive(t, maxHeld, "some log held records while the topics were written together")
	require.Eventually(t, func() bool { return heldBytes() == 0 }, 20*time.Second, 10*time.Millisecond,
		"idle logs still hold %d bytes", heldBytes())
	for i := range topics {
		assert.Len(t, verifyLogs(t, c, fmt.Sprintf("held-%d", i)), 1000)
	}
}
