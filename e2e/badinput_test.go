package e2e

import (
	"context"
	benc "encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/bench/agentproc"
	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/internal/packet"
	"golang.org/x/sys/unix"
)

// probeFrame describes a UDP/IPv4 frame for the bad-input tests, built with
// gopacket; zero fields take the defaults noted.
type probeFrame struct {
	src, dst     net.HardwareAddr
	tags         [][2]uint16 // (TPID, VID), outermost first
	srcIP, dstIP netip.Addr
	dport        uint16 // default probePort
	ttl          uint8  // default 64
	setTTL       bool   // use ttl even when 0
	options      []layers.IPv4Option
	payload      []byte // default "trunkline probe"
}

func (p probeFrame) build(t *testing.T) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: p.src, DstMAC: p.dst}
	ls := []gopacket.SerializableLayer{eth}
	next := &eth.EthernetType
	for _, tag := range p.tags {
		*next = layers.EthernetType(tag[0])
		d := &layers.Dot1Q{VLANIdentifier: tag[1]}
		ls = append(ls, d)
		next = &d.Type
	}
	*next = layers.EthernetTypeIPv4
	ttl := p.ttl
	if ttl == 0 && !p.setTTL {
		ttl = 64
	}
	ip := &layers.IPv4{Version: 4, TTL: ttl, Id: 0x7e57, Protocol: layers.IPProtocolUDP, SrcIP: p.srcIP.AsSlice(), DstIP: p.dstIP.AsSlice(), Options: p.options}
	dport := p.dport
	if dport == 0 {
		dport = probePort
	}
	payload := p.payload
	if payload == nil {
		payload = []byte("trunkline probe")
	}
	udp := &layers.UDP{SrcPort: 5555, DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	ls = append(ls, ip, udp, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// editIPv4 changes the IPv4 header of frame f (at l3) and, unless raw,
// recomputes its checksum.
func editIPv4(f []byte, l3 int, raw bool, edit func(ip packet.IPv4)) []byte {
	f = append([]byte(nil), f...)
	ip := packet.IPv4(f[l3:])
	edit(ip)
	if !raw {
		ip.SetChecksum(ip.ComputeChecksum())
	}
	return f
}

// fragments splits the IPv4 datagram of frame f (at l3) into two
// fragments: the first carries the first at bytes of the payload (a
// multiple of 8), the second the rest.
func fragments(f []byte, l3, at int) (first, second []byte) {
	ip := packet.IPv4(f[l3:])
	hl, total := ip.HeaderLen(), int(ip.TotalLen())
	head := f[:l3+hl]
	body := f[l3+hl : l3+total]
	mk := func(data []byte, offset int, more bool) []byte {
		g := append(append([]byte(nil), head...), data...)
		gip := packet.IPv4(g[l3:])
		v := uint16(offset / 8)
		if more {
			v |= 1 << 13
		}
		benc.BigEndian.PutUint16(gip[6:], v)
		benc.BigEndian.PutUint16(gip[2:], uint16(hl+len(data)))
		gip.SetChecksum(gip.ComputeChecksum())
		return g
	}
	return mk(body[:at], 0, true), mk(body[at:], at, false)
}

// badRow is one kind of bad input: frames sent each round from one side,
// and what must come of them.
type badRow struct {
	name   string
	send   func([]byte)
	frames [][]byte
	// drop is the reason every frame must be counted under ("": none).
	drop string
	// pod is the pod (index) whose listener must get one datagram per
	// round, or -1: no pod may see anything.
	pod int
	// kernel: the agent must not see the frames at all (the trunk's
	// program passes them to the node, or the kernel drops them first).
	kernel bool
	// setup runs before the row; what it returns runs after.
	setup func(t *testing.T) func()
}

// rowRounds is how many times each row's frames are sent.
const rowRounds = 10

// runBadRows sends each row and checks the agent's per-reason counters
// (exactly the row's reason went up, by exactly its frames) and the pods'
// listeners on probePort and bed.DiscardPort (exactly the row's pod got
// exactly one datagram per round).
func runBadRows(t *testing.T, b *bed.Bed, a *agentproc.Proc, rows []badRow) {
	seen := [][]*atomic.Int64{podListeners(t, b, probePort), podListeners(t, b, bed.DiscardPort)}
	podSaw := func() []int64 {
		n := make([]int64, len(b.Pods))
		for _, l := range seen {
			for i, c := range l {
				n[i] += c.Load()
			}
		}
		return n
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			if r.setup != nil {
				defer r.setup(t)()
			}
			before, saw0 := stats(t, a), podSaw()
			for range rowRounds {
				for _, f := range r.frames {
					r.send(f)
				}
			}
			wantDrops := uint64(rowRounds * len(r.frames))
			done := func() bool {
				if r.drop != "" {
					return stats(t, a).Drops[r.drop]-before.Drops[r.drop] >= wantDrops
				}
				if r.pod >= 0 {
					return podSaw()[r.pod]-saw0[r.pod] >= rowRounds
				}
				return true // nothing to wait for: only the settling below
			}
			waitFor(2*time.Second, done)
			time.Sleep(200 * time.Millisecond) // anything that was going to arrive has
			after, saw := stats(t, a), podSaw()
			checkDrops(t, before, after, r.drop, wantDrops)
			for i := range b.Pods {
				want := int64(0)
				if i == r.pod {
					want = rowRounds
				}
				if d := saw[i] - saw0[i]; d != want {
					t.Errorf("%s saw %d datagrams, want %d", b.Pods[i].Name, d, want)
				}
			}
			if r.kernel {
				if d := trunkRx(after) - trunkRx(before); d != 0 {
					t.Errorf("the agent received %d frames on the trunk, want none (the kernel's)", d)
				}
			}
		})
	}
}

