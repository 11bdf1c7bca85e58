package dataplane

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/trunkline/trunkline/dataplane/port/porttest"
	"github.com/trunkline/trunkline/internal/packet"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
	"github.com/trunkline/trunkline/vlan"
)

var (
	nodeIP  = [4]byte{10, 100, 0, 2}
	nodeMAC = [6]byte{2, 0, 0x0a, 0x64, 0, 2}
	vip     = [4]byte{10, 96, 0, 10}
	client  = [4]byte{10, 100, 0, 1} // in the VPC, behind the gateway
)

type l4spec struct {
	src, dst      [6]byte
	srcIP, dstIP  [4]byte
	sport, dport  uint16
	udp           bool
	syn, ack, rst bool
	payload       string
}

func l4frame(t testing.TB, f l4spec) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: f.src[:], DstMAC: f.dst[:], EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: f.srcIP[:], DstIP: f.dstIP[:], Flags: layers.IPv4DontFragment}
	var l4 gopacket.SerializableLayer
	if f.udp {
		ip.Protocol = layers.IPProtocolUDP
		u := &layers.UDP{SrcPort: layers.UDPPort(f.sport), DstPort: layers.UDPPort(f.dport)}
		u.SetNetworkLayerForChecksum(ip)
		l4 = u
	} else {
		ip.Protocol = layers.IPProtocolTCP
		tc := &layers.TCP{SrcPort: layers.TCPPort(f.sport), DstPort: layers.TCPPort(f.dport), SYN: f.syn, ACK: f.ack, RST: f.rst, Seq: 1000, Ack: 5000, Window: 1000}
		tc.SetNetworkLayerForChecksum(ip)
		l4 = tc
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, l4, gopacket.Payload(f.payload)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// parsed checks a frame's checksums with gopacket and returns its layers.
func parsed(t *testing.T, f []byte) (*layers.Ethernet, *layers.IPv4, gopacket.Packet) {
	t.Helper()
	pk := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if eth == nil || ip == nil {
		t.Fatalf("not an Ethernet/IPv4 frame: %x", f)
	}
	// Every checksum must verify.
	l3 := packet.IPv4(f[14:])
	if !l3.ValidChecksum() {
		t.Errorf("IPv4 header checksum is wrong: %x", f)
	}
	l4 := f[14+l3.HeaderLen() : 14+int(l3.TotalLen())]
	if !(l3.Protocol() == 17 && packet.UDP(l4).Checksum() == 0) {
		sum := packet.Checksum(l4, packet.PseudoHeaderSum(l3.Src(), l3.Dst(), l3.Protocol(), uint16(len(l4))))
		if l3.Protocol() == 1 {
			sum = packet.Checksum(l4, 0)
		}
		if packet.Fold(sum) != 0 {
			t.Errorf("L4 checksum is wrong: %x", f)
		}
	}
	return eth, ip, pk
}

type natRig struct {
	*rig
	svcs *atomic.Pointer[lb.Table]
	ct   *conntrack.Table
}

func newNATRig(t *testing.T, specs []lb.ServiceSpec, snat PortRange, nonMasq ...netip.Prefix) *natRig {
	t.Helper()
	st, err := lb.Build(netip.AddrFrom4(nodeIP), specs, 0)
	if err != nil {
		t.Fatal(err)
	}
	var sptr atomic.Pointer[lb.Table]
	sptr.Store(st)
	ct, err := conntrack.New(conntrack.Options{MaxEntries: 1 << 14})
	if err != nil {
		t.Fatal(err)
	}
	r := newRigWith(t, 512, func(c *Config) {
		c.Services, c.Conntrack, c.NodeIP, c.NodeMAC, c.SNATPorts = &sptr, ct, nodeIP, nodeMAC, snat
		c.Masquerade, c.NonMasquerade = len(nonMasq) > 0, nonMasq
	})
	return &natRig{rig: r, svcs: &sptr, ct: ct}
}

func (r *natRig) one(p *porttest.Port, f []byte, to *porttest.Port) []byte {
	r.t.Helper()
	if err := p.Inject(f); err != nil {
		r.t.Fatal(err)
	}
	r.run()
	sent := to.Sent()
	if len(sent) != 1 {
		r.t.Fatalf("got %d frames, want 1 (drops %v)", len(sent), r.drops())
	}
	return sent[0]
}

func (r *natRig) drops() map[string]uint64 {
	m := map[string]uint64{}
	for i := range r.w.Counters().Drops {
		if n := r.w.Counters().Drops[i].Load(); n > 0 {
			m[DropReason(i).String()] = n
		}
	}
	return m
}

func backendOf(a vlan.Attachment, port uint16) lb.Backend {
	return lb.Backend{IP: a.IP, Port: port, Ready: true, Serving: true, Local: true}
}

func clusterIP(backends ...lb.Backend) lb.ServiceSpec {
	return lb.ServiceSpec{Name: "default/echo:tcp", Proto: lb.TCP, Port: 80, NodePort: 30080,
		ClusterIPs: []netip.Addr{netip.AddrFrom4(vip)}, Backends: backends}
}

func TestClusterIPFromTheVPC(t *testing.T) {
	r := newNATRig(t, []lb.ServiceSpec{clusterIP(backendOf(pods[1], 8080))}, PortRange{61000, 61099})
	syn := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 40000, dport: 80, syn: true})
	got := r.one(r.trunk, syn, r.pods[1])
	eth, ip, pk := parsed(t, got)
	tcp := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ip.DstIP.Equal(net.IP(pods[1].IP[:])) || tcp.DstPort != 8080 || !ip.SrcIP.Equal(net.IP(client[:])) || tcp.SrcPort != 40000 {
		t.Fatalf("DNAT gave %s:%d → %s:%d", ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort)
	}
	if [6]byte(eth.DstMAC) != pods[1].MAC || [6]byte(eth.SrcMAC) != pods[1].HostMAC {
		t.Errorf("MACs %s → %s", eth.SrcMAC, eth.DstMAC)
	}
	synack := l4frame(t, l4spec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: client, sport: 8080, dport: 40000, syn: true, ack: true})
	got = r.one(r.pods[1], synack, r.trunk)
	eth, ip, pk = parsed(t, got)
	tcp = pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ip.SrcIP.Equal(net.IP(vip[:])) || tcp.SrcPort != 80 || !ip.DstIP.Equal(net.IP(client[:])) || tcp.DstPort != 40000 {
		t.Fatalf("reverse NAT gave %s:%d → %s:%d", ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort)
	}
	if [6]byte(eth.DstMAC) != gatewayMAC || [6]byte(eth.SrcMAC) != nodeMAC || eth.EthernetType != layers.EthernetTypeIPv4 {
		t.Errorf("reply leaves as %s → %s type %s; want untagged from the node to the gateway", eth.SrcMAC, eth.DstMAC, eth.EthernetType)
	}
	if r.ct.Len() != 1 {
		t.Errorf("conntrack has %d entries, want 1", r.ct.Len())
	}
}

