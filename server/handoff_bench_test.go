package server_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

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
		}
	}()
	leaderOf := func() (int, uint64) {
		for i, n := range c.Nodes {
			tp, err := n.Registry().Get("default")
			if err == nil && tp.Group != nil && tp.Group.Leader() == n.RaftID() {
				return i, n.RaftID()
			}
		}
		return -1, 0
	}
	var pauses []float64
	b.ResetTimer()
	for range b.N {
		var from int
		var lead uint64
		for from, lead = leaderOf(); from < 0; from, lead = leaderOf() {
			time.Sleep(time.Millisecond) // polling for an elected leader
		}
		to := c.Nodes[(from+1)%len(c.Nodes)].RaftID()
		// Let the producer run steadily before the hand-off.
		time.Sleep(50 * time.Millisecond)
		longest.Store(0)
		tp, _ := c.Nodes[from].Registry().Get("default")
		asked, err := tp.Group.HandTo(ctx, to, 64)
		if err != nil || !asked {
			b.Fatalf("hand-off from %d to %d: asked %v, %v", lead, to, asked, err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			if i, _ := leaderOf(); i >= 0 && c.Nodes[i].RaftID() == to {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("the hand-off did not happen")
			}
			time.Sleep(time.Millisecond)
		}
		// The sends in flight at the hand-off end within this.
		time.Sleep(300 * time.Millisecond)
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
