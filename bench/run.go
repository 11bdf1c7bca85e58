// Package bench measures trunkline against its peers on the test bed
// (package bench/bed): the kernel path with kube-proxy's iptables or
// nftables rules, an in-kernel XDP program doing the same work, and one
// bare veth pair, side by side in one run, every figure a ratio against a
// peer measured on the same bed in the same round.
package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/gen"
)

var numCPU = runtime.NumCPU

// Run builds the beds, measures every case of the scenarios o asks for on
// every dataplane, round after round (the dataplanes interleaved in each
// round), and removes everything it made, also on failure. A measurement
// that fails is reported with its error and null figures; an error is
// returned only when nothing could be compared.
func Run(ctx context.Context, o Options) (_ *Report, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("bench: %w", ErrNotRoot)
	}
	start := time.Now()
	groups := plan(o, len(bed.DefaultServices()))
	ds := dataplanesFor(o)
	pr := newProgress(o.Progress, countMeasurements(o, groups, ds))
	rep := &Report{Machine: thisMachine(), Started: start.UTC().Truncate(time.Second), Rounds: o.Repeat, Duration: o.Duration.Seconds()}

	var podCounts []int
	for n := range groups {
		podCounts = append(podCounts, n)
	}
	slices.Sort(podCounts)
	measured := false
	for _, pods := range podCounts {
		res, err := runGroup(ctx, o, pods, groups[pods], ds, pr)
		rep.Results = append(rep.Results, res...)
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			if r.Figure() != nil {
				measured = true
			}
		}
	}
	rep.fillRatios()
	rep.Seconds = time.Since(start).Seconds()
	if !measured {
		return rep, errors.New("bench: nothing could be measured (see the errors in the report)")
	}
	return rep, nil
}

// runGroup measures the cases of one bed (pods pods).
func runGroup(ctx context.Context, o Options, pods int, cases []testCase, ds []dataplane, pr *progress) (_ []Result, err error) {
	prefix := o.Prefix
	if pods > 1 {
		prefix += "p" + strconv.Itoa(pods)
	}
	if err := bed.Sweep("", prefix); err != nil {
		return nil, fmt.Errorf("bench: sweep old bed: %w", err)
	}
	pr.note(fmt.Sprintf("building a bed with %d pod(s)", pods))
	b, err := bed.Up(ctx, bed.Options{Prefix: prefix, Pods: pods, Logger: o.Logger})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer func() {
		if derr := b.Down(); derr != nil {
			err = errors.Join(err, fmt.Errorf("bench: remove bed: %w", derr))
		}
	}()
	s := &session{o: o, b: b, pod: b.Pods[0]}
	defer s.close()
	needRaw := false
	for _, c := range cases {
		needRaw = needRaw || c.scenario == Throughput
	}
	if needRaw && contains(o.Dataplanes, Raw) {
		raw, err := upRawPair(ctx, prefix)
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		defer func() {
			if derr := raw.down(context.Background()); derr != nil {
				err = errors.Join(err, derr)
			}
		}()
		s.raw = raw
	}
	if err := s.setUp(ctx, cases); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}

	type key struct {
		d int
		c testCase
	}
	samples := map[key][]sample{}
	errs := map[key]error{}
	rounds := o.Repeat
	profile := o.PerfDir != ""
	if profile {
		rounds++
	}
	for round := range rounds {
		profiling := profile && round == o.Repeat
		for di, d := range ds {
			todo := s.casesFor(d, cases, round, profiling)
			if len(todo) == 0 {
				continue
			}
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("bench: %w", err)
			}
			// A dataplane that cannot come up fails its cases of this round.
			upErr := d.up(ctx, s)
			s.loaded = ""
			for _, c := range todo {
				k := key{di, c}
				var sm sample
				err := upErr
				if err == nil {
					sm, err = s.measure(ctx, d, c, profiling)
				}
				pr.done(round, d, c, sm, err, profiling)
				if profiling {
					continue
				}
				if err != nil {
					errs[k] = err
					continue
				}
				samples[k] = append(samples[k], sm)
			}
			if err := d.down(ctx, s); err != nil {
				return nil, fmt.Errorf("bench: %s: tear down: %w", d.name(), err)
			}
		}
	}
	var res []Result
	for _, c := range cases {
		for di, d := range ds {
			k := key{di, c}
			res = append(res, newResult(d, c, samples[k], errs[k], d.notApplicable(c)))
		}
	}
	return res, nil
}

