package xdpkernel

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/trunkline/trunkline/internal/privtest"
)

// The programs run here with BPF_PROG_TEST_RUN on hand-made frames: no
// interface, no redirect carried out — the verdict and the rewritten frame
// are checked.

// XDP verdicts.
const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpRedirect = 4
)

// loIfindex is the loopback interface of the test's namespace: a test run's
// ingress interface must exist, and the pod program's maps are keyed by it.
const loIfindex = 1

// trunkIfindexTest is only written into the program as a constant.
const trunkIfindexTest = 77

var (
	tTrunkMAC = net.HardwareAddr{0x02, 0, 0x0a, 0x64, 0, 2}
	tGwMAC    = net.HardwareAddr{0x02, 0, 0x0a, 0x64, 0, 1}
	tNodeIP   = netip.MustParseAddr("10.100.0.2")
	tClient   = netip.MustParseAddr("10.100.0.1")
	tPods     = []Pod{
		{IP: netip.MustParseAddr("10.100.1.1"), MAC: net.HardwareAddr{2, 0, 10, 100, 1, 1}, VLAN: 101, HostVeth: "hpod1", HostVethMAC: net.HardwareAddr{2, 0, 10, 101, 0, 1}},
		{IP: netip.MustParseAddr("10.100.1.2"), MAC: net.HardwareAddr{2, 0, 10, 100, 1, 2}, VLAN: 102, HostVeth: "hpod2", HostVethMAC: net.HardwareAddr{2, 0, 10, 101, 0, 2}},
	}
	tPodIfindex = []int{loIfindex, 12} // pod 1 on lo, so the pod program finds it
	tTCPSvc     = Service{VIP: netip.MustParseAddr("10.96.0.13"), Port: 9001, Protocol: TCP, Backends: []netip.AddrPort{
		netip.MustParseAddrPort("10.100.1.1:9001"), netip.MustParseAddrPort("10.100.1.2:9001")}}
	tUDPSvc = Service{VIP: netip.MustParseAddr("10.96.0.12"), Port: 53, Protocol: UDP, Backends: []netip.AddrPort{
		netip.MustParseAddrPort("10.100.1.1:9000")}}
	tEmptySvc  = Service{VIP: netip.MustParseAddr("10.96.0.14"), Port: 80, Protocol: TCP}
	tRemoteSvc = Service{VIP: netip.MustParseAddr("10.96.0.15"), Port: 80, Protocol: TCP, Backends: []netip.AddrPort{
		netip.MustParseAddrPort("10.100.9.9:8080")}}
)

// loadedPeer loads the programs (not attached) with the test pods and
// Services.
func loadedPeer(t *testing.T) *Peer {
	t.Helper()
	privtest.Require(t)
	p := &Peer{svcs: newServiceTable(64, 64)}
	err := load(loadConfig{
		trunkIfindex: trunkIfindexTest, trunkMAC: [6]byte(tTrunkMAC), gatewayMAC: [6]byte(tGwMAC),
		nodeIP: tNodeIP, pods: len(tPods), maxServices: 64, maxBackends: 64, maxFlows: 1024,
	}, &p.objs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.objs.Close() })
	for i, pod := range tPods {
		if err := p.putPod(pod, tPodIfindex[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.setServices([]Service{tTCPSvc, tUDPSvc, tEmptySvc, tRemoteSvc}); err != nil {
		t.Fatal(err)
	}
	return p
}

type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run runs prog on frame arriving on ifindex; it returns the verdict and
// the frame as the program left it.
func run(t *testing.T, prog *ebpf.Program, ifindex int, frame []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+64)
	opts := &ebpf.RunOptions{
		Data:    frame,
		DataOut: out,
		Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)},
	}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret, opts.DataOut
}

// frameSpec describes a test frame.
type frameSpec struct {
	src, dst     net.HardwareAddr
	vlan         uint16 // 0: untagged
	saddr, daddr netip.Addr
	proto        Protocol // 0: ICMP echo
	sport, dport uint16
	noUDPCsum    bool
	ipOptions    bool
}

