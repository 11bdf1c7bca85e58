package gen

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/trunkline/trunkline/internal/privtest"
)

var testSpec = FrameSpec{
	SrcMAC: net.HardwareAddr{0x02, 0, 0x0a, 0x64, 0, 1},
	DstMAC: net.HardwareAddr{0x02, 0, 0x0a, 0x64, 0, 2},
	VLAN:   101,
	SrcIP:  netip.MustParseAddr("10.100.0.1"),
	DstIP:  netip.MustParseAddr("10.100.1.1"),
	Flows:  16,
}

func TestFrame(t *testing.T) {
	for _, size := range []int{64, 512, 1500} {
		for _, vlan := range []uint16{0, 101} {
			s := testSpec
			s.Bytes, s.VLAN = size, vlan
			f, err := s.Frame()
			if err != nil {
				t.Fatalf("%d bytes vlan %d: %v", size, vlan, err)
			}
			if len(f) != size {
				t.Errorf("%d bytes vlan %d: got %d bytes", size, vlan, len(f))
			}
			p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
			if el := p.ErrorLayer(); el != nil {
				t.Fatalf("%d bytes vlan %d: decode: %v", size, vlan, el.Error())
			}
			ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if ip == nil || udp == nil {
				t.Fatalf("%d bytes vlan %d: no IPv4/UDP in %x", size, vlan, f)
			}
			if got := ip.Checksum; got != checksumOf(t, ip) {
				t.Errorf("%d bytes vlan %d: IPv4 checksum %#x, want %#x", size, vlan, got, checksumOf(t, ip))
			}
			if udp.DstPort != DefaultDstPort || udp.SrcPort != DefaultSrcPortBase || udp.Checksum != 0 {
				t.Errorf("%d bytes vlan %d: UDP %v", size, vlan, udp)
			}
			if q := p.Layer(layers.LayerTypeDot1Q); (q != nil) != (vlan != 0) {
				t.Errorf("%d bytes vlan %d: 802.1Q layer present = %v", size, vlan, q != nil)
			}
		}
	}
	if _, err := (FrameSpec{Bytes: 40}).Frame(); err == nil {
		t.Error("a 40-byte spec without MACs or addresses built a frame")
	}
}

