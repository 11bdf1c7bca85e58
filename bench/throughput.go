// Package bench measures trunkline against its peers on the test bed
// (package bench/bed), with the generator and sink of package bench/gen.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/gen"
)

// Defaults of ThroughputOptions.
const (
	DefaultThroughputPrefix = "tlbench"
	DefaultDuration         = 3 * time.Second
	DefaultRepeat           = 3
	defaultWarmup           = 500 * time.Millisecond
	quickWarmup             = 300 * time.Millisecond
	// benchFlows is how many UDP source ports the generator cycles through.
	benchFlows = 64
)

// Dataplanes measured by Throughput.
const (
	Raw       = "raw"
	Kernel    = "kernel"
	Trunkline = "trunkline"
)

// Placements of trunkline's worker.
const (
	SharedCore = "shared-core" // on the trunk's NAPI core
	OwnCore    = "own-core"    // on another core
)

// Where things run. The generator and the receiving NAPI never share a core.
const (
	genCPU  = 0
	napiCPU = 1
)

// ErrNotRoot reports a process that cannot make namespaces or load BPF.
var ErrNotRoot = errors.New("bench needs root (network namespaces, XDP, BPF_PROG_RUN)")

// ThroughputOptions configures Throughput. The zero value measures 64-byte
// frames, 3 s per path, 3 rounds, without trunkline (no AgentBinary), with
// the pod's sink at tc.
type ThroughputOptions struct {
	// Prefix names the bed (and the raw peer's namespace <Prefix>-raw).
	// A bed left under this prefix by a crashed run is swept first.
	// Default DefaultThroughputPrefix.
	Prefix string
	// AgentBinary is the trunkline binary; empty skips the trunkline paths
	// (their results are reported as null).
	AgentBinary string
	// Sizes are the frame sizes in bytes (Ethernet and 802.1Q headers
	// included, FCS excluded), each in gen.MinFrameBytes..gen.MaxFrameBytes.
	// Default [64].
	Sizes []int
	// Duration is the measured time per path and round, after a warm-up.
	// Default 3 s.
	Duration time.Duration
	// Repeat is the number of rounds; the paths are interleaved in each
	// (raw, kernel, trunkline shared-core, trunkline own-core, raw, …) and
	// the report gives medians. Default 3.
	Repeat int
	// Quick measures 64-byte frames only, 1 s per path, 1 round (for tests
	// and a smoke check); it overrides Sizes, Duration and Repeat.
	Quick bool
	// PerfDir, when set, adds a profiling pass after the rounds: each
	// trunkline path is measured once more under `perf record -g` of the
	// agent's threads and the trunk's NAPI thread, into
	// PerfDir/trunkline-<placement>-<bytes>.data. The pass is left out of the
	// medians (perf slows what it records). The agent binary must keep its
	// symbols (not built with -ldflags=-s).
	PerfDir string
	// PodSink is where the pod's sink counts and drops: gen.SinkTC (the
	// default; the pod receives as one without XDP does) or gen.SinkXDP.
	PodSink gen.SinkMode
	// Logger receives progress at debug level. Default: discard.
	Logger *slog.Logger
	// Out receives one line per measurement as it ends. Default: discard.
	Out io.Writer
}

