package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Thresholds of the saturation checks.
const (
	// A path forwarding at least this share of what was offered may have
	// been held back by the generator rather than by its own capacity.
	generatorLimitedShare = 0.97
	// A forwarding core busier than this (by /proc/stat, or by the NAPI
	// thread's run time) counts as saturated.
	saturatedBusy = 0.90
	// A round in which other work took more than this share of the NAPI
	// core is flagged as noisy.
	foreignNoisy = 0.20
)

// Report is what Run measured.
type Report struct {
	Machine Machine   `json:"machine"`
	Started time.Time `json:"started"`
	// Seconds is how long the run took.
	Seconds  float64  `json:"seconds"`
	Rounds   int      `json:"rounds"`
	Duration float64  `json:"duration_s"` // of each measurement
	Results  []Result `json:"results"`
}

// Result is one dataplane at one test point: medians over the rounds.
// Figures the scenario does not yield, or a failed measurement could not
// measure, are nil (null in JSON).
type Result struct {
	Scenario  string  `json:"scenario"`
	Dataplane string  `json:"dataplane"`
	Placement *string `json:"placement"` // SharedCore or OwnCore for trunkline, else nil
	// Metric is what the scenario measures: "pps", "gbps", "latency" or
	// "cps" (the scale scenario has both pps and cps points).
	Metric    string  `json:"metric"`
	Direction *string `json:"direction"` // WireToPod or PodToWire, for frames
	// FrameBytes, Services (loaded in the dataplane), Pods (on the bed) and
	// Flows (distinct flows offered) say what was measured.
	FrameBytes *int `json:"frame_bytes"`
	Services   *int `json:"services"`
	Pods       *int `json:"pods"`
	Flows      *int `json:"flows"`

	// The figures.
	PPS        *float64 `json:"pps"`
	OfferedPPS *float64 `json:"offered_pps"`
	Gbps       *float64 `json:"gbps"`
	P50us      *float64 `json:"p50_us"`
	P99us      *float64 `json:"p99_us"`
	P999us     *float64 `json:"p999_us"`
	CPS        *float64 `json:"cps"`
	// Drops is the median rate (per second) of frames offered but not
	// forwarded, wherever they were lost; for cps, failed connections per
	// second; for latency, the share of requests lost.
	Drops *float64 `json:"drops"`
	// RSSBytes is the agent's resident memory at the end of the
	// measurement (trunkline only).
	RSSBytes *float64 `json:"rss_bytes"`
	// Conntrack is the flows put into the connection table before
	// measuring, ConntrackEntries the entries it held then (scale).
	Conntrack        *int     `json:"conntrack"`
	ConntrackEntries *float64 `json:"conntrack_entries"`

	// Rounds is the main figure (Figure) of each round, in order; Min and
	// Max its spread.
	RoundsFigure []float64 `json:"rounds"`
	Min          *float64  `json:"min"`
	Max          *float64  `json:"max"`

	// RatioKernel, RatioXDPKernel and RatioRaw compare the main figure with
	// the peer's at the same test point. Above 1 is better than the peer
	// (for latency: the peer's p50 over this one's).
	RatioKernel    *float64 `json:"ratio_kernel"`
	RatioXDPKernel *float64 `json:"ratio_xdp_kernel"`
	RatioRaw       *float64 `json:"ratio_raw"`
	// RatioKernelRoute compares with the kernel's routing alone (no
	// kube-proxy rules, no conntrack), for the frame scenarios.
	RatioKernelRoute *float64 `json:"ratio_kernel_route"`

	// NAPICPUBusy (/proc/stat), NAPIThreadBusy and AgentBusy (thread run
	// times; the agent's over all its threads), WorkerCPUBusy (the worker's
	// CPU by /proc/stat): medians, shares of one CPU, for frame scenarios.
	NAPICPUBusy    *float64 `json:"napi_cpu_busy"`
	NAPIThreadBusy *float64 `json:"napi_thread_busy"`
	AgentBusy      *float64 `json:"agent_busy"`
	WorkerCPUBusy  *float64 `json:"worker_cpu_busy"`
	// NoisyRounds lists the rounds (1-based) in which other processes took
	// more than 20% of the NAPI core.
	NoisyRounds []int `json:"noisy_rounds"`
	// GeneratorLimited is true when the path forwarded nearly all it was
	// offered in some round: its figure is then a lower bound.
	GeneratorLimited *bool `json:"generator_limited"`
	// Verdict says in words what the saturation checks found.
	Verdict string `json:"verdict"`
	// NotApplicable says why the dataplane cannot run this scenario; the
	// figures are then null.
	NotApplicable string `json:"not_applicable,omitempty"`
	Error         string `json:"error,omitempty"`

	// Latencies are the last round's round trips, sorted (latency only),
	// for the chart's CDF.
	Latencies []time.Duration `json:"-"`
	tc        testCase
	placeText string
}

