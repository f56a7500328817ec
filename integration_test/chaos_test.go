package integration_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
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
// never sent, and no payload is stored twice. Meanwhile topics are
// created, written and removed over and over (churn), and at the end every
// node lists the same topics and has purged the removed ones' files.
//
// FB_CHAOS_DURATION sets how long faults are injected (default 20s; a
// soak: FB_CHAOS_DURATION=10m go test -run TestClusterChaos
// -timeout 30m ./integration_test/). FB_CHAOS_SEED replays a run's faults;
// FB_CHAOS_SYNC=os runs the nodes with -sync os.
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
	t.Logf("FB_CHAOS_SEED=%d FB_CHAOS_DURATION=%v FB_CHAOS_SYNC=%q", seed, duration, os.Getenv("FB_CHAOS_SYNC"))
	rng := rand.New(rand.NewPCG(seed, seed))

	mode := "fsync"
	if v := os.Getenv("FB_CHAOS_SYNC"); v != "" {
		mode = v // os: kill -9 keeps the page cache, so the checks hold too
	}
	// Small metadata checkpoints: the topic churn below checkpoints and
	// compacts the metadata log every few seconds, and a node killed for
	// long enough is sent the registry as a snapshot.
	c := startCluster(t, 3, "-sync", mode, "-segment-bytes", "262144", "-journal-bytes", "1048576", "-retention-interval", "500ms", "-removed-retention", "1s",
		"-meta-checkpoint-every", "64", "-meta-segment-bytes", "16384")
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
	ch := startChurn(t, c.addrs())
	progress := func(why string) {
		t.Helper()
		for i, l := range loads {
			l.waitMore(5, 60*time.Second, fmt.Sprintf("%s: topic %s", why, topics[i]))
		}
		ch.check()
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
		l.mu.Lock()
		// Errors are expected while two nodes are down; a node calling
		// an existing topic missing never is (a 10-minute soak found 128).
		require.Zero(t, l.notFound, "%s: sends answered TOPIC_NOT_FOUND", topics[i])
		l.mu.Unlock()
	}
	ch.stop()
	ch.check()
	require.Positive(t, ch.cycles.Load(), "topic churn completed no cycle")
	t.Logf("topic churn: %d cycles of create, send, read, remove", ch.cycles.Load())
	// Every node lists the same topics, and has purged what was removed
	// (-removed-retention 1s).
	want := append([]string(nil), topics...)
	slices.Sort(want)
	for _, p := range c.procs {
		var got []string
		var removed []os.DirEntry
		waitFor(t, 60*time.Second, 50*time.Millisecond, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ts, err := c.node(p).ListTopics(ctx)
			if err != nil {
				return false
			}
			got = got[:0]
			for _, tp := range ts {
				got = append(got, tp.Name)
			}
			slices.Sort(got)
			removed, err = os.ReadDir(filepath.Join(p.data, "removed"))
			return err == nil && slices.Equal(got, want) && len(removed) == 0
		}, func() string {
			return fmt.Sprintf("%s lists %v (want %v); removed/ holds %d entries", p.name, got, want, len(removed))
		})
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

// churn creates a topic, sends a batch to it and removes it, over and over
// under the faults: each step is retried until it succeeds (a retried
// create or remove may find its first attempt applied) or a minute passes.
// The batch must be the topic's only content, at ID 1: a topic created
// again never shows an earlier incarnation's messages.
type churn struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan struct{}
	cycles atomic.Int64
	err    atomic.Pointer[error]
}

func startChurn(t *testing.T, addrs []string) *churn {
	ctx, cancel := context.WithCancel(context.Background())
	ch := &churn{t: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ch.done)
		c := client.New("it", addrs, client.WithRetryWindow(10*time.Second))
		defer c.Close()
		fail := func(err error) { ch.err.CompareAndSwap(nil, &err) }
		retry := func(what string, op func(context.Context) error) bool {
			deadline := time.Now().Add(time.Minute)
			var last error
			for time.Now().Before(deadline) {
				cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
				last = op(cctx)
				ccancel()
				if last == nil {
					return true
				}
				time.Sleep(20 * time.Millisecond) // a node restarting: try again
			}
			fail(fmt.Errorf("%s: no success within a minute, last error: %w", what, last))
			return false
		}
		// Topics are created again under a few names, so that removed
		// incarnations exist for the names that are created.
		for i := 0; ctx.Err() == nil; i++ {
			name := fmt.Sprintf("churn-%d", i%3)
			msg := fmt.Sprintf("%s-cycle-%d", name, i)
			ok := retry("create "+name, func(ctx context.Context) error {
				err := c.CreateTopic(ctx, name, client.TopicSettings{})
				if errors.Is(err, client.ErrTopicExists) {
					return nil // an earlier attempt was applied
				}
				return err
			}) && retry("send to "+name, func(ctx context.Context) error {
				ids, err := c.SendMessagesContext(ctx, name, [][]byte{[]byte(msg)}, true)
				if err == nil && ids[0] != 1 {
					fail(fmt.Errorf("%s: the first batch of a new topic got ID %d", name, ids[0]))
				}
				return err
			}) && retry("read "+name, func(ctx context.Context) error {
				msgs, _, err := c.GetMessagesContext(ctx, name, 1, 10, false)
				if err == nil && len(msgs) == 0 {
					// A follower's reads trail the leader's commit.
					return errors.New("the message is not readable yet")
				}
				if err == nil && (len(msgs) != 1 || string(msgs[0]) != msg) {
					fail(fmt.Errorf("%s: holds %q, want only %q", name, msgs, msg))
				}
				return err
			}) && retry("remove "+name, func(ctx context.Context) error {
				err := c.RemoveTopic(ctx, name)
				if errors.Is(err, client.ErrTopicNotFound) {
					return nil // an earlier attempt was applied
				}
				return err
			})
			if !ok {
				return
			}
			ch.cycles.Add(1)
		}
	}()
	t.Cleanup(ch.stop)
	return ch
}

// stop ends the churn after its current cycle.
func (ch *churn) stop() {
	ch.cancel()
	<-ch.done
}

func (ch *churn) check() {
	ch.t.Helper()
	if p := ch.err.Load(); p != nil {
		ch.t.Fatalf("topic churn: %v", *p)
	}
}