func (o ThroughputOptions) withDefaults() (ThroughputOptions, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultThroughputPrefix
	}
	if o.Quick {
		o.Sizes, o.Duration, o.Repeat = []int{64}, time.Second, 1
	}
	if len(o.Sizes) == 0 {
		o.Sizes = []int{64}
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
	if o.Out == nil {
		o.Out = io.Discard
	}
	var errs []error
	for _, s := range o.Sizes {
		if s < gen.MinFrameBytes || s > gen.MaxFrameBytes {
			errs = append(errs, fmt.Errorf("frame size %d: want %d..%d", s, gen.MinFrameBytes, gen.MaxFrameBytes))
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
		return o, fmt.Errorf("throughput: %w", errors.Join(errs...))
	}
	return o, nil
}

// peer is one path of the comparison.
type peer struct {
	dataplane string
	placement string // "" for raw and kernel
	workerCPU int    // trunkline's worker
}

func (p peer) String() string {
	if p.placement == "" {
		return p.dataplane
	}
	return p.dataplane + " " + p.placement
}

// placementText says where things ran, for the table.
func (p peer) placementText() string {
	switch p.dataplane {
	case Trunkline:
		s := fmt.Sprintf("%s: worker cpu%d, napi cpu%d", p.placement, p.workerCPU, napiCPU)
		if p.workerCPU == genCPU {
			s += " (+gen)"
		}
		return s
	default:
		return fmt.Sprintf("napi cpu%d", napiCPU)
	}
}

// Throughput measures how many frames per second each path forwards from
// the wire to a pod: raw (one veth pair, nothing done), kernel (tc VLAN pop
// + routing), trunkline with its worker on the trunk's NAPI core and on
// another core. It builds a bed, measures, and removes everything it made,
// also on failure. The generator runs on CPU 0, the receiving NAPI thread on
// CPU 1. A path that fails is reported with its error and null figures; an
// error is returned only when no comparison could be made.
func Throughput(ctx context.Context, o ThroughputOptions) (_ *Report, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("throughput: %w", ErrNotRoot)
	}
	log := o.Logger
	ownCPU := genCPU // with 2 cores the only other core is the generator's
	if runtime.NumCPU() > 2 {
		ownCPU = 2
	}
	peers := []peer{{dataplane: Raw}, {dataplane: Kernel}}
	if o.AgentBinary != "" {
		peers = append(peers,
			peer{dataplane: Trunkline, placement: SharedCore, workerCPU: napiCPU},
			peer{dataplane: Trunkline, placement: OwnCore, workerCPU: ownCPU})
	}

	if err := bed.Sweep("", o.Prefix); err != nil {
		return nil, fmt.Errorf("throughput: sweep old bed: %w", err)
	}
	b, err := bed.Up(ctx, bed.Options{Prefix: o.Prefix, Pods: 1, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("throughput: %w", err)
	}
	defer func() {
		if derr := b.Down(); derr != nil {
			err = errors.Join(err, fmt.Errorf("throughput: remove bed: %w", derr))
		}
	}()
	raw, err := upRawPair(ctx, o.Prefix)
	if err != nil {
		return nil, fmt.Errorf("throughput: %w", err)
	}
	defer func() {
		if derr := raw.down(context.Background()); derr != nil {
			err = errors.Join(err, derr)
		}
	}()

	s := &session{o: o, b: b, raw: raw, pod: b.Pods[0]}
	defer s.close()
	if err := s.setUp(ctx); err != nil {
		return nil, fmt.Errorf("throughput: %w", err)
	}

	rep := &Report{Machine: thisMachine(), Duration: o.Duration, Rounds: o.Repeat}
	samples := map[resultKey][]sample{}
	errs := map[resultKey]error{}
	rounds := o.Repeat
	if o.PerfDir != "" && o.AgentBinary != "" {
		rounds++
	}
	for round := range rounds {
		profiling := round == o.Repeat
		for _, size := range o.Sizes {
			for _, p := range peers {
				if profiling && p.dataplane != Trunkline {
					continue
				}
				if err := ctx.Err(); err != nil {
					return nil, fmt.Errorf("throughput: %w", err)
				}
				k := resultKey{p, size}
				if errs[k] != nil {
					continue // failed in an earlier round: do not retry each round
				}
				sm, err := s.measure(ctx, p, size, profiling)
				if profiling {
					if err != nil {
						log.Warn("throughput: profiling pass failed", "path", p.String(), "bytes", size, "err", err)
						fmt.Fprintf(o.Out, "perf     %-22s %5d B  FAILED: %v\n", p, size, err)
					} else {
						fmt.Fprintf(o.Out, "perf     %-22s %5d B  %6.3f Mpps forwarded under perf (not in the medians)\n", p, size, sm.pps()/1e6)
					}
					continue
				}
				if err != nil {
					log.Warn("throughput: path failed", "path", p.String(), "bytes", size, "err", err)
					fmt.Fprintf(o.Out, "round %d  %-22s %5d B  FAILED: %v\n", round+1, p, size, err)
					errs[k] = err
					continue
				}
				samples[k] = append(samples[k], sm)
				fmt.Fprintf(o.Out, "round %d  %-22s %5d B  %6.3f Mpps forwarded, %6.3f offered, cpu%d busy %3.0f%%, napi thread %3.0f%%%s\n",
					round+1, p, size, sm.pps()/1e6, sm.offeredPPS()/1e6, napiCPU, 100*sm.CPUBusy, 100*sm.NAPIBusy, sm.agentText())
			}
		}
	}
	for _, size := range o.Sizes {
		for _, p := range peers {
			k := resultKey{p, size}
			rep.Results = append(rep.Results, newResult(p, size, samples[k], errs[k]))
		}
	}
	rep.fillRatios()
	if len(samples) == 0 {
		return rep, fmt.Errorf("throughput: every path failed: %w", errors.Join(mapValues(errs)...))
	}
	return rep, nil
}

type resultKey struct {
	p    peer
	size int
}

// session holds what the measurements share: the bed, the raw pair, the
// sinks, one generator per frame size, the NAPI threads.
type session struct {
	o       ThroughputOptions
	b       *bed.Bed
	raw     *rawPair
	pod     bed.Pod
	podSink *gen.Sink
	rawSink *gen.Sink
	gens    map[int]*gen.Generator
	// NAPI threads found at set-up, for when the netlink query fails later.
	trunkNAPI, rawNAPI napiThread
}

// setUp attaches the sinks, threads and pins the receiving NAPIs, loads the
// generators.
func (s *session) setUp(ctx context.Context) error {
	b, p := s.b, s.pod
	// The kernel path must not depend on ARP while the pod's sink drops
	// frames: a permanent neighbour for the pod on its host veth.
	if _, err := run(ctx, "ip", "-n", b.Node.Netns, "neigh", "replace", p.IP.String(), "lladdr", p.MAC.String(), "dev", p.HostVeth, "nud", "permanent"); err != nil {
		return err
	}
	var err error
	// The pod's sink runs at tc: an XDP program on the pod's eth0 would make
	// the kernel copy every skb it receives (AF_XDP copy-mode TX makes skbs
	// with too little headroom for XDP), a cost a real pod does not have.
	if s.podSink, err = gen.AttachSink(p.Netns, p.Ifname, gen.DefaultDstPort, s.o.PodSink); err != nil {
		return err
	}
	// The raw pair is the ceiling: XDP drop at the far end.
	if s.rawSink, err = gen.AttachSink(s.raw.Netns, s.raw.B, gen.DefaultDstPort, gen.SinkXDP); err != nil {
		return err
	}
	// The pods' veths stay unthreaded: equal FIFO NAPI threads starve each
	// other (FIELD-NOTES.md).
	if s.trunkNAPI, err = threadNAPI(ctx, b.Node.Netns, b.Node.Trunk, napiCPU); err != nil {
		return err
	}
	if s.rawNAPI, err = threadNAPI(ctx, s.raw.Netns, s.raw.B, napiCPU); err != nil {
		return err
	}
	s.gens = map[int]*gen.Generator{}
	for _, size := range s.o.Sizes {
		g, err := gen.NewGenerator(gen.FrameSpec{
			Bytes:  size,
			SrcMAC: b.Wire.MAC,
			DstMAC: b.Node.TrunkMAC,
			VLAN:   p.VLAN,
			SrcIP:  b.Wire.IP,
			DstIP:  p.IP,
			Flows:  benchFlows,
		})
		if err != nil {
			return err
		}
		s.gens[size] = g
	}
	return nil
}

func (s *session) close() {
	for _, g := range s.gens {
		g.Close()
	}
	if s.podSink != nil {
		s.podSink.Close()
	}
	if s.rawSink != nil {
		s.rawSink.Close()
	}
}

// measure sets up one path, measures it once, and tears it down.
func (s *session) measure(ctx context.Context, p peer, size int, profile bool) (_ sample, err error) {
	b := s.b
	w := window{
		gen:    s.gens[size],
		sink:   s.podSink,
		netns:  b.Wire.Netns,
		ifname: b.Wire.Ifname,
		warmup: defaultWarmup,
		dur:    s.o.Duration,
		repeat: gen.DefaultRepeat,
	}
	if s.o.Quick {
		w.warmup = quickWarmup
	}
	if size > 512 {
		w.repeat = gen.MinRepeat // fewer, slower frames: keep runs near 1 s
	}
	napiNetns, napiIf, known := b.Node.Netns, b.Node.Trunk, s.trunkNAPI
	switch p.dataplane {
	case Raw:
		w.sink, w.netns, w.ifname = s.rawSink, s.raw.Netns, s.raw.A
		napiNetns, napiIf, known = s.raw.Netns, s.raw.B, s.rawNAPI
	case Kernel:
		if err := b.EnableKernelPath(); err != nil {
			return sample{}, err
		}
		defer func() {
			if derr := b.DisableKernelPath(); derr != nil {
				err = errors.Join(err, derr)
			}
		}()
	case Trunkline:
		a, err := startAgent(ctx, b, s.o.AgentBinary, p.workerCPU)
		if err != nil {
			return sample{}, err
		}
		defer func() {
			if serr := a.stop(); serr != nil {
				err = errors.Join(err, serr)
			}
		}()
		w.agent, w.workerCPU = a, p.workerCPU
		if profile {
			w.perfOut = filepath.Join(s.o.PerfDir, "trunkline-"+p.placement+"-"+strconv.Itoa(size)+".data")
		}
	}
	th, err := pinNAPI(napiNetns, napiIf, napiCPU, known)
	if err != nil {
		return sample{}, err
	}
	w.napiPid = th.Pid
	return w.run(ctx)
}

func mapValues(m map[resultKey]error) []error {
	var out []error
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
