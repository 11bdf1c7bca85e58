package chart

import (
	"math"
	"strconv"
	"strings"
)

// maxTicks bounds how many ticks an axis gets, whatever the input.
const maxTicks = 60

// niceTicks returns about want round tick values (steps of 1, 2 or 5 times
// a power of ten) from at or below lo to at or above hi, and the step. An
// empty range becomes one around its value (0..1 for zero), a non-finite one
// 0..1.
func niceTicks(lo, hi float64, want int) (ticks []float64, step float64) {
	if !finite(lo) || !finite(hi) {
		lo, hi = 0, 1
	}
	if lo > hi {
		lo, hi = hi, lo
	}
	if lo == hi {
		if d := math.Abs(lo) / 2; d == 0 {
			hi = 1
		} else {
			lo, hi = lo-d, hi+d
		}
	}
	step = niceStep((hi - lo) / float64(max(want, 1)))
	first := math.Floor(lo/step + 1e-9)
	last := math.Ceil(hi/step - 1e-9)
	if last-first > maxTicks || !finite(step) || step == 0 {
		return []float64{lo, hi}, hi - lo
	}
	for k := first; k <= last; k++ {
		ticks = append(ticks, k*step)
	}
	return ticks, step
}

// niceStep rounds raw to 1, 2, 5 or 10 times a power of ten.
func niceStep(raw float64) float64 {
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	switch r := raw / mag; {
	case r < 1.5:
		return mag
	case r < 3:
		return 2 * mag
	case r < 7:
		return 5 * mag
	default:
		return 10 * mag
	}
}

// logTicks returns ticks at powers of ten from at or below lo to at or above
// hi (lo, hi > 0), with 2 and 5 in between when the range spans at most two
// decades, and every n-th power when it spans more than eight. The first and
// last ticks are the ends of the axis.
func logTicks(lo, hi float64) []float64 {
	if !(lo > 0) || !finite(lo) || !finite(hi) || hi < lo {
		lo, hi = 1, 10
	}
	a := math.Floor(math.Log10(lo) + 1e-9)
	b := math.Ceil(math.Log10(hi) - 1e-9)
	if a == b {
		a, b = a-1, b+1
	}
	every := math.Ceil((b - a) / 8)
	b = a + math.Ceil((b-a)/every)*every
	var ticks []float64
	for e := a; e <= b; e += every {
		p := math.Pow(10, e)
		ticks = append(ticks, p)
		if b-a <= 2 && e < b {
			ticks = append(ticks, 2*p, 5*p)
		}
	}
	return ticks
}

// siScale returns the SI prefix for |v| and the factor it stands for.
func siScale(v float64) (scale float64, prefix string) {
	switch v = math.Abs(v); {
	case v >= 1e12:
		return 1e12, "T"
	case v >= 1e9:
		return 1e9, "G"
	case v >= 1e6:
		return 1e6, "M"
	case v >= 1e3:
		return 1e3, "k"
	}
	return 1, ""
}

// formatTick formats tick v of an axis with the given step: an SI prefix and
// as many decimals as tell neighbouring ticks apart ("0", "500k", "1.5M",
// "0.2").
func formatTick(v, step float64) string {
	if !finite(v) {
		return ""
	}
	step = math.Abs(step)
	if step == 0 || !finite(step) {
		return formatValue(v)
	}
	v = math.Round(v/step) * step
	if math.Abs(v) < step*1e-9 {
		return "0"
	}
	scale, prefix := siScale(v)
	decimals := int(math.Ceil(-math.Log10(step/scale) - 1e-9))
	return trimDecimal(v/scale, min(max(decimals, 0), 12)) + prefix
}

// formatValue formats v with three significant digits and an SI prefix
// ("12.3M", "350k", "0.87"); NaN and infinities are "n/a".
func formatValue(v float64) string {
	if !finite(v) {
		return "n/a"
	}
	if v == 0 {
		return "0"
	}
	if math.Abs(v) < 1e-3 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	p := math.Pow(10, 2-math.Floor(math.Log10(math.Abs(v))))
	v = math.Round(v*p) / p // round first so that 999.6 becomes "1k", not "1000"
	scale, prefix := siScale(v)
	m := v / scale
	decimals := int(2 - math.Floor(math.Log10(math.Abs(m))))
	return trimDecimal(m, max(decimals, 0)) + prefix
}

// trimDecimal formats v with the given decimals, less trailing zeros.
func trimDecimal(v float64, decimals int) string {
	s := strconv.FormatFloat(v, 'f', decimals, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
