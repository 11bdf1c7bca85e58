package dataplane

import (
	"bytes"
	"net"
	"sync/atomic"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/trunkline/trunkline/dataplane/port"
	"github.com/trunkline/trunkline/dataplane/port/porttest"
	"github.com/trunkline/trunkline/internal/packet"
	"github.com/trunkline/trunkline/vlan"
)

var (
	gatewayMAC = [6]byte{2, 0, 0x0a, 0x64, 0, 1}
	pods       = []vlan.Attachment{
		{ID: 0, VID: 101, IP: [4]byte{10, 100, 1, 1}, MAC: [6]byte{2, 0, 0x0a, 0x64, 1, 1}, HostMAC: [6]byte{2, 0, 0x0a, 0x65, 0, 1}, Name: "pod1"},
		{ID: 1, VID: 102, IP: [4]byte{10, 100, 1, 2}, MAC: [6]byte{2, 0, 0x0a, 0x64, 1, 2}, HostMAC: [6]byte{2, 0, 0x0a, 0x65, 0, 2}, Name: "pod2"},
	}
	vpcHost = [4]byte{10, 100, 0, 1}
)

type rig struct {
	t      *testing.T
	mem    *porttest.Memory
	poller *porttest.Poller
	trunk  *porttest.Port
	pods   []*porttest.Port
	w      *Worker
	podC   []*PortCounters
}

func newRig(t *testing.T) *rig { return newRigWith(t, 256, nil) }

// newRigWith builds a rig of frames slots whose worker config more may
// complete.
func newRigWith(t *testing.T, frames int, more func(*Config)) *rig {
	t.Helper()
	r := &rig{t: t, mem: porttest.NewMemory(frames, 4096), poller: porttest.NewPoller()}
	r.trunk = porttest.NewPort(r.mem)
	r.poller.Set(TrunkIndex, r.trunk)
	tbl, err := vlan.NewTable(pods)
	if err != nil {
		t.Fatal(err)
	}
	var ptr atomic.Pointer[vlan.Table]
	ptr.Store(tbl)
	c := Config{Memory: r.mem, Poller: r.poller, Trunk: r.trunk, VLAN: &ptr, GatewayMAC: gatewayMAC}
	if more != nil {
		more(&c)
	}
	r.w, err = New(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range pods {
		p := porttest.NewPort(r.mem)
		c := new(PortCounters)
		r.pods = append(r.pods, p)
		r.podC = append(r.podC, c)
		r.w.AttachPod(a.ID, p, c, func() { r.poller.Set(PodIndex(a.ID), p) })
	}
	t.Cleanup(func() {
		if free := r.mem.Free(); free != r.mem.Frames() {
			t.Errorf("%d of %d frames free after the test: frames leaked", free, r.mem.Frames())
		}
	})
	return r
}

func (r *rig) run() {
	for r.w.Poll() > 0 {
	}
}

type frameSpec struct {
	src, dst       [6]byte
	tags           []uint16 // outer first
	srcIP, dstIP   [4]byte
	ipv6, arp, tcp bool
}

func build(t testing.TB, f frameSpec) []byte {
	t.Helper()
	var ls []gopacket.SerializableLayer
	eth := &layers.Ethernet{SrcMAC: f.src[:], DstMAC: f.dst[:]}
	ls = append(ls, eth)
	next := &eth.EthernetType
	for i, vid := range f.tags {
		*next = layers.EthernetTypeDot1Q
		if i == 0 && len(f.tags) > 1 {
			*next = layers.EthernetTypeQinQ
		}
		d := &layers.Dot1Q{VLANIdentifier: vid}
		ls = append(ls, d)
		next = &d.Type
	}
	switch {
	case f.arp:
		*next = layers.EthernetTypeARP
		ls = append(ls, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: f.src[:], SourceProtAddress: f.srcIP[:], DstHwAddress: make([]byte, 6), DstProtAddress: f.dstIP[:]})
	case f.ipv6:
		*next = layers.EthernetTypeIPv6
		ls = append(ls, &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolNoNextHeader, HopLimit: 64, SrcIP: net.ParseIP("fd00::1"), DstIP: net.ParseIP("fd00::2")})
	default:
		*next = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: f.srcIP[:], DstIP: f.dstIP[:]}
		udp := &layers.UDP{SrcPort: 4000, DstPort: 53}
		udp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, ip, udp, gopacket.Payload("hello"))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// sameFrame compares two frames up to the end of their L3 packet: Ethernet
// padding to 60 bytes is not part of the packet.
func sameFrame(a, b []byte) bool {
	return bytes.Equal(a[:l3End(a)], b[:l3End(b)])
}

func l3End(f []byte) int {
	var p packet.Parsed
	p.Decode(f)
	switch p.EtherType {
	case packet.EtherTypeIPv4:
		return int(p.L3Off) + int(p.IPTotalLen)
	case packet.EtherTypeARP:
		return int(p.L3Off) + 28
	}
	return len(f)
}

