package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/gen"
	"golang.org/x/sys/unix"
)

// wireCapture records, by VLAN ID, the frames carrying a marker that
// arrive on the VPC's side of the trunk: what the agent put on the trunk.
// VID -1 is an untagged frame.
type wireCapture struct {
	marker []byte
	mu     sync.Mutex
	vids   map[int]int
}

// captureWire reads every frame the wire interface receives with a packet
// socket; the kernel hands the 802.1Q tag over as PACKET_AUXDATA.
func captureWire(t *testing.T, b *bed.Bed, marker []byte) *wireCapture {
	t.Helper()
	const ethPAll = 0x0300 // htons(ETH_P_ALL)
	var fd int
	err := bed.InNetns(b.Wire.Netns, func() error {
		ifi, err := net.InterfaceByName(b.Wire.Ifname)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, ethPAll)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethPAll, Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatalf("capture on %s/%s: %v", b.Wire.Netns, b.Wire.Ifname, err)
	}
	c := &wireCapture{marker: marker, vids: map[int]int{}}
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf, oob := make([]byte, 4096), make([]byte, 256)
		for !stop.Load() {
			n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, 0)
			if err != nil {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			if !bytes.Contains(buf[:n], marker) {
				continue
			}
			vid := -1
			if n >= 16 && buf[12] == 0x81 && buf[13] == 0 {
				vid = int(buf[14]&0x0f)<<8 | int(buf[15])
			}
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
					aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
					if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
						vid = int(aux.Vlan_tci & 0x0fff)
					}
				}
			}
			c.mu.Lock()
			c.vids[vid]++
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { stop.Store(true); <-done; unix.Close(fd) })
	return c
}

func (c *wireCapture) counts() map[int]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[int]int{}
	for k, v := range c.vids {
		m[k] = v
	}
	return m
}