func TestHairpinIsSNATedToTheNode(t *testing.T) {
	r := newNATRig(t, []lb.ServiceSpec{clusterIP(backendOf(pods[0], 8080))}, PortRange{61000, 61099})
	syn := l4frame(t, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vip, sport: 40000, dport: 80, syn: true})
	got := r.one(r.pods[0], syn, r.pods[0])
	_, ip, pk := parsed(t, got)
	tcp := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ip.SrcIP.Equal(net.IP(nodeIP[:])) || tcp.SrcPort < 61000 || tcp.SrcPort > 61099 || !ip.DstIP.Equal(net.IP(pods[0].IP[:])) {
		t.Fatalf("hairpin gave %s:%d → %s:%d; want the node's address and an SNAT port", ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort)
	}
	reply := l4frame(t, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: nodeIP, sport: 8080, dport: uint16(tcp.SrcPort), syn: true, ack: true})
	got = r.one(r.pods[0], reply, r.pods[0])
	_, ip, pk = parsed(t, got)
	tcp = pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ip.SrcIP.Equal(net.IP(vip[:])) || tcp.SrcPort != 80 || tcp.DstPort != 40000 {
		t.Fatalf("hairpin reply gave %s:%d → %s:%d", ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort)
	}
}

func TestNodePortPolicies(t *testing.T) {
	for _, local := range []bool{false, true} {
		spec := clusterIP(backendOf(pods[1], 8080))
		spec.ExternalLocal = local
		r := newNATRig(t, []lb.ServiceSpec{spec}, PortRange{61000, 61099})
		syn := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: nodeIP, sport: 40000, dport: 30080, syn: true})
		_, ip, _ := parsed(t, r.one(r.trunk, syn, r.pods[1]))
		want := nodeIP
		if local {
			want = client
		}
		if !ip.SrcIP.Equal(net.IP(want[:])) {
			t.Errorf("local=%v: backend sees %s, want %v", local, ip.SrcIP, net.IP(want[:]))
		}
	}
}

