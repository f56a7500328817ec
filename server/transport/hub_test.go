package transport

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/raft/v3/raftpb"
)

// hubNodes attaches n fully connected nodes with IDs 1..n.
func hubNodes(hub *Hub, n int) ([]*HubTransport, []*recorder) {
	trs := make([]*HubTransport, n)
	hs := make([]*recorder, n)
	for i := range n {
		hs[i] = newRecorder()
		trs[i] = hub.Transport(uint64(i+1), hs[i])
	}
	for i := range n {
		for j := range n {
			trs[i].AddPeer(uint64(j+1), "")
		}
	}
	return trs, hs
}

func stopAll(trs []*HubTransport) {
	for _, t := range trs {
		t.Stop()
	}
}

// sendAll sends one message from every node to every other.
func sendAll(trs []*HubTransport, group string, index uint64) {
	for i, t := range trs {
		for j := range trs {
			if i != j {
				t.Send(group, []*raftpb.Message{msg(uint64(i+1), uint64(j+1), index)})
			}
		}
	}
}

func quiet(t *testing.T, hub *Hub) {
	t.Helper()
	require.Eventually(t, func() bool { return hub.InFlight() == 0 }, waitFor, tick)
}

func TestHubDeliversInOrder(t *testing.T) {
	hub := NewHub()
	trs, hs := hubNodes(hub, 3)
	defer stopAll(trs)
	for i := uint64(1); i <= 1000; i++ {
		trs[0].Send("g", []*raftpb.Message{msg(1, 2, i), msg(1, 3, i)})
	}
	quiet(t, hub)
	for _, h := range hs[1:] {
		got := h.group("g")
		require.Len(t, got, 1000)
		for i, m := range got {
			require.Equal(t, uint64(i+1), m.GetIndex())
		}
	}
	assert.Equal(t, uint64(2000), hub.Delivered())
	assert.Zero(t, hub.Dropped())
}

func TestHubPartitionAndHeal(t *testing.T) {
	hub := NewHub()
	trs, hs := hubNodes(hub, 5)
	defer stopAll(trs)

	hub.Partition(1, 2) // {1,2} | {3,4,5}
	sendAll(trs, "g", 1)
	quiet(t, hub)
	inside := map[uint64][]uint64{1: {2}, 2: {1}, 3: {4, 5}, 4: {3, 5}, 5: {3, 4}}
	for i, h := range hs {
		id := uint64(i + 1)
		assert.Len(t, h.group("g"), len(inside[id]), "node %d", id)
		for _, m := range h.group("g") {
			assert.Contains(t, inside[id], m.GetFrom(), "node %d got a message across the partition", id)
		}
		for to := uint64(1); to <= 5; to++ {
			crosses := to != id && !contains(inside[id], to)
			assert.Equal(t, crosses, h.unreachableCount("g", to) > 0, "node %d → %d", id, to)
		}
	}
	assert.Equal(t, uint64(12), hub.Dropped())
	assert.Equal(t, uint64(8), hub.Delivered())

	hub.Heal()
	sendAll(trs, "h", 1)
	quiet(t, hub)
	for _, h := range hs {
		assert.Len(t, h.group("h"), 4)
	}

	hub.Isolate(3)
	sendAll(trs, "i", 1)
	quiet(t, hub)
	for i, h := range hs {
		want := 3
		if i == 2 {
			want = 0
		}
		assert.Len(t, h.group("i"), want, "node %d", i+1)
	}
}

