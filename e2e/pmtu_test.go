package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// TestPathMTUThroughAService: a backend answers a UDP datagram that came
// through a ClusterIP with ICMP "fragmentation needed"; the client's
// kernel must learn the smaller path MTU for the ClusterIP, which it does
// only if the error comes from the ClusterIP and quotes the datagram as
// the client sent it.
func TestPathMTUThroughAService(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlmtu%d", os.Getpid()%10000), 3)
	b := e.b
	e.startAgent()
	udp := b.Service("default/echo-udp")
	c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(udp.VIP, udp.Port))
	if err := udpRoundTrip(c, []byte("hello"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	client := c.LocalAddr().(*net.UDPAddr).AddrPort()
	// Each pod answers as if it were the backend: only the real one's
	// error matches the flow; the others are forwarded as they are, and
	// the client's kernel ignores them.
	for _, p := range b.Pods {
		quoted := &layers.IPv4{Version: 4, TTL: 63, Protocol: layers.IPProtocolUDP, Flags: layers.IPv4DontFragment,
			SrcIP: client.Addr().AsSlice(), DstIP: p.IP.AsSlice()}
		qudp := &layers.UDP{SrcPort: layers.UDPPort(client.Port()), DstPort: layers.UDPPort(udp.TargetPort)}
		qudp.SetNetworkLayerForChecksum(quoted)
		qbuf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(qbuf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, quoted, qudp, gopacket.Payload(make([]byte, 1450))); err != nil {
			t.Fatal(err)
		}
		eth := &layers.Ethernet{SrcMAC: p.MAC, DstMAC: p.HostVethMAC, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: p.IP.AsSlice(), DstIP: client.Addr().AsSlice()}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded), Seq: 1400}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, gopacket.Payload(qbuf.Bytes()[:28])); err != nil {
			t.Fatal(err)
		}
		injector(t, p.Netns, p.Ifname)(buf.Bytes())
	}
	deadline := time.Now().Add(2 * time.Second)
	var route string
	for time.Now().Before(deadline) {
		out, _ := b.Command(t.Context(), b.Wire.Netns, "ip", "route", "get", udp.VIP.String()).Output()
		if route = string(out); strings.Contains(route, "mtu 1400") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the client did not learn the path MTU of %s; its route: %s", udp.VIP, route)
}