func TestNoBackendIsRejected(t *testing.T) {
	spec := clusterIP()
	udp := lb.ServiceSpec{Name: "default/dns:udp", Proto: lb.UDP, Port: 53, ClusterIPs: []netip.Addr{netip.AddrFrom4(vip)}}
	r := newNATRig(t, []lb.ServiceSpec{spec, udp}, PortRange{61000, 61099})
	syn := l4frame(t, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vip, sport: 40000, dport: 80, syn: true})
	_, ip, pk := parsed(t, r.one(r.pods[0], syn, r.pods[0]))
	tcp, ok := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok || !tcp.RST || !tcp.ACK || tcp.Ack != 1001 || !ip.SrcIP.Equal(net.IP(vip[:])) || tcp.SrcPort != 80 || tcp.DstPort != 40000 {
		t.Fatalf("TCP to a Service without backends answered %v", pk)
	}
	q := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 5353, dport: 53, udp: true, payload: "query"})
	eth, ip, pk := parsed(t, r.one(r.trunk, q, r.trunk))
	icmp, ok := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if !ok || icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 3) || !ip.SrcIP.Equal(net.IP(vip[:])) || !ip.DstIP.Equal(net.IP(client[:])) {
		t.Fatalf("UDP to a Service without backends answered %v", pk)
	}
	if [6]byte(eth.DstMAC) != gatewayMAC {
		t.Errorf("ICMP sent to %s, want the gateway", eth.DstMAC)
	}
	if got := r.w.Counters().Rejects.Load(); got != 2 {
		t.Errorf("rejects = %d, want 2", got)
	}
}

func TestSNATExhaustionDropsOnlyNewFlows(t *testing.T) {
	spec := clusterIP(backendOf(pods[1], 8080))
	spec.Proto = lb.UDP
	r := newNATRig(t, []lb.ServiceSpec{spec}, PortRange{61000, 61009})
	seen := map[layers.UDPPort]bool{}
	for i := range 15 {
		q := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: nodeIP, sport: uint16(20000 + i), dport: 30080, udp: true})
		if err := r.trunk.Inject(q); err != nil {
			t.Fatal(err)
		}
		r.run()
		for _, f := range r.pods[1].Sent() {
			_, _, pk := parsed(t, f)
			seen[pk.Layer(layers.LayerTypeUDP).(*layers.UDP).SrcPort] = true
		}
	}
	if len(seen) != 10 {
		t.Errorf("%d distinct SNAT ports for 15 flows over a range of 10, want 10", len(seen))
	}
	if d := r.drops()["snat_exhausted"]; d != 5 {
		t.Errorf("snat_exhausted = %d, want 5", d)
	}
	// The first ten keep working.
	for i := range 10 {
		q := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: nodeIP, sport: uint16(20000 + i), dport: 30080, udp: true})
		r.one(r.trunk, q, r.pods[1])
	}
}

// BenchmarkConntrackHitDNAT measures an established flow's packet from
// the VPC to a ClusterIP: parse, conntrack hit, DNAT rewrite, to the pod.
func BenchmarkConntrackHitDNAT(b *testing.B) {
	f := l4frame(b, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 40000, dport: 80, ack: true, payload: "x"})
	w := newReplayNATWorker(b, f, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += DefaultBatch {
		w.Poll()
	}
}

