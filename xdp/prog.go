package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode is how XDP programs attach to an interface.
type AttachMode int

const (
	// Native runs the program in the driver (veth has it).
	Native AttachMode = iota
	// Generic runs it on the skb, for drivers without native XDP.
	Generic
)

func (m AttachMode) String() string {
	if m == Generic {
		return "generic"
	}
	return "native"
}

// ParseAttachMode parses "native" or "generic".
func ParseAttachMode(s string) (AttachMode, error) {
	switch s {
	case "", "native":
		return Native, nil
	case "generic":
		return Generic, nil
	}
	return 0, fmt.Errorf("xdp mode %q: want native or generic", s)
}

// ErrAttach is wrapped by every failure to attach a program.
var ErrAttach = errors.New("xdp: attach failed")

// Programs are the agent's XDP programs and maps: tl_trunk on the trunk,
// tl_pod on every pod's host veth. Each attachment is a BPF link owned by
// this process, so the kernel detaches the programs when the process exits,
// even by a crash. Safe for concurrent use by the control plane.
type Programs struct {
	mu    sync.Mutex
	objs  progsObjects
	links map[int]link.Link // by ifindex
	slots map[podKey]uint32 // (ifindex, queue) -> slot in pod_xsks
	free  []uint32          // free slots
	next  uint32            // next never-used slot

	vips      map[[4]byte]bool // steered service addresses
	nodePorts map[portKey]bool // steered node ports
}

type podKey struct{ ifindex, queue uint32 }

const maxPodSockets = 16384 // MAX_POD_SOCKETS in bpf/xdp.c

// LoadPrograms loads the programs and creates their maps.
func LoadPrograms() (*Programs, error) {
	p := &Programs{links: map[int]link.Link{}, slots: map[podKey]uint32{}}
	if err := loadProgsObjects(&p.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load xdp programs: %+v", ve)
		}
		return nil, fmt.Errorf("load xdp programs (needs CAP_BPF and CAP_NET_ADMIN): %w", err)
	}
	return p, nil
}

// AttachTrunk attaches tl_trunk to the trunk interface.
func (p *Programs) AttachTrunk(ifname string, mode AttachMode) error {
	return p.attach(ifname, p.objs.TlTrunk, mode)
}

// AttachPod attaches tl_pod to a pod's host veth.
func (p *Programs) AttachPod(ifname string, mode AttachMode) error {
	return p.attach(ifname, p.objs.TlPod, mode)
}

func (p *Programs) attach(ifname string, prog *ebpf.Program, mode AttachMode) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("%w: interface %s: %v", ErrAttach, ifname, err)
	}
	idx := l.Attrs().Index
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.links[idx]; ok {
		return nil
	}
	if err := replaceStale(l); err != nil {
		return err
	}
	flags := link.XDPDriverMode
	if mode == Generic {
		flags = link.XDPGenericMode
	}
	lk, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: idx, Flags: flags})
	if err != nil {
		hint := "run with --xdp-mode=generic"
		if mode == Generic {
			hint = "check that the kernel has XDP (CONFIG_XDP_SOCKETS, CONFIG_BPF_SYSCALL) and the agent has CAP_NET_ADMIN and CAP_BPF"
		}
		return fmt.Errorf("%w: %s XDP on %s: %v; %s", ErrAttach, mode, ifname, err, hint)
	}
	p.links[idx] = lk
	return nil
}

