package bench

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/trunkline/trunkline/bench/gen"
)

// Scenarios.
const (
	// Throughput: UDP frames of each size, wire → pod and pod → wire.
	Throughput = "throughput"
	// Service: 64-byte UDP frames to a ClusterIP (DNAT + conntrack), one
	// flow and many flows.
	Service = "service"
	// TCP: iperf3 through a ClusterIP.
	TCP = "tcp"
	// Latency: UDP request/response through a ClusterIP, one in flight.
	Latency = "latency"
	// CPS: new TCP connections per second through a ClusterIP.
	CPS = "cps"
	// Scale: the service and cps figures as Services and pods grow.
	Scale = "scale"
)

// AllScenarios in the order a run measures them.
var AllScenarios = []string{Throughput, Service, TCP, Latency, CPS, Scale}

// Dataplanes.
const (
	// Raw is one veth pair with nothing on it: the ceiling.
	Raw = "raw"
	// Kernel is tc-BPF VLAN pop/push + routing + a kube-proxy iptables
	// ruleset.
	Kernel = "kernel"
	// KernelNft is Kernel with kube-proxy's nftables ruleset instead.
	KernelNft = "kernel-nft"
	// KernelRoute is Kernel without kube-proxy's rules: tc VLAN pop/push
	// and routing only (no conntrack), for the frame scenarios.
	KernelRoute = "kernel-route"
	// XDPKernel is an in-kernel XDP program doing trunkline's work.
	XDPKernel = "xdp-kernel"
	// Trunkline is the agent, measured in both placements.
	Trunkline = "trunkline"
)

// AllDataplanes in the order each round measures them.
var AllDataplanes = []string{Raw, KernelRoute, Kernel, KernelNft, XDPKernel, Trunkline}

// Placements of trunkline's worker.
const (
	SharedCore = "shared-core" // on the trunk's NAPI core
	OwnCore    = "own-core"    // on another core
)

// Directions of the frame scenarios.
const (
	WireToPod = "wire-to-pod"
	PodToWire = "pod-to-wire"
)

// Defaults of Options.
const (
	DefaultPrefix   = "tlbench"
	DefaultDuration = 2 * time.Second
	DefaultRepeat   = 3
	// ManyFlows is the service scenario's "many flows": UDP source ports.
	ManyFlows = 10000
	// throughputFlows is how many UDP source ports the throughput frames
	// cycle through (spread over the trunk's RX hash as real traffic is).
	throughputFlows = 64
)

// DefaultSizes are the throughput scenario's frame sizes.
var DefaultSizes = []int{64, 512, 1500}

// DefaultScaleServices, DefaultScalePods and DefaultScaleConntrack are the
// scale scenario's points (the conntrack points are flows put into the
// connection table before measuring; the point of 0 is the pods point of
// 1).
var (
	DefaultScaleServices  = []int{1, 10000, 100000}
	DefaultScalePods      = []int{1, 64, 250}
	DefaultScaleConntrack = []int{1000000}
)

// Where things run. The generator and the receiving NAPI never share a core.
const (
	genCPU  = 0
	napiCPU = 1
)

// ErrNotRoot reports a process that cannot make namespaces or load BPF.
var ErrNotRoot = errors.New("bench needs root (network namespaces, XDP, BPF_PROG_RUN)")

// Options configures Run. The zero value measures every scenario on every
// dataplane but trunkline (no AgentBinary), 3 rounds.
type Options struct {
	// Prefix names the beds (<Prefix>, <Prefix>p64, …) and the raw peer's
	// namespace <Prefix>-raw. What a crashed run left under it is swept
	// first. Default DefaultPrefix.
	Prefix string
	// AgentBinary is the trunkline binary (also the pods' servers); empty
	// leaves trunkline out and skips the scenarios that need servers.
	AgentBinary string
	// AgentArgs are extra arguments to the agent's `trunkline run` (to
	// compare settings, e.g. --busy-poll 50).
	AgentArgs []string
	// Scenarios to measure, of AllScenarios; default all.
	Scenarios []string
	// Dataplanes to measure, of AllDataplanes; default all. Kernel is
	// always measured when any scenario it applies to runs: every ratio is
	// against it.
	Dataplanes []string
	// Sizes are the throughput frame sizes in bytes (Ethernet and 802.1Q
	// headers included, FCS excluded). Default DefaultSizes.
	Sizes []int
	// Duration is the measured time of each measurement, after a warm-up.
	// Default DefaultDuration.
	Duration time.Duration
	// Rate caps the frames per second the generator offers in the frame
	// scenarios (0: as fast as it can, which saturates every path here).
	Rate uint64
	// Repeat is the number of rounds; the dataplanes are interleaved in
	// each and the report gives medians and spreads. Default DefaultRepeat.
	Repeat int
	// Quick is the smoke run (under a minute): throughput at 64 bytes wire
	// → pod, service and latency, on raw, kernel and trunkline, 1 s each,
	// one round. It overrides Scenarios, Dataplanes, Sizes, Duration and
	// Repeat.
	Quick bool
	// ScaleServices, ScalePods and ScaleConntrack are the scale scenario's
	// points. Defaults DefaultScaleServices, DefaultScalePods and
	// DefaultScaleConntrack.
	ScaleServices, ScalePods, ScaleConntrack []int
	// PerfDir, when set, adds a profiling pass after the rounds: each
	// trunkline throughput measurement is repeated under `perf record -g`
	// of the agent's threads and the receiving NAPI thread, into
	// PerfDir/trunkline-<placement>-<direction>-<bytes>.data, left out of
	// the medians. The agent binary must keep its symbols.
	PerfDir string
	// PodSink is where the pod's sink counts and drops: gen.SinkTC (the
	// default; the pod receives as one without XDP does) or gen.SinkXDP.
	PodSink gen.SinkMode
	// Logger receives debug progress. Default: discard.
	Logger *slog.Logger
	// Progress receives a line per measurement as it ends. Default:
	// discard.
	Progress io.Writer
}

