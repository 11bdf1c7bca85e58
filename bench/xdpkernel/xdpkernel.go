// Package xdpkernel is the bench's xdp-kernel peer: an in-kernel XDP
// dataplane doing the forwarding trunkline does in userspace — VLAN demux,
// Service load balancing with DNAT and a reverse-NAT table, tag push, MAC
// rewrite — the Cilium/Katran-like ceiling trunkline is measured against.
//
// Two programs (bpf/xdpkernel.c), attached in native mode through BPF links
// (nothing outlives the process that attached them):
//
//	trunk       802.1Q-tagged frames go to the pod of their VID with the tag
//	            popped, dst MAC = the pod's, src MAC = its host veth's; IPv4
//	            TCP/UDP to a Service VIP:port (tagged, or untagged as the
//	            VPC routes the Service range to the node) goes to a backend
//	            picked by a hash of the 5-tuple, DNATed (incremental
//	            checksums, a UDP checksum of 0 stays 0), its reverse mapping
//	            kept in an LRU map. Other untagged frames pass to the node's
//	            kernel; an unknown VID is dropped and counted.
//	host veth   IPv4 from the pod is reverse-NATed when the LRU map knows its
//	            flow, tagged with the pod's VID, dst MAC = the VPC gateway's,
//	            src MAC = the trunk's, and sent out of the trunk; ARP from the
//	            pod is tagged too (MACs kept), so the VPC can resolve pods.
//	            IPv4 to the node's address and ARP asking for it pass to the
//	            node's kernel.
//
// Every outcome has a per-CPU counter (Counters).
//
// # Redirecting into a veth
//
// bpf_redirect into a veth hands the frame to the veth's peer through the
// peer's XDP ring, which exists only while the peer has a NAPI: on this
// kernel (6.18) that is while the peer has an XDP program or GRO on.
// Otherwise veth_xdp_xmit drops the frame: the program still counts it as
// redirected, and the kernel shows it at most as an RX drop of the veth
// whose program redirected it (`ethtool -S hpod1`: rx_queue_0_drops).
// Measured on the bed: with GRO off on the pods' eth0, nothing reaches a
// pod; with GRO off on the wire, nothing from a pod reaches the VPC; with
// both on, everything flows. The
// trunk's and host veths' own NAPIs come with the programs attached here; the
// peers — the pods' eth0 (trunk → host veth → eth0) and the VPC side of the
// trunk (host veth → trunk → wire) — are given by Options.TrunkPeer and
// Pod.Peer, and Attach turns GRO on there (`ethtool -K IF gro on`, in their
// namespaces) when it is off, and Close turns it off again. GRO rather than
// an XDP program: a pod with an XDP program on eth0 would make the kernel
// copy every skb it receives. A peer left empty is not touched: then the
// caller must see to its NAPI. GRO is a device setting, not a BPF link: a
// process killed between Attach and Close leaves it on.
package xdpkernel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/trunkline/trunkline/bench/bed"
)

// Defaults of Options.
const (
	// DefaultMaxServices has room for the bench's 100,000 Services.
	DefaultMaxServices = 1 << 17
	// DefaultMaxBackends is the default bound on backends summed over all
	// Services.
	DefaultMaxBackends = 1 << 19
	// DefaultMaxFlows is the default size of the reverse-NAT LRU map.
	DefaultMaxFlows = 1 << 18
)

var (
	// ErrInvalidOptions reports Options (or Services) the peer cannot be
	// built from.
	ErrInvalidOptions = errors.New("invalid xdp-kernel options")
	// ErrClosed reports a call on a closed Peer.
	ErrClosed = errors.New("xdp-kernel peer closed")
)

// Protocol is a Service's L4 protocol, its IP protocol number.
type Protocol uint8

// The protocols a Service may have.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

// String is "TCP", "UDP" or "protocol(N)".
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return fmt.Sprintf("protocol(%d)", uint8(p))
}

// Endpoint names an interface in a network namespace ("" is the namespace
// of the calling process).
type Endpoint struct {
	Netns  string
	Ifname string
}

// String is netns/ifname, or ifname in the process's own namespace.
func (e Endpoint) String() string {
	if e.Netns == "" {
		return e.Ifname
	}
	return e.Netns + "/" + e.Ifname
}

