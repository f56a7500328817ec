package main

import (
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// recorder holds latency samples in a slice allocated once, before the
// load loop. record never allocates: once the slice is full it reports
// false and the loop stops (the count bound of every load loop).
type recorder struct {
	samples []time.Duration
}

func newRecorder(capacity int) *recorder {
	return &recorder{samples: make([]time.Duration, 0, capacity)}
}

// record adds one sample and reports whether there is room for another.
func (r *recorder) record(d time.Duration) bool {
	if len(r.samples) < cap(r.samples) {
		r.samples = append(r.samples, d)
	}
	return len(r.samples) < cap(r.samples)
}

func (r *recorder) full() bool { return len(r.samples) >= cap(r.samples) }

// mergeSorted returns every sample of rs in one sorted slice.
func mergeSorted(rs []*recorder) []time.Duration {
	n := 0
	for _, r := range rs {
		n += len(r.samples)
	}
	all := make([]time.Duration, 0, n)
	for _, r := range rs {
		all = append(all, r.samples...)
	}
	slices.Sort(all)
	return all
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, the smallest sample such that at least p% of the samples are
// less than or equal to it. It returns 0 for no samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if p <= 0 {
		return sorted[0]
	}
	// The epsilon keeps float error from pushing an exact rank up
	// (99.9% of 1000 is 999, not 1000).
	rank := int(math.Ceil(p/100*float64(n) - 1e-9))
	if rank < 1 {
		rank = 1
	}
	if rank > n {
		rank = n
	}
	return sorted[rank-1]
}

// median returns the median of vs (the mean of the two middle values for an
// even count), NaN for none. vs is not modified.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// bucketBoundsMs are the upper bounds (inclusive) of the latency histogram
// buckets, in milliseconds; a last bucket catches the rest.
var bucketBoundsMs = []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}

// Bucket is one histogram bucket: Count samples in (previous LeMs, LeMs].
// The last bucket has LeMs 0 and Inf set.
type Bucket struct {
	LeMs  float64 `json:"le_ms,omitempty"`
	Inf   bool    `json:"inf,omitempty"`
	Count int     `json:"count"`
}

// Latency summarises latency samples, in milliseconds.
type Latency struct {
	Count     int      `json:"count"`
	MinMs     float64  `json:"min_ms"`
	MeanMs    float64  `json:"mean_ms"`
	P50Ms     float64  `json:"p50_ms"`
	P90Ms     float64  `json:"p90_ms"`
	P99Ms     float64  `json:"p99_ms"`
	P999Ms    float64  `json:"p999_ms"`
	MaxMs     float64  `json:"max_ms"`
	Histogram []Bucket `json:"histogram,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// summarize computes the summary of sorted samples. Empty buckets are left
// out of the histogram.
func summarize(sorted []time.Duration) *Latency {
	l := &Latency{Count: len(sorted)}
	if len(sorted) == 0 {
		return l
	}
	var sum time.Duration
	for _, d := range sorted {
		sum += d
	}
	l.MinMs = ms(sorted[0])
	l.MaxMs = ms(sorted[len(sorted)-1])
	l.MeanMs = ms(sum) / float64(len(sorted))
	l.P50Ms = ms(percentile(sorted, 50))
	l.P90Ms = ms(percentile(sorted, 90))
	l.P99Ms = ms(percentile(sorted, 99))
	l.P999Ms = ms(percentile(sorted, 99.9))
	l.Histogram = histogram(sorted)
	return l
}

func histogram(sorted []time.Duration) []Bucket {
	var out []Bucket
	i := 0
	for _, le := range bucketBoundsMs {
		bound := time.Duration(le * float64(time.Millisecond))
		n := 0
		for i < len(sorted) && sorted[i] <= bound {
			i++
			n++
		}
		if n > 0 {
			out = append(out, Bucket{LeMs: le, Count: n})
		}
	}
	if rest := len(sorted) - i; rest > 0 {
		out = append(out, Bucket{Inf: true, Count: rest})
	}
	return out
}

// series counts messages per elapsed second of a timed run. Slots are
// allocated up front; completions after the last slot land in it.
type series struct {
	start time.Time
	slots []atomic.Int64
}

func newSeries(start time.Time, d time.Duration) *series {
	n := int(d/time.Second) + 2 // partial last second and the in-flight tail
	return &series{start: start, slots: make([]atomic.Int64, n)}
}

func (s *series) add(now time.Time, n int64) {
	i := int(now.Sub(s.start) / time.Second)
	if i < 0 {
		i = 0
	}
	if i >= len(s.slots) {
		i = len(s.slots) - 1
	}
	s.slots[i].Add(n)
}

// values returns the counts, dropping trailing empty slots.
func (s *series) values() []int64 {
	out := make([]int64, len(s.slots))
	last := -1
	for i := range s.slots {
		out[i] = s.slots[i].Load()
		if out[i] != 0 {
			last = i
		}
	}
	return out[:last+1]
}

// cdfPercents are the percents at which cdf samples the distribution.
var cdfPercents = func() []float64 {
	var ps []float64
	for p := 0; p <= 100; p++ {
		ps = append(ps, float64(p))
		if p == 99 {
			ps = append(ps, 99.5, 99.9)
		}
	}
	return ps
}()

// cdf returns the latency at each of cdfPercents (0: the minimum), in
// milliseconds, nil for no samples.
func cdf(sorted []time.Duration) []CDFPoint {
	if len(sorted) == 0 {
		return nil
	}
	out := make([]CDFPoint, len(cdfPercents))
	for i, p := range cdfPercents {
		out[i] = CDFPoint{P: p, Ms: ms(percentile(sorted, p))}
	}
	return out
}
