package server_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/forestbus/forestbus/client"
	forestbusv1 "github.com/forestbus/forestbus/gen/forestbus/v1"
	"github.com/forestbus/forestbus/server"
	"github.com/forestbus/forestbus/server/servertest"
	"github.com/forestbus/forestbus/server/transport"
)

// produce runs producers until stop is closed or limit messages are acked,
// recording acknowledged IDs. Each producer has its own client (and so its
// own idempotent producer ID).
type producers struct {
	mu     sync.Mutex
	acked  map[int64]string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startProducers(t *testing.T, addrs []string, n int) *producers {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	p := &producers{acked: map[int64]string{}, cancel: cancel}
	for i := 0; i < n; i++ {
		cl := client.New("test", addrs, client.WithRetryWindow(30*time.Second))
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer cl.Close()
			for j := 0; j < 100000 && ctx.Err() == nil; j++ {
				msgs := [][]byte{fmt.Appendf(nil, "p%d-%d-a", i, j), fmt.Appendf(nil, "p%d-%d-b", i, j)}
				ids, err := cl.SendMessagesContext(ctx, "default", msgs, true)
				if err != nil {
					continue
				}
				p.mu.Lock()
				for k, id := range ids {
					p.acked[id] = string(msgs[k])
				}
				p.mu.Unlock()
			}
		}()
	}
	return p
}

func (p *producers) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

func (p *producers) stop() {
	p.cancel()
	p.wg.Wait()
}

// checkCluster waits for every node to reach the same commit point and
// checks the logs agree, every acknowledged ID holds its message, and no
// message is stored twice.
func checkCluster(t *testing.T, c *servertest.Cluster, p *producers) {
	t.Helper()
	require.Eventually(t, func() bool {
		var ids []uint64
		for _, n := range c.Nodes {
			tp, err := n.Registry().Get("default")
			if err != nil {
				return false
			}
			ids = append(ids, tp.Group.CommitID())
		}
		for _, id := range ids {
			if id != ids[0] {
				return false
			}
		}
		return true
	}, 30*time.Second, 10*time.Millisecond, "nodes never agreed on the commit point")
	log := verifyLogs(t, c, "default")
	seen := map[string]int{}
	for i, m := range log {
		prev, dup := seen[string(m)]
		require.False(t, dup, "%q stored at IDs %d and %d", m, prev+1, i+1)
		seen[string(m)] = i
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, msg := range p.acked {
		require.LessOrEqual(t, id, int64(len(log)), "acknowledged ID %d is not in the log", id)
		require.Equal(t, msg, string(log[id-1]), "ID %d", id)
	}
	t.Logf("%d acknowledged, %d stored", len(p.acked), len(log))
}

// TestPartitionedLeaderIsReplaced cuts the topic leader off from the rest
// while producers keep sending: the majority elects a new leader and goes
// on; once healed, every node agrees and nothing acknowledged is lost or
// stored twice.
func TestPartitionedLeaderIsReplaced(t *testing.T) {
	hub := transport.NewHub(transport.WithSeed(1))
	c := servertest.NewCluster(t, 3, servertest.WithHub(hub))
	c.WaitTopic("default")
	p := startProducers(t, c.Addrs(), 3)
	defer p.stop()
	for round := 0; round < 2; round++ {
		require.Eventually(t, func() bool { return p.count() >= (round+1)*300 }, 30*time.Second, time.Millisecond)
		l := leaderIndex(t, c, "default")
		hub.Isolate(uint64(l + 1))
		before := p.count()
		require.Eventually(t, func() bool { return p.count() >= before+300 }, 30*time.Second, time.Millisecond,
			"no progress with the leader cut off")
		hub.Heal()
	}
	p.stop()
	checkCluster(t, c, p)
}

// TestLossySlowNetwork drops and delays messages on every link while
// producers send.
func TestLossySlowNetwork(t *testing.T) {
	hub := transport.NewHub(transport.WithSeed(2))
	c := servertest.NewCluster(t, 3, servertest.WithHub(hub))
	c.WaitTopic("default")
	for from := uint64(1); from <= 3; from++ {
		for to := uint64(1); to <= 3; to++ {
			if from != to {
				hub.SetDrop(from, to, 0.1)
				hub.SetDelay(from, to, 2*time.Millisecond)
			}
		}
	}
	p := startProducers(t, c.Addrs(), 3)
	defer p.stop()
	require.Eventually(t, func() bool { return p.count() >= 1000 }, 60*time.Second, time.Millisecond)
	p.stop()
	hub.Heal()
	checkCluster(t, c, p)
}

// TestUncommittedBudgetPushesBack: a leader cut off from its followers
// cannot commit; once its uncommitted bytes exceed the budget, sends are
// refused with RESOURCE_EXHAUSTED instead of queueing without bound.
func TestUncommittedBudgetPushesBack(t *testing.T) {
	hub := transport.NewHub(transport.WithSeed(4))
	c := servertest.NewCluster(t, 3, servertest.WithHub(hub),
		servertest.WithConfig(func(cfg *server.Config) {
			cfg.MaxUncommittedBytes = 4096
			cfg.TickInterval = 100 * time.Millisecond // 1 s before the cut-off leader steps down
		}))
	c.WaitTopic("default")
	l := leaderIndex(t, c, "default")
	lc := dial(t, c.Nodes[l])
	hub.Isolate(uint64(l + 1))
	big := [][]byte{bytes.Repeat([]byte("b"), 3000)}
	var refused error
	for i := 0; i < 10 && refused == nil; i++ {
		_, err := lc.bus.SendMessages(ctxT(t), &forestbusv1.SendMessagesRequest{Topic: "default", Messages: big})
		if err != nil {
			refused = err
		}
	}
	require.Error(t, refused, "the cut-off leader accepted 30 KB it cannot commit")
	assert.Equal(t, codes.ResourceExhausted, status.Code(refused), "%v", refused)
	assert.Equal(t, "PROPOSAL_DROPPED", reasonOf(refused))
	hub.Heal()
}
