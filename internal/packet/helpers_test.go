package packet

import (
	"encoding/binary"
	"encoding/hex"
	"net"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	ipA  = [4]byte{10, 1, 2, 3}
	ipB  = [4]byte{10, 1, 2, 4}
)

// serialize builds a frame with gopacket, fixing lengths and checksums.
// Transport layers get ip (if any) as their checksum network layer.
func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	var ip *layers.IPv4
	for _, l := range ls {
		switch l := l.(type) {
		case *layers.IPv4:
			ip = l
		case *layers.TCP:
			if ip != nil {
				l.SetNetworkLayerForChecksum(ip)
			}
		case *layers.UDP:
			if ip != nil {
				l.SetNetworkLayerForChecksum(ip)
			}
		}
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func eth(t layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: t}
}

func dot1q(vid uint16, pcp uint8, next layers.EthernetType) *layers.Dot1Q {
	return &layers.Dot1Q{VLANIdentifier: vid, Priority: pcp, Type: next}
}

func ip4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{
		Version: 4, TTL: 64, Id: 0x1234, Flags: layers.IPv4DontFragment,
		Protocol: proto, SrcIP: ipA[:], DstIP: ipB[:],
	}
}

func tcpSYN(sport, dport uint16) *layers.TCP {
	return &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1000, SYN: true, Window: 65535}
}

func udp(sport, dport uint16) *layers.UDP {
	return &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
}

func payload(n int) gopacket.Payload {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + 1)
	}
	return p
}

// unhex decodes a hex fixture: whitespace separates bytes, '#' starts a
// comment that runs to the end of the line.
func unhex(s string) []byte {
	var b strings.Builder
	for line := range strings.Lines(s) {
		line, _, _ = strings.Cut(line, "#")
		b.WriteString(strings.Join(strings.Fields(line), ""))
	}
	out, err := hex.DecodeString(b.String())
	if err != nil {
		panic(err)
	}
	return out
}

// fullL4Checksum recomputes the TCP or UDP checksum of the packet ip from
// scratch, ignoring the stored checksum, with the UDP 0 → 0xFFFF rule.
func fullL4Checksum(ip IPv4) uint16 {
	l4 := ip.Payload()
	off := tcpChecksum
	if ip.Protocol() == IPProtoUDP {
		off = udpChecksum
	}
	sum := PseudoHeaderSum(ip.Src(), ip.Dst(), ip.Protocol(), uint16(len(l4)))
	sum = Checksum(l4[:off], sum)
	c := Fold(Checksum(l4[off+2:], sum))
	if ip.Protocol() == IPProtoUDP && c == 0 {
		c = 0xFFFF
	}
	return c
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