// arpFrame builds an ARP message from a pod with a marker after it.
func arpFrame(t *testing.T, src, dst net.HardwareAddr, op uint16, senderMAC net.HardwareAddr, senderIP, targetIP netip.Addr, marker []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: op, SourceHwAddress: senderMAC, SourceProtAddress: senderIP.AsSlice(), DstHwAddress: make([]byte, 6), DstProtAddress: targetIP.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, eth, arp, gopacket.Payload(marker)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// neighbours returns the neighbour table of netns as `ip neigh` prints it.
func neighbours(t *testing.T, b *bed.Bed, netns string) string {
	t.Helper()
	out, err := b.Command(t.Context(), netns, "ip", "neigh", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip neigh in %s: %v\n%s", netns, err, out)
	}
	return string(out)
}

// TestPodIsolation has a pod try to pass as another — its IP, its MAC,
// its VLAN tag, ARP claiming its address — and checks each is dropped and
// counted, that no pod saw it, and that every frame of the pod the agent
// put on the trunk carries the pod's own VLAN ID.
func TestPodIsolation(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tliso%d", os.Getpid()%10000), 3)
	b := e.b
	a := e.startAgent()
	pod1, pod2, pod3 := b.Pods[0], b.Pods[1], b.Pods[2]
	marker := []byte("tliso-marker")
	capture := captureWire(t, b, marker)
	send := injector(t, pod1.Netns, pod1.Ifname)
	vpc := b.Wire.IP
	from1 := probeFrame{src: pod1.MAC, dst: pod1.HostVethMAC, srcIP: pod1.IP, payload: marker}
	with := func(edit func(p *probeFrame)) []byte {
		p := from1
		edit(&p)
		return p.build(t)
	}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	gatewayIP := b.Wire.IP // the VPC gateway's address is the wire's
	rows := []badRow{
		{name: "pod to pod (control)", send: send, frames: [][]byte{with(func(p *probeFrame) { p.dstIP = pod2.IP })}, pod: 1},
		{name: "pod to the VPC (control)", send: send, frames: [][]byte{with(func(p *probeFrame) { p.dstIP = vpc })}, pod: -1},
		{name: "addressed to another pod's MAC, leaves with its own VLAN", send: send, frames: [][]byte{with(func(p *probeFrame) { p.dst, p.dstIP = pod2.MAC, vpc })}, pod: -1},
		{name: "another pod's IP", send: send, frames: [][]byte{with(func(p *probeFrame) { p.srcIP, p.dstIP = pod2.IP, pod3.IP })}, drop: "spoofed_source", pod: -1},
		{name: "another pod's IP to the VPC", send: send, frames: [][]byte{with(func(p *probeFrame) { p.srcIP, p.dstIP = pod2.IP, vpc })}, drop: "spoofed_source", pod: -1},
		{name: "another pod's MAC", send: send, frames: [][]byte{with(func(p *probeFrame) { p.src, p.dstIP = pod2.MAC, pod3.IP })}, drop: "spoofed_source", pod: -1},
		{name: "another pod's MAC and IP", send: send, frames: [][]byte{with(func(p *probeFrame) { p.src, p.srcIP, p.dstIP = pod2.MAC, pod2.IP, vpc })}, drop: "spoofed_source", pod: -1},
		{name: "the gateway's IP", send: send, frames: [][]byte{with(func(p *probeFrame) { p.srcIP, p.dstIP = gatewayIP, pod3.IP })}, drop: "spoofed_source", pod: -1},
		{name: "tagged with another pod's VLAN to it", send: send, frames: [][]byte{with(func(p *probeFrame) { p.tags, p.dstIP = [][2]uint16{{0x8100, pod2.VLAN}}, pod2.IP })}, drop: "tagged_from_pod", pod: -1},
		{name: "tagged with another pod's VLAN to the VPC", send: send, frames: [][]byte{with(func(p *probeFrame) { p.tags, p.dstIP = [][2]uint16{{0x8100, pod2.VLAN}}, vpc })}, drop: "tagged_from_pod", pod: -1},
		{name: "tagged with its own VLAN", send: send, frames: [][]byte{with(func(p *probeFrame) { p.tags, p.dstIP = [][2]uint16{{0x8100, pod1.VLAN}}, vpc })}, drop: "tagged_from_pod", pod: -1},
		{name: "QinQ", send: send, frames: [][]byte{with(func(p *probeFrame) { p.tags, p.dstIP = [][2]uint16{{0x88a8, pod1.VLAN}, {0x8100, pod2.VLAN}}, vpc })}, drop: "tagged_from_pod", pod: -1},
		{name: "ARP reply claiming another pod's IP", send: send, frames: [][]byte{
			arpFrame(t, pod1.MAC, pod3.MAC, layers.ARPReply, pod1.MAC, pod2.IP, pod3.IP, marker),
		}, drop: "spoofed_source", pod: -1},
		{name: "gratuitous ARP for another pod's IP", send: send, frames: [][]byte{
			arpFrame(t, pod1.MAC, bcast, layers.ARPRequest, pod1.MAC, pod2.IP, pod2.IP, marker),
		}, drop: "spoofed_source", pod: -1},
		{name: "ARP with another pod's MAC inside", send: send, frames: [][]byte{
			arpFrame(t, pod1.MAC, bcast, layers.ARPRequest, pod2.MAC, pod1.IP, pod3.IP, marker),
		}, drop: "spoofed_source", pod: -1},
		{name: "ARP claiming the gateway's IP to the VPC", send: send, frames: [][]byte{
			arpFrame(t, pod1.MAC, bcast, layers.ARPReply, pod1.MAC, gatewayIP, vpc, marker),
		}, drop: "spoofed_source", pod: -1},
		{name: "IPv6 neighbour advertisement", send: send, frames: [][]byte{func() []byte {
			eth := &layers.Ethernet{SrcMAC: pod1.MAC, DstMAC: pod1.HostVethMAC, EthernetType: layers.EthernetTypeIPv6}
			ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: 255, SrcIP: net.ParseIP("fe80::1"), DstIP: net.ParseIP("ff02::1")}
			icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborAdvertisement, 0)}
			icmp.SetNetworkLayerForChecksum(ip)
			na := &layers.ICMPv6NeighborAdvertisement{Flags: 0x20, TargetAddress: net.ParseIP("fe80::2")}
			buf := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, icmp, na, gopacket.Payload(marker)); err != nil {
				t.Fatal(err)
			}
			return buf.Bytes()
		}()}, drop: "ipv6", pod: -1},
	}
	// The frames that must reach the VPC, each with pod1's VLAN ID: the
	// two forwarded rows to the VPC.
	const toTrunk = 2 * rowRounds
	runBadRows(t, b, a, rows)

	t.Run("the trunk carried only the pod's own VLAN", func(t *testing.T) {
		waitFor(time.Second, func() bool { return capture.counts()[int(pod1.VLAN)] >= toTrunk })
		got := capture.counts()
		if got[int(pod1.VLAN)] != toTrunk || len(got) != 1 {
			t.Errorf("frames of the pod on the trunk by VLAN ID (-1 untagged): %v; want only %d with VID %d", got, toTrunk, pod1.VLAN)
		}
	})
	t.Run("no neighbour table learnt a spoofed address", func(t *testing.T) {
		for _, ns := range []string{pod2.Netns, pod3.Netns, b.Wire.Netns} {
			for _, l := range strings.Split(neighbours(t, b, ns), "\n") {
				if strings.Contains(l, pod1.MAC.String()) && !strings.HasPrefix(l, pod1.IP.String()+" ") {
					t.Errorf("%s: %q maps another address to pod1's MAC", ns, l)
				}
			}
		}
	})
}