func (o Options) withDefaults() (Options, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Quick {
		o.Scenarios = []string{Throughput, Service, Latency}
		o.Dataplanes = []string{Raw, KernelRoute, Kernel, Trunkline}
		o.Sizes, o.Duration, o.Repeat = []int{64}, time.Second, 1
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = AllScenarios
	}
	if len(o.Dataplanes) == 0 {
		o.Dataplanes = AllDataplanes
	}
	if len(o.Sizes) == 0 {
		o.Sizes = DefaultSizes
	}
	if len(o.ScaleServices) == 0 {
		o.ScaleServices = DefaultScaleServices
	}
	if len(o.ScalePods) == 0 {
		o.ScalePods = DefaultScalePods
	}
	if len(o.ScaleConntrack) == 0 {
		o.ScaleConntrack = DefaultScaleConntrack
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Repeat == 0 {
		o.Repeat = DefaultRepeat
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	var errs []error
	for _, s := range o.Scenarios {
		if !slices.Contains(AllScenarios, s) {
			errs = append(errs, fmt.Errorf("scenario %q: want one of %v", s, AllScenarios))
		}
	}
	for _, d := range o.Dataplanes {
		if !slices.Contains(AllDataplanes, d) {
			errs = append(errs, fmt.Errorf("dataplane %q: want one of %v", d, AllDataplanes))
		}
	}
	if !slices.Contains(o.Dataplanes, Kernel) {
		o.Dataplanes = append([]string{Kernel}, o.Dataplanes...)
	}
	for _, s := range o.Sizes {
		if s < gen.MinFrameBytes || s > gen.MaxFrameBytes {
			errs = append(errs, fmt.Errorf("frame size %d: want %d..%d", s, gen.MinFrameBytes, gen.MaxFrameBytes))
		}
	}
	for _, n := range o.ScaleServices {
		if n < 1 || n > 200000 {
			errs = append(errs, fmt.Errorf("scale services %d: want 1..200000", n))
		}
	}
	for _, n := range o.ScaleConntrack {
		if n < 1 || n > maxPrefill {
			errs = append(errs, fmt.Errorf("scale conntrack %d: want 1..%d", n, maxPrefill))
		}
	}
	for _, n := range o.ScalePods {
		if n < 1 || n > 250 {
			errs = append(errs, fmt.Errorf("scale pods %d: want 1..250", n))
		}
	}
	if o.Duration < 200*time.Millisecond || o.Duration > 10*time.Minute {
		errs = append(errs, fmt.Errorf("duration %v: want 200ms..10m", o.Duration))
	}
	if o.Repeat < 1 || o.Repeat > 100 {
		errs = append(errs, fmt.Errorf("repeat %d: want 1..100 rounds", o.Repeat))
	}
	if o.AgentBinary != "" {
		if _, err := os.Stat(o.AgentBinary); err != nil {
			errs = append(errs, fmt.Errorf("agent binary: %w (build it with `make build`)", err))
		} else if abs, err := filepath.Abs(o.AgentBinary); err == nil {
			o.AgentBinary = abs
		}
	}
	if o.PerfDir != "" {
		if _, err := exec.LookPath("perf"); err != nil {
			errs = append(errs, fmt.Errorf("perf dir set but no perf: %w (apt-get install linux-perf)", err))
		}
	}
	if runtime.NumCPU() < 2 {
		errs = append(errs, fmt.Errorf("%d CPU: the bench needs 2 (generator on CPU %d, forwarding on CPU %d)", runtime.NumCPU(), genCPU, napiCPU))
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("bench: %w", errors.Join(errs...))
	}
	return o, nil
}

func (o Options) wants(scenario string) bool { return slices.Contains(o.Scenarios, scenario) }