// Pod is a pod attached to the node: its address and VLAN, and its host
// veth in the node's namespace.
type Pod struct {
	IP       netip.Addr
	MAC      net.HardwareAddr
	VLAN     uint16
	HostVeth string
	// HostVethMAC is the host veth's MAC, the source of frames to the pod.
	HostVethMAC net.HardwareAddr
	// Peer is the pod's end of the veth (eth0 in the pod's namespace):
	// Attach turns GRO on there so frames can be redirected into the
	// host veth. Empty: left alone.
	Peer Endpoint
}

// Service is a Service frontend and its backends (pod addresses and target
// ports). A Service with no backends drops its traffic (counted).
type Service struct {
	VIP      netip.Addr
	Port     uint16
	Protocol Protocol
	Backends []netip.AddrPort
}

// Options says where to attach the peer and what it forwards.
type Options struct {
	// Netns is the node's namespace, where Trunk and the host veths are
	// ("": the calling process's).
	Netns string
	// Trunk is the trunk interface; TrunkMAC its MAC, the source of frames
	// to the VPC.
	Trunk    string
	TrunkMAC net.HardwareAddr
	// TrunkPeer is the VPC's end of the trunk veth (the bed's wire): Attach
	// turns GRO on there so frames can be redirected into the trunk. Empty:
	// left alone (a real NIC, or the caller sees to it).
	TrunkPeer Endpoint
	// GatewayMAC is the VPC gateway's MAC, the destination of frames to the
	// VPC.
	GatewayMAC net.HardwareAddr
	// NodeIP is the node's address: pods' traffic to it goes to the node's
	// kernel.
	NodeIP   netip.Addr
	Pods     []Pod
	Services []Service
	// MaxServices bounds the Services SetServices accepts (default
	// DefaultMaxServices); MaxBackends bounds their backends summed
	// (default DefaultMaxBackends; the backend map holds twice that, so a
	// new set is written beside the one in use); MaxFlows is the size of
	// the reverse-NAT LRU map (default DefaultMaxFlows).
	MaxServices int
	MaxBackends int
	MaxFlows    int
	// Logger receives debug lines (GRO changes) and warnings when Close
	// cannot restore something. Default: discard.
	Logger *slog.Logger
}

// maxAll bounds every size option: the maps are preallocated.
const maxAll = 1 << 24