// casesFor is what d measures in round: the cases that apply to it, minus
// those that failed already; scale cases in the first round only; only the
// throughput cases of trunkline when profiling.
func (s *session) casesFor(d dataplane, cases []testCase, round int, profiling bool) []testCase {
	var out []testCase
	for _, c := range cases {
		switch {
		case d.notApplicable(c) != "":
		case profiling && (d.name() != Trunkline || c.scenario != Throughput):
		case !profiling && c.scenario == Scale && round > 0:
		default:
			out = append(out, c)
		}
	}
	return out
}

func countMeasurements(o Options, groups map[int][]testCase, ds []dataplane) int {
	n := 0
	for _, cases := range groups {
		for _, d := range ds {
			for _, c := range cases {
				if d.notApplicable(c) != "" {
					continue
				}
				if c.scenario == Scale {
					n++
				} else {
					n += o.Repeat
				}
				if o.PerfDir != "" && d.name() == Trunkline && c.scenario == Throughput {
					n++
				}
			}
		}
	}
	return n
}

// session holds what a bed's measurements share: the bed, the raw pair,
// the sinks, the generators, the NAPI threads, the pods' servers.
type session struct {
	o   Options
	b   *bed.Bed
	raw *rawPair
	pod bed.Pod // the pod measured: the first, the only backend of the bench's Services

	podSink, wireSink, rawSink *gen.Sink
	gens                       map[genKey]*gen.Generator
	// NAPI threads found at set-up, for when the netlink query fails later.
	trunkNAPI, podNAPI, rawNAPI napiThread
	// loaded names the Services set the current dataplane serves.
	loaded string
	// restoreCT puts the host's connection table bound back.
	restoreCT func()
	// conntrackMax is the connection-table bound every dataplane gets when
	// a case pre-fills the table (0: each its default), so that none of
	// them measures at its bound.
	conntrackMax int
}

type genKey struct {
	direction string
	size      int
	flows     int
	vip       bool
}

// setUp starts the pod's servers, attaches the sinks, threads and pins the
// receiving NAPIs, and loads the generators the cases need.
func (s *session) setUp(ctx context.Context, cases []testCase) error {
	b, p := s.b, s.pod
	if s.o.AgentBinary != "" {
		if err := startServers(ctx, b, p, s.o.AgentBinary); err != nil {
			return err
		}
	}
	// The kernel path must not depend on ARP while the pod's sink drops
	// frames: a permanent neighbour for the pod on its host veth.
	if _, err := run(ctx, "ip", "-n", b.Node.Netns, "neigh", "replace", p.IP.String(), "lladdr", p.MAC.String(), "dev", p.HostVeth, "nud", "permanent"); err != nil {
		return err
	}
	var err error
	// The pod's sink runs at tc: an XDP program on the pod's eth0 would make
	// the kernel copy every skb it receives (AF_XDP copy-mode TX makes skbs
	// with too little headroom for XDP), a cost a real pod does not have.
	if s.podSink, err = gen.AttachSink(p.Netns, p.Ifname, bed.DiscardPort, s.o.PodSink); err != nil {
		return err
	}
	if s.wireSink, err = gen.AttachSink(b.Wire.Netns, b.Wire.Ifname, bed.DiscardPort, gen.SinkTC); err != nil {
		return err
	}
	if s.raw != nil {
		// The raw pair is the ceiling: XDP drop at the far end.
		if s.rawSink, err = gen.AttachSink(s.raw.Netns, s.raw.B, bed.DiscardPort, gen.SinkXDP); err != nil {
			return err
		}
		if s.rawNAPI, err = threadNAPI(ctx, s.raw.Netns, s.raw.B, napiCPU); err != nil {
			return err
		}
	}
	if s.trunkNAPI, err = threadNAPI(ctx, b.Node.Netns, b.Node.Trunk, napiCPU); err != nil {
		return err
	}
	s.gens = map[genKey]*gen.Generator{}
	most := 0
	for _, c := range cases {
		most = max(most, c.conntrack)
	}
	if most > 0 {
		s.conntrackMax = most + most/4 + 100000
		if s.restoreCT, err = raiseConntrackMax(s.conntrackMax); err != nil {
			return err
		}
	}
	for _, c := range cases {
		if c.metric != metricPPS {
			continue
		}
		k := genKey{c.direction, c.size, c.flows, c.vip}
		if s.gens[k] != nil {
			continue
		}
		if c.direction == PodToWire && s.podNAPI.Pid == 0 {
			// Frames from the pod are received by its host veth's NAPI.
			if s.podNAPI, err = threadNAPI(ctx, b.Node.Netns, p.HostVeth, napiCPU); err != nil {
				return err
			}
		}
		spec := gen.FrameSpec{Bytes: c.size, Flows: c.flows, DstPort: bed.DiscardPort}
		switch {
		case c.direction == PodToWire:
			spec.SrcMAC, spec.DstMAC, spec.SrcIP, spec.DstIP = p.MAC, p.HostVethMAC, p.IP, b.Wire.IP
		case c.vip:
			// Traffic to a ClusterIP reaches the node untagged, routed
			// to the node's own address as a cloud route table does.
			spec.SrcMAC, spec.DstMAC, spec.SrcIP, spec.DstIP = b.Wire.MAC, b.Node.TrunkMAC, b.Wire.IP, b.Service("default/discard").VIP
		default:
			spec.SrcMAC, spec.DstMAC, spec.SrcIP, spec.DstIP, spec.VLAN = b.Wire.MAC, b.Node.TrunkMAC, b.Wire.IP, p.IP, p.VLAN
		}
		g, err := gen.NewGenerator(spec)
		if err != nil {
			return err
		}
		s.gens[k] = g
	}
	return nil
}