func TestTrunkToPod(t *testing.T) {
	r := newRig(t)
	in := build(t, frameSpec{src: gatewayMAC, dst: pods[1].MAC, tags: []uint16{102}, srcIP: vpcHost, dstIP: pods[1].IP})
	if err := r.trunk.Inject(in); err != nil {
		t.Fatal(err)
	}
	r.run()
	sent := r.pods[1].Sent()
	if len(sent) != 1 {
		t.Fatalf("pod2 got %d frames, want 1", len(sent))
	}
	want := build(t, frameSpec{src: pods[1].HostMAC, dst: pods[1].MAC, srcIP: vpcHost, dstIP: pods[1].IP})
	if !sameFrame(sent[0], want) {
		t.Errorf("pod2 got\n%x\nwant\n%x", sent[0], want)
	}
	if n := len(r.pods[0].Sent()); n != 0 {
		t.Errorf("pod1 got %d frames, want 0", n)
	}
	if got := r.podC[1].TxPackets.Load(); got != 1 {
		t.Errorf("pod2 tx packets = %d, want 1", got)
	}
	if got := r.podC[1].TxBytes.Load(); got != uint64(len(in)-4) {
		t.Errorf("pod2 tx bytes = %d, want %d", got, len(in)-4)
	}
}

func TestPodToTrunkAndPod(t *testing.T) {
	r := newRig(t)
	toVPC := build(t, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vpcHost})
	toPod := build(t, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: pods[1].IP})
	arp := build(t, frameSpec{src: pods[0].MAC, dst: [6]byte{255, 255, 255, 255, 255, 255}, arp: true, srcIP: pods[0].IP, dstIP: vpcHost})
	for _, f := range [][]byte{toVPC, toPod, arp} {
		if err := r.pods[0].Inject(f); err != nil {
			t.Fatal(err)
		}
	}
	r.run()
	sent := r.trunk.Sent()
	if len(sent) != 2 {
		t.Fatalf("trunk got %d frames, want 2", len(sent))
	}
	want := build(t, frameSpec{src: pods[0].MAC, dst: gatewayMAC, tags: []uint16{101}, srcIP: pods[0].IP, dstIP: vpcHost})
	if !sameFrame(sent[0], want) {
		t.Errorf("trunk got\n%x\nwant\n%x", sent[0], want)
	}
	wantARP := build(t, frameSpec{src: pods[0].MAC, dst: gatewayMAC, tags: []uint16{101}, arp: true, srcIP: pods[0].IP, dstIP: vpcHost})
	if !sameFrame(sent[1], wantARP) {
		t.Errorf("trunk got ARP\n%x\nwant\n%x", sent[1], wantARP)
	}
	got := r.pods[1].Sent()
	wantPod := build(t, frameSpec{src: pods[1].HostMAC, dst: pods[1].MAC, srcIP: pods[0].IP, dstIP: pods[1].IP})
	if len(got) != 1 || !sameFrame(got[0], wantPod) {
		t.Errorf("pod2 got %x, want one frame %x", got, wantPod)
	}
}

func TestDropsAreCountedByReason(t *testing.T) {
	r := newRig(t)
	good := build(t, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101}, srcIP: vpcHost, dstIP: pods[0].IP})
	trunkFrames := map[DropReason][][]byte{
		DropUnknownVID:     {build(t, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{999}, srcIP: vpcHost, dstIP: pods[0].IP})},
		DropQinQ:           {build(t, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101, 5}, srcIP: vpcHost, dstIP: pods[0].IP})},
		DropUntagged:       {build(t, frameSpec{src: gatewayMAC, dst: pods[0].MAC, srcIP: vpcHost, dstIP: pods[0].IP})},
		DropPriorityTagged: {build(t, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{0}, srcIP: vpcHost, dstIP: pods[0].IP})},
		DropMalformed:      {good[:30], good[:14+4+3]},
		DropIPv6:           {build(t, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101}, ipv6: true})},
	}
	podFrames := map[DropReason][][]byte{
		DropSpoofedSource: {
			build(t, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[1].IP, dstIP: vpcHost}),
			build(t, frameSpec{src: pods[1].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vpcHost}),
			build(t, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, arp: true, srcIP: pods[1].IP, dstIP: vpcHost}),
		},
		DropTaggedFromPod: {build(t, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, tags: []uint16{102}, srcIP: pods[0].IP, dstIP: vpcHost})},
	}
	want := map[DropReason]uint64{}
	for reason, fs := range trunkFrames {
		for _, f := range fs {
			if err := r.trunk.Inject(f); err != nil {
				t.Fatal(err)
			}
			want[reason]++
		}
	}
	for reason, fs := range podFrames {
		for _, f := range fs {
			if err := r.pods[0].Inject(f); err != nil {
				t.Fatal(err)
			}
			want[reason]++
		}
	}
	r.run()
	for reason := DropReason(0); reason < NumDropReasons; reason++ {
		if got := r.w.Counters().Drops[reason].Load(); got != want[reason] {
			t.Errorf("drops[%s] = %d, want %d", reason, got, want[reason])
		}
	}
	for i, p := range r.pods {
		if n := len(p.Sent()); n != 0 {
			t.Errorf("pod%d got %d frames, want none", i+1, n)
		}
	}
	if n := len(r.trunk.Sent()); n != 0 {
		t.Errorf("trunk got %d frames, want none", n)
	}
}

