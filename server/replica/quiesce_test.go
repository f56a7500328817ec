package replica

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forestbus/forestbus/server/transport"
)

// TestUndeliveredPingMarksPeerSilent: a liveness ping the transport cannot
// deliver (here a cut link, which the Hub reports as GRPC does a broken
// stream) marks its peer silent at once, without waiting out silenceTicks,
// and wakes the loop to act on it; the next message heard from the peer
// ends that. (The engine is not started, so the wake-up stays queued.)
func TestUndeliveredPingMarksPeerSilent(t *testing.T) {
	hub := transport.NewHub()
	ref := &handlerRef{}
	tr := hub.Transport(1, ref)
	tr.AddPeer(2, "")
	hub.Transport(2, &handlerRef{})
	e, err := NewEngine(Config{NodeID: 1, Transport: tr, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	ref.e.Store(e)
	e.SetPeers([]uint64{1, 2})

	e.heard(2)
	e.pingPeers()
	require.LessOrEqual(t, e.silentFor(2), e.silenceTicks)
	require.False(t, e.silenced.Load())

	hub.Isolate(2)
	e.pingPeers() // the Hub reports the drop before Send returns
	assert.Greater(t, e.silentFor(2), e.silenceTicks, "a ping that could not be sent")
	assert.True(t, e.silenced.Load(), "the loop is told")
	assert.Len(t, e.wake, 1, "and woken")

	hub.Heal()
	e.heard(2)
	assert.LessOrEqual(t, e.silentFor(2), e.silenceTicks, "heard from again")
}

// TestSilenceOutlastsTwoPings: a quiesced follower waits at least two ping
// intervals (and an election timeout) before it takes its leader for dead,
// so one late or lost ping does not wake every group.
func TestSilenceOutlastsTwoPings(t *testing.T) {
	assert.Equal(t, int64(2*pingEvery+1), silenceTicks(10))
	assert.Equal(t, int64(50), silenceTicks(50))
}

// TestQuiescedGroupReplacesSilentLeader: once the group is quiesced (no
// heartbeats), its followers elect a new leader when the leader's node
// falls silent: when the pings to it fail (a cut link) and when they are
// lost without a report (a lossy link, found by the silence alone).
func TestQuiescedGroupReplacesSilentLeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(h *transport.Hub, lead uint64, others []uint64)
	}{
		{"pings fail", func(h *transport.Hub, lead uint64, _ []uint64) { h.Isolate(lead) }},
		{"pings lost", func(h *transport.Hub, lead uint64, others []uint64) {
			for _, o := range others {
				h.SetDrop(lead, o, 1)
				h.SetDrop(o, lead, 1)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openNoticeCluster(t, 20*time.Millisecond, -1, false)
			c.sendSequentially(t, 1)
			for _, tr := range c.trs[1:] {
				require.Eventually(t, func() bool { return tr.quiesce.Load() > 0 }, 10*time.Second, time.Millisecond, "a follower quiesces")
			}
			lead := c.groups[0].e.NodeID()
			others := []uint64{c.groups[1].e.NodeID(), c.groups[2].e.NodeID()}
			tc.cut(c.hub, lead, others)
			require.Eventually(t, func() bool {
				for _, g := range c.groups[1:] {
					if l := g.Leader(); l != 0 && l != lead {
						return true
					}
				}
				return false
			}, 20*time.Second, time.Millisecond, "a follower leads")
		})
	}
}