func (f frameSpec) build(t *testing.T) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: f.src, DstMAC: f.dst, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: f.saddr.AsSlice(), DstIP: f.daddr.AsSlice(), Id: 0x1234}
	if f.ipOptions {
		ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	}
	var ls []gopacket.SerializableLayer
	ls = append(ls, eth)
	if f.vlan != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: f.vlan, Type: layers.EthernetTypeIPv4})
	}
	ls = append(ls, ip)
	payload := gopacket.Payload("trunkline xdp-kernel test")
	switch f.proto {
	case TCP:
		ip.Protocol = layers.IPProtocolTCP
		tcp := &layers.TCP{SrcPort: layers.TCPPort(f.sport), DstPort: layers.TCPPort(f.dport), Seq: 7, SYN: true, Window: 1000}
		tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, tcp, payload)
	case UDP:
		ip.Protocol = layers.IPProtocolUDP
		udp := &layers.UDP{SrcPort: layers.UDPPort(f.sport), DstPort: layers.UDPPort(f.dport)}
		udp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, udp, payload)
	default:
		ip.Protocol = layers.IPProtocolICMPv4
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 1, Seq: 1}, payload)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if f.proto == UDP && f.noUDPCsum {
		l3 := 14
		if f.vlan != 0 {
			l3 += 4
		}
		l4 := l3 + int(b[l3]&0x0f)*4
		b[l4+6], b[l4+7] = 0, 0
	}
	return b
}

func arpFrame(t *testing.T, src, dst net.HardwareAddr, vlan uint16, spa, tpa netip.Addr) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: src, SourceProtAddress: spa.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: tpa.AsSlice()}
	ls := []gopacket.SerializableLayer{eth}
	if vlan != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: vlan, Type: layers.EthernetTypeARP})
	}
	ls = append(ls, arp)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// decoded is a frame the programs produced, parsed and checked.
type decoded struct {
	src, dst     net.HardwareAddr
	vlan         uint16
	saddr, daddr netip.Addr
	sport, dport uint16
	udpCsum      uint16
}

// decode parses an Ethernet[/802.1Q]/IPv4/TCP|UDP|ICMP frame and fails t if
// a checksum is wrong (recomputed in full).
func decode(t *testing.T, b []byte) decoded {
	t.Helper()
	var d decoded
	d.dst, d.src = net.HardwareAddr(b[0:6]), net.HardwareAddr(b[6:12])
	off := 12
	if binary.BigEndian.Uint16(b[off:]) == 0x8100 {
		d.vlan = binary.BigEndian.Uint16(b[off+2:]) & 0x0fff
		off += 4
	}
	if et := binary.BigEndian.Uint16(b[off:]); et != 0x0800 {
		t.Fatalf("ethertype %#04x, want IPv4", et)
	}
	ip := b[off+2:]
	ihl := int(ip[0]&0x0f) * 4
	if s := checksum(ip[:ihl], 0); s != 0 {
		t.Errorf("IPv4 header checksum wrong (sum %#04x)", s)
	}
	d.saddr, d.daddr = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	total := int(binary.BigEndian.Uint16(ip[2:]))
	l4 := ip[ihl:total]
	proto := ip[9]
	if proto == 6 || proto == 17 {
		d.sport, d.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		if proto == 17 {
			d.udpCsum = binary.BigEndian.Uint16(l4[6:])
		}
		if proto == 6 || d.udpCsum != 0 {
			var pseudo [12]byte
			copy(pseudo[0:8], ip[12:20])
			pseudo[9] = proto
			binary.BigEndian.PutUint16(pseudo[10:], uint16(len(l4)))
			if s := checksum(l4, sum(pseudo[:], 0)); s != 0 {
				t.Errorf("L4 (proto %d) checksum wrong (sum %#04x)", proto, s)
			}
		}
	}
	return d
}

func sum(b []byte, acc uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		acc += uint32(b[len(b)-1]) << 8
	}
	return acc
}

// checksum is the one's complement of the one's complement sum of b (and
// acc): 0 over data that includes a correct checksum.
func checksum(b []byte, acc uint32) uint16 {
	s := sum(b, acc)
	for s > 0xffff {
		s = (s & 0xffff) + s>>16
	}
	return ^uint16(s)
}

