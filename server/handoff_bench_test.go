package server_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
	"github.com/forestbus/forestbus/server/servertest"
)

// BenchmarkHandOffPause measures what a producer sees of a leadership
// hand-off (leader balancing, a node's stop): one producer sends
// one-message batches with wait_for_commit, back to back, while the
// topic's leadership is handed from node to node; each op is one
// hand-off, and pause-ms is the longest send that spanned it, median
// over the ops (p90-pause-ms the 90th percentile, max-pause-ms the
// worst).
func BenchmarkHandOffPause(b *testing.B) {
	c := servertest.NewCluster(b, 3)
	c.WaitTopic("default")
	cl := client.New("test", c.Addrs())
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	msg := [][]byte{make([]byte, 100)}
	send := func() time.Duration {
		t0 := time.Now()
		if _, err := cl.SendMessagesContext(ctx, "default", msg, true); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	for range 20 {
		send()
	}
	var longest atomic.Int64 // ns, the longest send since the last reset
	var sent atomic.Int64    // sends completed
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			d := int64(send())
			for {
				cur := longest.Load()
				if d <= cur || longest.CompareAndSwap(cur, d) {
					break
				}
			}
			sent.Add(1)
		}
	}()
	// sends waits until the producer has completed n more sends.
	sends := func(n int64) {
		want := sent.Load() + n
		require.Eventually(b, func() bool { return sent.Load() >= want }, 10*time.Second, 100*time.Microsecond)
	}
	var pauses []float64
	b.ResetTimer()
	for range b.N {
		from := leaderIndex(b, c, "default")
		to := c.Nodes[(from+1)%len(c.Nodes)]
		sends(5) // the producer running steadily before the hand-off
		longest.Store(0)
		tp, err := c.Nodes[from].Registry().Get("default")
		require.NoError(b, err)
		asked, err := tp.Group.HandTo(ctx, to.RaftID(), 64)
		require.NoError(b, err)
		require.True(b, asked, "hand-off from node %d to %d", from, to.RaftID())
		require.Eventually(b, func() bool {
			tp, err := to.Registry().Get("default")
			return err == nil && tp.Group.Leader() == to.RaftID()
		}, 5*time.Second, 100*time.Microsecond, "the hand-off happens")
		// Sends are sequential: two completed after the new leader took
		// over include the one that spanned the hand-off.
		sends(2)
		pauses = append(pauses, float64(longest.Load())/1e6)
	}
	b.StopTimer()
	close(stop)
	<-done
	slices.Sort(pauses)
	b.ReportMetric(pauses[len(pauses)/2], "pause-ms")
	b.ReportMetric(pauses[len(pauses)*9/10], "p90-pause-ms")
	b.ReportMetric(pauses[len(pauses)-1], "max-pause-ms")
}