// withDefaults fills in defaults and reports every problem together.
func (o Options) withDefaults() (Options, error) {
	if o.MaxServices == 0 {
		o.MaxServices = DefaultMaxServices
	}
	if o.MaxBackends == 0 {
		o.MaxBackends = DefaultMaxBackends
	}
	if o.MaxFlows == 0 {
		o.MaxFlows = DefaultMaxFlows
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if o.Trunk == "" {
		errs = append(errs, errors.New("no trunk interface: set Options.Trunk"))
	}
	if len(o.TrunkMAC) != 6 {
		errs = append(errs, fmt.Errorf("trunk MAC %v: want 6 bytes", o.TrunkMAC))
	}
	if len(o.GatewayMAC) != 6 {
		errs = append(errs, fmt.Errorf("gateway MAC %v: want 6 bytes", o.GatewayMAC))
	}
	if !o.NodeIP.Is4() {
		errs = append(errs, fmt.Errorf("node IP %v: want an IPv4 address", o.NodeIP))
	}
	for name, v := range map[string]int{"MaxServices": o.MaxServices, "MaxBackends": o.MaxBackends, "MaxFlows": o.MaxFlows} {
		if v < 1 || v > maxAll {
			errs = append(errs, fmt.Errorf("%s %d: want 1..%d", name, v, maxAll))
		}
	}
	if len(o.Pods) == 0 {
		errs = append(errs, errors.New("no pods: the peer forwards to pods, give at least one"))
	}
	vlans, ips, veths := map[uint16]int{}, map[netip.Addr]int{}, map[string]int{}
	for i, p := range o.Pods {
		if p.VLAN < 1 || p.VLAN > 4094 {
			errs = append(errs, fmt.Errorf("pod %d: VLAN %d: want 1..4094", i, p.VLAN))
		} else if j, dup := vlans[p.VLAN]; dup {
			errs = append(errs, fmt.Errorf("pod %d: VLAN %d is pod %d's too", i, p.VLAN, j))
		}
		vlans[p.VLAN] = i
		if !p.IP.Is4() {
			errs = append(errs, fmt.Errorf("pod %d: IP %v: want IPv4", i, p.IP))
		} else if j, dup := ips[p.IP]; dup {
			errs = append(errs, fmt.Errorf("pod %d: IP %v is pod %d's too", i, p.IP, j))
		}
		ips[p.IP] = i
		if len(p.MAC) != 6 || len(p.HostVethMAC) != 6 {
			errs = append(errs, fmt.Errorf("pod %d: MACs %v (pod), %v (host veth): want 6 bytes each", i, p.MAC, p.HostVethMAC))
		}
		if p.HostVeth == "" {
			errs = append(errs, fmt.Errorf("pod %d (%v): no host veth", i, p.IP))
		} else if j, dup := veths[p.HostVeth]; dup {
			errs = append(errs, fmt.Errorf("pod %d: host veth %s is pod %d's too", i, p.HostVeth, j))
		} else if p.HostVeth == o.Trunk {
			errs = append(errs, fmt.Errorf("pod %d: host veth %s is the trunk", i, p.HostVeth))
		}
		veths[p.HostVeth] = i
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return o, nil
}

// FromBed returns Options for a bed: its node, trunk, wire and pods, no
// Services.
func FromBed(b *bed.Bed) Options {
	o := Options{
		Netns:      b.Node.Netns,
		Trunk:      b.Node.Trunk,
		TrunkMAC:   b.Node.TrunkMAC,
		TrunkPeer:  Endpoint{Netns: b.Wire.Netns, Ifname: b.Wire.Ifname},
		GatewayMAC: b.Wire.MAC,
		NodeIP:     b.Node.IP,
	}
	for _, p := range b.Pods {
		o.Pods = append(o.Pods, Pod{
			IP:          p.IP,
			MAC:         p.MAC,
			VLAN:        p.VLAN,
			HostVeth:    p.HostVeth,
			HostVethMAC: p.HostVethMAC,
			Peer:        Endpoint{Netns: p.Netns, Ifname: p.Ifname},
		})
	}
	return o
}

// Peer is the attached dataplane. Its methods may be called from any
// goroutine.
type Peer struct {
	log *slog.Logger
	// mu guards everything below; objs' maps are read without it.
	mu     sync.Mutex
	closed bool
	objs   xdpKernelObjects
	links  []link.Link
	gro    []groChange // peers whose GRO Attach turned on, to turn off
	svcs   serviceTable
}

// Attach loads the programs, fills the pod and Service maps, gives the veth
// peers a NAPI (GRO), and attaches the trunk program to the trunk and the
// pod program to each host veth, in native mode. On failure it undoes what
// it did. Run no other XDP program (no trunkline agent) on these interfaces
// meanwhile.
func Attach(o Options) (_ *Peer, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("xdp-kernel attach: %w", err)
	}
	p := &Peer{log: o.Logger, svcs: newServiceTable(o.MaxServices, o.MaxBackends)}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close())
		}
	}()

	// Interface indexes in the node's namespace.
	names := []string{o.Trunk}
	for _, pod := range o.Pods {
		names = append(names, pod.HostVeth)
	}
	idx, err := ifindexes(o.Netns, names)
	if err != nil {
		return nil, fmt.Errorf("xdp-kernel attach: %w", err)
	}
	cfg := loadConfig{
		trunkIfindex: idx[0],
		trunkMAC:     [6]byte(o.TrunkMAC),
		gatewayMAC:   [6]byte(o.GatewayMAC),
		nodeIP:       o.NodeIP,
		pods:         len(o.Pods),
		maxServices:  o.MaxServices,
		maxBackends:  o.MaxBackends,
		maxFlows:     o.MaxFlows,
	}
	if err := load(cfg, &p.objs); err != nil {
		return nil, fmt.Errorf("xdp-kernel attach: %w", err)
	}
	for i, pod := range o.Pods {
		if err := p.putPod(pod, idx[1+i]); err != nil {
			return nil, fmt.Errorf("xdp-kernel attach: pod %v: %w", pod.IP, err)
		}
	}
	if err := p.setServices(o.Services); err != nil {
		return nil, fmt.Errorf("xdp-kernel attach: %w", err)
	}

	// NAPI on the peers before any program redirects into their veths.
	peers := []Endpoint{o.TrunkPeer}
	for _, pod := range o.Pods {
		peers = append(peers, pod.Peer)
	}
	for _, e := range peers {
		if e.Ifname == "" {
			continue
		}
		ch, err := groOn(e)
		if err != nil {
			return nil, fmt.Errorf("xdp-kernel attach: NAPI for redirects into %s's veth: %w", e, err)
		}
		if ch.turnedOn {
			p.gro = append(p.gro, ch)
			p.log.Debug("xdp-kernel: GRO on (veth NAPI for XDP redirects)", "if", e.String())
		}
	}

	// Pods first, so that nothing comes off the trunk before they are
	// ready.
	for i, pod := range o.Pods {
		if err := p.attach(o.Netns, p.objs.XkPod, idx[1+i], pod.HostVeth); err != nil {
			return nil, err
		}
	}
	if err := p.attach(o.Netns, p.objs.XkTrunk, idx[0], o.Trunk); err != nil {
		return nil, err
	}
	return p, nil
}