func counters(t *testing.T, p *Peer) Counters {
	t.Helper()
	c, err := readCounters(&p.objs)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTrunkProgram(t *testing.T) {
	p := loadedPeer(t)
	pod1, pod2 := tPods[0], tPods[1]
	wire := net.HardwareAddr{2, 0, 10, 100, 0, 1}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

	t.Run("tagged to a pod", func(t *testing.T) {
		for _, proto := range []Protocol{0, TCP, UDP} {
			f := frameSpec{src: wire, dst: pod2.MAC, vlan: pod2.VLAN, saddr: tClient, daddr: pod2.IP, proto: proto, sport: 4000, dport: 9000}
			ret, out := run(t, p.objs.XkTrunk, 0, f.build(t))
			if ret != xdpRedirect {
				t.Fatalf("%v: verdict %d, want redirect", proto, ret)
			}
			d := decode(t, out)
			if d.vlan != 0 || !bytes.Equal(d.dst, pod2.MAC) || !bytes.Equal(d.src, pod2.HostVethMAC) || d.daddr != pod2.IP {
				t.Errorf("%v: got %+v, want untagged, %v → %v, to %v", proto, d, pod2.HostVethMAC, pod2.MAC, pod2.IP)
			}
		}
	})
	t.Run("tagged ARP keeps its MACs", func(t *testing.T) {
		in := arpFrame(t, wire, bcast, pod1.VLAN, tClient, pod1.IP)
		ret, out := run(t, p.objs.XkTrunk, 0, in)
		want := append(append([]byte{}, in[:12]...), in[16:]...)
		if ret != xdpRedirect || !bytes.Equal(out, want) {
			t.Errorf("verdict %d, frame\n%x\nwant\n%x", ret, out, want)
		}
	})
	t.Run("Service DNAT", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			f    frameSpec
			svc  Service
		}{
			{"tagged TCP", frameSpec{vlan: pod1.VLAN, proto: TCP, sport: 40000}, tTCPSvc},
			{"untagged TCP", frameSpec{proto: TCP, sport: 40001}, tTCPSvc},
			{"untagged TCP, IP options", frameSpec{proto: TCP, sport: 40002, ipOptions: true}, tTCPSvc},
			{"untagged UDP", frameSpec{proto: UDP, sport: 40003}, tUDPSvc},
			{"untagged UDP, no checksum", frameSpec{proto: UDP, sport: 40004, noUDPCsum: true}, tUDPSvc},
			{"tagged UDP, no checksum", frameSpec{vlan: pod2.VLAN, proto: UDP, sport: 40005, noUDPCsum: true}, tUDPSvc},
		} {
			f := tc.f
			f.src, f.dst, f.saddr, f.daddr, f.dport = wire, tTrunkMAC, tClient, tc.svc.VIP, tc.svc.Port
			ret, out := run(t, p.objs.XkTrunk, 0, f.build(t))
			if ret != xdpRedirect {
				t.Errorf("%s: verdict %d, want redirect", tc.name, ret)
				continue
			}
			d := decode(t, out)
			be := netip.AddrPortFrom(d.daddr, d.dport)
			var pod *Pod
			for i := range tPods {
				if tPods[i].IP == d.daddr {
					pod = &tPods[i]
				}
			}
			if pod == nil || !containsAddrPort(tc.svc.Backends, be) {
				t.Errorf("%s: DNAT to %v, want one of %v", tc.name, be, tc.svc.Backends)
				continue
			}
			if d.vlan != 0 || !bytes.Equal(d.dst, pod.MAC) || !bytes.Equal(d.src, pod.HostVethMAC) || d.saddr != tClient || d.sport != f.sport {
				t.Errorf("%s: got %+v", tc.name, d)
			}
			if f.noUDPCsum && d.udpCsum != 0 {
				t.Errorf("%s: UDP checksum %#04x, want 0 (none) kept", tc.name, d.udpCsum)
			}
			var fe xdpKernelFrontend
			key := xdpKernelFlowKey{BackendIp: be32(be.Addr()), ClientIp: be32(tClient), BackendPort: be16(be.Port()), ClientPort: be16(f.sport), Proto: uint8(f.proto)}
			if err := p.objs.Flows.Lookup(&key, &fe); err != nil {
				t.Errorf("%s: no reverse mapping: %v", tc.name, err)
			} else if addrFrom32(fe.Vip) != tc.svc.VIP || be16(fe.Port) != tc.svc.Port {
				t.Errorf("%s: reverse mapping to %v:%d", tc.name, addrFrom32(fe.Vip), be16(fe.Port))
			}
		}
	})
	t.Run("drops and passes", func(t *testing.T) {
		before := counters(t, p)
		for _, tc := range []struct {
			name  string
			frame []byte
			want  uint32
		}{
			{"unknown VID", frameSpec{src: wire, dst: tTrunkMAC, vlan: 999, saddr: tClient, daddr: pod1.IP, proto: UDP, sport: 1, dport: 2}.build(t), xdpDrop},
			{"untagged, node's own", frameSpec{src: wire, dst: tTrunkMAC, saddr: tClient, daddr: tNodeIP, proto: UDP, sport: 1, dport: 2}.build(t), xdpPass},
			{"untagged ARP", arpFrame(t, wire, bcast, 0, tClient, tNodeIP), xdpPass},
			{"VIP, other port", frameSpec{src: wire, dst: tTrunkMAC, saddr: tClient, daddr: tTCPSvc.VIP, proto: TCP, sport: 1, dport: 2}.build(t), xdpPass},
			{"no backends", frameSpec{src: wire, dst: tTrunkMAC, saddr: tClient, daddr: tEmptySvc.VIP, proto: TCP, sport: 1, dport: tEmptySvc.Port}.build(t), xdpDrop},
			{"backend not local", frameSpec{src: wire, dst: tTrunkMAC, saddr: tClient, daddr: tRemoteSvc.VIP, proto: TCP, sport: 1, dport: tRemoteSvc.Port}.build(t), xdpDrop},
			{"truncated tag", frameSpec{src: wire, dst: tTrunkMAC, vlan: pod1.VLAN, saddr: tClient, daddr: pod1.IP}.build(t)[:16], xdpDrop},
		} {
			if ret, _ := run(t, p.objs.XkTrunk, 0, tc.frame); ret != tc.want {
				t.Errorf("%s: verdict %d, want %d", tc.name, ret, tc.want)
			}
		}
		c := counters(t, p)
		for _, d := range []struct {
			name         string
			before, now  uint64
			wantIncrease uint64
		}{
			{"DropUnknownVLAN", before.DropUnknownVLAN, c.DropUnknownVLAN, 1},
			{"TrunkPassed", before.TrunkPassed, c.TrunkPassed, 3},
			{"DropNoBackend", before.DropNoBackend, c.DropNoBackend, 1},
			{"DropBackendNotLocal", before.DropBackendNotLocal, c.DropBackendNotLocal, 1},
			{"DropMalformed", before.DropMalformed, c.DropMalformed, 1},
		} {
			if d.now-d.before != d.wantIncrease {
				t.Errorf("%s went up by %d, want %d", d.name, d.now-d.before, d.wantIncrease)
			}
		}
	})
}

