package bed

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
)

// Layout is a bed's description, ready for encoding/json. It is also the
// content of the bed's state file.
type Layout struct {
	Prefix    string          `json:"prefix"`
	Config    string          `json:"config"`
	StateDir  string          `json:"stateDir"`
	APISocket string          `json:"apiSocket"`
	Wire      WireLayout      `json:"wire"`
	Node      NodeLayout      `json:"node"`
	Pods      []PodLayout     `json:"pods"`
	Services  []ServiceLayout `json:"services"`
	Version   int             `json:"version"`
}

// ServiceLayout is Service in JSON; Backends are the pods' addresses.
type ServiceLayout struct {
	Name                  string       `json:"name"`
	Type                  string       `json:"type"`
	VIP                   netip.Addr   `json:"vip"`
	Port                  uint16       `json:"port"`
	NodePort              uint16       `json:"nodePort,omitempty"`
	Protocol              string       `json:"protocol"`
	TargetPort            uint16       `json:"targetPort"`
	Backends              []netip.Addr `json:"backends"`
	ExternalTrafficPolicy string       `json:"externalTrafficPolicy"`
}

// layoutVersion is the version of the state file's format.
const layoutVersion = 1

// WireLayout is Wire in JSON.
type WireLayout struct {
	Netns     string     `json:"netns"`
	Ifname    string     `json:"ifname"`
	IP        netip.Addr `json:"ip"`
	MAC       string     `json:"mac"`
	OutsideIP netip.Addr `json:"outsideIP"`
}

// NodeLayout is Node in JSON.
type NodeLayout struct {
	Netns    string     `json:"netns"`
	Trunk    string     `json:"trunk"`
	IP       netip.Addr `json:"ip"`
	TrunkMAC string     `json:"trunkMAC"`
}

// PodLayout is Pod in JSON.
type PodLayout struct {
	Name        string     `json:"name"`
	Netns       string     `json:"netns"`
	Ifname      string     `json:"ifname"`
	IP          netip.Addr `json:"ip"`
	MAC         string     `json:"mac"`
	VLAN        uint16     `json:"vlan"`
	HostVeth    string     `json:"hostVeth"`
	HostVethMAC string     `json:"hostVethMAC"`
}

// Layout describes the bed.
func (b *Bed) Layout() Layout {
	l := Layout{
		Prefix:    b.Prefix,
		Config:    b.ConfigPath,
		StateDir:  b.stateDir,
		APISocket: b.APISocket(),
		Version:   layoutVersion,
		Wire: WireLayout{
			Netns:     b.Wire.Netns,
			Ifname:    b.Wire.Ifname,
			IP:        b.Wire.IP,
			MAC:       b.Wire.MAC.String(),
			OutsideIP: b.Wire.OutsideIP,
		},
		Node: NodeLayout{
			Netns:    b.Node.Netns,
			Trunk:    b.Node.Trunk,
			IP:       b.Node.IP,
			TrunkMAC: b.Node.TrunkMAC.String(),
		},
		Pods: make([]PodLayout, 0, len(b.Pods)),
	}
	for _, sv := range b.Services {
		sl := ServiceLayout{Name: sv.Name, Type: sv.Type, VIP: sv.VIP, Port: sv.Port, NodePort: sv.NodePort,
			Protocol: sv.Protocol, TargetPort: sv.TargetPort, ExternalTrafficPolicy: "Cluster"}
		if sv.Local {
			sl.ExternalTrafficPolicy = "Local"
		}
		for _, p := range b.Pods {
			sl.Backends = append(sl.Backends, p.IP)
		}
		l.Services = append(l.Services, sl)
	}
	for _, p := range b.Pods {
		l.Pods = append(l.Pods, PodLayout{
			Name:        p.Name,
			Netns:       p.Netns,
			Ifname:      p.Ifname,
			IP:          p.IP,
			MAC:         p.MAC.String(),
			VLAN:        p.VLAN,
			HostVeth:    p.HostVeth,
			HostVethMAC: p.HostVethMAC.String(),
		})
	}
	return l
}

// bed turns a decoded layout back into a Bed (without state dir or logger).
func (l Layout) bed() (*Bed, error) {
	if l.Version != layoutVersion {
		return nil, fmt.Errorf("state file version %d, want %d (written by another trunkline; remove the bed with that one)", l.Version, layoutVersion)
	}
	if !prefixSyntax.MatchString(l.Prefix) {
		return nil, fmt.Errorf("bad prefix %q", l.Prefix)
	}
	var errs []error
	mac := func(what, s string) net.HardwareAddr {
		m, err := net.ParseMAC(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
		return m
	}
	b := &Bed{
		Prefix:     l.Prefix,
		ConfigPath: filepath.Clean(l.Config),
		Wire: Wire{
			Netns:     l.Wire.Netns,
			Ifname:    l.Wire.Ifname,
			IP:        l.Wire.IP,
			OutsideIP: l.Wire.OutsideIP,
			MAC:       mac("wire mac", l.Wire.MAC),
		},
		Node: Node{
			Netns:    l.Node.Netns,
			Trunk:    l.Node.Trunk,
			IP:       l.Node.IP,
			TrunkMAC: mac("node trunkMAC", l.Node.TrunkMAC),
		},
	}
	for _, p := range l.Pods {
		b.Pods = append(b.Pods, Pod{
			Name:        p.Name,
			Netns:       p.Netns,
			Ifname:      p.Ifname,
			IP:          p.IP,
			MAC:         mac(p.Name+" mac", p.MAC),
			VLAN:        p.VLAN,
			HostVeth:    p.HostVeth,
			HostVethMAC: mac(p.Name+" hostVethMAC", p.HostVethMAC),
		})
	}
	if len(b.Pods) == 0 {
		errs = append(errs, errors.New("no pods"))
	}
	b.Services = bedServices()
	b.Branches = bedBranches()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return b, nil
}
