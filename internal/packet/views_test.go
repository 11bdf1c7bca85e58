package packet

import (
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func decodeGopacket(tb testing.TB, frame []byte) gopacket.Packet {
	tb.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if err := pkt.ErrorLayer(); err != nil {
		tb.Fatalf("gopacket: %v", err.Error())
	}
	return pkt
}

func TestEthernetView(t *testing.T) {
	frame := serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), udp(1, 2))
	e := Ethernet(frame)
	if e.Dst() != [6]byte(macB) || e.Src() != [6]byte(macA) || e.Type() != EtherTypeIPv4 {
		t.Fatalf("got dst %x src %x type %#x", e.Dst(), e.Src(), e.Type())
	}
	e.SetDst([6]byte{1, 2, 3, 4, 5, 6})
	e.SetSrc([6]byte{7, 8, 9, 10, 11, 12})
	e.SetType(EtherTypeARP)
	g := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default).Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if g.DstMAC.String() != "01:02:03:04:05:06" || g.SrcMAC.String() != "07:08:09:0a:0b:0c" || g.EthernetType != layers.EthernetTypeARP {
		t.Fatalf("after setters gopacket sees %v %v %v", g.DstMAC, g.SrcMAC, g.EthernetType)
	}
}

func TestEtherTypeIsVLANTag(t *testing.T) {
	for et, want := range map[EtherType]bool{
		EtherTypeVLAN: true, EtherTypeQinQ: true, EtherTypeQinQOld: true,
		EtherTypeIPv4: false, EtherTypeARP: false, EtherTypeIPv6: false, 0x9200: false,
	} {
		if et.IsVLANTag() != want {
			t.Errorf("%#x.IsVLANTag() = %v", uint16(et), !want)
		}
	}
}

func TestVLANTagView(t *testing.T) {
	tag := VLANTag(append([]byte(nil), fixtureTaggedUDP[EthernetLen:EthernetLen+VLANTagLen]...))
	if tag.TCI() != 0xA02A || tag.VID() != 42 || tag.PCP() != 5 || tag.DEI() || tag.Type() != EtherTypeIPv4 {
		t.Fatalf("TCI %#x VID %d PCP %d DEI %v type %#x", tag.TCI(), tag.VID(), tag.PCP(), tag.DEI(), tag.Type())
	}
	tag.SetVID(0xF123) // only the low 12 bits count
	if tag.VID() != 0x123 || tag.PCP() != 5 || tag.DEI() {
		t.Fatalf("SetVID: TCI %#x", tag.TCI())
	}
	tag.SetDEI(true)
	if !tag.DEI() || tag.VID() != 0x123 || tag.PCP() != 5 {
		t.Fatalf("SetDEI(true): TCI %#x", tag.TCI())
	}
	tag.SetPCP(0xFA) // only the low 3 bits count
	if tag.PCP() != 2 || !tag.DEI() || tag.VID() != 0x123 {
		t.Fatalf("SetPCP: TCI %#x", tag.TCI())
	}
	tag.SetDEI(false)
	if tag.TCI() != 2<<13|0x123 {
		t.Fatalf("SetDEI(false): TCI %#x", tag.TCI())
	}
	tag.SetType(EtherTypeVLAN)
	if tag.Type() != EtherTypeVLAN {
		t.Fatalf("SetType: %#x", tag.Type())
	}

	frame := serialize(t, eth(layers.EthernetTypeDot1Q), &layers.Dot1Q{Priority: 4, DropEligible: true, VLANIdentifier: 4000, Type: layers.EthernetTypeARP})
	tag = VLANTag(frame[EthernetLen:])
	if tag.PCP() != 4 || !tag.DEI() || tag.VID() != 4000 || tag.Type() != EtherTypeARP {
		t.Fatalf("gopacket tag read as TCI %#x type %#x", tag.TCI(), tag.Type())
	}
}

