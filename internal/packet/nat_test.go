package packet

import (
	"fmt"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// natPacket describes an IPv4 packet for NAT tests; frame builds it with
// gopacket, checksums computed.
type natPacket struct {
	proto        uint8 // IPProtoTCP, IPProtoUDP or IPProtoICMP
	src, dst     [4]byte
	sport, dport uint16 // for ICMP, sport is the echo ID
	options      bool   // a 4-byte IPv4 option
	frag         int    // 0 none, 1 first fragment, 2 non-first fragment
	noUDPCsum    bool   // UDP checksum 0
	data         []byte
}

func (n natPacket) frame(tb testing.TB) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Id: 99, Protocol: layers.IPProtocol(n.proto), SrcIP: n.src[:], DstIP: n.dst[:]}
	if n.options {
		ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	}
	ls := []gopacket.SerializableLayer{eth(layers.EthernetTypeIPv4), ip}
	switch {
	case n.frag == 2:
		ip.FragOffset = 185
	case n.proto == IPProtoTCP:
		ls = append(ls, &layers.TCP{SrcPort: layers.TCPPort(n.sport), DstPort: layers.TCPPort(n.dport), Seq: 7, ACK: true, Window: 512})
	case n.proto == IPProtoUDP:
		ls = append(ls, udp(n.sport, n.dport))
	case n.proto == IPProtoICMP:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(ICMPv4EchoRequest, 0), Id: n.sport, Seq: 1})
	}
	if n.frag == 1 {
		ip.Flags = layers.IPv4MoreFragments
	}
	ls = append(ls, gopacket.Payload(n.data))
	f := serialize(tb, ls...)
	if n.noUDPCsum && n.proto == IPProtoUDP && n.frag != 2 {
		UDP(f[EthernetLen+IPv4(f[EthernetLen:]).HeaderLen():]).SetChecksum(0)
	}
	return f
}

// rewrite applies the helpers to frame to turn it into to; it reports what
// the port and ICMP helpers returned.
func rewrite(frame []byte, to natPacket) (ports, icmpID bool) {
	var p Parsed
	p.Decode(frame)
	ip, l4 := IPv4(frame[p.L3Off:]), frame[p.L4Off:]
	RewriteIPv4Src(ip, l4, to.src)
	RewriteIPv4Dst(ip, l4, to.dst)
	ps := RewriteSrcPort(ip, l4, to.sport)
	pd := RewriteDstPort(ip, l4, to.dport)
	if ps != pd {
		panic("RewriteSrcPort and RewriteDstPort disagree")
	}
	return ps, RewriteICMPEchoID(ip, l4, to.sport)
}

// checkRewrite rewrites from's frame to to and compares the result with
// gopacket's frame for to and with full checksum recomputes.
func checkRewrite(t *testing.T, from, to natPacket) {
	t.Helper()
	frame := from.frame(t)
	var p Parsed
	p.Decode(frame)
	if p.Status != StatusOK {
		t.Fatalf("test frame decodes as %v", p.Status)
	}
	ip := IPv4(frame[p.L3Off:])
	if !ip.ValidChecksum() || ip.ComputeChecksum() != ip.Checksum() {
		t.Fatalf("gopacket IPv4 checksum %#x, ComputeChecksum %#x", ip.Checksum(), ip.ComputeChecksum())
	}
	hasL4 := from.frag != 2
	if hasL4 && from.proto != IPProtoICMP {
		stored := be16(frame[int(p.L4Off)+l4CsumOff(from.proto):])
		if want := fullL4Checksum(ip); stored != want && !(from.noUDPCsum && stored == 0) {
			t.Fatalf("gopacket L4 checksum %#x, full recompute %#x", stored, want)
		}
	}

	ports, icmpID := rewrite(frame, to)
	if want := hasL4 && from.proto != IPProtoICMP; ports != want {
		t.Errorf("port rewrite reported %v, want %v", ports, want)
	}
	if want := hasL4 && from.proto == IPProtoICMP; icmpID != want {
		t.Errorf("ICMP ID rewrite reported %v, want %v", icmpID, want)
	}

	if want := to.frame(t); string(frame) != string(want) {
		t.Fatalf("rewritten frame differs from gopacket's:\n got % x\nwant % x", frame, want)
	}
	if !ip.ValidChecksum() {
		t.Fatal("invalid IPv4 checksum after rewrite")
	}
	if hasL4 && from.proto != IPProtoICMP {
		stored := be16(frame[int(p.L4Off)+l4CsumOff(from.proto):])
		switch want := fullL4Checksum(ip); {
		case from.noUDPCsum && from.proto == IPProtoUDP:
			if stored != 0 {
				t.Fatalf("UDP checksum 0 became %#x", stored)
			}
		case stored != want:
			t.Fatalf("L4 checksum %#x after rewrite, full recompute %#x", stored, want)
		}
	}
	if hasL4 && from.proto == IPProtoICMP && Fold(Checksum(ip.Payload(), 0)) != 0 {
		t.Fatal("invalid ICMP checksum after rewrite")
	}
}