// checkDrops checks that drop reason went up by n and no other reason moved.
func checkDrops(t *testing.T, before, after agent.Stats, reason string, n uint64) {
	t.Helper()
	for r, v := range after.Drops {
		want := uint64(0)
		if r == reason {
			want = n
		}
		if d := v - before.Drops[r]; d != want {
			t.Errorf("drops[%s] went up by %d, want %d", r, d, want)
		}
	}
	if _, ok := after.Drops[reason]; reason != "" && !ok {
		t.Errorf("the agent has no drop reason %q", reason)
	}
}

func trunkRx(s agent.Stats) uint64 {
	var n uint64
	for _, i := range s.Interfaces {
		n += i.RxPackets
	}
	return n
}

// netnsCounter reads an interface statistic in netns.
func netnsCounter(t *testing.T, b *bed.Bed, netns, ifname, name string) uint64 {
	t.Helper()
	out, err := b.Command(context.Background(), netns, "cat", "/sys/class/net/"+ifname+"/statistics/"+name).Output()
	if err != nil {
		t.Fatalf("%s/%s %s: %v", netns, ifname, name, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func ipLink(t *testing.T, b *bed.Bed, netns string, args ...string) {
	t.Helper()
	if out, err := b.Command(context.Background(), netns, "ip", append([]string{"link"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip link %v in %s: %v\n%s", args, netns, err, out)
	}
}

// TestBadInputMatrix sends every kind of bad input the README's table
// names, from the VPC (raw frames on the wire, tags as built) and from a
// pod, and checks that each is handled as documented: dropped and counted
// under its reason, forwarded, or left to the kernel — and that no pod saw
// a frame it should not have.
func TestBadInputMatrix(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlbad%d", os.Getpid()%10000), 3)
	b := e.b
	a := e.startAgent()
	pod1, pod2 := b.Pods[0], b.Pods[1]
	gw, vpc := b.Wire.MAC, b.Wire.IP
	fromWire := injector(t, b.Wire.Netns, b.Wire.Ifname)
	fromPod1 := injector(t, pod1.Netns, pod1.Ifname)
	rawWire := rawSender(t, b.Wire.Netns, b.Wire.Ifname)
	fromWireMayDrop := func(f []byte) { // ENOBUFS: the veth dropped it, as it must
		if err := rawWire(f); err != nil && !errors.Is(err, unix.ENOBUFS) {
			t.Errorf("inject on the wire: %v", err)
		}
	}
	tag1 := [][2]uint16{{0x8100, pod1.VLAN}}
	const l3 = 14 + 4 // the IPv4 header of a tagged frame
	toPod1 := probeFrame{src: gw, dst: pod1.MAC, tags: tag1, srcIP: vpc, dstIP: pod1.IP}
	good := toPod1.build(t)
	with := func(edit func(p *probeFrame)) []byte {
		p := toPod1
		edit(&p)
		return p.build(t)
	}
	discard := b.Service("default/discard")
	if discard == nil {
		t.Fatal("the bed has no default/discard Service")
	}
	toVIP := probeFrame{src: gw, dst: b.Node.TrunkMAC, srcIP: vpc, dstIP: discard.VIP, dport: discard.Port, payload: make([]byte, 24)}.build(t)
	vipFrag1, vipFrag2 := fragments(toVIP, 14, 16)
	podToVIP := probeFrame{src: pod1.MAC, dst: pod1.HostVethMAC, srcIP: pod1.IP, dstIP: discard.VIP, dport: discard.Port, payload: make([]byte, 24)}.build(t)
	podFrag1, podFrag2 := fragments(podToVIP, 14, 16)
	frag1, frag2 := fragments(with(func(p *probeFrame) { p.payload = make([]byte, 24) }), l3, 16)
	nonIP := append(append([]byte(nil), good[:16]...), 0x88, 0xb5) // IEEE local experimental EtherType
	nonIP = append(nonIP, make([]byte, 46)...)
	ipv6 := func() []byte {
		eth := &layers.Ethernet{SrcMAC: gw, DstMAC: pod1.MAC, EthernetType: layers.EthernetTypeDot1Q}
		ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolUDP, HopLimit: 64, SrcIP: net.ParseIP("fd00::1"), DstIP: net.ParseIP("fd00::2")}
		udp := &layers.UDP{SrcPort: 5555, DstPort: probePort}
		udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, &layers.Dot1Q{VLANIdentifier: pod1.VLAN, Type: layers.EthernetTypeIPv6}, ip, udp, gopacket.Payload("probe")); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}()
	oversize := with(func(p *probeFrame) { p.payload = make([]byte, 1600) })

	rows := []badRow{
		{name: "good frame (control)", send: fromWire, frames: [][]byte{good}, pod: 0},
		{name: "cut inside the tag", send: fromWire, frames: [][]byte{good[:16]}, drop: "malformed", pod: -1},
		{name: "cut inside the IPv4 header", send: fromWire, frames: [][]byte{good[:l3+10]}, drop: "malformed", pod: -1},
		{name: "IHL 4", send: fromWire, frames: [][]byte{editIPv4(good, l3, true, func(ip packet.IPv4) { ip[0] = 0x44 })}, drop: "malformed", pod: -1},
		{name: "total length larger than the frame", send: fromWire, frames: [][]byte{editIPv4(good, l3, false, func(ip packet.IPv4) { ip.SetTotalLen(1500) })}, drop: "malformed", pod: -1},
		{name: "total length smaller than the header", send: fromWire, frames: [][]byte{editIPv4(good, l3, false, func(ip packet.IPv4) { ip.SetTotalLen(19) })}, drop: "malformed", pod: -1},
		{name: "total length smaller than the frame (padding)", send: fromWire, frames: [][]byte{append(append([]byte(nil), good...), make([]byte, 64)...)}, pod: 0},
		{name: "IP options", send: fromWire, frames: [][]byte{with(func(p *probeFrame) {
			p.options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		})}, pod: 0},
		{name: "fragments to a pod are forwarded and reassembled by it", send: fromWire, frames: [][]byte{frag1, frag2}, pod: 0},
		{name: "fragments to a VIP", send: fromWire, frames: [][]byte{vipFrag1, vipFrag2}, drop: "nat_fragment", pod: -1},
		{name: "fragments from a pod to a VIP", send: fromPod1, frames: [][]byte{podFrag1, podFrag2}, drop: "nat_fragment", pod: -1},
		{name: "source 0.0.0.0", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.srcIP = netip.IPv4Unspecified() })}, drop: "martian_source", pod: -1},
		{name: "source 255.255.255.255", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.srcIP = netip.MustParseAddr("255.255.255.255") })}, drop: "martian_source", pod: -1},
		{name: "multicast source", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.srcIP = netip.MustParseAddr("224.0.0.1") })}, drop: "martian_source", pod: -1},
		{name: "source 0.0.0.0 to a VIP", send: fromWire, frames: [][]byte{
			probeFrame{src: gw, dst: b.Node.TrunkMAC, srcIP: netip.IPv4Unspecified(), dstIP: discard.VIP, dport: discard.Port}.build(t),
		}, drop: "martian_source", pod: -1},
		{name: "source 0.0.0.0 from a pod", send: fromPod1, frames: [][]byte{
			probeFrame{src: pod1.MAC, dst: pod1.HostVethMAC, srcIP: netip.IPv4Unspecified(), dstIP: pod2.IP}.build(t),
		}, drop: "spoofed_source", pod: -1},
		{name: "TTL 0", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.ttl, p.setTTL = 0, true })}, pod: 0},
		{name: "TTL 1", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.ttl = 1 })}, pod: 0},
		{name: "VID 0 goes to the node's kernel", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.tags = [][2]uint16{{0x8100, 0}} })}, pod: -1, kernel: true},
		{name: "VID 4095", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.tags = [][2]uint16{{0x8100, 4095}} })}, drop: "unknown_vid", pod: -1},
		{name: "VID of no pod", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.tags = [][2]uint16{{0x8100, 999}} })}, drop: "unknown_vid", pod: -1},
		{name: "QinQ 802.1ad", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.tags = [][2]uint16{{0x88a8, pod1.VLAN}, {0x8100, pod1.VLAN}} })}, drop: "qinq", pod: -1},
		{name: "QinQ two 802.1Q tags", send: fromWire, frames: [][]byte{with(func(p *probeFrame) { p.tags = [][2]uint16{{0x8100, pod1.VLAN}, {0x8100, pod1.VLAN}} })}, drop: "qinq", pod: -1},
		{name: "non-IP EtherType", send: fromWire, frames: [][]byte{nonIP}, drop: "unsupported_ethertype", pod: -1},
		{name: "IPv6", send: fromWire, frames: [][]byte{ipv6}, drop: "ipv6", pod: -1},
		{name: "oversize frame is dropped by the kernel", send: fromWireMayDrop, frames: [][]byte{oversize}, pod: -1, kernel: true,
			setup: func(t *testing.T) func() {
				// The wire takes the frame; the trunk (MTU 1500) refuses it.
				ipLink(t, b, b.Wire.Netns, "set", "dev", b.Wire.Ifname, "mtu", "2000")
				dropped := func() uint64 {
					return netnsCounter(t, b, b.Wire.Netns, b.Wire.Ifname, "tx_dropped") + netnsCounter(t, b, b.Node.Netns, b.Node.Trunk, "rx_dropped")
				}
				before := dropped()
				return func() {
					if d := dropped() - before; d < rowRounds {
						t.Errorf("the kernel counted %d dropped frames, want %d", d, rowRounds)
					}
					ipLink(t, b, b.Wire.Netns, "set", "dev", b.Wire.Ifname, "mtu", "1500")
				}
			}},
	}
	runBadRows(t, b, a, rows)

	t.Run("frames are accounted for", func(t *testing.T) {
		for _, u := range stats(t, a).UMEM {
			if u.Held != 0 || u.Free+u.Fill+u.TX != u.Total {
				t.Errorf("UMEM queue %d: %+v; want held 0 and free+fill+tx = total", u.Queue, u)
			}
		}
	})
}
