package dataplane

import (
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/trunkline/trunkline/dataplane/port/porttest"
	"github.com/trunkline/trunkline/internal/packet"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
	"github.com/trunkline/trunkline/vlan"
)

// fuzzRig is a worker with two pods, a TCP and a UDP Service (one backend
// each, on pod2), SNAT, masquerade and a small conntrack table, kept for a
// whole fuzzing process so that state builds up across inputs.
type fuzzRig struct {
	mem   *porttest.Memory
	trunk *porttest.Port
	pods  []*porttest.Port
	w     *Worker
	ct    *conntrack.Table
}

const fuzzMaxEntries = 64

func newFuzzRig(tb testing.TB) *fuzzRig {
	tb.Helper()
	tcp := clusterIP(backendOf(pods[1], 8080))
	udp := clusterIP(backendOf(pods[1], 8080))
	udp.Name, udp.Proto = "default/echo:udp", lb.UDP
	st, err := lb.Build(netip.AddrFrom4(nodeIP), []lb.ServiceSpec{tcp, udp}, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var sptr atomic.Pointer[lb.Table]
	sptr.Store(st)
	ct, err := conntrack.New(conntrack.Options{MaxEntries: fuzzMaxEntries})
	if err != nil {
		tb.Fatal(err)
	}
	tbl, err := vlan.NewTable(pods)
	if err != nil {
		tb.Fatal(err)
	}
	var vptr atomic.Pointer[vlan.Table]
	vptr.Store(tbl)
	r := &fuzzRig{mem: porttest.NewMemory(64, 4096), ct: ct}
	poller := porttest.NewPoller()
	r.trunk = porttest.NewPort(r.mem)
	r.trunk.TxRing = 4 // short of room when a frame comes many times
	poller.Set(TrunkIndex, r.trunk)
	r.w, err = New(Config{
		Memory: r.mem, Poller: poller, Trunk: r.trunk, VLAN: &vptr, GatewayMAC: gatewayMAC,
		Services: &sptr, Conntrack: ct, NodeIP: nodeIP, NodeMAC: nodeMAC, SNATPorts: PortRange{61000, 61003},
		Masquerade: true, NonMasquerade: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	if err != nil {
		tb.Fatal(err)
	}
	for _, a := range pods {
		p := porttest.NewPort(r.mem)
		r.pods = append(r.pods, p)
		r.w.AttachPod(a.ID, p, nil, func() { poller.Set(PodIndex(a.ID), p) })
	}
	return r
}

func (r *fuzzRig) drops() (n uint64) {
	for i := range r.w.Counters().Drops {
		n += r.w.Counters().Drops[i].Load()
	}
	return n
}

// FuzzWorker feeds arbitrary frames, from the trunk or from a pod, through
// a worker with Services, SNAT and conntrack on. After each frame: no
// panic; every frame slot is back (free = total); each copy of the frame
// had exactly one outcome (a drop, or a frame out: forwarded, translated
// or answered); a pod's frame never leaves on the trunk with another VLAN or
// MAC than its own; and the conntrack table is bounded and consistent
// (Len matches what Range finds, no entry with a zero tuple).
func FuzzWorker(f *testing.F) {
	for _, tc := range badInputCases() {
		f.Add(uint8(tc.from), tc.frame(f))
	}
	seeds := []struct {
		from  uint8
		frame []byte
	}{
		{0, build(f, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101}, srcIP: vpcHost, dstIP: pods[0].IP})},
		{0, build(f, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101, 5}, srcIP: vpcHost, dstIP: pods[0].IP})},
		{0, build(f, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101}, ipv6: true})},
		{0, build(f, frameSpec{src: gatewayMAC, dst: pods[0].MAC, tags: []uint16{101}, arp: true, srcIP: vpcHost, dstIP: pods[0].IP})},
		{0, l4frame(f, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 3333, dport: 80, syn: true})},
		{0, l4frame(f, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 3333, dport: 80, ack: true, payload: "data"})},
		{0, l4frame(f, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 3334, dport: 80, udp: true, payload: "data"})},
		{0, l4frame(f, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: nodeIP, sport: 3335, dport: 30080, syn: true})},
		{0, l4frame(f, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: [4]byte{1, 1, 1, 1}, dstIP: nodeIP, sport: 443, dport: 61001, ack: true})},
		{1, build(f, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vpcHost})},
		{1, build(f, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: pods[1].IP})},
		{1, build(f, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[1].IP, dstIP: vpcHost})},
		{1, build(f, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, tags: []uint16{102}, srcIP: pods[0].IP, dstIP: vpcHost})},
		{1, build(f, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, arp: true, srcIP: pods[0].IP, dstIP: pods[1].IP})},
		{1, l4frame(f, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vip, sport: 4444, dport: 80, syn: true})},
		{1, l4frame(f, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: [4]byte{1, 1, 1, 1}, sport: 4445, dport: 443, syn: true})},
		{2, l4frame(f, l4spec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: vip, sport: 4446, dport: 80, udp: true})},
		{2, l4frame(f, l4spec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: client, sport: 8080, dport: 3333, syn: true, ack: true})},
	}
	for _, s := range seeds {
		f.Add(s.from, s.frame)
		f.Add(s.from+3*5, s.frame) // six copies
	}
	var r *fuzzRig
	f.Fuzz(func(t *testing.T, from uint8, frame []byte) {
		if r == nil {
			r = newFuzzRig(t)
		}
		if len(frame)+porttest.Headroom > int(r.mem.FrameSize()) {
			return
		}
		in := r.trunk
		var sender *vlan.Attachment
		if i := int(from % 3); i > 0 {
			in, sender = r.pods[i-1], &pods[i-1]
		}
		// The frame comes 1 to 8 times in one batch: later copies hit the
		// flow the first started, and the trunk's short TX ring fills.
		copies := 1 + int(from/3)%8
		before := r.drops()
		for range copies {
			if err := in.Inject(frame); err != nil {
				t.Fatal(err)
			}
		}
		for r.w.Poll() > 0 {
		}
		if free := r.mem.Free(); free != r.mem.Frames() {
			t.Fatalf("%d of %d frames free after the frame: leaked", free, r.mem.Frames())
		}
		out := 0
		for _, f := range r.trunk.Sent() {
			out++
			if sender == nil {
				continue
			}
			var p packet.Parsed
			p.Decode(f)
			if p.Tags != 0 && p.VID != sender.VID {
				t.Fatalf("%s's frame left on the trunk with VID %d: %x", sender.Name, p.VID, f)
			}
			if p.Tags != 0 && [6]byte(f[6:12]) != sender.MAC {
				t.Fatalf("%s's frame left on the trunk tagged with source MAC %x", sender.Name, f[6:12])
			}
			if p.Tags == 0 && [6]byte(f[6:12]) != nodeMAC {
				t.Fatalf("%s's frame left on the trunk untagged from MAC %x, not the node's", sender.Name, f[6:12])
			}
		}
		for _, p := range r.pods {
			out += len(p.Sent())
		}
		if d := r.drops() - before; d+uint64(out) != uint64(copies) {
			t.Fatalf("%d frames in, %d dropped and %d out", copies, d, out)
		}
		checkConntrack(t, r.ct)
	})
}

func checkConntrack(t *testing.T, ct *conntrack.Table) {
	t.Helper()
	n := 0
	ct.Range(func(c conntrack.Conn) bool {
		n++
		if c.Orig == (conntrack.Key{}) || c.Reply == (conntrack.Key{}) {
			t.Fatalf("conntrack entry with a zero tuple: %+v", c)
		}
		if c.Orig.Proto != c.Reply.Proto || (c.Orig.Proto != lb.TCP && c.Orig.Proto != lb.UDP) {
			t.Fatalf("conntrack entry of protocol %d/%d", c.Orig.Proto, c.Reply.Proto)
		}
		return true
	})
	if n != ct.Len() {
		t.Fatalf("conntrack Len %d, Range found %d", ct.Len(), n)
	}
	if n > fuzzMaxEntries {
		t.Fatalf("conntrack holds %d entries, bound %d", n, fuzzMaxEntries)
	}
}
