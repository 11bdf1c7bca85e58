package cni

import (
	"fmt"
	"net"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// Result builds the CNI result for a wired pod interface in cniVersion (one
// of SupportedVersions): interface 0 is the host veth, interface 1 the pod
// end with its sandbox; one IP (the pod's /32, on interface 1, with the
// gateway) and a default route via the gateway.
func Result(cniVersion string, link PodLink, a Attachment, netnsPath, ifname string) (types.Result, error) {
	if !slices.Contains(SupportedVersions, cniVersion) {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, "incompatible CNI version",
			fmt.Sprintf("cannot build a %q result; supported: %v", cniVersion, SupportedVersions))
	}
	addr := a.podAddr()
	gw := net.IP(a.Gateway.AsSlice())
	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: link.HostVeth, Mac: link.HostVethMAC.String(), Mtu: link.MTU},
			{Name: ifname, Mac: link.PodMAC.String(), Mtu: link.MTU, Sandbox: netnsPath},
		},
		IPs: []*types100.IPConfig{{
			Interface: types100.Int(1),
			Address:   *prefixIPNet(addr),
			Gateway:   gw,
		}},
		Routes: []*types.Route{{
			Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			GW:  gw,
		}},
	}
	return res.GetAsVersion(cniVersion)
}