func newReplayNATWorker(tb testing.TB, frame []byte, services int) *Worker {
	mem := staticMemory{area: make([]byte, 4096*DefaultBatch)}
	trunk := &replayPort{mem: mem.area, template: frame}
	for i := range DefaultBatch {
		trunk.addrs = append(trunk.addrs, uint64(i)*4096+256)
	}
	tbl, _ := vlan.NewTable(pods)
	var vptr atomic.Pointer[vlan.Table]
	vptr.Store(tbl)
	specs := []lb.ServiceSpec{clusterIP(backendOf(pods[1], 8080))}
	for i := 1; i < services; i++ {
		specs = append(specs, lb.ServiceSpec{Name: "s", Proto: lb.TCP, Port: 80,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)})}, Backends: []lb.Backend{backendOf(pods[0], 8080)}})
	}
	st, err := lb.Build(netip.AddrFrom4(nodeIP), specs, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var sptr atomic.Pointer[lb.Table]
	sptr.Store(st)
	ct, _ := conntrack.New(conntrack.Options{MaxEntries: 1 << 12})
	w, err := New(Config{Memory: mem, Poller: alwaysReady{}, Trunk: trunk, VLAN: &vptr, GatewayMAC: gatewayMAC,
		Services: &sptr, Conntrack: ct, NodeIP: nodeIP, NodeMAC: nodeMAC, SNATPorts: PortRange{61000, 62000}})
	if err != nil {
		tb.Fatal(err)
	}
	w.AttachPod(pods[1].ID, &replayPort{}, nil, nil)
	// Open the flow once with a SYN so the ACKs hit.
	syn := l4frame(tb, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 40000, dport: 80, syn: true})
	trunk.template = syn
	w.Poll()
	trunk.template = frame
	return w
}

func TestConntrackHitDoesNotAllocate(t *testing.T) {
	f := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 40000, dport: 80, ack: true, payload: "x"})
	w := newReplayNATWorker(t, f, 1)
	if n := testing.AllocsPerRun(100, func() { w.Poll() }); n != 0 {
		t.Errorf("a batch of conntrack hits allocates %v times", n)
	}
	d := &w.Counters().Drops
	if d[DropConntrackInvalid].Load()+d[DropNoService].Load() != 0 {
		t.Errorf("frames dropped: invalid %d, no_service %d", d[DropConntrackInvalid].Load(), d[DropNoService].Load())
	}
}

func TestBackendAnsweringADirectClientIsNotTranslated(t *testing.T) {
	r := newNATRig(t, []lb.ServiceSpec{clusterIP(backendOf(pods[0], 8080))}, PortRange{61000, 61099})
	// A VPC client talks to pod1:8080 directly (not through the VIP).
	reply := l4frame(t, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: client, sport: 8080, dport: 40000, syn: true, ack: true})
	got := r.one(r.pods[0], reply, r.trunk)
	want := append([]byte(nil), reply...)
	if len(got) != len(want)+4 || got[12] != 0x81 || string(got[16:]) != string(want[12:]) {
		t.Errorf("pod's direct reply left as %x, want it tagged and otherwise untouched", got)
	}
	if r.ct.Len() != 0 {
		t.Errorf("conntrack has %d entries for an untranslated flow", r.ct.Len())
	}
}

func TestMasqueradeToOutsideTheVPC(t *testing.T) {
	vpc := netip.MustParsePrefix("10.100.0.0/16")
	r := newNATRig(t, nil, PortRange{61000, 61009}, vpc)
	outside := [4]byte{198, 18, 0, 1}
	q := l4frame(t, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: outside, sport: 5353, dport: 53, udp: true, payload: "q"})
	eth, ip, pk := parsed(t, r.one(r.pods[0], q, r.trunk))
	udp := pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ip.SrcIP.Equal(net.IP(nodeIP[:])) || udp.SrcPort < 61000 || udp.SrcPort > 61009 || eth.EthernetType != layers.EthernetTypeIPv4 ||
		[6]byte(eth.SrcMAC) != nodeMAC || [6]byte(eth.DstMAC) != gatewayMAC {
		t.Fatalf("masqueraded as %s:%d via %s → %s (%s); want the node's address, untagged, to the gateway", ip.SrcIP, udp.SrcPort, eth.SrcMAC, eth.DstMAC, eth.EthernetType)
	}
	ans := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: outside, dstIP: nodeIP, sport: 53, dport: uint16(udp.SrcPort), udp: true, payload: "a"})
	_, ip, pk = parsed(t, r.one(r.trunk, ans, r.pods[0]))
	udp = pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ip.DstIP.Equal(net.IP(pods[0].IP[:])) || udp.DstPort != 5353 || !ip.SrcIP.Equal(net.IP(outside[:])) {
		t.Fatalf("answer reached %s:%d from %s", ip.DstIP, udp.DstPort, ip.SrcIP)
	}
	// Inside the VPC: no masquerade, the pod's own address and tag.
	in := l4frame(t, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: client, sport: 5353, dport: 53, udp: true})
	got := r.one(r.pods[0], in, r.trunk)
	if got[12] != 0x81 {
		t.Errorf("traffic inside the VPC left untagged: %x", got)
	}
	// 15 flows to one remote over 10 ports: 10 work, 5 are dropped.
	for i := range 15 {
		if err := r.pods[1].Inject(l4frame(t, l4spec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: outside, sport: uint16(30000 + i), dport: 53, udp: true})); err != nil {
			t.Fatal(err)
		}
	}
	r.run()
	if n := len(r.trunk.Sent()); n != 9 { // the first pod's flow holds one port
		t.Errorf("%d of 15 new flows left, want 9", n)
	}
	if d := r.drops()["snat_exhausted"]; d != 6 {
		t.Errorf("snat_exhausted = %d, want 6", d)
	}
}

