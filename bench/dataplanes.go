package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/bench/bed"
)

// dataplane is one of the paths compared: it is set up on the session's
// bed, given the Services of each test point, and torn down.
type dataplane interface {
	name() string
	placement() string // "" but for trunkline
	// placementText says where things ran, for the table.
	placementText() string
	// notApplicable says why the dataplane cannot run c, or "".
	notApplicable(c testCase) string
	up(ctx context.Context, s *session) error
	// setServices replaces the Services the dataplane serves.
	setServices(ctx context.Context, s *session, svcs []bed.Service) error
	down(ctx context.Context, s *session) error
}

// dataplanesFor lists the dataplanes o asks for, in measuring order.
func dataplanesFor(o Options) []dataplane {
	var ds []dataplane
	for _, name := range AllDataplanes {
		if !contains(o.Dataplanes, name) {
			continue
		}
		switch name {
		case Raw:
			ds = append(ds, &rawPeer{})
		case KernelRoute, Kernel, KernelNft:
			ds = append(ds, &kernelPeer{mode: name})
		case XDPKernel:
			ds = append(ds, &xdpKernelPeer{})
		case Trunkline:
			if o.AgentBinary == "" {
				continue
			}
			ownCPU := genCPU // with 2 cores the only other core is the generator's
			if numCPU() > 2 {
				ownCPU = 2
			}
			ds = append(ds,
				&trunklinePeer{binary: o.AgentBinary, place: SharedCore, cpu: napiCPU},
				&trunklinePeer{binary: o.AgentBinary, place: OwnCore, cpu: ownCPU})
		}
	}
	return ds
}

// rawPeer is frames across one veth pair with nothing on it.
type rawPeer struct{}

func (rawPeer) name() string          { return Raw }
func (rawPeer) placement() string     { return "" }
func (rawPeer) placementText() string { return fmt.Sprintf("napi cpu%d", napiCPU) }
func (rawPeer) notApplicable(c testCase) string {
	if c.scenario != Throughput {
		return "one veth pair: no VLANs, routes or Services"
	}
	return ""
}
func (rawPeer) up(context.Context, *session) error                         { return nil }
func (rawPeer) setServices(context.Context, *session, []bed.Service) error { return nil }
func (rawPeer) down(context.Context, *session) error                       { return nil }

// trunklinePeer is the agent with its worker pinned to cpu.
type trunklinePeer struct {
	binary string
	place  string
	cpu    int
	agent  *agentProc
}

func (t *trunklinePeer) name() string      { return Trunkline }
func (t *trunklinePeer) placement() string { return t.place }
func (t *trunklinePeer) placementText() string {
	s := fmt.Sprintf("worker cpu%d, napi cpu%d", t.cpu, napiCPU)
	if t.cpu == genCPU {
		s += " (+gen)"
	}
	return s
}
func (t *trunklinePeer) notApplicable(testCase) string { return "" }

func (t *trunklinePeer) up(ctx context.Context, s *session) error {
	a, err := startAgent(ctx, s.b, t.binary, t.cpu, s.conntrackMax, s.o.AgentArgs)
	if err != nil {
		return err
	}
	t.agent = a
	return nil
}

func (t *trunklinePeer) setServices(ctx context.Context, s *session, svcs []bed.Service) error {
	cfgs := make([]agent.ServiceConfig, len(svcs))
	pods := []string{s.pod.Name}
	for i, sv := range svcs {
		c := agent.ServiceConfig{
			Name: sv.Name, Protocol: sv.Protocol, Port: int(sv.Port), TargetPort: int(sv.TargetPort),
			ClusterIP: sv.VIP.String(), NodePort: int(sv.NodePort), Backends: pods,
		}
		if sv.Local {
			c.ExternalTrafficPolicy = "Local"
		}
		if sv.Affinity {
			c.SessionAffinity = "ClientIP"
		}
		cfgs[i] = c
	}
	if _, err := t.agent.Client.UpdateServices(ctx, cfgs); err != nil {
		return fmt.Errorf("trunkline: load %d Services: %w", len(svcs), err)
	}
	return nil
}

