package dataplane

import (
	"encoding/binary"
	"testing"

	"github.com/trunkline/trunkline/dataplane/port/porttest"
	"github.com/trunkline/trunkline/internal/packet"
	"github.com/trunkline/trunkline/lb"
)

// fragment turns an IPv4 frame into a fragment: offset in bytes (a
// multiple of 8), more says MF. The header checksum is kept valid.
func fragment(f []byte, offset uint16, more bool) []byte {
	f = append([]byte(nil), f...)
	var p packet.Parsed
	p.Decode(f)
	ip := packet.IPv4(f[p.L3Off:])
	v := offset / 8
	if more {
		v |= 1 << 13
	}
	binary.BigEndian.PutUint16(ip[6:], v)
	ip.SetChecksum(ip.ComputeChecksum())
	return f
}

// badInputCase is one row of the worker-level bad-input matrix; the e2e
// matrix sends the same kinds of frames on the bed.
type badInputCase struct {
	name string
	// from and to are port numbers: 0 the trunk, i pod i.
	from  int
	frame func(t testing.TB) []byte
	// want is the drop reason, or forwarded when the frame leaves on to.
	want DropReason
	to   int
}

const (
	trunkPort = iota
	pod1Port
	pod2Port
)

// port returns port number i of the rig: 0 the trunk, i pod i.
func (r *rig) port(i int) *porttest.Port {
	if i == trunkPort {
		return r.trunk
	}
	return r.pods[i-1]
}

const forwarded = NumDropReasons

func badInputCases() []badInputCase {
	toPod2 := func(tb testing.TB) []byte {
		return build(tb, frameSpec{src: gatewayMAC, dst: pods[1].MAC, tags: []uint16{pods[1].VID}, srcIP: vpcHost, dstIP: pods[1].IP})
	}
	udpToVIP := func(tb testing.TB) []byte {
		return l4frame(tb, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 3333, dport: 80, udp: true, payload: "0123456789abcdef"})
	}
	podToVIP := func(tb testing.TB) []byte {
		return l4frame(tb, l4spec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vip, sport: 3333, dport: 80, udp: true, payload: "0123456789abcdef"})
	}
	withSrc := func(src [4]byte) func(testing.TB) []byte {
		return func(tb testing.TB) []byte {
			return build(tb, frameSpec{src: gatewayMAC, dst: pods[1].MAC, tags: []uint16{pods[1].VID}, srcIP: src, dstIP: pods[1].IP})
		}
	}
	return []badInputCase{
		{"martian 0.0.0.0 from the VPC", trunkPort, withSrc([4]byte{0, 0, 0, 0}), DropMartianSource, 0},
		{"martian broadcast from the VPC", trunkPort, withSrc([4]byte{255, 255, 255, 255}), DropMartianSource, 0},
		{"martian loopback from the VPC", trunkPort, withSrc([4]byte{127, 0, 0, 1}), DropMartianSource, 0},
		{"martian multicast from the VPC", trunkPort, withSrc([4]byte{224, 0, 0, 5}), DropMartianSource, 0},
		{"martian source to a VIP", trunkPort, func(tb testing.TB) []byte {
			return l4frame(tb, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: [4]byte{0, 0, 0, 0}, dstIP: vip, sport: 3333, dport: 80, udp: true})
		}, DropMartianSource, 0},
		{"0.0.0.0 from a pod", pod1Port, func(tb testing.TB) []byte {
			return build(tb, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: [4]byte{}, dstIP: vpcHost})
		}, DropSpoofedSource, 0},
		{"first fragment to a pod", trunkPort, func(tb testing.TB) []byte { return fragment(toPod2(tb), 0, true) }, forwarded, pod2Port},
		{"non-first fragment to a pod", trunkPort, func(tb testing.TB) []byte { return fragment(toPod2(tb), 8, false) }, forwarded, pod2Port},
		{"first fragment to a VIP", trunkPort, func(tb testing.TB) []byte { return fragment(udpToVIP(tb), 0, true) }, DropNATFragment, 0},
		{"non-first fragment to a VIP", trunkPort, func(tb testing.TB) []byte { return fragment(udpToVIP(tb), 8, false) }, DropNATFragment, 0},
		{"first fragment from a pod to a VIP", pod1Port, func(tb testing.TB) []byte { return fragment(podToVIP(tb), 0, true) }, DropNATFragment, 0},
		{"non-first fragment from a pod to a VIP", pod1Port, func(tb testing.TB) []byte { return fragment(podToVIP(tb), 8, false) }, DropNATFragment, 0},
		{"TTL 0", trunkPort, func(tb testing.TB) []byte {
			f := toPod2(tb)
			ip := packet.IPv4(f[18:])
			ip.SetTTL(0)
			return f
		}, forwarded, pod2Port},
		{"IHL 4", trunkPort, func(tb testing.TB) []byte {
			f := toPod2(tb)
			f[18] = 0x44
			return f
		}, DropMalformed, 0},
		{"total length > frame", trunkPort, func(tb testing.TB) []byte {
			f := toPod2(tb)
			packet.IPv4(f[18:]).SetTotalLen(1500)
			return f
		}, DropMalformed, 0},
		{"total length < header", trunkPort, func(tb testing.TB) []byte {
			f := toPod2(tb)
			packet.IPv4(f[18:]).SetTotalLen(19)
			return f
		}, DropMalformed, 0},
		{"total length < frame (padding)", trunkPort, func(tb testing.TB) []byte { return append(toPod2(tb), make([]byte, 100)...) }, forwarded, pod2Port},
		{"cut in the tag", trunkPort, func(tb testing.TB) []byte { return toPod2(tb)[:16] }, DropMalformed, 0},
		{"VID 4095", trunkPort, func(tb testing.TB) []byte {
			return build(tb, frameSpec{src: gatewayMAC, dst: pods[1].MAC, tags: []uint16{4095}, srcIP: vpcHost, dstIP: pods[1].IP})
		}, DropUnknownVID, 0},
	}
}

func TestBadInputMatrix(t *testing.T) {
	for _, tc := range badInputCases() {
		t.Run(tc.name, func(t *testing.T) {
			r := newNATRig(t, []lb.ServiceSpec{udpClusterIP()}, PortRange{61000, 61099})
			from := r.port(tc.from)
			if err := from.Inject(tc.frame(t)); err != nil {
				t.Fatal(err)
			}
			r.run()
			drops := r.drops()
			if tc.want == forwarded {
				if len(drops) != 0 {
					t.Errorf("drops %v, want the frame forwarded", drops)
				}
				if n := len(r.port(tc.to).Sent()); n != 1 {
					t.Errorf("%d frames out, want 1", n)
				}
				return
			}
			if len(drops) != 1 || drops[tc.want.String()] != 1 {
				t.Errorf("drops %v, want one %s", drops, tc.want)
			}
			for i, p := range append([]*porttest.Port{r.trunk}, r.pods...) {
				if n := len(p.Sent()); n != 0 {
					t.Errorf("port %d sent %d frames, want none", i, n)
				}
			}
			if n := r.ct.Len(); n != 0 {
				t.Errorf("%d conntrack entries, want none", n)
			}
		})
	}
}

func udpClusterIP() lb.ServiceSpec {
	s := clusterIP(backendOf(pods[1], 8080))
	s.Proto = lb.UDP
	return s
}