func l4CsumOff(proto uint8) int {
	if proto == IPProtoUDP {
		return udpChecksum
	}
	return tcpChecksum
}

func TestRewrite(t *testing.T) {
	base := natPacket{src: ipA, dst: ipB, sport: 40000, dport: 80, data: payload(33)}
	for _, proto := range []uint8{IPProtoTCP, IPProtoUDP, IPProtoICMP} {
		for _, v := range []struct {
			name string
			edit func(*natPacket)
		}{
			{"plain", func(*natPacket) {}},
			{"options", func(n *natPacket) { n.options = true }},
			{"first fragment", func(n *natPacket) { n.frag = 1 }},
			{"non-first fragment", func(n *natPacket) { n.frag = 2 }},
			{"no UDP checksum", func(n *natPacket) { n.noUDPCsum = true }},
			{"empty payload", func(n *natPacket) { n.data = nil }},
		} {
			t.Run(fmt.Sprintf("proto %d %s", proto, v.name), func(t *testing.T) {
				from := base
				from.proto = proto
				v.edit(&from)
				to := from
				to.src, to.dst = [4]byte{192, 0, 2, 77}, [4]byte{172, 16, 255, 1}
				to.sport, to.dport = 1024, 8080
				checkRewrite(t, from, to)
			})
		}
	}
}

// TestRewriteUDPZeroChecksum finds a source port for which the UDP checksum
// computes to 0 and checks that rewrites write it as 0xFFFF, the way
// gopacket (and RFC 768) does.
func TestRewriteUDPZeroChecksum(t *testing.T) {
	from := natPacket{proto: IPProtoUDP, src: ipA, dst: ipB, sport: 0, dport: 53, data: payload(10)}
	frame := from.frame(t)
	check := UDP(frame[EthernetLen+IPv4Len:]).Checksum()
	zeroPort := -1
	for port := range 1 << 16 {
		if UpdateChecksum16(check, 0, uint16(port)) == 0 {
			zeroPort = port
			break
		}
	}
	if zeroPort < 0 {
		t.Fatal("no port gives a zero checksum")
	}
	to := from
	to.sport = uint16(zeroPort)
	if got := UDP(to.frame(t)[EthernetLen+IPv4Len:]).Checksum(); got != 0xFFFF {
		t.Fatalf("gopacket wrote %#x for a computed 0", got)
	}
	checkRewrite(t, from, to) // port 0 → zeroPort: the update computes 0
	checkRewrite(t, to, to)   // unchanged fields keep 0xFFFF
	back := to
	back.sport = 0
	checkRewrite(t, to, back) // from 0xFFFF to an ordinary checksum
}

func TestRewriteShortL4(t *testing.T) {
	for _, proto := range []uint8{IPProtoTCP, IPProtoUDP, IPProtoICMP} {
		frame := natPacket{proto: proto, src: ipA, dst: ipB, sport: 1, dport: 2}.frame(t)
		ip := IPv4(frame[EthernetLen:])
		l4 := frame[EthernetLen+IPv4Len : EthernetLen+IPv4Len+UDPLen-1]
		orig := string(l4)
		if RewriteSrcPort(ip, l4, 9) || RewriteDstPort(ip, l4, 9) || RewriteICMPEchoID(ip, l4, 9) {
			t.Errorf("proto %d: rewrite of a %d-byte L4 header reported success", proto, len(l4))
		}
		RewriteIPv4Src(ip, l4, ipB)
		RewriteIPv4Dst(ip, l4, ipA)
		if string(l4) != orig || !ip.ValidChecksum() || ip.Src() != ipB || ip.Dst() != ipA {
			t.Errorf("proto %d: address rewrite with short L4 header: l4 % x, IPv4 checksum valid %v", proto, l4, ip.ValidChecksum())
		}
	}
	reply := natPacket{proto: IPProtoICMP, src: ipA, dst: ipB}.frame(t)
	ICMPv4(reply[EthernetLen+IPv4Len:]).SetType(ICMPv4DestUnreachable)
	if RewriteICMPEchoID(IPv4(reply[EthernetLen:]), reply[EthernetLen+IPv4Len:], 1) {
		t.Error("ICMP ID rewrite of a non-echo message reported success")
	}
}