func TestARPView(t *testing.T) {
	frame := serialize(t, eth(layers.EthernetTypeARP), &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPReply,
		SourceHwAddress: macA, SourceProtAddress: ipA[:], DstHwAddress: macB, DstProtAddress: ipB[:],
	})
	a := ARP(frame[EthernetLen:])
	if !a.Valid() || a.HType() != 1 || a.PType() != EtherTypeIPv4 || a.HLen() != 6 || a.PLen() != 4 ||
		a.Op() != ARPReply || a.SenderHW() != [6]byte(macA) || a.SenderIP() != ipA ||
		a.TargetHW() != [6]byte(macB) || a.TargetIP() != ipB {
		t.Fatalf("ARP view reads % x", []byte(a[:ARPLen]))
	}
	a.SetOp(ARPRequest)
	a.SetSenderHW([6]byte(macB))
	a.SetSenderIP(ipB)
	a.SetTargetHW([6]byte{})
	a.SetTargetIP(ipA)
	g := decodeGopacket(t, frame).Layer(layers.LayerTypeARP).(*layers.ARP)
	if g.Operation != layers.ARPRequest || string(g.SourceHwAddress) != string(macB) || string(g.SourceProtAddress) != string(ipB[:]) ||
		string(g.DstHwAddress) != string(make([]byte, 6)) || string(g.DstProtAddress) != string(ipA[:]) {
		t.Fatalf("after setters gopacket sees %+v", g)
	}

	for name, edit := range map[string]func(ARP){
		"htype": func(a ARP) { a.SetHType(6) },
		"ptype": func(a ARP) { a.SetPType(EtherTypeIPv6) },
		"hlen":  func(a ARP) { a.SetHLen(8) },
		"plen":  func(a ARP) { a.SetPLen(16) },
	} {
		b := ARP(append([]byte(nil), a...))
		edit(b)
		if b.Valid() {
			t.Errorf("Valid after changing %s", name)
		}
	}
	if ARP(a[:ARPLen-1]).Valid() {
		t.Error("Valid for a short ARP message")
	}
}

func TestIPv4View(t *testing.T) {
	gip := ip4(layers.IPProtocolUDP)
	gip.TOS = 0xB8
	gip.Flags = layers.IPv4MoreFragments
	gip.FragOffset = 100
	gip.TTL = 17
	gip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	frame := serialize(t, eth(layers.EthernetTypeIPv4), gip, payload(3))
	ip := IPv4(frame[EthernetLen:])
	if ip.Version() != 4 || ip.IHL() != 6 || ip.HeaderLen() != 24 || ip.TOS() != 0xB8 || ip.TotalLen() != 27 ||
		ip.ID() != 0x1234 || ip.Flags() != IPv4FlagMF || ip.FragOffset() != 800 || !ip.IsFragment() ||
		!ip.MoreFragments() || ip.DontFragment() || ip.TTL() != 17 || ip.Protocol() != IPProtoUDP ||
		ip.Checksum() != gip.Checksum || ip.Src() != ipA || ip.Dst() != ipB {
		t.Fatalf("IPv4 view reads % x", []byte(ip[:24]))
	}
	if !ip.ValidChecksum() || ip.ComputeChecksum() != gip.Checksum {
		t.Fatalf("checksum %#x, computed %#x", ip.Checksum(), ip.ComputeChecksum())
	}
	if got := ip.Payload(); string(got) != string(payload(3)) {
		t.Fatalf("Payload % x ignores TotalLen or padding", got)
	}

	ip.SetTOS(0)
	ip.SetTotalLen(26)
	ip.SetID(0xFFFF)
	ip.SetTTL(1)
	ip.SetSrc([4]byte{192, 0, 2, 1})
	ip.SetDst([4]byte{198, 51, 100, 255})
	if !ip.ValidChecksum() {
		t.Fatal("setters left an invalid header checksum")
	}
	g := decodeGopacket(t, frame).Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if g.TOS != 0 || g.Length != 26 || g.Id != 0xFFFF || g.TTL != 1 ||
		g.SrcIP.String() != "192.0.2.1" || g.DstIP.String() != "198.51.100.255" {
		t.Fatalf("after setters gopacket sees %+v", g)
	}
	ip.SetChecksum(0)
	if ip.Checksum() != 0 || ip.ValidChecksum() {
		t.Fatal("SetChecksum(0) kept a valid checksum")
	}

	df := IPv4(serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), tcpSYN(1, 2))[EthernetLen:])
	if df.IsFragment() || df.MoreFragments() || !df.DontFragment() || df.Flags() != IPv4FlagDF {
		t.Fatalf("DF packet: flags %#x offset %d", df.Flags(), df.FragOffset())
	}
	last := ip4(layers.IPProtocolUDP)
	last.Flags, last.FragOffset = 0, 1
	if lf := IPv4(serialize(t, eth(layers.EthernetTypeIPv4), last, payload(8))[EthernetLen:]); !lf.IsFragment() || lf.MoreFragments() {
		t.Fatal("last fragment not recognised")
	}
}

func TestIPv4Payload(t *testing.T) {
	frame := serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), udp(1, 2), payload(4))
	ip := IPv4(frame[EthernetLen:]) // 32 bytes of IPv4 and 14 of padding
	for _, tc := range []struct {
		totalLen uint16
		want     int
	}{{32, 12}, {20, 0}, {19, 0}, {0, 0}, {46, 26}, {1000, 26}} {
		ip.SetTotalLen(tc.totalLen)
		if got := len(ip.Payload()); got != tc.want {
			t.Errorf("TotalLen %d: payload %d bytes, want %d", tc.totalLen, got, tc.want)
		}
	}
}

