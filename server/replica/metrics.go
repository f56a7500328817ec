package replica

import (
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds, in seconds, of the commit latency
// histogram.
var LatencyBuckets = [...]float64{0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// Metrics are a group's counters since it opened on this node.
type Metrics struct {
	// AppendedMessages and AppendedBytes count the message batches written
	// to this node's log (bytes of the batch entries, framing included).
	AppendedMessages, AppendedBytes uint64
	// CommittedBytes counts the bytes of batch entries applied as committed.
	CommittedBytes uint64
	// CommittedMessages is how far the commit ID moved since the group
	// opened: the messages committed on this node since then (also those
	// a snapshot skipped it past). A counter, unlike the commit ID, which
	// a restart may show lower than the last one before it (the stored
	// commit point trails by up to a second of commits).
	CommittedMessages uint64
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
	latency                                     [len(LatencyBuckets) + 1]atomic.Uint64 // the last: +Inf
	latencySumNanos                             atomic.Uint64
}

func (m *groupMetrics) observe(d time.Duration) {
	m.latency[bucket(LatencyBuckets[:], d)].Add(1)
	m.latencySumNanos.Add(uint64(d))
}

// bucket is the index of the first of bounds (seconds) that d does not
// exceed, len(bounds) (+Inf) when it exceeds them all.
func bucket(bounds []float64, d time.Duration) int {
	s := d.Seconds()
	i := 0
	for i < len(bounds) && s > bounds[i] {
		i++
	}
	return i
}

// cumulative returns a histogram's cumulative buckets from the counts of
// its buckets, and their total (the histogram's count, consistent with the
// buckets however the counts move meanwhile).
func cumulative(counts []atomic.Uint64) (cum []uint64, total uint64) {
	cum = make([]uint64, len(counts))
	for i := range counts {
		total += counts[i].Load()
		cum[i] = total
	}
	return cum, total
}

// Metrics returns a snapshot of the group's counters.
func (g *Group) Metrics() Metrics {
	m := &g.metrics
	out := Metrics{
		AppendedMessages:  m.appendedMsgs.Load(),
		AppendedBytes:     m.appendedBytes.Load(),
		CommittedBytes:    m.committedBytes.Load(),
		CommittedMessages: max(g.commitID.Load(), g.openCommit) - g.openCommit,
		CommitLatencySum:  time.Duration(m.latencySumNanos.Load()).Seconds(),
	}
	out.CommitLatency, out.CommitLatencyCount = cumulative(m.latency[:])
	return out
}

// SyncBuckets are the upper bounds, in seconds, of the sync duration
// histogram (EngineMetrics.SyncSeconds).
var SyncBuckets = [...]float64{0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10}

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
	// Ticks counts the loop's tick passes over its groups: one a tick
	// while a group is awake, one a ping interval when all are quiesced.
	Ticks uint64
}

type engineMetrics struct {
	syncedWrites atomic.Uint64
	syncBuckets  [len(SyncBuckets) + 1]atomic.Uint64 // the last: +Inf
	syncNanos    atomic.Uint64
	ticks        atomic.Uint64
}

// observeSync records a sync of writes Readies that took d.
func (m *engineMetrics) observeSync(d time.Duration, writes int) {
	m.syncBuckets[bucket(SyncBuckets[:], d)].Add(1)
	m.syncNanos.Add(uint64(d))
	m.syncedWrites.Add(uint64(writes))
}

// Metrics returns a snapshot of the engine's counters.
func (e *Engine) Metrics() EngineMetrics {
	m := &e.metrics
	out := EngineMetrics{
		SyncedWrites:   m.syncedWrites.Load(),
		SyncSecondsSum: time.Duration(m.syncNanos.Load()).Seconds(),
		Ticks:          m.ticks.Load(),
	}
	out.SyncSeconds, out.Syncs = cumulative(m.syncBuckets[:])
	return out
}
