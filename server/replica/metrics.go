package replica

import (
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds, in seconds, of the commit latency
// histogram.
var LatencyBuckets = []float64{0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// Metrics are a group's counters since it opened on this node.
type Metrics struct {
	// AppendedMessages and AppendedBytes count the message batches written
	// to this node's log (bytes of the batch entries, framing included).
	AppendedMessages, AppendedBytes uint64
	// CommittedBytes counts the bytes of batch entries applied as committed.
	CommittedBytes uint64
	// CommitLatency is the time from proposal to commit of the
	// wait_for_commit batches proposed on this node: cumulative counts per
	// LatencyBuckets bound (the last is +Inf), their sum in seconds and
	// their number.
	CommitLatency      []uint64
	CommitLatencySum   float64
	CommitLatencyCount uint64
}

type groupMetrics struct {
	appendedMsgs, appendedBytes, committedBytes atomic.Uint64
	latency                                     [15]atomic.Uint64 // len(LatencyBuckets)+1
	latencySumNanos                             atomic.Uint64
}

func (m *groupMetrics) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(LatencyBuckets) && s > LatencyBuckets[i] {
		i++
	}
	m.latency[i].Add(1)
	m.latencySumNanos.Add(uint64(d))
}

// Metrics returns a snapshot of the group's counters.
func (g *Group) Metrics() Metrics {
	m := &g.metrics
	out := Metrics{
		AppendedMessages: m.appendedMsgs.Load(),
		AppendedBytes:    m.appendedBytes.Load(),
		CommittedBytes:   m.committedBytes.Load(),
		CommitLatency:    make([]uint64, len(LatencyBuckets)+1),
		CommitLatencySum: time.Duration(m.latencySumNanos.Load()).Seconds(),
	}
	var cum uint64
	for i := range out.CommitLatency {
		cum += m.latency[i].Load()
		out.CommitLatency[i] = cum
	}
	out.CommitLatencyCount = cum
	return out
}
