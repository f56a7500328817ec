package integration_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
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
// both of two nodes killed at once (no quorum until they return). One
// topic keeps only its newest MiB (retention every 500 ms), so nodes that
// were down catch up past removed segments. After each fault the cluster
// must make progress again on every topic. At the end every node reports
// the same first ID of every topic and holds the same contiguous log from
// it, every acknowledged ID from it holds its bytes, nothing stored was
// never sent, and no payload is stored twice.
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

	c := startCluster(t, 3, "-segment-bytes", "262144", "-journal-bytes", "1048576", "-retention-interval", "500ms")
	topics := []string{"default", "c1", "r1"}
	const retained = "r1"
	{
		admin := client.New("it", c.addrs())
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		require.NoError(t, admin.CreateTopic(ctx, "c1", client.TopicSettings{}))
		require.NoError(t, admin.CreateTopic(ctx, retained, client.TopicSettings{RetentionBytes: 1 << 20}))
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
		pad := 0
		if tp == retained {
			pad = 200
		}
		loads[i] = startTopicLoad(t, "x"+tp, tp, c.addrs(), 3, 1<<30, pad, duration+5*time.Minute)
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
		first := c.settledFirstID(tp)
		if tp == retained {
			require.Greater(t, first, int64(1), "%s: retention removed nothing", tp)
		} else {
			require.Equal(t, int64(1), first, tp)
		}
		c.verifyFrom(tp, c.procs, loads[i], first)
	}
	t.Logf("faults: %v", counts)
}

// settledFirstID waits until every node reports the same first ID of topic
// in three polls a second apart (retention, which runs every 500 ms, has
// removed what it will once the load stopped), and returns it.
func (c *cluster) settledFirstID(topic string) int64 {
	c.t.Helper()
	var first int64
	var seen []string
	same := 0
	waitFor(c.t, 60*time.Second, time.Second, func() bool {
		seen = seen[:0]
		var ids []int64
		for _, p := range c.procs {
			d, err := c.details(p, topic)
			if err != nil {
				seen = append(seen, fmt.Sprintf("%s: %v", p.name, err))
				same = 0
				return false
			}
			seen = append(seen, fmt.Sprintf("%s: first %d", p.name, d.FirstID))
			ids = append(ids, d.FirstID)
		}
		if slices.Min(ids) != slices.Max(ids) || ids[0] != first {
			first, same = ids[0], 0
			return false
		}
		same++
		return same >= 2
	}, func() string { return fmt.Sprintf("%s: first IDs do not settle: %v", topic, seen) })
	return first
}