func (s *session) close() {
	if s.restoreCT != nil {
		s.restoreCT()
	}
	for _, g := range s.gens {
		g.Close()
	}
	for _, k := range []*gen.Sink{s.podSink, s.wireSink, s.rawSink} {
		if k != nil {
			k.Close()
		}
	}
}

// startServers runs the pods' servers (`serve-echo`, iperf3 is started by
// the tcp scenario) in pod p only: the bench's Services have it as their
// only backend that answers.
func startServers(ctx context.Context, b *bed.Bed, p bed.Pod, binary string) error {
	cmd := b.Command(context.Background(), p.Netns, binary, "serve-echo", "--name", p.Name, "--timeout", "24h",
		"--http", fmt.Sprintf(":%d", bed.HTTPPort), "--udp", fmt.Sprintf(":%d", bed.UDPEchoPort), "--tcp", fmt.Sprintf(":%d", bed.TCPEchoPort))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("server in %s: %w", p.Name, err)
	}
	go cmd.Wait() // reaped when the bed kills it
	return bed.WaitListening(ctx, p.Netns, bed.TCPEchoPort)
}

// measure loads the Services c needs into d, then measures c once.
func (s *session) measure(ctx context.Context, d dataplane, c testCase, profile bool) (sample, error) {
	key, svcs := servicesFor(s.b, c)
	if key != s.loaded {
		s.loaded = ""
		if err := d.setServices(ctx, s, svcs); err != nil {
			return sample{}, err
		}
		s.loaded = key
	}
	var sm sample
	var err error
	entries := 0
	if c.conntrack > 0 {
		if entries, err = s.prefill(ctx, d, c.conntrack); err != nil {
			return sample{}, fmt.Errorf("put %d flows into the connection table: %w", c.conntrack, err)
		}
	}
	switch c.metric {
	case metricPPS:
		sm, err = s.measureFrames(ctx, d, c, profile)
	case metricGbps:
		sm, err = s.measureTCP(ctx, c)
	case metricLatency:
		sm, err = s.measureLatency(ctx, c)
	case metricCPS:
		sm, err = s.measureCPS(ctx, c)
	default:
		err = fmt.Errorf("unknown metric %q", c.metric)
	}
	if t, ok := d.(*trunklinePeer); ok && err == nil {
		sm.RSS = t.agent.rss()
	}
	sm.CTEntries = entries
	return sm, err
}
