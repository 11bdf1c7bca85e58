package bed

import (
	"net"
	"net/netip"
)

// ServiceCIDR is where the bed's Service ClusterIPs live; the VPC routes it
// to the node, as a cloud route table routes a cluster's service range.
var ServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")

// Ports the pods' servers (`trunkline serve-echo`) listen on.
const (
	HTTPPort    = 8080
	UDPEchoPort = 9000
	TCPEchoPort = 9001
	IperfPort   = 5201
	// DiscardPort is the UDP port of the bench's frames (the generator's
	// destination, the sink's filter); nothing listens on it.
	DiscardPort = 9
)

// Service is a Service the bed puts all its pods behind, in the agent's
// config.
type Service struct {
	Name     string
	Type     string // ClusterIP or NodePort
	VIP      netip.Addr
	Port     uint16
	NodePort uint16 // 0: none
	Protocol string // TCP or UDP
	// TargetPort is the pods' port.
	TargetPort uint16
	// Local is externalTrafficPolicy: Local.
	Local bool
	// Affinity is sessionAffinity: ClientIP (iperf3's control and data
	// connections must reach the same pod).
	Affinity bool
}

// bedServices are the bed's Services: HTTP behind a NodePort with each
// external traffic policy, a UDP and a TCP echo, iperf3, and the bench's
// discard Service (its frames through a VIP, counted by a sink in the pod).
func bedServices() []Service {
	vip := func(last byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 96, 0, last}) }
	return []Service{
		{Name: "default/web", Type: "NodePort", VIP: vip(10), Port: 80, NodePort: 30080, Protocol: "TCP", TargetPort: HTTPPort},
		{Name: "default/web-local", Type: "NodePort", VIP: vip(11), Port: 80, NodePort: 30081, Protocol: "TCP", TargetPort: HTTPPort, Local: true},
		{Name: "default/echo-udp", Type: "ClusterIP", VIP: vip(12), Port: 53, Protocol: "UDP", TargetPort: UDPEchoPort},
		{Name: "default/echo-tcp", Type: "ClusterIP", VIP: vip(13), Port: TCPEchoPort, Protocol: "TCP", TargetPort: TCPEchoPort},
		{Name: "default/iperf", Type: "ClusterIP", VIP: vip(14), Port: IperfPort, Protocol: "TCP", TargetPort: IperfPort, Affinity: true},
		{Name: "default/discard", Type: "ClusterIP", VIP: vip(15), Port: DiscardPort, Protocol: "UDP", TargetPort: DiscardPort},
	}
}

// VPC is the emulated VPC's address range: the pods' and the node's
// addresses, what a cluster's pod CIDR is to kube-proxy.
var VPC = vpcPrefix

// DefaultServices are the Services every bed defines (Bed.Services).
func DefaultServices() []Service { return bedServices() }

// Service returns the bed's Service with the name, or nil.
func (b *Bed) Service(name string) *Service {
	for i := range b.Services {
		if b.Services[i].Name == name {
			return &b.Services[i]
		}
	}
	return nil
}

// Branch is a branch attachment the bed's node owns but no pod uses yet:
// the pool the agent hands out to pods the CNI plugin registers. The VPC
// already tags and untags its VLAN.
type Branch struct {
	VLAN uint16
	IP   netip.Addr
	MAC  net.HardwareAddr
}

// BranchCount is how many free branches a bed's node owns.
const BranchCount = 64

// bedBranches are the node's free branches: VLANs 2001…, addresses
// 10.100.200.x (out of the pods' range).
func bedBranches() []Branch {
	var bs []Branch
	for i := 1; i <= BranchCount; i++ {
		bs = append(bs, Branch{VLAN: uint16(2000 + i), IP: netip.AddrFrom4([4]byte{10, 100, 200, byte(i)}),
			MAC: net.HardwareAddr{0x02, 0x00, 0x0a, 0x64, 200, byte(i)}})
	}
	return bs
}