func TestICMPErrorFromABackendIsTranslatedBack(t *testing.T) {
	spec := clusterIP(backendOf(pods[1], 9000))
	spec.Proto, spec.Port = lb.UDP, 53
	r := newNATRig(t, []lb.ServiceSpec{spec}, PortRange{61000, 61099})
	q := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 5353, dport: 53, udp: true, payload: "a big datagram"})
	translated := r.one(r.trunk, q, r.pods[1])

	// The backend answers with "fragmentation needed, MTU 1400", quoting
	// the datagram as it received it.
	quoted := translated[14:]
	eth := &layers.Ethernet{SrcMAC: pods[1].MAC[:], DstMAC: pods[1].HostMAC[:], EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: pods[1].IP[:], DstIP: client[:]}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4), Seq: 1400}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, gopacket.Payload(quoted)); err != nil {
		t.Fatal(err)
	}
	got := r.one(r.pods[1], buf.Bytes(), r.trunk)
	_, oip, pk := parsed(t, got)
	if !oip.SrcIP.Equal(net.IP(vip[:])) || !oip.DstIP.Equal(net.IP(client[:])) {
		t.Errorf("the error goes %s → %s, want %v → %v", oip.SrcIP, oip.DstIP, net.IP(vip[:]), net.IP(client[:]))
	}
	ic := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ic.TypeCode != layers.CreateICMPv4TypeCode(3, 4) || ic.Seq != 1400 {
		t.Errorf("ICMP %v seq %d, want fragmentation needed, MTU 1400", ic.TypeCode, ic.Seq)
	}
	in := gopacket.NewPacket(ic.Payload, layers.LayerTypeIPv4, gopacket.Default)
	iip, _ := in.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	iudp, _ := in.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if iip == nil || iudp == nil {
		t.Fatalf("quoted packet: %v", in)
	}
	if !iip.SrcIP.Equal(net.IP(client[:])) || !iip.DstIP.Equal(net.IP(vip[:])) || iudp.SrcPort != 5353 || iudp.DstPort != 53 {
		t.Errorf("quoted packet %s:%d → %s:%d, want the client's own %v:5353 → %v:53", iip.SrcIP, iudp.SrcPort, iip.DstIP, iudp.DstPort, net.IP(client[:]), net.IP(vip[:]))
	}
	if !packet.IPv4(ic.Payload).ValidChecksum() {
		t.Error("quoted IPv4 header checksum is wrong")
	}
	// The quoted UDP checksum still matches the quoted datagram.
	want := packet.UDP(q[14+20:])
	if iudp.Checksum != want.Checksum() {
		t.Errorf("quoted UDP checksum %#04x, want the client's %#04x", iudp.Checksum, want.Checksum())
	}
}