// TestPodFloodDoesNotStarveOthers has one pod flood the VPC with UDP at the
// generator's full rate while another pod runs request/response traffic
// with the VPC through the same worker: the quiet pod's requests are all
// answered (the worker serves the quiet pod's batches before the
// flooder's, and the flooder's excess is dropped on its own socket).
func TestPodFloodDoesNotStarveOthers(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tliso%d", os.Getpid()%10000+1), 3)
	b := e.b
	a := e.startAgent()
	flooder, quiet := b.Pods[0], b.Pods[1]
	echoAt := netip.AddrPortFrom(b.Wire.IP, 9000)
	srv := b.Command(t.Context(), b.Wire.Netns, binary, "serve-echo", "--name", "vpc", "--timeout", "5m",
		"--http", b.Wire.IP.String()+":8080", "--udp", echoAt.String(), "--tcp", b.Wire.IP.String()+":9001")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	waitListening(t, b, b.Wire.Netns, 9001)
	c := dial(t, quiet.Netns, "udp", echoAt)
	if err := udpRoundTrip(c, []byte("warm-up"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	g, err := gen.NewGenerator(gen.FrameSpec{
		SrcMAC: flooder.MAC, DstMAC: flooder.HostVethMAC, SrcIP: flooder.IP, DstIP: b.Wire.OutsideIP,
		DstPort: bed.DiscardPort, Flows: 64,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	before := stats(t, a)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	_, genResult := startGen(ctx, g, gen.RunOptions{Netns: flooder.Netns, Ifname: flooder.Ifname, CPU: 0, Until: time.Now().Add(3 * time.Second)})
	time.Sleep(200 * time.Millisecond)
	const requests = 200
	answered := 0
	var worst time.Duration
	for i := 0; i < requests; i++ {
		start := time.Now()
		if err := udpRoundTrip(c, fmt.Appendf(nil, "request %d", i), time.Second); err == nil {
			answered++
			worst = max(worst, time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	gst := genResult(t)
	after := stats(t, a)
	fl := podStats(after, flooder.Name).RxPackets - podStats(before, flooder.Name).RxPackets
	t.Logf("flooder offered %.2f Mpps, the agent took %d of its frames (%.2f Mpps); the quiet pod: %d of %d answered, slowest %s",
		float64(gst.Offered)/gst.Elapsed.Seconds()/1e6, fl, float64(fl)/gst.Elapsed.Seconds()/1e6, answered, requests, worst.Round(time.Microsecond))
	if fl < 100_000 {
		t.Errorf("the agent took only %d of the flooder's frames: no flood", fl)
	}
	if answered < requests*99/100 {
		t.Errorf("the quiet pod got %d of %d answers during the flood, want at least 99%%", answered, requests)
	}
}
