package main

import (
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func durs(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	s := durs(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	for _, tc := range []struct {
		p    float64
		want int
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {10, 1}, {11, 2}, {0, 1}, {1, 1}} {
		assert.Equal(t, time.Duration(tc.want)*time.Millisecond, percentile(s, tc.p), "p%v", tc.p)
	}
	assert.Equal(t, time.Duration(0), percentile(nil, 50))
	assert.Equal(t, 7*time.Millisecond, percentile(durs(7), 99))

	// 1..1000: nearest rank p99 is the 990th value, p99.9 the 999th.
	big := make([]time.Duration, 1000)
	for i := range big {
		big[i] = time.Duration(i + 1)
	}
	assert.Equal(t, time.Duration(990), percentile(big, 99))
	assert.Equal(t, time.Duration(999), percentile(big, 99.9))
	assert.Equal(t, time.Duration(500), percentile(big, 50))
}

func TestMedian(t *testing.T) {
	assert.Equal(t, 2.0, median([]float64{3, 1, 2}))
	assert.Equal(t, 2.5, median([]float64{4, 1, 3, 2}))
	assert.Equal(t, 5.0, median([]float64{5}))
	assert.True(t, math.IsNaN(median(nil)))
	in := []float64{3, 1, 2}
	median(in)
	assert.Equal(t, []float64{3, 1, 2}, in, "input left as is")
}

func TestSummarize(t *testing.T) {
	l := summarize(durs(1, 1, 3, 30, 6000))
	assert.Equal(t, 5, l.Count)
	assert.Equal(t, 1.0, l.MinMs)
	assert.Equal(t, 6000.0, l.MaxMs)
	assert.Equal(t, 3.0, l.P50Ms)
	assert.InDelta(t, 1207.0, l.MeanMs, 1e-9)
	assert.Equal(t, []Bucket{{LeMs: 1, Count: 2}, {LeMs: 5, Count: 1}, {LeMs: 50, Count: 1}, {Inf: true, Count: 1}}, l.Histogram)
	total := 0
	for _, b := range l.Histogram {
		total += b.Count
	}
	assert.Equal(t, l.Count, total)
	assert.Equal(t, 0, summarize(nil).Count)
}

func TestRecorderBoundedNoAlloc(t *testing.T) {
	r := newRecorder(3)
	assert.True(t, r.record(1))
	assert.True(t, r.record(2))
	assert.False(t, r.record(3), "full after the third")
	assert.False(t, r.record(4), "dropped")
	assert.Equal(t, []time.Duration{1, 2, 3}, r.samples)

	r = newRecorder(1000)
	allocs := testing.AllocsPerRun(100, func() {
		r.samples = r.samples[:0]
		for i := range 1000 {
			r.record(time.Duration(i))
		}
	})
	assert.Zero(t, allocs)

	merged := mergeSorted([]*recorder{{samples: durs(5, 1)}, {samples: durs(3)}})
	assert.Equal(t, durs(1, 3, 5), merged)
}

func TestSeries(t *testing.T) {
	start := time.Now()
	s := newSeries(start, 2*time.Second) // 4 slots
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() { s.add(start.Add(100*time.Millisecond), 1) })
	}
	wg.Wait()
	s.add(start.Add(1500*time.Millisecond), 5)
	s.add(start.Add(time.Hour), 7) // clamped to the last slot
	s.add(start.Add(-time.Second), 1)
	assert.Equal(t, []int64{11, 5, 0, 7}, s.values())

	empty := newSeries(start, time.Second)
	assert.Empty(t, empty.values())
}

func TestMakeBatch(t *testing.T) {
	b := makeBatch(10, 7, 1)
	require.Len(t, b, 10)
	for _, m := range b {
		assert.Len(t, m, 7)
		assert.Equal(t, 7, cap(m), "capped so an append cannot spill into the next message")
	}
}

func TestSummarizeRuns(t *testing.T) {
	rs := []*Result{
		{Workload: "W1", Label: "os", MsgsPerS: 100, Latency: &Latency{P50Ms: 1, P99Ms: 9}},
		{Workload: "W1", Label: "os", MsgsPerS: 300, Latency: &Latency{P50Ms: 3, P99Ms: 7}, Errors: 2},
		{Workload: "W1", Label: "os", MsgsPerS: 200, Latency: &Latency{P50Ms: 2, P99Ms: 8}},
	}
	s := summarizeRuns(rs)
	assert.Equal(t, "summary", s.Type)
	assert.Equal(t, "W1", s.Workload)
	assert.Equal(t, 3, s.Runs)
	assert.Equal(t, 200.0, s.Median["msgs_per_s"])
	assert.Equal(t, 2.0, s.Median["p50_ms"])
	assert.Equal(t, 8.0, s.Median["p99_ms"])
	assert.Equal(t, 0.0, s.Median["errors"])
	assert.Equal(t, []float64{100, 300, 200}, s.Values["msgs_per_s"])
}
