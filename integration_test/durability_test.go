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
// while the node is killed with SIGKILL and restarted, several times. Every
// acknowledged ID must afterwards hold the bytes that were sent with it, IDs
// are contiguous from 1, and no ID holds a message that was never sent.
func TestKill9LosesNoAcknowledgedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	for _, mode := range []string{"fsync"} {
		t.Run(mode, func(t *testing.T) {
			n := startProc(t, "n1", "-sync", mode, "-segment-bytes", "65536")
			acked := map[int64]string{} // ID -> payload
			sent := map[string]bool{}
			var mu sync.Mutex
			for round := 0; round < 6; round++ {
				c := client.New("it", []string{n.addr}, client.WithRetryWindow(0))
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				for p := 0; p < 4; p++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; i < 100000 && ctx.Err() == nil; i++ {
							msgs := make([][]byte, 1+i%20)
							for j := range msgs {
								msgs[j] = fmt.Appendf(nil, "r%d-p%d-%d-%d", round, p, i, j)
							}
							mu.Lock()
							for _, m := range msgs {
								sent[string(m)] = true
							}
							mu.Unlock()
							ids, err := c.SendMessagesContext(ctx, "default", msgs, true)
							if err != nil {
								return
							}
							mu.Lock()
							for j, id := range ids {
								acked[id] = string(msgs[j])
							}
							mu.Unlock()
						}
					}()
				}
				// Let some traffic through, then kill mid-stream.
				require.Eventually(t, func() bool {
					mu.Lock()
					defer mu.Unlock()
					return len(acked) >= (round+1)*2000
				}, 30*time.Second, time.Millisecond)
				n.kill()
				cancel()
				wg.Wait()
				c.Close()
				n.restart()
			}

			c := client.New("it", []string{n.addr})
			defer c.Close()
			var maxAcked int64
			for id := range acked {
				maxAcked = max64(maxAcked, id)
			}
			// A killed node restarts with the commit point of its last tick
			// (the log keeps newer ones in memory, see
			// commitlog.Log.SetHardState) and is brought forward once it
			// leads again and commits in its new term: an acknowledged
			// message may become visible a moment after the restart, but it
			// must become visible, with its bytes.
			var max int64
			require.Eventually(t, func() bool {
				var err error
				max, err = c.GetTopicMaxAvailableIndex("default")
				return err == nil && max >= maxAcked
			}, 30*time.Second, 5*time.Millisecond, "acknowledged messages are committed after the restart (max acknowledged %d)", maxAcked)
			stored := map[string]int64{}
			id := int64(1)
			for id <= max {
				msgs, next, err := c.GetMessages("default", id, 5000, false)
				require.NoError(t, err)
				require.NotEmpty(t, msgs)
				require.Equal(t, id+int64(len(msgs)), next)
				for _, m := range msgs {
					if want, ok := acked[id]; ok {
						require.Equal(t, want, string(m), "ID %d", id)
					}
					require.True(t, sent[string(m)], "ID %d holds %q, which was never sent", id, m)
					prev, dup := stored[string(m)]
					require.False(t, dup, "%q stored at IDs %d and %d", m, prev, id)
					stored[string(m)] = id
					id++
				}
			}
			assert.GreaterOrEqual(t, len(acked), 12000)
			t.Logf("%d acknowledged, %d stored", len(acked), max)
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