func contains(s []uint64, v uint64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestHubDrop(t *testing.T) {
	hub := NewHub(WithSeed(7))
	trs, hs := hubNodes(hub, 2)
	defer stopAll(trs)

	hub.SetDrop(1, 2, 1)
	for i := uint64(1); i <= 100; i++ {
		trs[0].Send("g", []*raftpb.Message{msg(1, 2, i)})
		trs[1].Send("g", []*raftpb.Message{msg(2, 1, i)})
	}
	quiet(t, hub)
	assert.Empty(t, hs[1].group("g"), "1 → 2 loses everything")
	assert.Len(t, hs[0].group("g"), 100, "2 → 1 is unaffected")
	assert.Zero(t, hs[0].totalUnreachable(), "losses are silent")
	assert.Equal(t, uint64(100), hub.Dropped())

	hub.SetDrop(1, 2, 0.5)
	for i := uint64(101); i <= 1100; i++ {
		trs[0].Send("g", []*raftpb.Message{msg(1, 2, i)})
	}
	quiet(t, hub)
	got := len(hs[1].group("g"))
	assert.InDelta(t, 500, got, 100)
	assert.Equal(t, uint64(1100-got), hub.Dropped())

	// A lost snapshot fails; a delivered one finishes.
	hub.SetDrop(1, 2, 1)
	trs[0].Send("s", []*raftpb.Message{snapMsg(1, 2)})
	hub.SetDrop(1, 2, 0)
	trs[0].Send("s", []*raftpb.Message{snapMsg(1, 2)})
	require.Eventually(t, func() bool { return len(hs[0].snapReports()) == 2 }, waitFor, tick)
	assert.Equal(t, []snapReport{{"s", 2, true}, {"s", 2, false}}, hs[0].snapReports())
	assert.Zero(t, hs[0].totalUnreachable())
}

// timedRecorder records when messages arrive.
type timedRecorder struct {
	*recorder
	mu sync.Mutex
	at []time.Time
}

func (r *timedRecorder) Step(group string, m *raftpb.Message) {
	r.mu.Lock()
	r.at = append(r.at, time.Now())
	r.mu.Unlock()
	r.recorder.Step(group, m)
}

func TestHubDelay(t *testing.T) {
	hub := NewHub()
	h1 := newRecorder()
	h2 := &timedRecorder{recorder: newRecorder()}
	t1 := hub.Transport(1, h1)
	t2 := hub.Transport(2, h2)
	defer t1.Stop()
	defer t2.Stop()
	t1.AddPeer(2, "")
	t2.AddPeer(1, "")

	const d = 50 * time.Millisecond
	hub.SetDelay(1, 2, d)
	start := time.Now()
	for i := uint64(1); i <= 10; i++ {
		t1.Send("g", []*raftpb.Message{msg(1, 2, i)})
	}
	t2.Send("g", []*raftpb.Message{msg(2, 1, 1)})
	require.Eventually(t, func() bool { return h1.count() == 1 }, waitFor, tick)
	quiet(t, hub)
	got := h2.group("g")
	require.Len(t, got, 10)
	for i, m := range got {
		assert.Equal(t, uint64(i+1), m.GetIndex())
	}
	h2.mu.Lock()
	defer h2.mu.Unlock()
	for _, at := range h2.at {
		assert.GreaterOrEqual(t, at.Sub(start), d)
	}
}

func TestHubStopAndRestart(t *testing.T) {
	hub := NewHub()
	trs, hs := hubNodes(hub, 2)
	defer trs[0].Stop()

	trs[1].Stop()
	trs[0].Send("g", []*raftpb.Message{msg(1, 2, 1), snapMsg(1, 2)})
	assert.Equal(t, 1, hs[0].unreachableCount("g", 2))
	assert.Equal(t, []snapReport{{"g", 2, true}}, hs[0].snapReports())
	assert.Zero(t, hs[1].count())

	// Unknown peers are unreachable too.
	trs[0].Send("g", []*raftpb.Message{msg(1, 7, 1)})
	assert.Equal(t, 1, hs[0].unreachableCount("g", 7))

	h2 := newRecorder()
	t2 := hub.Transport(2, h2)
	defer t2.Stop()
	assert.Panics(t, func() { hub.Transport(2, h2) })
	trs[0].Send("g", []*raftpb.Message{msg(1, 2, 2)})
	quiet(t, hub)
	require.Len(t, h2.group("g"), 1)
	assert.Equal(t, uint64(2), h2.group("g")[0].GetIndex())

	trs[0].RemovePeer(2)
	trs[0].Send("g", []*raftpb.Message{msg(1, 2, 3)})
	assert.Equal(t, 2, hs[0].unreachableCount("g", 2))
}

// TestHubPartitionDropsInFlight: a partition also loses what is on the
// wire, and Stop drops queued messages without reports.
func TestHubPartitionDropsInFlight(t *testing.T) {
	hub := NewHub()
	trs, hs := hubNodes(hub, 3)
	defer stopAll(trs)
	hub.SetDelay(1, 2, 100*time.Millisecond)
	trs[0].Send("g", []*raftpb.Message{msg(1, 2, 1), snapMsg(1, 2)})
	hub.Isolate(2)
	quiet(t, hub)
	assert.Zero(t, hs[1].count())
	assert.Equal(t, 2, hs[0].unreachableCount("g", 2), "once per message lost in flight")
	assert.Equal(t, []snapReport{{"g", 2, true}}, hs[0].snapReports())
	assert.Equal(t, uint64(2), hub.Dropped())

	hub.Heal()
	hub.SetDelay(1, 3, time.Hour)
	trs[0].Send("g", []*raftpb.Message{msg(1, 3, 1)})
	assert.Equal(t, 1, hub.InFlight())
	trs[0].Stop()
	assert.Zero(t, hub.InFlight())
	assert.Equal(t, uint64(3), hub.Dropped())
	assert.Zero(t, hs[2].count())
	assert.Zero(t, hs[0].unreachableCount("g", 3))
}