// replaceStale detaches an XDP program of ours that a crashed agent left
// attached the legacy way (a BPF link dies with its process, so only such
// leftovers remain). Any other program is reported, never removed.
func replaceStale(l netlink.Link) error {
	x := l.Attrs().Xdp
	if x == nil || !x.Attached || x.ProgId == 0 {
		return nil
	}
	name := ""
	if prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgId)); err == nil {
		if info, err := prog.Info(); err == nil {
			name = info.Name
		}
		prog.Close()
	}
	if name != "tl_trunk" && name != "tl_pod" {
		return fmt.Errorf("%w: %s already runs XDP program %d (%q), not trunkline's; detach it (ip link set dev %s xdp off) or pick another interface",
			ErrAttach, l.Attrs().Name, x.ProgId, name, l.Attrs().Name)
	}
	if err := netlink.LinkSetXdpFd(l, -1); err != nil {
		return fmt.Errorf("%w: %s has trunkline's program %d attached by another agent that still runs (%v); stop it first",
			ErrAttach, l.Attrs().Name, x.ProgId, err)
	}
	return nil
}

// Detach removes whatever this process attached to ifname.
func (p *Programs) Detach(ifname string) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil // the link is gone, and its program with it
	}
	return p.DetachIndex(l.Attrs().Index)
}

// DetachIndex removes whatever this process attached to the interface.
func (p *Programs) DetachIndex(ifindex int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	lk, ok := p.links[ifindex]
	if !ok {
		return nil
	}
	delete(p.links, ifindex)
	return lk.Close()
}

// Attached reports whether this process has a program on the interface.
func (p *Programs) Attached(ifindex int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.links[ifindex]
	return ok
}

// SetTrunkSocket steers the trunk's tagged frames on queue to fd.
func (p *Programs) SetTrunkSocket(queue, fd int) error {
	if err := p.objs.TrunkXsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("steer trunk queue %d to its socket: %w", queue, err)
	}
	return nil
}

// ClearTrunkSocket stops steering queue's frames to a socket.
func (p *Programs) ClearTrunkSocket(queue int) error {
	if err := p.objs.TrunkXsks.Delete(uint32(queue)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// SetPodSocket steers frames arriving on (ifindex, queue) to fd.
func (p *Programs) SetPodSocket(ifindex, queue, fd int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := podKey{uint32(ifindex), uint32(queue)}
	slot, ok := p.slots[k]
	if !ok {
		switch {
		case len(p.free) > 0:
			slot = p.free[len(p.free)-1]
			p.free = p.free[:len(p.free)-1]
		case p.next < maxPodSockets:
			slot = p.next
			p.next++
		default:
			return fmt.Errorf("steer pod ifindex %d queue %d: all %d pod socket slots in use", ifindex, queue, maxPodSockets)
		}
	}
	if err := p.objs.PodXsks.Put(slot, uint32(fd)); err != nil {
		return fmt.Errorf("steer pod ifindex %d queue %d: %w", ifindex, queue, err)
	}
	if err := p.objs.PodSlots.Put(k, slot); err != nil {
		p.objs.PodXsks.Delete(slot)
		return fmt.Errorf("steer pod ifindex %d queue %d: %w", ifindex, queue, err)
	}
	p.slots[k] = slot
	return nil
}

// ClearPodSocket stops steering (ifindex, queue) to a socket; its frames
// then pass to the kernel.
func (p *Programs) ClearPodSocket(ifindex, queue int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := podKey{uint32(ifindex), uint32(queue)}
	slot, ok := p.slots[k]
	if !ok {
		return nil
	}
	delete(p.slots, k)
	p.free = append(p.free, slot)
	err1 := p.objs.PodSlots.Delete(k)
	err2 := p.objs.PodXsks.Delete(slot)
	for _, err := range []error{err1, err2} {
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unsteer pod ifindex %d queue %d: %w", ifindex, queue, err)
		}
	}
	return nil
}

// SetNodeAddrs sets the node's own IPv4 addresses: pods' traffic to them
// (and ARP for them) goes to the node's kernel.
func (p *Programs) SetNodeAddrs(addrs []netip.Addr) error {
	for _, a := range addrs {
		if !a.Is4() {
			continue
		}
		if err := p.objs.NodeAddrs.Put(a.As4(), uint8(1)); err != nil {
			return fmt.Errorf("set node address %s: %w", a, err)
		}
	}
	return nil
}

// Close detaches every program this process attached and frees the maps.
func (p *Programs) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for idx, lk := range p.links {
		errs = append(errs, lk.Close())
		delete(p.links, idx)
	}
	errs = append(errs, p.objs.Close())
	return errors.Join(errs...)
}

