package load

import (
	"math"
	"slices"
	"time"
)

// Summary describes a set of durations (round trips, connection set-ups).
// Percentiles are nearest-rank: the smallest sample that at least p% of
// the samples are less than or equal to. A zero Summary means no samples.
type Summary struct {
	Count int
	Min   time.Duration
	P50   time.Duration
	P90   time.Duration
	P99   time.Duration
	// P999 is the 99.9th percentile; on fewer than 1000 samples it is Max.
	P999 time.Duration
	Max  time.Duration
	Mean time.Duration
}

// Summarize sorts samples in place (ascending) and describes them.
func Summarize(samples []time.Duration) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	slices.Sort(samples)
	var sum float64
	for _, d := range samples {
		sum += float64(d)
	}
	return Summary{
		Count: len(samples),
		Min:   samples[0],
		P50:   nearestRank(samples, 50),
		P90:   nearestRank(samples, 90),
		P99:   nearestRank(samples, 99),
		P999:  nearestRank(samples, 99.9),
		Max:   samples[len(samples)-1],
		Mean:  time.Duration(math.Round(sum / float64(len(samples)))),
	}
}

// Percentile returns the nearest-rank p-th percentile (0 ≤ p ≤ 100) of
// samples: the sample at rank ⌈p/100·n⌉ (1-based, at least 1) in ascending
// order. p = 0 gives the minimum, p = 100 the maximum, no samples 0, and p
// outside 0..100 is clamped. Sorted samples are read as they are; unsorted
// ones are sorted in a copy, so samples is never modified.
func Percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	if !slices.IsSorted(samples) {
		samples = slices.Clone(samples)
		slices.Sort(samples)
	}
	return nearestRank(samples, p)
}

// nearestRank is Percentile on sorted, non-empty samples.
func nearestRank(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	switch {
	case math.IsNaN(p) || p <= 0:
		return sorted[0]
	case p >= 100:
		return sorted[n-1]
	}
	// p/100·n computed as p·n/100 keeps 99.9·1000/100 exactly 999; the
	// small tolerance absorbs binary rounding of p (99.9 is not exact).
	rank := int(math.Ceil(p*float64(n)/100 - 1e-9))
	return sorted[min(max(rank, 1), n)-1]
}
