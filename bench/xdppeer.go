package bench

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/xdpkernel"
)

// xdpKernelPeer is the in-kernel XDP program doing trunkline's work (VLAN
// demux, DNAT with a reverse-NAT table, tag push, redirects): the ceiling.
type xdpKernelPeer struct {
	p *xdpkernel.Peer
}

func (*xdpKernelPeer) name() string                  { return XDPKernel }
func (*xdpKernelPeer) placement() string             { return "" }
func (*xdpKernelPeer) placementText() string         { return fmt.Sprintf("napi cpu%d", napiCPU) }
func (*xdpKernelPeer) notApplicable(testCase) string { return "" }

func (x *xdpKernelPeer) up(_ context.Context, s *session) error {
	o := xdpkernel.FromBed(s.b)
	o.MaxFlows = 2 * maxPrefill // room for the scale scenario's connection-table point
	p, err := xdpkernel.Attach(o)
	if err != nil {
		return err
	}
	x.p = p
	return nil
}

func (x *xdpKernelPeer) setServices(_ context.Context, s *session, svcs []bed.Service) error {
	out := make([]xdpkernel.Service, len(svcs))
	for i, sv := range svcs {
		proto := xdpkernel.TCP
		if sv.Protocol == "UDP" {
			proto = xdpkernel.UDP
		}
		out[i] = xdpkernel.Service{VIP: sv.VIP, Port: sv.Port, Protocol: proto,
			Backends: []netip.AddrPort{netip.AddrPortFrom(s.pod.IP, sv.TargetPort)}}
	}
	if err := x.p.SetServices(out); err != nil {
		return fmt.Errorf("xdp-kernel: load %d Services: %w", len(svcs), err)
	}
	return nil
}

func (x *xdpKernelPeer) down(context.Context, *session) error {
	if x.p == nil {
		return nil
	}
	err := x.p.Close()
	x.p = nil
	return err
}
