package xdp

import (
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/trunkline/trunkline/internal/privtest"
)

func tcpFrame(t *testing.T, dst net.IP, syn, ack bool) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP{172, 16, 0, 1}, DstIP: dst}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: syn, ACK: ack, Window: 1000}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// The SYN gate: open, every SYN to a Service frontend goes on; shut, a
// CPU lets its burst through and sheds the rest, counted; ACKs, SYN-ACKs
// and other destinations are never shed; it opens by itself at its end.
func TestSYNGate(t *testing.T) {
	privtest.Require(t)
	p, err := LoadPrograms()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	vip := net.IP{10, 96, 0, 10}
	if err := p.SetServices([][4]byte{[4]byte(vip.To4())}, nil, 0, 0); err != nil {
		t.Fatal(err)
	}
	run := func(frame []byte) uint32 {
		t.Helper()
		ret, err := p.objs.TlTrunk.Run(&ebpf.RunOptions{Data: frame, Repeat: 1})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	const xdpDrop, xdpPass = 1, 2 // no socket in the XSKMAP: a redirect falls back to XDP_PASS
	syn, ack := tcpFrame(t, vip, true, false), tcpFrame(t, vip, false, true)
	synAck, other := tcpFrame(t, vip, true, true), tcpFrame(t, net.IP{10, 9, 9, 9}, true, false)
	for range 10 {
		if got := run(syn); got != xdpPass {
			t.Fatalf("gate open: a SYN got action %d, want it steered", got)
		}
	}
	if err := p.ShutSYNGate(time.Hour, 1, 3); err != nil {
		t.Fatal(err)
	}
	passed, dropped := 0, 0
	for range 10 {
		switch run(syn) {
		case xdpPass:
			passed++
		case xdpDrop:
			dropped++
		}
	}
	for _, f := range [][]byte{ack, synAck, other} {
		if got := run(f); got != xdpPass {
			t.Errorf("gate shut: a non-SYN or a SYN elsewhere got action %d", got)
		}
	}
	// The test runs may hop CPUs; each CPU has its own burst of 3.
	shed, err := p.SYNsShed()
	if err != nil {
		t.Fatal(err)
	}
	if passed < 3 || dropped == 0 || uint64(dropped) != shed {
		t.Errorf("gate shut, burst 3 at 1/s: %d SYNs passed, %d dropped, %d counted shed", passed, dropped, shed)
	}
	if err := p.ShutSYNGate(0, 1, 3); err != nil { // ends now
		t.Fatal(err)
	}
	if got := run(syn); got != xdpPass {
		t.Errorf("after the gate's end a SYN got action %d", got)
	}
	if err := p.ShutSYNGate(time.Second, 0, 1); err == nil {
		t.Error("a zero rate was accepted")
	}
}
