package bench

import (
	"fmt"
	"strings"
)

// A target is one of the performance goals the bench reports against
// (they are goals, not tests).
type target struct {
	text  string
	check func(rep *Report) (figure string, met *bool)
}

// find returns the result of name ("trunkline shared-core", "kernel") at
// the point where match holds, or nil.
func (rep *Report) find(name string, match func(r Result) bool) *Result {
	for i := range rep.Results {
		r := &rep.Results[i]
		if r.Name() == name && match(*r) {
			return r
		}
	}
	return nil
}

func ratioTarget(name string, match func(Result) bool, peer string, want float64) func(*Report) (string, *bool) {
	return func(rep *Report) (string, *bool) {
		r := rep.find(name, match)
		if r == nil {
			return "not measured", nil
		}
		v := r.RatioKernel
		switch peer {
		case XDPKernel:
			v = r.RatioXDPKernel
		case KernelRoute:
			v = r.RatioKernelRoute
		}
		if v == nil {
			return "no ratio (a side failed or was not measured)", nil
		}
		return fmt.Sprintf("%.2f×", *v), ptr(*v >= want)
	}
}

func isPoint(scenario, direction string, size, flows int) func(Result) bool {
	return func(r Result) bool {
		return r.Scenario == scenario && r.Direction != nil && *r.Direction == direction &&
			r.FrameBytes != nil && *r.FrameBytes == size && r.Flows != nil && *r.Flows == flows
	}
}

func isScale(metric string, services, pods int) func(Result) bool {
	return func(r Result) bool {
		return r.Scenario == Scale && r.Metric == metric && *r.Services == services && *r.Pods == pods && r.Conntrack == nil
	}
}

var (
	tl64   = isPoint(Throughput, WireToPod, 64, throughputFlows)
	svcMny = isPoint(Service, WireToPod, 64, ManyFlows)
	isLat  = func(r Result) bool { return r.Scenario == Latency }
)

var targets = []target{
	{"throughput 64 B wire → pod, shared-core ≥ 0.63× kernel-route (the skeleton's)", ratioTarget("trunkline shared-core", tl64, KernelRoute, 0.63)},
	{"throughput 64 B wire → pod, own-core ≥ 1.39× kernel-route (the skeleton's)", ratioTarget("trunkline own-core", tl64, KernelRoute, 1.39)},
	{"throughput 64 B wire → pod, shared-core ≥ 1.0× kernel", ratioTarget("trunkline shared-core", tl64, Kernel, 1.0)},
	{"throughput 64 B wire → pod, own-core ≥ 1.5× kernel", ratioTarget("trunkline own-core", tl64, Kernel, 1.5)},
	{"throughput 64 B wire → pod, own-core ≥ 0.5× xdp-kernel", ratioTarget("trunkline own-core", tl64, XDPKernel, 0.5)},
	{"service 64 B many flows, shared-core ≥ 1.0× kernel", ratioTarget("trunkline shared-core", svcMny, Kernel, 1.0)},
	{"service 64 B many flows, own-core ≥ 1.5× kernel", ratioTarget("trunkline own-core", svcMny, Kernel, 1.5)},
	{"service 64 B many flows, own-core ≥ 0.5× xdp-kernel", ratioTarget("trunkline own-core", svcMny, XDPKernel, 0.5)},
	{"cps with 100,000 Services within 10% of 1 Service (shared-core)", func(rep *Report) (string, *bool) {
		one := rep.find("trunkline shared-core", isScale(metricCPS, 1, 1))
		big := rep.find("trunkline shared-core", isScale(metricCPS, 100000, 1))
		if one == nil || big == nil || one.CPS == nil || big.CPS == nil {
			return "not measured", nil
		}
		v := *big.CPS / *one.CPS
		return fmt.Sprintf("%.2f× of 1 Service's", v), ptr(v >= 0.9)
	}},
	{"cps at 10,000 Services ≥ 20× kernel (shared-core)", ratioTarget("trunkline shared-core", isScale(metricCPS, 10000, 1), Kernel, 20)},
	{"cps at 10,000 Services ≥ 1.0× kernel-nft (shared-core)", func(rep *Report) (string, *bool) {
		r := rep.find("trunkline shared-core", isScale(metricCPS, 10000, 1))
		n := rep.find(KernelNft, isScale(metricCPS, 10000, 1))
		if r == nil || n == nil || r.CPS == nil || n.CPS == nil || *n.CPS == 0 {
			return "not measured", nil
		}
		v := *r.CPS / *n.CPS
		return fmt.Sprintf("%.2f×", v), ptr(v >= 1)
	}},
	{"latency p50 and p99 ≤ kernel's (shared-core)", func(rep *Report) (string, *bool) {
		r, k := rep.find("trunkline shared-core", isLat), rep.find(Kernel, isLat)
		if r == nil || k == nil || r.P50us == nil || k.P50us == nil {
			return "not measured", nil
		}
		return fmt.Sprintf("p50 %.1f vs %.1f µs, p99 %.1f vs %.1f µs", *r.P50us, *k.P50us, *r.P99us, *k.P99us),
			ptr(*r.P50us <= *k.P50us && *r.P99us <= *k.P99us)
	}},
	{"RSS with 250 pods ≤ 256 MiB", func(rep *Report) (string, *bool) {
		r := rep.find("trunkline shared-core", func(r Result) bool { return r.Scenario == Scale && *r.Pods == 250 && r.RSSBytes != nil })
		if r == nil {
			return "not measured", nil
		}
		return fmt.Sprintf("%.0f MiB", *r.RSSBytes/(1<<20)), ptr(*r.RSSBytes <= 256<<20)
	}},
}

// writeTargets writes each target with its figure and whether it is met.
func writeTargets(b *strings.Builder, rep *Report) {
	fmt.Fprintln(b, "\nperformance targets:")
	for _, t := range targets {
		fig, met := t.check(rep)
		state := "—"
		if met != nil {
			state = "NOT MET"
			if *met {
				state = "met"
			}
		}
		fmt.Fprintf(b, "  %-7s %-84s %s\n", state, t.text, fig)
	}
}
