package gen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/trunkline/trunkline/bench/bed"
)

// DefaultRepeat is the number of frames per BPF_PROG_TEST_RUN call. Each
// call ends with a synchronize_rcu that leaves the generator idle; with 200k
// per call that was ~45% of its time, with 2M ~7% (FIELD-NOTES.md).
const DefaultRepeat = 4 << 20

// MinRepeat is the smallest Repeat RunOptions accepts.
const MinRepeat = 2_000_000

// pace is struct pace of gen.c: the generator's rate cap.
type pace struct {
	Rate, StartNs, Sent uint64
}

// xdpMD is struct xdp_md, the context of a live-frames run: data_end must be
// the frame's length, ingress_ifindex names the interface that transmits
// XDP_TX frames.
type xdpMD struct {
	Data           uint32
	DataEnd        uint32
	DataMeta       uint32
	IngressIfindex uint32
	RxQueueIndex   uint32
	EgressIfindex  uint32
}

// Generator sends one kind of frame (a FrameSpec) at the rate the kernel and
// one CPU allow. Offered may be read while Run runs.
type Generator struct {
	spec  FrameSpec
	frame []byte
	objs  genObjects
}

// NewGenerator loads the generator program for frames described by s.
func NewGenerator(s FrameSpec) (*Generator, error) {
	s, err := s.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	frame, err := s.Frame()
	if err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	spec, err := loadGen()
	if err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	var hdr [58]byte
	n, l3 := s.headerLen(), s.l3Off()
	copy(hdr[:], frame[:n])
	l4csum := uint32(0) // UDP: checksum 0, none to keep
	if s.TCPSYN {
		l4csum = uint32(l3 + 20 + 16)
	}
	for name, v := range map[string]any{
		"hdr":        hdr,
		"hdr_len":    uint32(n),
		"sport_off":  uint32(l3 + 20),
		"l4csum_off": l4csum,
		"sport_base": s.SrcPortBase,
		"flows":      uint16(s.Flows),
		"hosts":      uint32(s.Hosts),
		"saddr_off":  uint32(l3 + 12),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("generator: set %s: %w", name, err)
		}
	}
	g := &Generator{spec: s, frame: frame}
	var objs struct {
		Prog  *ebpf.Program `ebpf:"gen_frame"`
		Count *ebpf.Map     `ebpf:"gen_count"`
		Pace  *ebpf.Map     `ebpf:"gen_pace"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("generator: load: %w", err)
	}
	g.objs.GenFrame, g.objs.GenCount, g.objs.GenPace = objs.Prog, objs.Count, objs.Pace
	return g, nil
}

// Spec is the frame spec with defaults filled in.
func (g *Generator) Spec() FrameSpec { return g.spec }

// Offered is the number of frames the program has made so far (all runs).
// A frame the interface could not take (its peer's ring full) is counted:
// offered is what the generator asked the path to carry.
func (g *Generator) Offered() (uint64, error) { return sumPerCPU(g.objs.GenCount, 0) }

// Close frees the program.
func (g *Generator) Close() error {
	return errors.Join(g.objs.GenFrame.Close(), g.objs.GenCount.Close(), g.objs.GenPace.Close())
}

// RunOptions says where and how long a generator runs.
type RunOptions struct {
	// Netns and Ifname: the interface that transmits the frames (into its
	// veth peer).
	Netns  string
	Ifname string
	// CPU pins the generating thread; -1 leaves it unpinned.
	CPU int
	// Until: no run starts after this time; the one running then finishes
	// (Repeat frames take ~0.5–1 s at 64 bytes).
	Until time.Time
	// Rate caps the frames sent per second (0: as fast as the kernel
	// sends). Frames over the rate are dropped by the program before they
	// are counted or sent, so Offered counts only frames sent.
	Rate uint64
	// Repeat is the number of frames per run: 0 means DefaultRepeat; at
	// least MinRepeat.
	Repeat uint32
}

// RunStats describes a finished Run.
type RunStats struct {
	Runs    int
	Offered uint64        // frames made by this Run
	Elapsed time.Duration // from the first run's start to the last's end
}

// Run sends frames until o.Until or ctx is done (checked between runs). It
// blocks; read Offered from another goroutine to measure while it runs.
func (g *Generator) Run(ctx context.Context, o RunOptions) (RunStats, error) {
	if o.Repeat == 0 {
		o.Repeat = DefaultRepeat
	}
	if o.Repeat < MinRepeat {
		return RunStats{}, fmt.Errorf("generator: repeat %d: want at least %d (small runs leave the generator idle in synchronize_rcu)", o.Repeat, MinRepeat)
	}
	before, err := g.Offered()
	if err != nil {
		return RunStats{}, fmt.Errorf("generator: %w", err)
	}
	if err := g.objs.GenPace.Put(uint32(0), pace{Rate: o.Rate}); err != nil {
		return RunStats{}, fmt.Errorf("generator: set rate: %w", err)
	}
	var st RunStats
	err = bed.InNetns(o.Netns, func() error {
		if o.CPU >= 0 {
			var set unix.CPUSet
			set.Set(o.CPU)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				return fmt.Errorf("pin to CPU %d: %w", o.CPU, err)
			}
		}
		ifc, err := net.InterfaceByName(o.Ifname)
		if err != nil {
			return err
		}
		opts := &ebpf.RunOptions{
			Data:    g.frame,
			Repeat:  o.Repeat,
			Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			Context: xdpMD{DataEnd: uint32(len(g.frame)), IngressIfindex: uint32(ifc.Index)},
		}
		start := time.Now()
		defer func() { st.Elapsed = time.Since(start) }()
		for ctx.Err() == nil && (st.Runs == 0 || time.Now().Before(o.Until)) {
			if _, err := g.objs.GenFrame.Run(opts); err != nil {
				return err
			}
			st.Runs++
		}
		return nil
	})
	after, cerr := g.Offered()
	st.Offered = after - before
	if err == nil {
		err = cerr
	}
	if err != nil {
		return st, fmt.Errorf("generator on %s/%s: %w", o.Netns, o.Ifname, err)
	}
	runtime.KeepAlive(g)
	return st, nil
}

// SinkMode is where a Sink runs on its interface.
type SinkMode int

const (
	// SinkTC runs the sink on TCX ingress: the interface receives as a pod
	// without XDP does (no copy), and the sink drops at tc.
	SinkTC SinkMode = iota
	// SinkXDP runs the sink as a native XDP program: the cheapest drop, but
	// on a veth it makes the kernel copy every skb the interface receives
	// (from a socket, AF_XDP copy-mode TX, the stack) into a page-pool page
	// before XDP sees it.
	SinkXDP
)

func (m SinkMode) String() string {
	if m == SinkTC {
		return "tc"
	}
	return "xdp"
}

// Sink counts and drops the generator's frames (IPv4 UDP to the spec's
// destination port, tagged or not) on one interface, and passes every other
// frame. It is attached through a BPF link, so it goes away with its
// process.
type Sink struct {
	prog  *ebpf.Program
	count *ebpf.Map
	link  link.Link
}

// AttachSink attaches a sink counting UDP to dstPort (0: DefaultDstPort) on
// ifname in netns.
func AttachSink(netns, ifname string, dstPort uint16, mode SinkMode) (*Sink, error) {
	if dstPort == 0 {
		dstPort = DefaultDstPort
	}
	spec, err := loadGen()
	if err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	if err := spec.Variables["sink_dport"].Set(dstPort); err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	var objs struct {
		XDP   *ebpf.Program `ebpf:"sink"`
		TC    *ebpf.Program `ebpf:"sink_tc"`
		Count *ebpf.Map     `ebpf:"sink_count"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, fmt.Errorf("sink: load: %w", err)
	}
	s := &Sink{prog: objs.XDP, count: objs.Count}
	unused := objs.TC
	if mode == SinkTC {
		s.prog, unused = objs.TC, objs.XDP
	}
	unused.Close()
	err = bed.InNetns(netns, func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		if mode == SinkTC {
			s.link, err = link.AttachTCX(link.TCXOptions{Program: s.prog, Interface: ifc.Index, Attach: ebpf.AttachTCXIngress})
		} else {
			s.link, err = link.AttachXDP(link.XDPOptions{Program: s.prog, Interface: ifc.Index, Flags: link.XDPDriverMode})
		}
		return err
	})
	if err != nil {
		s.prog.Close()
		s.count.Close()
		return nil, fmt.Errorf("sink: attach (%v) to %s/%s: %w", mode, netns, ifname, err)
	}
	return s, nil
}

// Count is the number of the generator's frames the sink has dropped.
func (s *Sink) Count() (uint64, error) { return sumPerCPU(s.count, 0) }

// Passed is the number of other frames the sink has passed on.
func (s *Sink) Passed() (uint64, error) { return sumPerCPU(s.count, 1) }

// Close detaches the sink.
func (s *Sink) Close() error {
	return errors.Join(s.link.Close(), s.prog.Close(), s.count.Close())
}

func sumPerCPU(m *ebpf.Map, key uint32) (uint64, error) {
	var vals []uint64
	if err := m.Lookup(key, &vals); err != nil {
		return 0, err
	}
	var sum uint64
	for _, v := range vals {
		sum += v
	}
	return sum, nil
}