func TestPodProgram(t *testing.T) {
	p := loadedPeer(t)
	pod1 := tPods[0] // on loIfindex
	wire := net.HardwareAddr{2, 0, 10, 100, 0, 1}

	// A flow through the UDP and the TCP Service, to pod 1.
	for _, f := range []frameSpec{
		{src: wire, dst: tTrunkMAC, saddr: tClient, daddr: tUDPSvc.VIP, proto: UDP, sport: 5000, dport: tUDPSvc.Port},
		{src: wire, dst: tTrunkMAC, saddr: tClient, daddr: tTCPSvc.VIP, proto: TCP, sport: 5001, dport: tTCPSvc.Port},
	} {
		for sport := f.sport; ; sport += 10 { // until the hash picks pod 1
			f.sport = sport
			ret, out := run(t, p.objs.XkTrunk, 0, f.build(t))
			if ret != xdpRedirect {
				t.Fatalf("DNAT verdict %d", ret)
			}
			if decode(t, out).daddr == pod1.IP {
				break
			}
		}
		be := tUDPSvc.Backends[0]
		vip := netip.AddrPortFrom(tUDPSvc.VIP, tUDPSvc.Port)
		if f.proto == TCP {
			be, vip = tTCPSvc.Backends[0], netip.AddrPortFrom(tTCPSvc.VIP, tTCPSvc.Port)
		}
		for _, noCsum := range []bool{false, true} {
			if noCsum && f.proto == TCP {
				continue
			}
			reply := frameSpec{src: pod1.MAC, dst: pod1.HostVethMAC, saddr: pod1.IP, daddr: tClient, proto: f.proto,
				sport: be.Port(), dport: f.sport, noUDPCsum: noCsum}
			ret, out := run(t, p.objs.XkPod, loIfindex, reply.build(t))
			if ret != xdpRedirect {
				t.Fatalf("%v reply: verdict %d, want redirect", f.proto, ret)
			}
			d := decode(t, out)
			if d.vlan != pod1.VLAN || !bytes.Equal(d.dst, tGwMAC) || !bytes.Equal(d.src, tTrunkMAC) ||
				netip.AddrPortFrom(d.saddr, d.sport) != vip || d.daddr != tClient || d.dport != f.sport {
				t.Errorf("%v reply: got %+v, want tag %d, %v → %v, from %v", f.proto, d, pod1.VLAN, tTrunkMAC, tGwMAC, vip)
			}
			if noCsum && d.udpCsum != 0 {
				t.Errorf("UDP checksum %#04x, want 0 kept", d.udpCsum)
			}
		}
	}

	t.Run("not NATed, ARP, the node's own", func(t *testing.T) {
		before := counters(t, p)
		// Straight to a client: tagged, MACs rewritten, addresses kept.
		f := frameSpec{src: pod1.MAC, dst: pod1.HostVethMAC, saddr: pod1.IP, daddr: tClient, proto: UDP, sport: 9000, dport: 33333}
		ret, out := run(t, p.objs.XkPod, loIfindex, f.build(t))
		if d := decode(t, out); ret != xdpRedirect || d.vlan != pod1.VLAN || d.saddr != pod1.IP || d.sport != 9000 || !bytes.Equal(d.dst, tGwMAC) {
			t.Errorf("plain reply: verdict %d, %+v", ret, d)
		}
		// ARP to the VPC: tagged, MACs kept.
		in := arpFrame(t, pod1.MAC, wire, 0, pod1.IP, tClient)
		ret, out = run(t, p.objs.XkPod, loIfindex, in)
		want := append(append(append([]byte{}, in[:12]...), 0x81, 0x00, 0, byte(pod1.VLAN)), in[12:]...)
		if ret != xdpRedirect || !bytes.Equal(out, want) {
			t.Errorf("ARP: verdict %d, frame\n%x\nwant\n%x", ret, out, want)
		}
		// The node's own: pass.
		if ret, _ := run(t, p.objs.XkPod, loIfindex, arpFrame(t, pod1.MAC, wire, 0, pod1.IP, tNodeIP)); ret != xdpPass {
			t.Errorf("ARP for the node: verdict %d, want pass", ret)
		}
		toNode := frameSpec{src: pod1.MAC, dst: pod1.HostVethMAC, saddr: pod1.IP, daddr: tNodeIP, proto: TCP, sport: 1, dport: 10250}
		if ret, _ := run(t, p.objs.XkPod, loIfindex, toNode.build(t)); ret != xdpPass {
			t.Errorf("TCP to the node: verdict %d, want pass", ret)
		}
		c := counters(t, p)
		if c.ToTrunk-before.ToTrunk != 2 || c.PodPassed-before.PodPassed != 2 || c.ToTrunkRevNAT != 3 {
			t.Errorf("counters %+v, before %+v", c, before)
		}
	})
}

