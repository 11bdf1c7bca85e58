package dataplane

import (
	"testing"

	"github.com/trunkline/trunkline/dataplane/port/porttest"
	"github.com/trunkline/trunkline/internal/packet"
)

// fairRounds runs rounds worker rounds; before each, every sender injects
// its frames for the round. It returns, per output port, the frames sent
// in each round.
func fairRounds(t *testing.T, r *rig, rounds int, senders []fairSender, outs ...*porttest.Port) [][][][]byte {
	t.Helper()
	got := make([][][][]byte, len(outs))
	for range rounds {
		for _, s := range senders {
			for range s.n {
				if err := s.from.Inject(s.frame); err != nil {
					t.Fatal(err)
				}
			}
		}
		r.w.Poll()
		for i, o := range outs {
			got[i] = append(got[i], o.Sent())
		}
	}
	return got
}

type fairSender struct {
	from  *porttest.Port
	frame []byte
	n     int // frames per round
}

// bySource counts frames by IPv4 source address.
func bySource(frames [][]byte) map[[4]byte]int {
	m := map[[4]byte]int{}
	for _, f := range frames {
		var p packet.Parsed
		p.Decode(f)
		m[p.Src]++
	}
	return m
}

// A pod that fills a whole batch every round toward the trunk, whose TX
// ring takes only one batch per round, cannot starve a quieter pod: every
// frame of the quiet pod leaves in the round it was sent, and the flooder
// gets the rest of the ring.
func TestFloodingPodCannotStarveAnotherOnTheTrunk(t *testing.T) {
	r := newRig(t)
	r.trunk.TxRing = DefaultBatch
	flood := build(t, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vpcHost})
	quiet := build(t, frameSpec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: vpcHost})
	const rounds, each = 20, 5
	got := fairRounds(t, r, rounds, []fairSender{{r.pods[0], flood, DefaultBatch}, {r.pods[1], quiet, each}}, r.trunk)[0]
	for i, sent := range got {
		n := bySource(sent)
		if n[pods[1].IP] != each {
			t.Errorf("round %d: the quiet pod got %d of its %d frames out (the flooder %d)", i, n[pods[1].IP], each, n[pods[0].IP])
		}
		if n[pods[0].IP] != DefaultBatch-each && i > 0 {
			t.Errorf("round %d: the flooder got %d frames out, want the ring's other %d", i, n[pods[0].IP], DefaultBatch-each)
		}
	}
	if d := r.podC[1].Drops.Load(); d != 0 {
		t.Errorf("%d of the quiet pod's frames dropped", d)
	}
	if d := r.podC[0].Drops.Load(); d == 0 {
		t.Error("no flooder frame dropped: the ring was never short, the test proves nothing")
	}
}

// Two pods flooding the trunk share its TX ring by turns.
func TestFloodingPodsShareTheTrunk(t *testing.T) {
	r := newRig(t)
	r.trunk.TxRing = DefaultBatch
	a := build(t, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: vpcHost})
	b := build(t, frameSpec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: vpcHost})
	const rounds = 40
	got := fairRounds(t, r, rounds, []fairSender{{r.pods[0], a, DefaultBatch}, {r.pods[1], b, DefaultBatch}}, r.trunk)[0]
	total := map[[4]byte]int{}
	for _, sent := range got {
		for ip, n := range bySource(sent) {
			total[ip] += n
		}
	}
	all := total[pods[0].IP] + total[pods[1].IP]
	if all != rounds*DefaultBatch {
		t.Fatalf("%d frames out in %d rounds, want a full ring each round (%d)", all, rounds, rounds*DefaultBatch)
	}
	for _, p := range pods {
		if share := float64(total[p.IP]) / float64(all); share < 0.45 {
			t.Errorf("%s got %.0f%% of the trunk, want about half", p.Name, 100*share)
		}
	}
}

// A pod flooding another pod does not crowd the trunk's frames to that pod
// out of its TX ring.
func TestFloodingPodCannotStarveTheTrunkToAPod(t *testing.T) {
	r := newRig(t)
	r.pods[1].TxRing = DefaultBatch
	flood := build(t, frameSpec{src: pods[0].MAC, dst: pods[0].HostMAC, srcIP: pods[0].IP, dstIP: pods[1].IP})
	fromVPC := build(t, frameSpec{src: gatewayMAC, dst: pods[1].MAC, tags: []uint16{pods[1].VID}, srcIP: vpcHost, dstIP: pods[1].IP})
	const rounds, each = 20, 3
	// The flooder has the ring to itself for one round first, so that it
	// is the heavy one when the trunk starts sending.
	fairRounds(t, r, 1, []fairSender{{r.pods[0], flood, DefaultBatch}}, r.pods[1])
	got := fairRounds(t, r, rounds, []fairSender{{r.pods[0], flood, DefaultBatch}, {r.trunk, fromVPC, each}}, r.pods[1])[0]
	for i, sent := range got {
		if n := bySource(sent)[vpcHost]; n != each {
			t.Errorf("round %d: %d of the VPC's %d frames reached pod2", i, n, each)
		}
	}
	if d := r.w.ports[TrunkIndex].c.Drops.Load(); d != 0 {
		t.Errorf("%d of the trunk's frames dropped", d)
	}
}

// A round that serves ports fairly allocates nothing.
func TestFairRoundDoesNotAllocate(t *testing.T) {
	r := newRig(t)
	ready := []int{TrunkIndex, PodIndex(0), PodIndex(1)}
	if n := testing.AllocsPerRun(100, func() { r.w.serve(ready) }); n != 0 {
		t.Errorf("a round allocates %v times", n)
	}
}