// Name is the dataplane and, for trunkline, the placement.
func (r Result) Name() string {
	if r.Placement != nil {
		return r.Dataplane + " " + *r.Placement
	}
	return r.Dataplane
}

// Figure is the result's main figure (pps, Gbit/s, p50 µs or cps), or nil.
func (r Result) Figure() *float64 {
	switch r.Metric {
	case metricPPS:
		return r.PPS
	case metricGbps:
		return r.Gbps
	case metricLatency:
		return r.P50us
	case metricCPS:
		return r.CPS
	}
	return nil
}

func newResult(d dataplane, c testCase, ss []sample, err error, na string) Result {
	r := Result{
		Scenario: c.scenario, Dataplane: d.name(), Metric: c.metric,
		Services: ptr(c.services), Pods: ptr(c.pods), tc: c, placeText: d.placementText(),
	}
	if p := d.placement(); p != "" {
		r.Placement = ptr(p)
	}
	if c.direction != "" {
		r.Direction = ptr(c.direction)
	}
	if c.size != 0 {
		r.FrameBytes = ptr(c.size)
	}
	if c.flows != 0 {
		r.Flows = ptr(c.flows)
	}
	if c.conntrack != 0 {
		r.Conntrack = ptr(c.conntrack)
	}
	switch {
	case na != "":
		r.NotApplicable, r.Verdict = na, "not applicable"
		return r
	case err != nil:
		r.Error, r.Verdict = err.Error(), "failed"
		return r
	case len(ss) == 0:
		r.Verdict = "not measured"
		return r
	}
	var drops, cpu, napi, agent, wcpu, rss, fwd, off, gbps, p50, p99, p999, cps, ct []float64
	limited := false
	for i, s := range ss {
		if s.RSS > 0 {
			rss = append(rss, float64(s.RSS))
		}
		if c.conntrack > 0 && s.CTEntries >= 0 {
			ct = append(ct, float64(s.CTEntries))
		}
		switch c.metric {
		case metricPPS:
			if s.Foreign > foreignNoisy {
				r.NoisyRounds = append(r.NoisyRounds, i+1)
			}
			fwd = append(fwd, s.pps())
			off = append(off, s.offeredPPS())
			drops = append(drops, s.offeredPPS()-s.pps())
			cpu = append(cpu, s.CPUBusy)
			napi = append(napi, s.NAPIBusy)
			if s.AgentBusy >= 0 {
				agent = append(agent, s.AgentBusy)
				wcpu = append(wcpu, s.WorkerCPUBusy)
			}
			if s.Offered == 0 || float64(s.Forwarded) >= generatorLimitedShare*float64(s.Offered) {
				limited = true
			}
		case metricGbps:
			gbps = append(gbps, s.Gbps)
		case metricLatency:
			p50, p99, p999 = append(p50, us(s.P50)), append(p99, us(s.P99)), append(p999, us(s.P999))
			drops = append(drops, s.LostShare)
			r.Latencies = s.Latencies
		case metricCPS:
			cps = append(cps, s.CPS)
			drops = append(drops, s.FailedPerSec)
		}
	}
	r.PPS, r.OfferedPPS, r.Drops = median(fwd), median(off), median(drops)
	r.Gbps, r.P50us, r.P99us, r.P999us, r.CPS = median(gbps), median(p50), median(p99), median(p999), median(cps)
	r.RSSBytes, r.ConntrackEntries = median(rss), median(ct)
	r.NAPICPUBusy, r.NAPIThreadBusy, r.AgentBusy, r.WorkerCPUBusy = median(cpu), median(napi), median(agent), median(wcpu)
	for _, v := range [][]float64{fwd, gbps, p50, cps} {
		if len(v) > 0 {
			r.RoundsFigure = v
			r.Min, r.Max = ptr(slices.Min(v)), ptr(slices.Max(v))
		}
	}
	if c.metric == metricPPS {
		r.GeneratorLimited = &limited
		r.Verdict = verdict(r)
	} else {
		r.Verdict = "measured"
	}
	return r
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// verdict applies the saturation checks to a measured frame result: did
// the generator offer more than the path forwarded, and was the core that
// limits the path busy? For raw and the kernel peers that core is the
// receiving NAPI's; for trunkline it is the worker's (which is the NAPI's in
// shared-core).
func verdict(r Result) string {
	if *r.PPS == 0 {
		return "NOTHING FORWARDED"
	}
	if *r.GeneratorLimited {
		return fmt.Sprintf("GENERATOR-LIMITED: forwarded ≥ %.0f%% of offered in some round; the path's capacity may be higher", 100*generatorLimitedShare)
	}
	busy, core := max(*r.NAPICPUBusy, *r.NAPIThreadBusy), fmt.Sprintf("napi cpu%d", napiCPU)
	if r.WorkerCPUBusy != nil {
		busy, core = *r.WorkerCPUBusy, "worker's cpu"
	}
	text := fmt.Sprintf("offered %.2f× forwarded", *r.OfferedPPS / *r.PPS)
	if busy >= saturatedBusy {
		return fmt.Sprintf("path-limited: %s, %s %.0f%% busy (saturated)", text, core, 100*busy)
	}
	if *r.OfferedPPS >= 1.5**r.PPS {
		return fmt.Sprintf("path-limited: %s; %s read %.0f%% busy (it idles while waiting for wake-ups, or VM accounting is off)", text, core, 100*busy)
	}
	return fmt.Sprintf("borderline: %s but %s read only %.0f%% busy: partly generator-limited (it pauses between runs)", text, core, 100*busy)
}

// pointKey identifies a test point across dataplanes.
func (r Result) pointKey() testCase { return r.tc }

// fillRatios sets the ratios against kernel, xdp-kernel and raw.
func (rep *Report) fillRatios() {
	ref := map[string]map[testCase]float64{Kernel: {}, XDPKernel: {}, Raw: {}, KernelRoute: {}}
	for _, r := range rep.Results {
		if f := r.Figure(); f != nil && *f > 0 && r.Placement == nil {
			if m, ok := ref[r.Dataplane]; ok {
				m[r.pointKey()] = *f
			}
		}
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		f := r.Figure()
		if f == nil || *f <= 0 {
			continue
		}
		rel := func(peer float64) *float64 {
			if r.Metric == metricLatency {
				return ptr(peer / *f)
			}
			return ptr(*f / peer)
		}
		if v, ok := ref[Kernel][r.pointKey()]; ok {
			r.RatioKernel = rel(v)
		}
		if v, ok := ref[XDPKernel][r.pointKey()]; ok {
			r.RatioXDPKernel = rel(v)
		}
		if v, ok := ref[Raw][r.pointKey()]; ok {
			r.RatioRaw = rel(v)
		}
		if v, ok := ref[KernelRoute][r.pointKey()]; ok {
			r.RatioKernelRoute = rel(v)
		}
	}
}

// WriteJSON writes {"machine": …, "results": […]}.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteTable writes one table per scenario, the saturation checks of the
// frame scenarios, and the performance targets.
func (rep *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, kernel %s, %d cores, Go %s; generator/client cpu%d, forwarding NAPI cpu%d; %gs per measurement, %d round(s): medians [min–max]; ratios > 1 are better than the peer\n",
		rep.Machine.CPUModel, rep.Machine.Kernel, rep.Machine.Cores, rep.Machine.Go, genCPU, napiCPU, rep.Duration, rep.Rounds)
	for _, sc := range AllScenarios {
		var rs []Result
		for _, r := range rep.Results {
			if r.Scenario == sc {
				rs = append(rs, r)
			}
		}
		if len(rs) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s\n", scenarioTitle(sc))
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "point\tdataplane\tfigure\t[min–max]\t× kernel\t× xdp-kernel\t× kernel-route\t× raw\textra\t")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", pointText(r), r.Name(), figureText(r), spreadText(r),
				ratio(r.RatioKernel), ratio(r.RatioXDPKernel), ratio(r.RatioKernelRoute), ratio(r.RatioRaw), extraText(r))
		}
		tw.Flush()
	}
	writeChecks(&b, rep)
	writeTargets(&b, rep)
	_, err := io.WriteString(w, b.String())
	return err
}

