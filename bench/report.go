package bench

import (
	"encoding/json"
	"fmt"
	"io"
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

// Report is what Throughput measured.
type Report struct {
	Machine  Machine       `json:"machine"`
	Duration time.Duration `json:"-"`
	Rounds   int           `json:"rounds"`
	Results  []Result      `json:"results"`
}

// Result is one path at one frame size: medians over the rounds. Figures a
// failed path could not measure are nil (null in JSON).
type Result struct {
	Scenario   string  `json:"scenario"`  // "throughput"
	Dataplane  string  `json:"dataplane"` // Raw, Kernel or Trunkline
	Placement  *string `json:"placement"` // SharedCore or OwnCore for trunkline, else nil
	FrameBytes int     `json:"frame_bytes"`
	// PPS is the median rate of frames the sink counted.
	PPS *float64 `json:"pps"`
	// OfferedPPS is the median rate of frames the generator made.
	OfferedPPS *float64 `json:"offered_pps"`
	// Drops is the median rate (per second) of frames offered but not
	// forwarded, wherever they were lost (the trunk's ring, an AF_XDP ring,
	// the pod's veth).
	Drops *float64 `json:"drops"`
	// RoundsPPS and RoundsOfferedPPS are each round's figures, in order.
	RoundsPPS        []float64 `json:"rounds_pps"`
	RoundsOfferedPPS []float64 `json:"rounds_offered_pps"`
	// NAPICPUBusy (/proc/stat), NAPIThreadBusy and AgentBusy (thread run
	// times; the agent's over all its threads): medians, shares of one CPU.
	NAPICPUBusy    *float64 `json:"napi_cpu_busy"`
	NAPIThreadBusy *float64 `json:"napi_thread_busy"`
	AgentBusy      *float64 `json:"agent_busy"`
	// WorkerCPUBusy is the median busy share of trunkline's worker's CPU
	// (/proc/stat).
	WorkerCPUBusy *float64 `json:"worker_cpu_busy"`
	// RatioKernel and RatioRaw compare PPS with the kernel and raw paths at
	// the same frame size.
	RatioKernel *float64 `json:"ratio_kernel"`
	RatioRaw    *float64 `json:"ratio_raw"`
	// NoisyRounds lists the rounds (1-based) in which other processes (or
	// interrupts) took more than 20% of the NAPI core; RoundsForeign is that
	// share per round (-1: not checked, own-core).
	NoisyRounds   []int     `json:"noisy_rounds"`
	RoundsForeign []float64 `json:"rounds_foreign_cpu"`
	// GeneratorLimited is true when the path forwarded nearly all it was
	// offered in some round: its figure is then a lower bound.
	GeneratorLimited *bool `json:"generator_limited"`
	// Verdict says in words what the saturation checks found.
	Verdict string `json:"verdict"`
	Error   string `json:"error,omitempty"`

	placementText string
}

func newResult(p peer, size int, ss []sample, err error) Result {
	r := Result{Scenario: "throughput", Dataplane: p.dataplane, FrameBytes: size, placementText: p.placementText()}
	if p.placement != "" {
		r.Placement = ptr(p.placement)
	}
	if err != nil {
		r.Error = err.Error()
		r.Verdict = "failed"
		return r
	}
	if len(ss) == 0 {
		r.Verdict = "not measured"
		return r
	}
	var fwd, off, drops, cpu, napi, agent, wcpu []float64
	limited := false
	for i, s := range ss {
		r.RoundsForeign = append(r.RoundsForeign, s.Foreign)
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
	}
	r.RoundsPPS, r.RoundsOfferedPPS = fwd, off
	r.PPS, r.OfferedPPS, r.Drops = median(fwd), median(off), median(drops)
	r.NAPICPUBusy, r.NAPIThreadBusy, r.AgentBusy, r.WorkerCPUBusy = median(cpu), median(napi), median(agent), median(wcpu)
	r.GeneratorLimited = &limited
	r.Verdict = verdict(r)
	return r
}

// verdict applies the saturation checks to a measured result: did the
// generator offer more than the path forwarded, and was the core that limits
// the path busy? For raw and kernel that core is the receiving NAPI's; for
// trunkline it is the worker's (which is the NAPI's in shared-core).
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

// fillRatios sets RatioKernel and RatioRaw.
func (rep *Report) fillRatios() {
	ref := map[string]map[int]float64{Kernel: {}, Raw: {}}
	for _, r := range rep.Results {
		if r.PPS != nil && *r.PPS > 0 && r.Placement == nil {
			if m, ok := ref[r.Dataplane]; ok {
				m[r.FrameBytes] = *r.PPS
			}
		}
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		if r.PPS == nil {
			continue
		}
		if k, ok := ref[Kernel][r.FrameBytes]; ok {
			r.RatioKernel = ptr(*r.PPS / k)
		}
		if k, ok := ref[Raw][r.FrameBytes]; ok {
			r.RatioRaw = ptr(*r.PPS / k)
		}
	}
}

// WriteTable writes the results as a table, then the saturation checks.
func (rep *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "throughput, wire → pod: %s, kernel %s, %d cores; generator cpu%d, %v per path, %d round(s), medians\n",
		rep.Machine.CPUModel, rep.Machine.Kernel, rep.Machine.Cores, genCPU, rep.Duration, rep.Rounds)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "path\tplacement\tbytes\tMpps fwd\tMpps offered\t× kernel\t× raw\trounds (Mpps fwd)\t")
	for _, r := range rep.Results {
		rounds := make([]string, len(r.RoundsPPS))
		for i, v := range r.RoundsPPS {
			rounds[i] = fmt.Sprintf("%.3f", v/1e6)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n", r.Dataplane, r.placementText, r.FrameBytes,
			mpps(r.PPS), mpps(r.OfferedPPS), ratio(r.RatioKernel), ratio(r.RatioRaw), strings.Join(rounds, " "))
	}
	tw.Flush()
	fmt.Fprintln(&b, "saturation checks (generator offered more than the path forwarded, and the forwarding core busy):")
	allOK, noisy := true, false
	for _, r := range rep.Results {
		name := r.Dataplane
		if r.Placement != nil {
			name += " " + *r.Placement
		}
		text := r.Verdict
		if r.Error != "" {
			text += ": " + r.Error
		}
		if r.GeneratorLimited == nil || *r.GeneratorLimited {
			allOK = false
		}
		cpu := ""
		if r.NAPIThreadBusy != nil {
			cpu = fmt.Sprintf(" [napi thread %.0f%%, cpu%d %.0f%% by /proc/stat", 100**r.NAPIThreadBusy, napiCPU, 100**r.NAPICPUBusy)
			if r.AgentBusy != nil {
				cpu += fmt.Sprintf(", agent threads %.0f%%, worker's cpu %.0f%%", 100**r.AgentBusy, 100**r.WorkerCPUBusy)
			}
			cpu += "]"
		}
		fmt.Fprintf(&b, "  %-22s %4d B  %s%s\n", name, r.FrameBytes, text, cpu)
		if len(r.NoisyRounds) > 0 {
			noisy = true
			fmt.Fprintf(&b, "  %-22s         NOISY round(s) %v: other processes took %s of cpu%d\n", "", r.NoisyRounds, percents(r.RoundsForeign), napiCPU)
		}
	}
	if allOK {
		fmt.Fprintf(&b, "every path was offered more than %.0f%% above what it forwarded: no figure is the generator's limit.\n", 100*(1/generatorLimitedShare-1))
	} else {
		fmt.Fprintln(&b, "WARNING: some figures are the generator's limit, not the path's (see above): they are lower bounds.")
	}
	if noisy {
		fmt.Fprintln(&b, "WARNING: the machine was not quiet in some rounds (see NOISY above); medians over more rounds, or a quiet machine, give steadier figures.")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes {"machine": …, "results": […]}.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
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
	return &m
}

func mpps(v *float64) string {
	if v == nil {
		return "—"
	}
	return fmt.Sprintf("%.3f", *v/1e6)
}

func ratio(v *float64) string {
	if v == nil {
		return "—"
	}
	return fmt.Sprintf("%.2f", *v)
}

func percents(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.0f%%", 100*x)
	}
	return strings.Join(s, " / ")
}

func ptr[T any](v T) *T { return &v }
