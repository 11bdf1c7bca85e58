package load

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// upTo is 1, 2, …, n (in µs).
func upTo(n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = time.Duration(i+1) * time.Microsecond
	}
	return s
}

func TestPercentileNearestRank(t *testing.T) {
	us := time.Microsecond
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one p0", upTo(1), 0, us},
		{"one p50", upTo(1), 50, us},
		{"one p99.9", upTo(1), 99.9, us},
		{"ten p0 is min", upTo(10), 0, us},
		{"ten p10", upTo(10), 10, us},
		{"ten p11", upTo(10), 11, 2 * us},
		{"ten p50", upTo(10), 50, 5 * us},
		{"ten p90", upTo(10), 90, 9 * us},
		{"ten p99", upTo(10), 99, 10 * us},
		{"ten p99.9 is max", upTo(10), 99.9, 10 * us},
		{"ten p100", upTo(10), 100, 10 * us},
		{"clamped below", upTo(10), -5, us},
		{"clamped above", upTo(10), 150, 10 * us},
		{"hundred p99", upTo(100), 99, 99 * us},
		{"hundred p99.9", upTo(100), 99.9, 100 * us},
		{"thousand p50", upTo(1000), 50, 500 * us},
		{"thousand p99", upTo(1000), 99, 990 * us},
		{"thousand p99.9", upTo(1000), 99.9, 999 * us},
		{"thousand-and-one p99.9", upTo(1001), 99.9, 1000 * us},
		{"two thousand p99.9", upTo(2000), 99.9, 1998 * us},
		{"ties", []time.Duration{3, 3, 3, 7}, 75, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.samples, tt.p); got != tt.want {
				t.Errorf("Percentile(%d samples, %v) = %v, want %v", len(tt.samples), tt.p, got, tt.want)
			}
		})
	}
}

func TestPercentileUnsortedLeavesInputAlone(t *testing.T) {
	s := upTo(100)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	before := slices.Clone(s)
	if got := Percentile(s, 90); got != 90*time.Microsecond {
		t.Errorf("p90 of shuffled 1..100 µs = %v, want 90µs", got)
	}
	if !slices.Equal(s, before) {
		t.Error("Percentile modified its input")
	}
}

// TestPercentileProperties checks on random sets that a percentile is one
// of the samples, grows with p, and that at least p% of the samples are at
// or below it while fewer than p% are below it.
func TestPercentileProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	ps := []float64{0, 1, 25, 50, 90, 99, 99.9, 100}
	for range 200 {
		s := make([]time.Duration, 1+rng.IntN(3000))
		for i := range s {
			s[i] = time.Duration(rng.IntN(50))
		}
		slices.Sort(s)
		prev := time.Duration(-1)
		for _, p := range ps {
			v := Percentile(s, p)
			if !slices.Contains(s, v) {
				t.Fatalf("p%v = %v is not a sample", p, v)
			}
			if v < prev {
				t.Fatalf("p%v = %v < previous %v", p, v, prev)
			}
			prev = v
			atOrBelow, below := 0, 0
			for _, d := range s {
				if d <= v {
					atOrBelow++
				}
				if d < v {
					below++
				}
			}
			n := float64(len(s))
			if p > 0 && float64(atOrBelow) < p/100*n-1e-6 {
				t.Fatalf("p%v = %v: only %d of %d at or below", p, v, atOrBelow, len(s))
			}
			if p > 0 && float64(below) >= p/100*n+1e-6 {
				t.Fatalf("p%v = %v: %d of %d below it already", p, v, below, len(s))
			}
		}
	}
}

func TestSummarize(t *testing.T) {
	if got := Summarize(nil); got != (Summary{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", got)
	}
	s := upTo(1000)
	rand.New(rand.NewPCG(5, 6)).Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	got := Summarize(s)
	us := time.Microsecond
	want := Summary{Count: 1000, Min: us, P50: 500 * us, P90: 900 * us, P99: 990 * us, P999: 999 * us, Max: 1000 * us, Mean: 500500 * time.Nanosecond}
	if got != want {
		t.Errorf("Summarize(1..1000 µs) =\n %+v, want\n %+v", got, want)
	}
	if !slices.IsSorted(s) {
		t.Error("Summarize did not sort its input")
	}
}