func scenarioTitle(sc string) string {
	switch sc {
	case Throughput:
		return "throughput: UDP frames through the trunk (Mpps at the sink)"
	case Service:
		return "service: 64-byte UDP frames to a ClusterIP, DNAT + conntrack (Mpps at the backend pod)"
	case TCP:
		return "tcp: iperf3 through a ClusterIP (Gbit/s)"
	case Latency:
		return "latency: UDP request/response through a ClusterIP, one in flight (p50 µs; × is the peer's p50 over this one's)"
	case CPS:
		return "cps: new TCP connections per second through a ClusterIP"
	case Scale:
		return "scale: service Mpps (10,000 flows) and cps as Services, pods and connection-table entries grow"
	}
	return sc
}

func pointText(r Result) string {
	var p []string
	if r.Scenario == Scale {
		p = append(p, r.Metric)
	}
	if r.Direction != nil {
		p = append(p, *r.Direction)
	}
	if r.FrameBytes != nil && r.Scenario == Throughput {
		p = append(p, fmt.Sprintf("%dB", *r.FrameBytes))
	}
	if r.Flows != nil && r.Scenario == Service {
		p = append(p, fmt.Sprintf("%d flow(s)", *r.Flows))
	}
	if r.Scenario == Scale {
		p = append(p, fmt.Sprintf("svc=%d pods=%d", *r.Services, *r.Pods))
		if r.Conntrack != nil {
			p = append(p, fmt.Sprintf("ct=%d", *r.Conntrack))
		}
	}
	return strings.Join(p, " ")
}