func TestReplyTupleClashRemapsTheClientPort(t *testing.T) {
	spec := clusterIP(backendOf(pods[1], 8080))
	spec.ExternalLocal = true // NodePort without SNAT
	r := newNATRig(t, []lb.ServiceSpec{spec}, PortRange{61000, 61099})
	// The client's port 40000 talks to the ClusterIP, and the connection
	// is live.
	syn := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 40000, dport: 80, syn: true})
	r.one(r.trunk, syn, r.pods[1])
	// The same client port to the NodePort: same backend, same reply tuple.
	syn2 := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: nodeIP, sport: 40000, dport: 30080, syn: true})
	_, ip, pk := parsed(t, r.one(r.trunk, syn2, r.pods[1]))
	tcp := pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ip.SrcIP.Equal(net.IP(client[:])) || tcp.SrcPort < 61000 || tcp.SrcPort > 61099 {
		t.Fatalf("second flow reached the backend from %s:%d; want the client's address and a remapped port", ip.SrcIP, tcp.SrcPort)
	}
	reply := l4frame(t, l4spec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: client, sport: 8080, dport: uint16(tcp.SrcPort), syn: true, ack: true})
	_, ip, pk = parsed(t, r.one(r.pods[1], reply, r.trunk))
	tcp = pk.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ip.SrcIP.Equal(net.IP(nodeIP[:])) || tcp.SrcPort != 30080 || tcp.DstPort != 40000 {
		t.Fatalf("reply %s:%d → %s:%d, want the NodePort back to the client's port 40000", ip.SrcIP, tcp.SrcPort, ip.DstIP, tcp.DstPort)
	}
	if n := r.w.Counters().PortRemaps.Load(); n != 1 {
		t.Errorf("port remaps = %d, want 1", n)
	}
}

func TestClientIPAffinityHoldsUntilItsTimeout(t *testing.T) {
	three := func(n int) lb.ServiceSpec {
		s := clusterIP()
		for _, a := range pods[:min(n, len(pods))] {
			s.Backends = append(s.Backends, backendOf(a, 8080))
		}
		s.Backends = append(s.Backends, lb.Backend{IP: [4]byte{10, 100, 1, 9}, Port: 8080, Ready: true, Serving: true, Local: false})[:n]
		s.Affinity = 10 * time.Second
		return s
	}
	r := newNATRig(t, []lb.ServiceSpec{three(2)}, PortRange{61000, 61099})
	aff := lb.NewAffinity()
	r.w.affinity = aff
	// A client whose address hashes to another backend once a third is
	// added: find one.
	var cl [4]byte
	var first string
	pick := func(svc lb.ServiceSpec, c [4]byte) [4]byte {
		st, _ := lb.Build(netip.AddrFrom4(nodeIP), []lb.ServiceSpec{svc}, 0)
		e, _ := st.Lookup(lb.Frontend{IP: vip, Port: 80, Proto: lb.TCP})
		return e.Service.Backends[e.Service.Pick(mix64(uint64(binary.BigEndian.Uint32(c[:]))), false)].IP
	}
	for i := range 1000 {
		cl = [4]byte{10, 100, 0, byte(10 + i%200)}
		cl[2] = byte(i / 200)
		if pick(three(2), cl) != pick(three(3), cl) {
			break
		}
	}
	connect := func(sport uint16) [4]byte {
		syn := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: cl, dstIP: vip, sport: sport, dport: 80, syn: true})
		if err := r.trunk.Inject(syn); err != nil {
			t.Fatal(err)
		}
		r.run()
		var to [4]byte
		for i, p := range r.pods {
			if len(p.Sent()) > 0 {
				to = pods[i].IP
			}
		}
		if to == ([4]byte{}) {
			to = [4]byte{10, 100, 1, 9} // the remote backend: out of the trunk
			r.trunk.Sent()
		}
		return to
	}
	before := connect(1000)
	first = netip.AddrFrom4(before).String()
	st, _ := lb.Build(netip.AddrFrom4(nodeIP), []lb.ServiceSpec{three(3)}, 0)
	r.svcs.Store(st)
	for i := range 5 {
		if got := connect(uint16(2000 + i)); got != before {
			t.Fatalf("within the affinity timeout, connection %d went to %v, not %s", i, got, first)
		}
	}
	r.w.epoch = r.w.epoch.Add(-11 * time.Second) // 11 s pass without a new connection
	if got := connect(3000); got == before {
		t.Errorf("after the timeout the client still went to %s; Maglev on its address picks %v", first, pick(three(3), cl))
	}
}

// withTag inserts an 802.1Q tag with vid after f's MAC addresses.
func withTag(f []byte, vid uint16) []byte {
	out := append([]byte(nil), f[:12]...)
	out = append(out, 0x81, 0x00, byte(vid>>8), byte(vid))
	return append(out, f[12:]...)
}

