package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/chart"
)

// WriteChart draws the report as one SVG: throughput per dataplane and
// frame size in each direction, the service, tcp and cps figures, latency
// CDFs, and the scaling curves.
func (rep *Report) WriteChart(w io.Writer) error {
	var names []string // dataplanes in report order
	for _, r := range rep.Results {
		if !slices.Contains(names, r.Name()) {
			names = append(names, r.Name())
		}
	}
	c := chart.Chart{
		Title: "trunkline bench: medians of " + fmt.Sprint(rep.Rounds) + " round(s)",
		Note: fmt.Sprintf("%s · %s, kernel %s, %d cores · %s", rep.Started.Format("2006-01-02"),
			rep.Machine.CPUModel, rep.Machine.Kernel, rep.Machine.Cores, "n/a: the dataplane cannot run the point, or it failed"),
	}
	for _, dir := range []string{WireToPod, PodToWire} {
		if p := rep.bars(names, "throughput "+dir+" (Mpps)", "Mpps", func(r Result) (string, bool) {
			if r.Scenario != Throughput || *r.Direction != dir {
				return "", false
			}
			return fmt.Sprintf("%d B", *r.FrameBytes), true
		}, 1e-6); p != nil {
			c.Panels = append(c.Panels, p)
		}
	}
	if p := rep.bars(names, "service: to a ClusterIP, 64 B (Mpps)", "Mpps", func(r Result) (string, bool) {
		if r.Scenario != Service {
			return "", false
		}
		return fmt.Sprintf("%d flow(s)", *r.Flows), true
	}, 1e-6); p != nil {
		c.Panels = append(c.Panels, p)
	}
	if p := rep.bars(names, "tcp: iperf3 through a ClusterIP (Gbit/s)", "Gbit/s", func(r Result) (string, bool) {
		return "iperf3", r.Scenario == TCP
	}, 1); p != nil {
		c.Panels = append(c.Panels, p)
	}
	if p := rep.bars(names, "cps: new TCP connections/s through a ClusterIP", "conn/s", func(r Result) (string, bool) {
		return "connect + echo + close", r.Scenario == CPS
	}, 1); p != nil {
		c.Panels = append(c.Panels, p)
	}
	for _, m := range []struct {
		metric, title, ylabel string
		scale                 float64
	}{
		{metricPPS, "scale: service Mpps with a full connection table", "Mpps", 1e-6},
		{metricCPS, "scale: cps with a full connection table", "conn/s", 1},
	} {
		if p := rep.bars(names, m.title, m.ylabel, func(r Result) (string, bool) {
			if r.Scenario != Scale || r.Metric != m.metric || *r.Pods != 1 || *r.Services != len(bed.DefaultServices()) {
				return "", false
			}
			if r.Conntrack == nil {
				return "empty table", true
			}
			return fmt.Sprintf("%d flows put in first", *r.Conntrack), true
		}, m.scale); p != nil && len(p.Groups) > 1 {
			c.Panels = append(c.Panels, p)
		}
	}
	if p := rep.latencyCDF(names); p != nil {
		c.Panels = append(c.Panels, p)
	}
	for _, sc := range []struct {
		title, ylabel, xlabel, metric string
		x                             func(Result) (float64, bool)
		y                             func(Result) *float64
		scale                         float64
	}{
		{"scale: service Mpps as Services grow", "Mpps", "Services", metricPPS, byServices, Result.Figure, 1e-6},
		{"scale: cps as Services grow", "conn/s", "Services", metricCPS, byServices, Result.Figure, 1},
		{"scale: service Mpps as pods grow", "Mpps", "pods", metricPPS, byPods, Result.Figure, 1e-6},
		{"scale: cps as pods grow", "conn/s", "pods", metricCPS, byPods, Result.Figure, 1},
		{"scale: agent memory as pods grow", "RSS MiB", "pods", metricCPS, byPods, func(r Result) *float64 { return r.RSSBytes }, 1.0 / (1 << 20)},
	} {
		l := &chart.Lines{Title: sc.title, XLabel: sc.xlabel, YLabel: sc.ylabel, Categorical: true, Markers: true}
		for _, n := range names {
			var pts []chart.Point
			for _, r := range rep.Results {
				x, ok := sc.x(r)
				if r.Name() != n || r.Scenario != Scale || r.Metric != sc.metric || !ok {
					continue
				}
				y := math.NaN()
				if v := sc.y(r); v != nil {
					y = *v * sc.scale
				}
				pts = append(pts, chart.Point{X: x, Y: y})
			}
			if len(pts) > 0 && !allNaN(pts) {
				l.Series = append(l.Series, chart.LineSeries{Name: n, Points: pts})
			}
		}
		if len(l.Series) > 0 {
			c.Panels = append(c.Panels, l)
		}
	}
	return c.WriteSVG(w)
}

