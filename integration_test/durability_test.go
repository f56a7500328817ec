package integration_test

import (
	"context"
	"fmt"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/client"
)

// TestKill9LosesNoAcknowledgedMessage: producers send with wait-for-commit
// to several topics (so that the node syncs them together, through its
// journal) while the node is killed with SIGKILL and restarted, several
// times. In every topic each acknowledged ID must afterwards hold the bytes
// that were sent with it, IDs are contiguous from 1, and no ID holds a
// message that was never sent.
func TestKill9LosesNoAcknowledgedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	topics := []string{"default", "k1", "k2", "k3"}
	for _, mode := range []string{"fsync"} {
		t.Run(mode, func(t *testing.T) {
			n := startProc(t, "n1", "-sync", mode, "-segment-bytes", "65536", "-journal-bytes", "1048576")
			acked := map[string]map[int64]string{} // topic -> ID -> payload
			sent := map[string]bool{}
			var mu sync.Mutex
			total := 0
			{
				c := client.New("it", []string{n.addr})
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				for _, tp := range topics {
					acked[tp] = map[int64]string{}
					if tp != "default" {
						require.NoError(t, c.CreateTopic(ctx, tp, client.TopicSettings{}))
					}
				}
				cancel()
				c.Close()
			}
			for round := 0; round < 6; round++ {
				c := client.New("it", []string{n.addr})
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				for p := 0; p < 8; p++ {
					tp := topics[p%len(topics)]
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; i < 100000 && ctx.Err() == nil; i++ {
							msgs := make([][]byte, 1+i%20)
							for j := range msgs {
								msgs[j] = fmt.Appendf(nil, "%s-r%d-p%d-%d-%d", tp, round, p, i, j)
							}
							mu.Lock()
							for _, m := range msgs {
								sent[string(m)] = true
							}
							mu.Unlock()
							ids, err := c.SendMessagesContext(ctx, tp, msgs, true)
							if err != nil {
								continue // a topic still electing after the restart: new messages
							}
							mu.Lock()
							for j, id := range ids {
								acked[tp][id] = string(msgs[j])
							}
							total += len(ids)
							mu.Unlock()
						}
					}()
				}
				// Let some traffic through, then kill mid-stream.
				require.Eventually(t, func() bool {
					mu.Lock()
					defer mu.Unlock()
					return total >= (round+1)*4000
				}, 30*time.Second, time.Millisecond)
				n.kill()
				cancel()
				wg.Wait()
				c.Close()
				n.restart()
			}

			c := client.New("it", []string{n.addr})
			defer c.Close()
			for _, tp := range topics {
				var maxAcked int64
				for id := range acked[tp] {
					maxAcked = max64(maxAcked, id)
				}
				// A killed node restarts with the commit point of its last
				// tick (the log keeps newer ones in memory, see
				// commitlog.Log.SetHardState) and is brought forward once it
				// leads again and commits in its new term: an acknowledged
				// message may become visible a moment after the restart,
				// but it must become visible, with its bytes.
				var max int64
				require.Eventually(t, func() bool {
					var err error
					max, err = c.GetTopicMaxAvailableIndex(tp)
					return err == nil && max >= maxAcked
				}, 30*time.Second, 5*time.Millisecond, "%s: acknowledged messages are committed after the restart (max acknowledged %d)", tp, maxAcked)
				stored := map[string]int64{}
				id := int64(1)
				for id <= max {
					msgs, next, err := c.GetMessages(tp, id, 5000, false)
					require.NoError(t, err)
					require.NotEmpty(t, msgs)
					require.Equal(t, id+int64(len(msgs)), next)
					for _, m := range msgs {
						if want, ok := acked[tp][id]; ok {
							require.Equal(t, want, string(m), "%s: ID %d", tp, id)
						}
						require.True(t, sent[string(m)], "%s: ID %d holds %q, which was never sent", tp, id, m)
						prev, dup := stored[string(m)]
						require.False(t, dup, "%s: %q stored at IDs %d and %d", tp, m, prev, id)
						stored[string(m)] = id
						id++
					}
				}
				assert.GreaterOrEqual(t, len(acked[tp]), 1000, tp)
				t.Logf("%s: %d acknowledged, %d stored", tp, len(acked[tp]), max)
			}
		})
	}
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// TestSigtermRestartReadableAtOnce: a node stopped with SIGTERM exits 0,
// and after it starts again every committed message is readable at once,
// with no new message needed to learn the commit point.
func TestSigtermRestartReadableAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	n := startProc(t, "n1")
	c := client.New("it", []string{n.addr})
	defer c.Close()
	var want [][]byte
	for i := 0; i < 50; i++ {
		msgs := [][]byte{fmt.Appendf(nil, "a%d", i), fmt.Appendf(nil, "b%d", i)}
		_, err := c.SendMessages("default", msgs, true)
		require.NoError(t, err)
		want = append(want, msgs...)
	}
	n.stop()
	n.restart()
	max, err := c.GetTopicMaxAvailableIndex("default")
	require.NoError(t, err)
	require.Equal(t, int64(len(want)), max)
	msgs, next, err := c.GetMessages("default", 1, 1000, false)
	require.NoError(t, err)
	assert.Equal(t, want, msgs)
	assert.Equal(t, int64(len(want)+1), next)
}

// TestRefusesAnotherClustersData: fbnode will not start on a data directory
// of another cluster, and says why.
func TestRefusesAnotherClustersData(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	n := startProc(t, "n1")
	n.stop()
	out, err := exec.Command(fbnodeBin, "-listen", "127.0.0.1:0", "-data", n.data, "-cluster", "other", "-name", "n1").CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), `holds cluster "it"`)
}
