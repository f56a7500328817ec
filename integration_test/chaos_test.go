package integration_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
)

// TestClusterChaos: producers send with wait-for-commit to three topics of
// a 3-node cluster while random faults hit the nodes, one after another:
// SIGKILL and restart (of any node, or of a topic's leader), SIGSTOP for
// up to 2.5 s (longer than an election timeout), SIGTERM and restart, and
// both of two nodes killed at once (no quorum until they return). After
// each fault the cluster must make progress again on every topic. At the
// end every node holds the same contiguous log of every topic, every
// acknowledged ID holds its bytes, nothing stored was never sent, and no
// payload is stored twice.
//
// FB_CHAOS_DURATION sets how long faults are injected (default 20s; a
// soak: FB_CHAOS_DURATION=10m go test -run TestClusterChaos
// -timeout 30m ./integration_test/). FB_CHAOS_SEED replays a run's faults.
func TestClusterChaos(t *testing.T) {
	duration := 20 * time.Second
	if v := os.Getenv("FB_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "FB_CHAOS_DURATION")
		duration = d
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FB_CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "FB_CHAOS_SEED")
		seed = s
	}
	t.Logf("FB_CHAOS_SEED=%d FB_CHAOS_DURATION=%v", seed, duration)
	rng := rand.New(rand.NewPCG(seed, seed))

	c := startCluster(t, 3, "-segment-bytes", "262144", "-journal-bytes", "1048576")
	topics := []string{"default", "c1", "c2"}
	{
		admin := client.New("it", c.addrs())
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		for _, tp := range topics[1:] {
			require.NoError(t, admin.CreateTopic(ctx, tp, client.TopicSettings{}))
		}
		cancel()
		admin.Close()
	}
	for _, tp := range topics {
		for _, p := range c.procs {
			c.waitLeader(p, tp, 60*time.Second)
		}
	}
	// The producers run past the faults, until stopped; each call gives
	// up after its 10 s retry window (two nodes down).
	loads := make([]*load, len(topics))
	for i, tp := range topics {
		loads[i] = startTopicLoad(t, "x"+tp, tp, c.addrs(), 3, 1<<30, 0, duration+5*time.Minute)
	}
	progress := func(why string) {
		t.Helper()
		for i, l := range loads {
			l.waitMore(5, 60*time.Second, fmt.Sprintf("%s: topic %s", why, topics[i]))
		}
	}
	progress("before the first fault")

	pause := func(lo, hi time.Duration) { time.Sleep(lo + time.Duration(rng.Int64N(int64(hi-lo)))) }
	counts := map[string]int{}
	start := time.Now()
	for step := 1; time.Since(start) < duration; step++ {
		p := c.procs[rng.IntN(len(c.procs))]
		var what string
		switch k := rng.IntN(10); {
		case k < 3:
			what = "kill -9 " + p.name
			p.kill()
			pause(0, 1500*time.Millisecond)
			p.restart()
		case k < 5:
			tp := topics[rng.IntN(len(topics))]
			p = c.leader(tp, c.procs)
			what = fmt.Sprintf("kill -9 %s (leader of %s)", p.name, tp)
			p.kill()
			pause(0, 1500*time.Millisecond)
			p.restart()
		case k < 7:
			what = "SIGSTOP " + p.name
			p.pause()
			pause(200*time.Millisecond, 2500*time.Millisecond)
			p.resume()
		case k < 9:
			what = "SIGTERM " + p.name
			p.stop()
			p.restart()
		default:
			q := others(c.procs, p)[rng.IntN(2)]
			what = fmt.Sprintf("kill -9 %s and %s", p.name, q.name)
			p.kill()
			q.kill()
			pause(0, 1500*time.Millisecond)
			p.restart()
			q.restart()
		}
		counts[what]++
		t0 := time.Now()
		progress(fmt.Sprintf("step %d, after %s", step, what))
		t.Logf("step %d: %s; every topic progressed %v later", step, what, time.Since(t0).Round(time.Millisecond))
	}
	for i, l := range loads {
		l.stop()
		t.Logf("%s: %d batches acknowledged, %s", topics[i], l.count(), l.errString())
	}
	for i, tp := range topics {
		c.verify(tp, c.procs, loads[i])
	}
	t.Logf("faults: %v", counts)
}