// byServices and byPods pick a scale point's x: the Services loaded (with
// the bed's one pod) or the pods on the bed (with the bed's Services).
func byServices(r Result) (float64, bool) {
	return float64(*r.Services), *r.Pods == 1 && r.Conntrack == nil
}
func byPods(r Result) (float64, bool) {
	return float64(*r.Pods), *r.Services == len(bed.DefaultServices()) && r.Conntrack == nil
}

func allNaN(pts []chart.Point) bool {
	for _, p := range pts {
		if !math.IsNaN(p.Y) {
			return false
		}
	}
	return true
}

// bars makes a grouped bar panel of the results group picks (returning the
// group's label), one series per dataplane; nil when nothing matches.
func (rep *Report) bars(names []string, title, ylabel string, group func(Result) (string, bool), scale float64) *chart.Bars {
	b := &chart.Bars{Title: title, YLabel: ylabel}
	vals := map[string]map[string]float64{}
	for _, r := range rep.Results {
		g, ok := group(r)
		if !ok {
			continue
		}
		if !slices.Contains(b.Groups, g) {
			b.Groups = append(b.Groups, g)
		}
		if vals[r.Name()] == nil {
			vals[r.Name()] = map[string]float64{}
		}
		v := math.NaN()
		if f := r.Figure(); f != nil {
			v = *f * scale
		}
		vals[r.Name()][g] = v
	}
	if len(b.Groups) == 0 {
		return nil
	}
	for _, n := range names {
		m, ok := vals[n]
		if !ok {
			continue
		}
		s := chart.BarSeries{Name: n}
		for _, g := range b.Groups {
			v, ok := m[g]
			if !ok {
				v = math.NaN()
			}
			s.Values = append(s.Values, v)
		}
		b.Series = append(b.Series, s)
	}
	return b
}

// latencyCDF draws each dataplane's round trips as a CDF (log µs).
func (rep *Report) latencyCDF(names []string) *chart.Lines {
	l := &chart.Lines{Title: "latency: UDP request/response through a ClusterIP (CDF)", XLabel: "round trip µs (log)", YLabel: "fraction", LogX: true}
	for _, n := range names {
		for _, r := range rep.Results {
			if r.Name() != n || r.Scenario != Latency || len(r.Latencies) == 0 {
				continue
			}
			l.Series = append(l.Series, chart.LineSeries{Name: n, Points: cdf(r.Latencies, 200)})
		}
	}
	if len(l.Series) == 0 {
		return nil
	}
	return l
}

// cdf samples the sorted durations at up to n quantiles.
func cdf(sorted []time.Duration, n int) []chart.Point {
	pts := make([]chart.Point, 0, n+1)
	for i := 0; i <= n; i++ {
		k := i * (len(sorted) - 1) / n
		pts = append(pts, chart.Point{X: us(sorted[k]), Y: float64(k+1) / float64(len(sorted))})
	}
	return pts
}