func (t *trunklinePeer) down(_ context.Context, s *session) error {
	if t.agent == nil {
		return nil
	}
	took, err := t.agent.stop()
	t.agent = nil
	s.o.Logger.Debug("agent stopped", "pods", len(s.b.Pods), "took", took)
	return err
}

// nftMaxServices is the most Services the kernel-nft peer is measured
// with (see bench/kproxy/README.md for the load times).
const nftMaxServices = 20000

// kernelPeer is the node's kernel: tc-BPF VLAN pop/push on the trunk,
// routing, and kube-proxy's ruleset in iptables (Kernel) or nftables
// (KernelNft) mode, or none (KernelRoute).
type kernelPeer struct {
	mode  string
	rules *kernelRules
}

func (k *kernelPeer) name() string          { return k.mode }
func (k *kernelPeer) placement() string     { return "" }
func (k *kernelPeer) placementText() string { return fmt.Sprintf("napi cpu%d", napiCPU) }
func (k *kernelPeer) notApplicable(c testCase) string {
	if k.mode == KernelRoute && c.scenario != Throughput {
		return "no kube-proxy rules: routes to pods, not to Services"
	}
	if k.mode == KernelNft && c.services > nftMaxServices {
		return fmt.Sprintf("nftables mode cannot load %d Services in reasonable time on this kernel (an anonymous vmap per Service: 10,000 took 13–23 s, 75,000 took 16 minutes; kubernetes#139328)", c.services)
	}
	return ""
}

func (k *kernelPeer) up(_ context.Context, s *session) error { return s.b.EnableKernelPath() }

func (k *kernelPeer) setServices(ctx context.Context, s *session, svcs []bed.Service) error {
	if k.mode == KernelRoute {
		return nil
	}
	r, err := installKernelRules(ctx, s, k.mode, svcs, k.rules)
	if err != nil {
		return fmt.Errorf("%s: load %d Services: %w", k.mode, len(svcs), err)
	}
	k.rules = r
	return nil
}

func (k *kernelPeer) down(ctx context.Context, s *session) error {
	var errs []error
	if k.rules != nil {
		errs = append(errs, k.rules.remove(ctx))
		k.rules = nil
	}
	errs = append(errs, s.b.DisableKernelPath())
	return errors.Join(errs...)
}

// syntheticServices are the scale scenario's extra Services: n TCP
// ClusterIPs from 10.97.0.0 up, port 80 to the pods' HTTP server.
func syntheticServices(n int) []bed.Service {
	svcs := make([]bed.Service, n)
	base := netip.MustParseAddr("10.97.0.0").As4()
	for i := range svcs {
		a := base
		v := uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + uint32(i+1)
		a[1], a[2], a[3] = byte(v>>16), byte(v>>8), byte(v)
		svcs[i] = bed.Service{Name: "scale/svc-" + strconv.Itoa(i+1), Type: "ClusterIP", VIP: netip.AddrFrom4(a),
			Port: 80, Protocol: "TCP", TargetPort: bed.HTTPPort}
	}
	return svcs
}

// servicesFor is the Services loaded for c: the bed's; at the scale
// scenario's point of 1, only the Service c measures through; above the
// bed's count, the bed's amid synthetic ones.
func servicesFor(b *bed.Bed, c testCase) (key string, svcs []bed.Service) {
	switch {
	case c.services == 1:
		name := "default/discard"
		if c.metric == metricCPS {
			name = "default/echo-tcp"
		}
		return name, []bed.Service{*b.Service(name)}
	case c.services <= len(b.Services):
		return "bed", b.Services
	default:
		// The bed's Services in the middle: a kube-proxy chain is matched in
		// order (kube-proxy sorts by name), so the Service measured sits
		// where an average one does.
		syn := syntheticServices(c.services - len(b.Services))
		half := len(syn) / 2
		return strconv.Itoa(c.services), append(append(append([]bed.Service(nil), syn[:half]...), b.Services...), syn[half:]...)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
