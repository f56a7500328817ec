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

// SyncBuckets are the upper bounds, in seconds, of the sync duration
// histogram (EngineMetrics.SyncSeconds).
var SyncBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10}

// EngineMetrics are the engine's counters since it started: what its syncs
// cost. One sync makes durable every log write the loop persisted since the
// previous one (group commit), for all the groups at once: in fsync mode an
// fdatasync (of the node journal, or of each log not journaled), in os mode
// only bookkeeping.
type EngineMetrics struct {
	// Syncs counts the syncs; SyncedWrites the groups' Readies they made
	// durable (log writes, or only a vote or term change; the metadata
	// group's included), so SyncedWrites/Syncs is how many groups share a
	// sync.
	Syncs, SyncedWrites uint64
	// SyncSeconds counts the syncs that took at most each SyncBuckets
	// bound (cumulative, the last is +Inf); SyncSecondsSum is their total
	// time.
	SyncSeconds    []uint64
	SyncSecondsSum float64
}

type engineMetrics struct {
	syncedWrites atomic.Uint64
	syncBuckets  [14]atomic.Uint64 // len(SyncBuckets)+1
	syncNanos    atomic.Uint64
}

// observeSync records a sync of writes Readies that took d.
func (m *engineMetrics) observeSync(d time.Duration, writes int) {
	s := d.Seconds()
	i := 0
	for i < len(SyncBuckets) && s > SyncBuckets[i] {
		i++
	}
	m.syncBuckets[i].Add(1)
	m.syncNanos.Add(uint64(d))
	m.syncedWrites.Add(uint64(writes))
}

// Metrics returns a snapshot of the engine's counters. Syncs is the sum of
// the buckets read, so that the histogram agrees with its count even while
// syncs are recorded.
func (e *Engine) Metrics() EngineMetrics {
	m := &e.metrics
	out := EngineMetrics{
		SyncedWrites:   m.syncedWrites.Load(),
		SyncSeconds:    make([]uint64, len(SyncBuckets)+1),
		SyncSecondsSum: time.Duration(m.syncNanos.Load()).Seconds(),
	}
	var cum uint64
	for i := range out.SyncSeconds {
		cum += m.syncBuckets[i].Load()
		out.SyncSeconds[i] = cum
	}
	out.Syncs = cum
	return out
}
