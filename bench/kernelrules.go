package bench

import (
	"context"
	"net/netip"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/kproxy"
)

// kernelRules is the kube-proxy ruleset a kernel peer has loaded.
type kernelRules struct {
	rs *kproxy.Ruleset
}

// installKernelRules replaces old (if any) with a kube-proxy ruleset for
// svcs in the bed's node namespace: iptables mode for Kernel, nftables mode
// for KernelNft. The pod measured is every Service's backend.
func installKernelRules(ctx context.Context, s *session, mode string, svcs []bed.Service, old *kernelRules) (*kernelRules, error) {
	if old != nil {
		if err := old.remove(ctx); err != nil {
			return nil, err
		}
	}
	o := kproxy.Options{Netns: s.b.Node.Netns, Mode: kproxy.ModeIPTables, ClusterCIDR: bed.VPC, Logger: s.o.Logger}
	if mode == KernelNft {
		o.Mode = kproxy.ModeNFTables
	}
	backends := []netip.Addr{s.pod.IP}
	for _, sv := range svcs {
		o.Services = append(o.Services, kproxy.Service{Name: sv.Name, VIP: sv.VIP, Port: sv.Port, Protocol: sv.Protocol,
			NodePort: sv.NodePort, TargetPort: sv.TargetPort, Backends: backends})
	}
	rs, err := kproxy.Install(ctx, o)
	if err != nil {
		return nil, err
	}
	return &kernelRules{rs: rs}, nil
}

func (k *kernelRules) remove(ctx context.Context) error { return k.rs.Remove(ctx) }
