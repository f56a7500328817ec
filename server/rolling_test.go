package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/batcher"
	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server/servertest"
)

// TestRollingRestartLosesNothing restarts each node of a 3-node cluster in
// turn while a MessageBatcher with retries sends: no producer sees an error,
// and every message is stored once, in order.
func TestRollingRestartLosesNothing(t *testing.T) {
	c := servertest.NewCluster(t, 3)
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs(), client.WithRetryWindow(20*time.Second))
	defer cl.Close()
	b := batcher.New(cl, "default", batcher.WithRetries(batcher.UnlimitedRetries))
	defer b.Close()

	const total = 3000
	results := make(chan *batcher.SendResult, total)
	go func() {
		for i := 0; i < total; i++ {
			ref := i
			_ = b.AsyncSendMessage(fmt.Appendf(nil, "m%05d", i), &ref, results, true)
		}
	}()
	received := 0
	next := func(n int) {
		for ; received < n; received++ {
			select {
			case r := <-results:
				require.NoError(t, r.GetError(), "message %d", *r.GetReference().(*int))
			case <-time.After(30 * time.Second):
				t.Fatalf("only %d of %d results", received, total)
			}
		}
	}
	for i := range c.Nodes {
		next((i + 1) * total / 4)
		c.Nodes[i].Stop()
		c.Nodes[i].Start()
		c.WaitTopic("default")
	}
	next(total)

	log := verifyLogs(t, c, "default")
	require.Len(t, log, total, "every message once")
	for i, m := range log {
		require.Equal(t, fmt.Sprintf("m%05d", i), string(m), "in order")
	}
}
