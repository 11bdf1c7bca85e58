package xdpkernel

import (
	"fmt"
	"net/netip"
)

// counter indexes the programs' counters map (enum counter in
// bpf/xdpkernel.c, same order).
type counter uint32

const (
	cToPod counter = iota
	cToBackend
	cTrunkPassed
	cToTrunk
	cToTrunkRevNAT
	cPodPassed
	cDropUnknownVLAN
	cDropNoBackend
	cDropBackendNotLocal
	cDropFragment
	cDropMalformed
	cDropUnsupported
	cDropUnknownPod
	cDropHeadroom
	numCounters
)

// Counters are the programs' outcomes, summed over CPUs since Attach.
type Counters struct {
	// Redirected from the trunk: to the pod of the frame's VID, and to a
	// Service backend (DNAT).
	ToPod, ToBackend uint64
	// TrunkPassed: untagged (or priority-tagged) frames not for a Service,
	// left to the node's kernel.
	TrunkPassed uint64
	// Redirected from a pod to the trunk: as they were (but tagged), and
	// reverse-NATed to a Service VIP.
	ToTrunk, ToTrunkRevNAT uint64
	// PodPassed: from a pod to the node's own address (or neither IPv4
	// nor ARP), left to the node's kernel.
	PodPassed uint64
	// Drops.
	DropUnknownVLAN     uint64 // a VID no pod has
	DropNoBackend       uint64 // a Service with no backends
	DropBackendNotLocal uint64 // the picked backend is no pod of this node
	DropFragment        uint64 // a first fragment to a Service (not load-balanced)
	DropMalformed       uint64 // truncated headers
	DropUnsupported     uint64 // QinQ / 802.1ad on the trunk
	DropUnknownPod      uint64 // a host veth the maps do not know
	DropHeadroom        uint64 // no room to push the tag
}

// Redirected is every frame sent on to another interface.
func (c Counters) Redirected() uint64 { return c.ToPod + c.ToBackend + c.ToTrunk + c.ToTrunkRevNAT }

// Dropped is every frame dropped.
func (c Counters) Dropped() uint64 {
	return c.DropUnknownVLAN + c.DropNoBackend + c.DropBackendNotLocal + c.DropFragment +
		c.DropMalformed + c.DropUnsupported + c.DropUnknownPod + c.DropHeadroom
}

// fields lists Counters' fields by counter.
func (c *Counters) fields() [numCounters]*uint64 {
	return [numCounters]*uint64{
		cToPod: &c.ToPod, cToBackend: &c.ToBackend, cTrunkPassed: &c.TrunkPassed,
		cToTrunk: &c.ToTrunk, cToTrunkRevNAT: &c.ToTrunkRevNAT, cPodPassed: &c.PodPassed,
		cDropUnknownVLAN: &c.DropUnknownVLAN, cDropNoBackend: &c.DropNoBackend,
		cDropBackendNotLocal: &c.DropBackendNotLocal, cDropFragment: &c.DropFragment,
		cDropMalformed: &c.DropMalformed, cDropUnsupported: &c.DropUnsupported,
		cDropUnknownPod: &c.DropUnknownPod, cDropHeadroom: &c.DropHeadroom,
	}
}

// Counters reads the counters.
func (p *Peer) Counters() (Counters, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return Counters{}, fmt.Errorf("xdp-kernel counters: %w", ErrClosed)
	}
	return readCounters(&p.objs)
}

func readCounters(objs *xdpKernelObjects) (Counters, error) {
	var c Counters
	var vals []uint64
	for i, f := range c.fields() {
		if err := objs.Counters.Lookup(uint32(i), &vals); err != nil {
			return Counters{}, fmt.Errorf("xdp-kernel counters: %w", err)
		}
		for _, v := range vals {
			*f += v
		}
	}
	return c, nil
}

// Flow is a translated flow the reverse-NAT map remembers.
type Flow struct {
	Protocol Protocol
	Client   netip.AddrPort
	Frontend netip.AddrPort // the Service VIP:port the client sent to
	Backend  netip.AddrPort
}

// Flows lists the flows in the reverse-NAT map (an LRU map: the oldest go
// when it is full).
func (p *Peer) Flows() ([]Flow, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("xdp-kernel flows: %w", ErrClosed)
	}
	var (
		out []Flow
		k   xdpKernelFlowKey
		v   xdpKernelFrontend
	)
	it := p.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Flow{
			Protocol: Protocol(k.Proto),
			Client:   netip.AddrPortFrom(addrFrom32(k.ClientIp), be16(k.ClientPort)),
			Frontend: netip.AddrPortFrom(addrFrom32(v.Vip), be16(v.Port)),
			Backend:  netip.AddrPortFrom(addrFrom32(k.BackendIp), be16(k.BackendPort)),
		})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("xdp-kernel flows: %w", err)
	}
	return out, nil
}