func TestIPv6View(t *testing.T) {
	src, dst := [16]byte{0xfd, 15: 1}, [16]byte{0xfd, 15: 2}
	frame := serialize(t, eth(layers.EthernetTypeIPv6),
		&layers.IPv6{Version: 6, HopLimit: 9, NextHeader: layers.IPProtocolNoNextHeader, SrcIP: src[:], DstIP: dst[:]}, payload(5))
	ip := IPv6(frame[EthernetLen:])
	if ip.Version() != 6 || ip.PayloadLen() != 5 || ip.NextHeader() != 59 || ip.HopLimit() != 9 || ip.Src() != src || ip.Dst() != dst {
		t.Fatalf("IPv6 view reads % x", []byte(ip[:IPv6Len]))
	}
}

func TestTCPView(t *testing.T) {
	gt := &layers.TCP{SrcPort: 443, DstPort: 51000, Seq: 0xDEADBEEF, Ack: 0x01020304, ACK: true, PSH: true, FIN: true,
		ECE: true, CWR: true, URG: true, Window: 1234, Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}}}
	frame := serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), gt)
	tcp := TCP(frame[EthernetLen+IPv4Len:])
	wantFlags := TCPFlagACK | TCPFlagPSH | TCPFlagFIN | TCPFlagECE | TCPFlagCWR | TCPFlagURG
	if tcp.SrcPort() != 443 || tcp.DstPort() != 51000 || tcp.Seq() != 0xDEADBEEF || tcp.Ack() != 0x01020304 ||
		tcp.DataOffset() != 6 || tcp.HeaderLen() != 24 || tcp.Flags() != wantFlags || tcp.Window() != 1234 ||
		tcp.Checksum() != gt.Checksum {
		t.Fatalf("TCP view reads % x", []byte(tcp[:24]))
	}
	syn := TCP(serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP),
		&layers.TCP{SYN: true, RST: true})[EthernetLen+IPv4Len:])
	if syn.Flags() != TCPFlagSYN|TCPFlagRST {
		t.Fatalf("flags %#x", syn.Flags())
	}
	tcp.SetSrcPort(1)
	tcp.SetDstPort(2)
	tcp.SetChecksum(3)
	if tcp.SrcPort() != 1 || tcp.DstPort() != 2 || tcp.Checksum() != 3 {
		t.Fatal("TCP setters")
	}
}

func TestUDPView(t *testing.T) {
	gu := udp(5353, 53)
	frame := serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), gu, payload(9))
	u := UDP(frame[EthernetLen+IPv4Len:])
	if u.SrcPort() != 5353 || u.DstPort() != 53 || u.Length() != 17 || u.Checksum() != gu.Checksum {
		t.Fatalf("UDP view reads % x", []byte(u[:UDPLen]))
	}
	u.SetSrcPort(1)
	u.SetDstPort(2)
	u.SetLength(3)
	u.SetChecksum(4)
	if u.SrcPort() != 1 || u.DstPort() != 2 || u.Length() != 3 || u.Checksum() != 4 {
		t.Fatal("UDP setters")
	}
}

func TestICMPv4View(t *testing.T) {
	gi := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(0, 0), Id: 0x4242, Seq: 9}
	frame := serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolICMPv4), gi, payload(4))
	ic := ICMPv4(frame[EthernetLen+IPv4Len:])
	if ic.Type() != ICMPv4EchoReply || ic.Code() != 0 || ic.Checksum() != gi.Checksum || ic.ID() != 0x4242 || ic.Seq() != 9 || !ic.IsEcho() {
		t.Fatalf("ICMPv4 view reads % x", []byte(ic[:ICMPv4Len]))
	}
	ic.SetType(ICMPv4TimeExceeded)
	ic.SetCode(1)
	ic.SetID(5)
	ic.SetSeq(6)
	ic.SetChecksum(Fold(Checksum(ic[icmpChecksum+2:], Checksum(ic[:icmpChecksum], 0))))
	g := decodeGopacket(t, frame).Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if g.TypeCode != layers.CreateICMPv4TypeCode(11, 1) || ic.IsEcho() {
		t.Fatalf("after setters gopacket sees %+v", g)
	}
	if Fold(Checksum(ic, 0)) != 0 {
		t.Fatal("ICMP checksum built from Checksum/Fold is invalid")
	}
}