func figureText(r Result) string {
	if r.NotApplicable != "" {
		return "n/a"
	}
	if r.Error != "" {
		return "FAILED"
	}
	f := r.Figure()
	if f == nil {
		return "—"
	}
	switch r.Metric {
	case metricPPS:
		return fmt.Sprintf("%.3f Mpps", *f/1e6)
	case metricGbps:
		return fmt.Sprintf("%.2f Gbit/s", *f)
	case metricLatency:
		return fmt.Sprintf("%.1f µs", *f)
	case metricCPS:
		return fmt.Sprintf("%.0f/s", *f)
	}
	return fmt.Sprint(*f)
}

func spreadText(r Result) string {
	if r.Min == nil || len(r.RoundsFigure) < 2 {
		return ""
	}
	scale, format := 1.0, "%.0f–%.0f"
	switch r.Metric {
	case metricPPS:
		scale, format = 1e-6, "%.3f–%.3f"
	case metricGbps:
		format = "%.2f–%.2f"
	case metricLatency:
		format = "%.1f–%.1f"
	}
	return fmt.Sprintf(format, *r.Min*scale, *r.Max*scale)
}

func extraText(r Result) string {
	var p []string
	switch {
	case r.NotApplicable != "":
		return r.NotApplicable
	case r.Error != "":
		return firstLine(r.Error)
	}
	if r.Metric == metricLatency && r.P99us != nil {
		p = append(p, fmt.Sprintf("p99 %.1f µs, p99.9 %.1f µs", *r.P99us, *r.P999us))
	}
	if r.Metric == metricPPS && r.OfferedPPS != nil {
		p = append(p, fmt.Sprintf("offered %.3f", *r.OfferedPPS/1e6))
	}
	if r.RSSBytes != nil {
		p = append(p, fmt.Sprintf("rss %.0f MiB", *r.RSSBytes/(1<<20)))
	}
	if r.ConntrackEntries != nil {
		p = append(p, fmt.Sprintf("%.0f entries", *r.ConntrackEntries))
	}
	if r.placeText != "" && r.Metric == metricPPS {
		p = append(p, r.placeText)
	}
	return strings.Join(p, "; ")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// writeChecks writes the saturation checks of the frame measurements.
func writeChecks(b *strings.Builder, rep *Report) {
	fmt.Fprintln(b, "\nsaturation checks of the frame measurements (generator offered more than the path forwarded, and the forwarding core busy):")
	allOK, noisy, any := true, false, false
	for _, r := range rep.Results {
		if r.Metric != metricPPS || r.NotApplicable != "" {
			continue
		}
		any = true
		text := r.Verdict
		if r.Error != "" {
			text += ": " + firstLine(r.Error)
		}
		if r.GeneratorLimited == nil || *r.GeneratorLimited {
			allOK = false
		}
		cpu := ""
		if r.NAPIThreadBusy != nil {
			cpu = fmt.Sprintf(" [napi thread %.0f%%, cpu%d %.0f%%", 100**r.NAPIThreadBusy, napiCPU, 100**r.NAPICPUBusy)
			if r.AgentBusy != nil {
				cpu += fmt.Sprintf(", agent threads %.0f%%, worker's cpu %.0f%%", 100**r.AgentBusy, 100**r.WorkerCPUBusy)
			}
			cpu += "]"
		}
		fmt.Fprintf(b, "  %-22s %-36s %s%s\n", r.Name(), pointText(r), text, cpu)
		if len(r.NoisyRounds) > 0 {
			noisy = true
			fmt.Fprintf(b, "  %-22s %-36s NOISY round(s) %v: other processes took over %.0f%% of cpu%d\n", "", "", r.NoisyRounds, 100*foreignNoisy, napiCPU)
		}
	}
	switch {
	case !any:
		fmt.Fprintln(b, "  (none)")
	case allOK:
		fmt.Fprintf(b, "every frame path was offered more than %.0f%% above what it forwarded: no figure is the generator's limit.\n", 100*(1/generatorLimitedShare-1))
	default:
		fmt.Fprintln(b, "WARNING: some figures are the generator's limit, not the path's (see above): they are lower bounds.")
	}
	if noisy {
		fmt.Fprintln(b, "WARNING: the machine was not quiet in some rounds (see NOISY above); medians over more rounds, or a quiet machine, give steadier figures.")
	}
}

func median(v []float64) *float64 {
	if len(v) == 0 {
		return nil
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	if math.IsNaN(m) {
		return nil
	}
	return &m
}

func ratio(v *float64) string {
	if v == nil {
		return "—"
	}
	return fmt.Sprintf("%.2f", *v)
}

func ptr[T any](v T) *T { return &v }