func TestRewriteAllocs(t *testing.T) {
	frames := map[uint8][]byte{}
	for _, proto := range []uint8{IPProtoTCP, IPProtoUDP, IPProtoICMP} {
		frames[proto] = natPacket{proto: proto, src: ipA, dst: ipB, sport: 1, dport: 2, data: payload(20)}.frame(t)
	}
	l3 := func(proto uint8) (IPv4, []byte) {
		return IPv4(frames[proto][EthernetLen:]), frames[proto][EthernetLen+IPv4Len:]
	}
	for name, fn := range map[string]func(){
		"RewriteIPv4Src":    func() { ip, l4 := l3(IPProtoTCP); RewriteIPv4Src(ip, l4, [4]byte{1, 2, 3, 4}) },
		"RewriteIPv4Dst":    func() { ip, l4 := l3(IPProtoUDP); RewriteIPv4Dst(ip, l4, [4]byte{1, 2, 3, 4}) },
		"RewriteSrcPort":    func() { ip, l4 := l3(IPProtoTCP); RewriteSrcPort(ip, l4, 5) },
		"RewriteDstPort":    func() { ip, l4 := l3(IPProtoUDP); RewriteDstPort(ip, l4, 5) },
		"RewriteICMPEchoID": func() { ip, l4 := l3(IPProtoICMP); RewriteICMPEchoID(ip, l4, 5) },
		"IPv4.SetTTL":       func() { ip, _ := l3(IPProtoTCP); ip.SetTTL(ip.TTL() - 1) },
	} {
		if allocs := testing.AllocsPerRun(100, fn); allocs != 0 {
			t.Errorf("%s allocates %v times per run", name, allocs)
		}
	}
}

// FuzzIncrementalChecksum rewrites addresses and ports of gopacket-built
// packets with the helpers and checks the checksums against full recomputes
// and against gopacket's serialization of the rewritten packet.
func FuzzIncrementalChecksum(f *testing.F) {
	f.Add(uint8(0), uint32(0x0a010203), uint32(0x0a010204), uint32(0xc0000201), uint32(0xac100001), uint16(40000), uint16(80), uint16(1024), uint16(8080), []byte("hello"))
	f.Add(uint8(1), uint32(0), uint32(0xFFFFFFFF), uint32(0xFFFFFFFF), uint32(0), uint16(0), uint16(0xFFFF), uint16(0xFFFF), uint16(0), []byte{})
	f.Add(uint8(2), uint32(0x7f000001), uint32(0x7f000001), uint32(0x7f000001), uint32(0x7f000001), uint16(1), uint16(1), uint16(1), uint16(1), []byte{0xFF})
	f.Add(uint8(0x0D), uint32(0x01020304), uint32(0x05060708), uint32(0x0a0b0c0d), uint32(0x0e0f1011), uint16(53), uint16(53), uint16(5353), uint16(53), []byte(payload(100)))
	f.Add(uint8(0x11), uint32(0xc0a80001), uint32(0xc0a80002), uint32(0xc0a80003), uint32(0xc0a80004), uint16(1), uint16(2), uint16(3), uint16(4), []byte(payload(7)))
	f.Add(uint8(0x25), uint32(0xc0a80001), uint32(0xc0a80002), uint32(0xc0a80003), uint32(0xc0a80004), uint16(1), uint16(2), uint16(3), uint16(4), []byte(payload(64)))
	f.Add(uint8(0x41), uint32(0x0a000001), uint32(0x0a000002), uint32(0x0a000001), uint32(0x0a000002), uint16(0), uint16(53), uint16(0), uint16(53), []byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, sel uint8, src, dst, newSrc, newDst uint32, sport, dport, newSport, newDport uint16, data []byte) {
		if len(data) > 1400 {
			data = data[:1400]
		}
		from := natPacket{
			proto:     [3]uint8{IPProtoTCP, IPProtoUDP, IPProtoICMP}[sel%3],
			src:       u32addr(src),
			dst:       u32addr(dst),
			sport:     sport,
			dport:     dport,
			options:   sel&0x04 != 0,
			frag:      int(sel>>4) % 3,
			noUDPCsum: sel&0x08 != 0,
			data:      data,
		}
		to := from
		to.src, to.dst, to.sport, to.dport = u32addr(newSrc), u32addr(newDst), newSport, newDport
		if from.proto == IPProtoICMP {
			to.dport = from.dport
		}
		checkRewrite(t, from, to)
	})
}

func u32addr(v uint32) [4]byte { return [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

func BenchmarkRewrite(b *testing.B) {
	frame := natPacket{proto: IPProtoTCP, src: ipA, dst: ipB, sport: 40000, dport: 80, data: payload(100)}.frame(b)
	b.Run("DNAT", func(b *testing.B) {
		b.ReportAllocs()
		var p Parsed
		backends := [2][4]byte{{10, 9, 0, 1}, {10, 9, 0, 2}}
		i := 0
		for b.Loop() {
			p.Decode(frame)
			ip, l4 := IPv4(frame[p.L3Off:]), frame[p.L4Off:]
			RewriteIPv4Dst(ip, l4, backends[i&1])
			RewriteDstPort(ip, l4, 8080+uint16(i&1))
			i++
		}
	})
}