// A backend removed from its Service keeps its established flows, local
// and remote alike, while the table names it draining; new flows go to the
// backends left.
func TestRemovedBackendDrainsItsFlows(t *testing.T) {
	remote := lb.Backend{IP: [4]byte{10, 100, 1, 9}, Port: 8080, Ready: true, Serving: true}
	r := newNATRig(t, []lb.ServiceSpec{clusterIP(backendOf(pods[1], 8080), remote)}, PortRange{61000, 61099})
	// A flow from the VPC to the local backend, one from pod 1 to the
	// remote one: find client ports Maglev sends there.
	var vpcPort, podPort uint16
	for sport := uint16(40000); vpcPort == 0 || podPort == 0; sport++ {
		if sport > 41000 {
			t.Fatal("no client port reaches both backends")
		}
		if vpcPort == 0 {
			syn := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: sport, dport: 80, syn: true})
			if err := r.trunk.Inject(syn); err != nil {
				t.Fatal(err)
			}
			r.run()
			if len(r.pods[1].Sent()) == 1 {
				vpcPort = sport
			} else {
				r.trunk.Sent()
				r.ct.Delete(conntrack.Key{SrcIP: client, DstIP: vip, SrcPort: sport, DstPort: 80, Proto: lb.TCP})
			}
		}
		if podPort == 0 {
			syn := l4frame(t, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vip, sport: sport, dport: 80, syn: true})
			if err := r.pods[0].Inject(syn); err != nil {
				t.Fatal(err)
			}
			r.run()
			if out := r.trunk.Sent(); len(out) == 1 {
				podPort = sport
			} else {
				r.pods[1].Sent()
				r.ct.Delete(conntrack.Key{SrcIP: pods[0].IP, DstIP: vip, SrcPort: sport, DstPort: 80, Proto: lb.TCP})
			}
		}
	}
	localReply := l4frame(t, l4spec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: client, sport: 8080, dport: vpcPort, syn: true, ack: true})
	remoteReply := withTag(l4frame(t, l4spec{src: gatewayMAC, dst: pods[0].MAC, srcIP: remote.IP, dstIP: pods[0].IP, sport: 8080, dport: podPort, syn: true, ack: true}), pods[0].VID)
	replies := func(what string) {
		t.Helper()
		_, ip, pk := parsed(t, r.one(r.pods[1], localReply, r.trunk))
		if tcp := pk.Layer(layers.LayerTypeTCP).(*layers.TCP); !ip.SrcIP.Equal(net.IP(vip[:])) || tcp.SrcPort != 80 {
			t.Errorf("%s: the local backend's reply leaves from %s:%d, want the ClusterIP", what, ip.SrcIP, tcp.SrcPort)
		}
		_, ip, pk = parsed(t, r.one(r.trunk, remoteReply, r.pods[0]))
		if tcp := pk.Layer(layers.LayerTypeTCP).(*layers.TCP); !ip.SrcIP.Equal(net.IP(vip[:])) || tcp.SrcPort != 80 {
			t.Errorf("%s: the remote backend's reply reaches the pod from %s:%d, want the ClusterIP", what, ip.SrcIP, tcp.SrcPort)
		}
	}
	replies("before the update")

	old := r.svcs.Load()
	next, err := lb.Build(netip.AddrFrom4(nodeIP), []lb.ServiceSpec{clusterIP(backendOf(pods[0], 8080))}, 0)
	if err != nil {
		t.Fatal(err)
	}
	removed := old.Removed(next)
	if len(removed) != 2 || removed[0].Remote || !removed[1].Remote {
		t.Fatalf("removed %+v, want the local then the remote backend", removed)
	}
	r.svcs.Store(next.WithDraining(removed))
	replies("while draining")
	syn := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 50000, dport: 80, syn: true})
	if _, ip, _ := parsed(t, r.one(r.trunk, syn, r.pods[0])); !ip.DstIP.Equal(net.IP(pods[0].IP[:])) {
		t.Errorf("a new flow went to %s, want the backend left", ip.DstIP)
	}

	// Without the draining entries the replies would pass untranslated:
	// what the dataplane did before backends drained.
	r.svcs.Store(next)
	pk := gopacket.NewPacket(r.one(r.pods[1], localReply, r.trunk), layers.LayerTypeEthernet, gopacket.Default)
	if ip, ok := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4); !ok || !ip.SrcIP.Equal(net.IP(pods[1].IP[:])) {
		t.Errorf("a backend that is neither an endpoint nor draining: its reply left as %v, want untranslated", pk)
	}
}
