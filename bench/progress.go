package bench

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress writes a line per measurement: its place in the run, the
// figure, and the time left at the pace so far.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	total int
	n     int
	start time.Time
}

func newProgress(w io.Writer, total int) *progress {
	return &progress{w: w, total: total, start: time.Now()}
}

// note writes a line about set-up.
func (p *progress) note(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%s] %s\n", p.elapsed(), s)
}

func (p *progress) elapsed() string { return time.Since(p.start).Round(time.Second).String() }

// done writes the line of a finished measurement.
func (p *progress) done(round int, d dataplane, c testCase, s sample, err error, profiling bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	left := ""
	if p.n < p.total {
		per := time.Since(p.start) / time.Duration(p.n)
		left = fmt.Sprintf(", ~%s left", (per * time.Duration(p.total-p.n)).Round(time.Second))
	}
	name := d.name()
	if d.placement() != "" {
		name += " " + d.placement()
	}
	tag := fmt.Sprintf("round %d", round+1)
	if profiling {
		tag = "perf"
	}
	var fig string
	switch {
	case err != nil:
		fig = "FAILED: " + firstLine(err.Error())
	case c.metric == metricPPS:
		fig = fmt.Sprintf("%.3f Mpps forwarded, %.3f offered, cpu%d busy %.0f%%, napi thread %.0f%%%s",
			s.pps()/1e6, s.offeredPPS()/1e6, napiCPU, 100*s.CPUBusy, 100*s.NAPIBusy, s.agentText())
	case c.metric == metricGbps:
		fig = fmt.Sprintf("%.2f Gbit/s", s.Gbps)
	case c.metric == metricLatency:
		fig = fmt.Sprintf("p50 %.1f µs, p99 %.1f µs, p99.9 %.1f µs", us(s.P50), us(s.P99), us(s.P999))
	case c.metric == metricCPS:
		fig = fmt.Sprintf("%.0f conn/s, %.0f failed/s", s.CPS, s.FailedPerSec)
	}
	if s.RSS > 0 {
		fig += fmt.Sprintf(", rss %d MiB", s.RSS>>20)
	}
	fmt.Fprintf(p.w, "[%d/%d %s%s] %s  %-22s %-40s %s\n", p.n, p.total, p.elapsed(), left, tag, name, c, fig)
}