// ServicePort is a NodePort the trunk and pod programs steer to the agent.
type ServicePort struct {
	Port  uint16
	Proto uint8
}

type portKey struct {
	Port  uint16 // network order
	Proto uint8
	_     uint8
}

// SetServices replaces what the programs steer to the agent besides
// tagged frames: untagged traffic to the Service frontend addresses vips,
// to the node's NodePorts, and to the node's SNAT ports lo..hi (replies to
// translated flows; lo 0: none). Entries no longer wanted are removed.
func (p *Programs) SetServices(vips [][4]byte, nodePorts []ServicePort, lo, hi uint16) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := make(map[[4]byte]bool, len(vips))
	for _, v := range vips {
		want[v] = true
		if !p.vips[v] {
			if err := p.objs.Vips.Put(v, uint8(1)); err != nil {
				return fmt.Errorf("steer service address %v: %w", v, err)
			}
		}
	}
	for v := range p.vips {
		if !want[v] {
			p.objs.Vips.Delete(v)
		}
	}
	p.vips = want
	wantPorts := make(map[portKey]bool, len(nodePorts))
	for _, np := range nodePorts {
		k := portKey{Port: np.Port<<8 | np.Port>>8, Proto: np.Proto}
		wantPorts[k] = true
		if !p.nodePorts[k] {
			if err := p.objs.NodePorts.Put(k, uint8(1)); err != nil {
				return fmt.Errorf("steer node port %d/%d: %w", np.Port, np.Proto, err)
			}
		}
	}
	for k := range p.nodePorts {
		if !wantPorts[k] {
			p.objs.NodePorts.Delete(k)
		}
	}
	p.nodePorts = wantPorts
	if err := p.objs.SnatPorts.Put(uint32(0), [2]uint16{lo, hi}); err != nil {
		return fmt.Errorf("steer SNAT ports %d-%d: %w", lo, hi, err)
	}
	return nil
}

// IsTrunkProgram reports whether the program with this kernel ID is this
// process's trunk program.
func (p *Programs) IsTrunkProgram(id uint32) bool {
	info, err := p.objs.TlTrunk.Info()
	if err != nil {
		return false
	}
	own, ok := info.ID()
	return ok && uint32(own) == id
}

// ShutSYNGate makes the trunk program shed, for d from now, the TCP SYNs
// to Service frontends (ClusterIP, ExternalIP, LoadBalancer, NodePort)
// beyond perSecond per CPU, in bursts of at most burst: under a SYN flood
// the excess dies before it is copied to the agent, and established flows'
// frames keep their room on the socket. Called again, it moves the end.
func (p *Programs) ShutSYNGate(d time.Duration, perSecond, burst int) error {
	if perSecond <= 0 || burst <= 0 {
		return fmt.Errorf("syn gate: rate %d/s and burst %d must be positive", perSecond, burst)
	}
	// The program reads the coarse monotonic clock.
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return fmt.Errorf("syn gate: %w", err)
	}
	cost := uint64(time.Second) / uint64(perSecond)
	g := progsSynGate{UntilNs: uint64(ts.Nano()) + uint64(d), CostNs: cost, BurstNs: cost * uint64(burst)}
	if err := p.objs.SynGate.Put(uint32(0), g); err != nil {
		return fmt.Errorf("syn gate: %w", err)
	}
	return nil
}

// SYNsShed returns how many SYNs the trunk program has shed, over all CPUs.
func (p *Programs) SYNsShed() (uint64, error) {
	var per []progsSynBucket
	if err := p.objs.SynBuckets.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("syn gate counters: %w", err)
	}
	var n uint64
	for _, b := range per {
		n += b.Shed
	}
	return n, nil
}