// attach links prog to ifindex in native XDP mode (the link is made inside
// netns: ifindexes are per namespace).
func (p *Peer) attach(netns string, prog *ebpf.Program, ifindex int, ifname string) error {
	err := inNetns(netns, func() error {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
		if err != nil {
			return err
		}
		p.links = append(p.links, l)
		return nil
	})
	if err != nil {
		hint := ""
		if errors.Is(err, unix.EBUSY) {
			hint = " (is another XDP program, e.g. a trunkline agent, attached? detach it first)"
		}
		return fmt.Errorf("xdp-kernel attach: XDP (native) on %s: %w%s", ifname, err, hint)
	}
	return nil
}

// putPod writes a pod into the three pod maps.
func (p *Peer) putPod(pod Pod, ifindex int) error {
	v := xdpKernelPod{Ifindex: uint32(ifindex), Vid: pod.VLAN, Mac: [6]byte(pod.MAC), HostMac: [6]byte(pod.HostVethMAC)}
	if err := p.objs.PodsByVid.Put(pod.VLAN, &v); err != nil {
		return fmt.Errorf("pods_by_vid: %w", err)
	}
	if err := p.objs.PodsByIp.Put(be32(pod.IP), &v); err != nil {
		return fmt.Errorf("pods_by_ip: %w", err)
	}
	if err := p.objs.PodsByIfindex.Put(uint32(ifindex), &v); err != nil {
		return fmt.Errorf("pods_by_ifindex: %w", err)
	}
	return nil
}

// SetServices replaces the Services with svcs. The new backends are written
// beside the ones in use, then the Services are updated and the removed ones
// deleted, each in one batch: a packet sees a Service's old backends or its
// new ones, never a mix. Flows already translated keep their reverse
// mapping. On a validation error nothing changes.
func (p *Peer) SetServices(svcs []Service) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("xdp-kernel set services: %w", ErrClosed)
	}
	if err := p.setServices(svcs); err != nil {
		return fmt.Errorf("xdp-kernel set services: %w", err)
	}
	return nil
}

// Close detaches the programs, turns GRO off again where Attach turned it
// on, and frees the maps. Repeating it is fine.
func (p *Peer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if err := p.close(); err != nil {
		return fmt.Errorf("xdp-kernel close: %w", err)
	}
	return nil
}

// close undoes Attach's work in reverse; p.mu held or p not yet shared.
func (p *Peer) close() error {
	var errs []error
	for _, l := range slices.Backward(p.links) {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach XDP link: %w", err))
		}
	}
	p.links = nil
	for _, ch := range slices.Backward(p.gro) {
		if err := ch.undo(); err != nil {
			p.log.Warn("xdp-kernel: GRO not turned off again", "if", ch.at.String(), "err", err)
			errs = append(errs, err)
			continue
		}
		p.log.Debug("xdp-kernel: GRO off again", "if", ch.at.String())
	}
	p.gro = nil
	if err := p.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