func TestNoTxRoomDropsTheRest(t *testing.T) {
	r := newRig(t)
	r.pods[0].TxRoom = 3
	f := build(t, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101}, srcIP: vpcHost, dstIP: pods[0].IP})
	for range 10 {
		if err := r.trunk.Inject(f); err != nil {
			t.Fatal(err)
		}
	}
	r.run()
	if n := len(r.pods[0].Sent()); n != 3 {
		t.Errorf("pod1 got %d, want 3", n)
	}
	if got := r.w.Counters().Drops[DropNoTxRoom].Load(); got != 7 {
		t.Errorf("no_tx_room drops = %d, want 7", got)
	}
}

func TestDetachedPodFramesAreDropped(t *testing.T) {
	r := newRig(t)
	r.w.DetachPod(pods[0].ID, func() { r.poller.Set(PodIndex(pods[0].ID), nil) })
	f := build(t, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101}, srcIP: vpcHost, dstIP: pods[0].IP})
	if err := r.trunk.Inject(f); err != nil {
		t.Fatal(err)
	}
	r.run()
	if got := r.w.Counters().Drops[DropNoPort].Load(); got != 1 {
		t.Errorf("no_port drops = %d, want 1", got)
	}
}

// replayPort receives the same frame forever (restoring its bytes each
// time) and takes every transmission: a zero-allocation port for measuring
// the worker alone.
type replayPort struct {
	mem      []byte
	template []byte
	addrs    []uint64
	sent     int
}

func (p *replayPort) Receive(descs []port.Desc) int {
	for i, a := range p.addrs {
		copy(p.mem[a:], p.template)
		descs[i] = port.Desc{Addr: a, Len: uint32(len(p.template))}
	}
	return len(p.addrs)
}
func (p *replayPort) Transmit(descs []port.Desc) int { p.sent += len(descs); return len(descs) }
func (p *replayPort) Flush()                         {}

type staticMemory struct{ area []byte }

func (m staticMemory) Bytes() []byte         { return m.area }
func (m staticMemory) FrameSize() uint64     { return 4096 }
func (m staticMemory) Release(d []port.Desc) {}

type alwaysReady struct{}

func (alwaysReady) Wait(ready []int, _ int) (int, error) { ready[0] = TrunkIndex; return 1, nil }
func (alwaysReady) Wake()                                {}

func newReplayWorker(tb testing.TB, frame []byte) (*Worker, *replayPort, *replayPort) {
	mem := staticMemory{area: make([]byte, 4096*DefaultBatch)}
	trunk := &replayPort{mem: mem.area, template: frame}
	for i := range DefaultBatch {
		trunk.addrs = append(trunk.addrs, uint64(i)*4096+256)
	}
	tbl, err := vlan.NewTable(pods)
	if err != nil {
		tb.Fatal(err)
	}
	var ptr atomic.Pointer[vlan.Table]
	ptr.Store(tbl)
	w, err := New(Config{Memory: mem, Poller: alwaysReady{}, Trunk: trunk, VLAN: &ptr, GatewayMAC: gatewayMAC})
	if err != nil {
		tb.Fatal(err)
	}
	pod := &replayPort{}
	w.AttachPod(pods[1].ID, pod, nil, nil)
	return w, trunk, pod
}

func TestTrunkToPodDoesNotAllocate(t *testing.T) {
	f := build(t, frameSpec{src: gatewayMAC, dst: pods[1].MAC, tags: []uint16{102}, srcIP: vpcHost, dstIP: pods[1].IP})
	w, _, pod := newReplayWorker(t, f)
	if n := testing.AllocsPerRun(100, func() { w.Poll() }); n != 0 {
		t.Errorf("a batch allocates %v times", n)
	}
	if pod.sent == 0 {
		t.Error("nothing forwarded")
	}
}

// BenchmarkTrunkToPod measures one frame through parse → VLAN demux → tag
// pop → MAC rewrite → TX enqueue (ns/op is per frame).
func BenchmarkTrunkToPod(b *testing.B) {
	f := build(b, frameSpec{src: gatewayMAC, dst: pods[1].MAC, tags: []uint16{102}, srcIP: vpcHost, dstIP: pods[1].IP})
	w, _, pod := newReplayWorker(b, f)
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	b.ResetTimer()
	for i := 0; i < b.N; i += DefaultBatch {
		w.Poll()
	}
	if pod.sent == 0 {
		b.Fatal("nothing forwarded")
	}
}