// checksumOf recomputes ip's header checksum with gopacket.
func checksumOf(t *testing.T, ip *layers.IPv4) uint16 {
	buf := gopacket.NewSerializeBuffer()
	c := *ip
	if err := c.SerializeTo(buf, gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	return uint16(b[10])<<8 | uint16(b[11])
}

// TestGeneratorSink sends frames across one veth pair for about a second and
// checks the sink counted them and the generator offered at least as many.
func TestGeneratorSink(t *testing.T) {
	ns, sink, g := pairWithSink(t, "tlgentest")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := g.Run(ctx, RunOptions{Netns: ns, Ifname: "gena", CPU: 0, Until: time.Now().Add(time.Second), Repeat: MinRepeat})
	if err != nil {
		t.Fatal(err)
	}
	got, err := sink.Count()
	if err != nil {
		t.Fatal(err)
	}
	passed, _ := sink.Passed()
	t.Logf("runs %d, offered %d (%.2f Mpps), sink counted %d, passed %d other frames, in %v",
		st.Runs, st.Offered, float64(st.Offered)/st.Elapsed.Seconds()/1e6, got, passed, st.Elapsed.Round(time.Millisecond))
	if got == 0 {
		t.Fatal("the sink counted no frames")
	}
	if st.Offered < uint64(st.Runs)*MinRepeat {
		t.Errorf("offered %d frames in %d runs of %d", st.Offered, st.Runs, MinRepeat)
	}
	if got > st.Offered {
		t.Errorf("the sink counted %d frames, more than the %d offered", got, st.Offered)
	}
}

// TestGeneratorHosts runs the generator program on a frame (not live) and
// checks that frames cycle through ports, then addresses, with a valid IPv4
// checksum each.
func TestGeneratorHosts(t *testing.T) {
	privtest.Require(t)
	s := testSpec
	s.SrcIP, s.Flows, s.Hosts = netip.MustParseAddr("10.100.128.250"), 3, 9
	g, err := NewGenerator(s)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	seen := map[string]bool{}
	for n := range 30 {
		out := make([]byte, len(g.frame))
		if _, err := g.objs.GenFrame.Run(&ebpf.RunOptions{Data: g.frame, DataOut: out}); err != nil {
			t.Fatal(err)
		}
		p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if ip == nil || udp == nil {
			t.Fatalf("frame %d: %v", n, p)
		}
		lo := 128<<8 | 250 + n/3%9
		wantIP := netip.AddrFrom4([4]byte{10, 100, byte(lo >> 8), byte(lo)})
		if got, _ := netip.AddrFromSlice(ip.SrcIP); got != wantIP || int(udp.SrcPort) != DefaultSrcPortBase+n%3 {
			t.Errorf("frame %d from %v:%d, want %v:%d", n, got, udp.SrcPort, wantIP, DefaultSrcPortBase+n%3)
		}
		if got, want := ip.Checksum, checksumOf(t, ip); got != want {
			t.Errorf("frame %d: IPv4 checksum %#04x, want %#04x", n, got, want)
		}
		seen[ip.SrcIP.String()+":"+udp.SrcPort.String()] = true
	}
	if len(seen) != 27 {
		t.Errorf("%d distinct flows in 30 frames, want 27", len(seen))
	}
	if _, err := NewGenerator(FrameSpec{SrcMAC: s.SrcMAC, DstMAC: s.DstMAC, SrcIP: netip.MustParseAddr("10.100.255.255"), DstIP: s.DstIP, Hosts: 2}); err == nil {
		t.Error("hosts past the low 16 bits: no error")
	}
}

// TestGeneratorRate caps the generator at 200,000 frames/s for about a
// second and checks that it offered about that many (the cap is a ceiling:
// a slower kernel offers fewer).
func TestGeneratorRate(t *testing.T) {
	ns, sink, g := pairWithSink(t, "tlgenrate")
	const rate = 200_000
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := g.Run(ctx, RunOptions{Netns: ns, Ifname: "gena", CPU: 0, Until: time.Now().Add(time.Second), Repeat: MinRepeat, Rate: rate})
	if err != nil {
		t.Fatal(err)
	}
	got := float64(st.Offered) / st.Elapsed.Seconds()
	counted, _ := sink.Count()
	t.Logf("offered %d in %v: %.0f frames/s (cap %d); the sink counted %d", st.Offered, st.Elapsed.Round(time.Millisecond), got, rate, counted)
	if got > rate*1.05 {
		t.Errorf("offered %.0f frames/s over a cap of %d", got, rate)
	}
	if got < rate/4 {
		t.Errorf("offered only %.0f frames/s under a cap of %d", got, rate)
	}
}

// tcpChecksumOK reports whether the TCP checksum of the IPv4 packet in p
// verifies.
func tcpChecksumOK(t *testing.T, p gopacket.Packet) bool {
	t.Helper()
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if ip == nil || tcp == nil {
		t.Fatalf("no IPv4/TCP in %v", p)
	}
	seg := append(append([]byte(nil), tcp.Contents...), tcp.Payload...)
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(ip.SrcIP.To4())
	add(ip.DstIP.To4())
	sum += 6 + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

func TestSYNFrame(t *testing.T) {
	for _, vlan := range []uint16{0, 101} {
		s := testSpec
		s.Bytes, s.VLAN, s.TCPSYN, s.DstPort = 64, vlan, true, 5201
		f, err := s.Frame()
		if err != nil {
			t.Fatal(err)
		}
		if len(f) != 64 {
			t.Errorf("vlan %d: %d bytes, want 64", vlan, len(f))
		}
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if ip == nil || tcp == nil || ip.Length != 40 || !tcp.SYN || tcp.ACK || tcp.DstPort != 5201 || tcp.SrcPort != DefaultSrcPortBase {
			t.Fatalf("vlan %d: not a bare SYN to 5201: %v", vlan, p)
		}
		if !tcpChecksumOK(t, p) {
			t.Errorf("vlan %d: TCP checksum wrong", vlan)
		}
	}
}

// TestGeneratorSYN runs the program on its frame and checks that the TCP
// checksum stays valid as source ports and addresses vary.
func TestGeneratorSYN(t *testing.T) {
	privtest.Require(t)
	for _, vlan := range []uint16{0, 101} {
		s := testSpec
		s.VLAN, s.TCPSYN, s.DstPort = vlan, true, 5201
		s.SrcIP, s.Flows, s.Hosts = netip.MustParseAddr("10.100.128.250"), 3, 9
		g, err := NewGenerator(s)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for n := range 30 {
			out := make([]byte, len(g.frame))
			if _, err := g.objs.GenFrame.Run(&ebpf.RunOptions{Data: g.frame, DataOut: out}); err != nil {
				t.Fatal(err)
			}
			p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
			ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if ip == nil || tcp == nil || !tcp.SYN {
				t.Fatalf("vlan %d frame %d: %v", vlan, n, p)
			}
			if got, want := ip.Checksum, checksumOf(t, ip); got != want {
				t.Errorf("vlan %d frame %d: IPv4 checksum %#04x, want %#04x", vlan, n, got, want)
			}
			if !tcpChecksumOK(t, p) {
				t.Errorf("vlan %d frame %d (%v:%d): TCP checksum wrong", vlan, n, ip.SrcIP, tcp.SrcPort)
			}
			seen[ip.SrcIP.String()+":"+tcp.SrcPort.String()] = true
		}
		if len(seen) != 27 {
			t.Errorf("vlan %d: %d distinct flows in 30 frames, want 27", vlan, len(seen))
		}
		g.Close()
	}
}

// pairWithSink makes namespace name with the veth pair gena–genb, an XDP
// sink on genb and a generator of testSpec, all removed when t ends.
func pairWithSink(t *testing.T, name string) (ns string, sink *Sink, g *Generator) {
	t.Helper()
	ns = privtest.Netns(t, name)
	privtest.Run(t, "ip", "-n", ns, "link", "add", "gena", "numtxqueues", "1", "numrxqueues", "1", "type", "veth", "peer", "genb", "numtxqueues", "1", "numrxqueues", "1")
	privtest.Run(t, "ip", "-n", ns, "link", "set", "gena", "up")
	privtest.Run(t, "ip", "-n", ns, "link", "set", "genb", "up")
	sink, err := AttachSink(ns, "genb", 0, SinkXDP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	if g, err = NewGenerator(testSpec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return ns, sink, g
}
