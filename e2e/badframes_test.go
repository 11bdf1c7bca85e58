package e2e

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/trunkline/trunkline/bench/agentproc"
	"github.com/trunkline/trunkline/bench/bed"
	"golang.org/x/sys/unix"
)

const probePort = 7777

// frame builds an Ethernet frame: tags (TPID, VID) outermost first, then an
// IPv4/UDP datagram to probePort.
func frame(t *testing.T, src, dst net.HardwareAddr, tags [][2]uint16, srcIP, dstIP netip.Addr) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst}
	ls := []gopacket.SerializableLayer{eth}
	next := &eth.EthernetType
	for _, tag := range tags {
		*next = layers.EthernetType(tag[0])
		d := &layers.Dot1Q{VLANIdentifier: tag[1]}
		ls = append(ls, d)
		next = &d.Type
	}
	*next = layers.EthernetTypeIPv4
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: srcIP.AsSlice(), DstIP: dstIP.AsSlice()}
	udp := &layers.UDP{SrcPort: 5555, DstPort: probePort}
	udp.SetNetworkLayerForChecksum(ip)
	ls = append(ls, ip, udp, gopacket.Payload("probe"))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// injector sends raw frames out of an interface, bypassing qdiscs and tc
// (so the wire's tagging program does not touch them).
func injector(t *testing.T, netns, ifname string) func([]byte) {
	t.Helper()
	send := rawSender(t, netns, ifname)
	return func(f []byte) {
		if err := send(f); err != nil {
			t.Fatalf("inject on %s/%s: %v", netns, ifname, err)
		}
	}
}

// rawSender is injector that returns the send's error (ENOBUFS: the device
// dropped the frame).
func rawSender(t *testing.T, netns, ifname string) func([]byte) error {
	t.Helper()
	var fd, ifindex int
	err := bed.InNetns(netns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		ifindex = ifi.Index
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
	})
	if err != nil {
		t.Fatalf("raw socket on %s/%s: %v", netns, ifname, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func(f []byte) error {
		return unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: ifindex})
	}
}

// podListeners counts, per pod, the UDP datagrams that reach port in the
// pod's namespace: the proof that a pod did or did not see a frame.
func podListeners(t *testing.T, b *bed.Bed, port uint16) []*atomic.Int64 {
	t.Helper()
	got := make([]*atomic.Int64, len(b.Pods))
	for i, p := range b.Pods {
		got[i] = new(atomic.Int64)
		var pc net.PacketConn
		err := bed.InNetns(p.Netns, func() error {
			var err error
			pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(netip.IPv4Unspecified(), port).String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
				got[i].Add(1)
			}
		}()
	}
	return got
}

func testBadFrames(t *testing.T, b *bed.Bed, a *agentproc.Proc) {
	// Each pod counts the probes that reach its UDP port.
	got := podListeners(t, b, probePort)
	pod1, pod2, pod3 := b.Pods[0], b.Pods[1], b.Pods[2]
	gw := b.Wire.MAC
	vpc := b.Wire.IP
	fromWire := injector(t, b.Wire.Netns, b.Wire.Ifname)
	fromPod1 := injector(t, pod1.Netns, pod1.Ifname)

	good := frame(t, gw, pod1.MAC, [][2]uint16{{0x8100, pod1.VLAN}}, vpc, pod1.IP)
	truncated := append([]byte(nil), good[:14+4+20+8]...)
	truncated[14+4+2], truncated[14+4+3] = 0x05, 0xdc // IPv4 total length 1500 in a 46-byte frame
	cut := append([]byte(nil), good[:14+4+10]...)     // ends inside the IPv4 header
	bad := []struct {
		reason string
		send   func([]byte)
		frame  []byte
	}{
		{"unknown_vid", fromWire, frame(t, gw, pod1.MAC, [][2]uint16{{0x8100, 999}}, vpc, pod1.IP)},
		{"qinq", fromWire, frame(t, gw, pod1.MAC, [][2]uint16{{0x88a8, pod1.VLAN}, {0x8100, pod1.VLAN}}, vpc, pod1.IP)},
		{"malformed", fromWire, truncated},
		{"malformed", fromWire, cut},
		{"spoofed_source", fromPod1, frame(t, pod1.MAC, pod1.HostVethMAC, nil, pod3.IP, pod2.IP)},
		{"spoofed_source", fromPod1, frame(t, net.HardwareAddr{2, 0, 0, 0, 0, 0x99}, pod1.HostVethMAC, nil, pod1.IP, pod2.IP)},
		{"spoofed_source", fromPod1, frame(t, pod1.MAC, pod1.HostVethMAC, nil, netip.MustParseAddr("10.100.0.1"), vpc)},
	}
	before := stats(t, a)
	const each = 20
	want := map[string]uint64{}
	for _, f := range bad {
		for range each {
			f.send(f.frame)
		}
		want[f.reason] += each
	}
	for range each {
		fromWire(good) // proves the injection path and the pods' counters work
	}
	deadline := time.Now().Add(2 * time.Second)
	for got[0].Load() < each && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	after := stats(t, a)

	if n := got[0].Load(); n != each {
		t.Errorf("pod1 received %d probes, want the %d good ones", n, each)
	}
	for i := 1; i < len(got); i++ {
		if n := got[i].Load(); n != 0 {
			t.Errorf("%s received %d bad probes, want 0", b.Pods[i].Name, n)
		}
	}
	for reason, n := range want {
		if d := after.Drops[reason] - before.Drops[reason]; d != n {
			t.Errorf("drops[%s] went up by %d, want %d", reason, d, n)
		}
	}
	for reason := range after.Drops {
		if _, ok := want[reason]; !ok && after.Drops[reason] != before.Drops[reason] {
			t.Errorf("drops[%s] went up by %d, want 0", reason, after.Drops[reason]-before.Drops[reason])
		}
	}
}