// TestChecksumsRandom checks the incremental checksum updates of DNAT and
// reverse NAT against a full recompute, over random addresses and ports.
func TestChecksumsRandom(t *testing.T) {
	p := loadedPeer(t)
	r := rand.New(rand.NewPCG(1, 2))
	var svcs []Service
	for i := range 20 {
		s := Service{VIP: netip.AddrFrom4([4]byte{10, 96, byte(r.IntN(256)), byte(r.IntN(256))}), Port: uint16(1 + r.IntN(65535)), Protocol: []Protocol{TCP, UDP}[i%2]}
		for range 1 + r.IntN(3) {
			// Backends on pod 1 (on lo) with random ports.
			s.Backends = append(s.Backends, netip.AddrPortFrom(tPods[0].IP, uint16(1+r.IntN(65535))))
		}
		svcs = append(svcs, s)
	}
	if err := p.setServices(svcs); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		s := svcs[r.IntN(len(svcs))]
		client := netip.AddrFrom4([4]byte{byte(1 + r.IntN(223)), byte(r.IntN(256)), byte(r.IntN(256)), byte(1 + r.IntN(254))})
		f := frameSpec{src: tGwMAC, dst: tTrunkMAC, saddr: client, daddr: s.VIP, proto: s.Protocol,
			sport: uint16(1 + r.IntN(65535)), dport: s.Port, ipOptions: i%3 == 0}
		if i%2 == 0 {
			f.vlan = tPods[1].VLAN
		}
		ret, out := run(t, p.objs.XkTrunk, 0, f.build(t))
		if ret != xdpRedirect {
			t.Fatalf("frame %d: verdict %d", i, ret)
		}
		d := decode(t, out)
		reply := frameSpec{src: tPods[0].MAC, dst: tPods[0].HostVethMAC, saddr: d.daddr, daddr: client, proto: s.Protocol,
			sport: d.dport, dport: f.sport, ipOptions: i%3 == 1}
		ret, out = run(t, p.objs.XkPod, loIfindex, reply.build(t))
		if ret != xdpRedirect {
			t.Fatalf("reply %d: verdict %d", i, ret)
		}
		if d := decode(t, out); netip.AddrPortFrom(d.saddr, d.sport) != netip.AddrPortFrom(s.VIP, s.Port) {
			t.Fatalf("reply %d: from %v:%d, want %v:%d", i, d.saddr, d.sport, s.VIP, s.Port)
		}
		if t.Failed() {
			t.Fatalf("frame %d: %+v", i, f)
		}
	}
}

func containsAddrPort(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}
