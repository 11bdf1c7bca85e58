package dataplane

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trunkline/trunkline/internal/packet"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
)

// Under a SYN flood from the VPC — the connection table at its bound —
// the worker starts new flows at FloodNewFlowRate
// (after a burst of FloodNewFlowBurst) and drops the other SYNs
// (new_flow_limit) before they cost an insert, a pod's work and its answer;
// an established flow's packets all go through.
func TestSYNFloodAdmitsFewNewFlowsAndEveryEstablishedOne(t *testing.T) {
	st, err := lb.Build(netip.AddrFrom4(nodeIP), []lb.ServiceSpec{clusterIP(backendOf(pods[1], 8080))}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var sptr atomic.Pointer[lb.Table]
	sptr.Store(st)
	const maxEntries = 32
	ct, err := conntrack.New(conntrack.Options{MaxEntries: maxEntries})
	if err != nil {
		t.Fatal(err)
	}
	r := &natRig{rig: newRigWith(t, 512, func(c *Config) {
		c.Services, c.Conntrack, c.NodeIP, c.NodeMAC = &sptr, ct, nodeIP, nodeMAC
	}), svcs: &sptr, ct: ct}

	// The established flow: handshake through the worker.
	const cport = 40000
	r.one(r.trunk, l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: cport, dport: 80, syn: true}), r.pods[1])
	r.one(r.pods[1], l4frame(t, l4spec{src: pods[1].MAC, dst: pods[1].HostMAC, srcIP: pods[1].IP, dstIP: client, sport: 8080, dport: cport, syn: true, ack: true}), r.trunk)
	data := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: cport, dport: 80, ack: true, payload: "established"})
	r.one(r.trunk, data, r.pods[1])

	const rounds = 20
	var admitted, limitedAll int
	start := time.Now()
	for round := range rounds {
		if err := r.trunk.Inject(data); err != nil {
			t.Fatal(err)
		}
		for i := range DefaultBatch - 1 {
			src := [4]byte{10, 200, byte(round), byte(i)}
			syn := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: src, dstIP: vip, sport: 1024, dport: 80, syn: true})
			if err := r.trunk.Inject(syn); err != nil {
				t.Fatal(err)
			}
		}
		before := r.drops()["new_flow_limit"]
		r.w.Poll()
		established, syns := 0, 0
		for _, f := range r.pods[1].Sent() {
			var p packet.Parsed
			p.Decode(f)
			if p.SrcPort == cport {
				established++
			} else {
				syns++
			}
		}
		limited := r.drops()["new_flow_limit"] - before
		if established != 1 {
			t.Errorf("round %d: %d packets of the established flow reached its pod, want 1", round, established)
		}
		if syns+int(limited) != DefaultBatch-1 {
			t.Errorf("round %d: %d SYNs through and %d dropped new_flow_limit, of %d", round, syns, limited, DefaultBatch-1)
		}
		if round >= 1 { // the first round filled the table
			admitted += syns
			limitedAll += int(limited)
		}
		if n := ct.Len(); n > maxEntries {
			t.Fatalf("conntrack holds %d, bound %d", n, maxEntries)
		}
	}
	most := FloodNewFlowBurst + int(time.Since(start).Seconds()*FloodNewFlowRate) + 1
	if admitted > most || limitedAll == 0 {
		t.Errorf("flooded: %d SYNs started flows and %d were limited; want at most %d started", admitted, limitedAll, most)
	}
	if s := ct.Stats(); s.EarlyDrops == 0 {
		t.Error("no early drops: the table never reached its bound")
	}
}

// Below its bound the table takes every new flow, however full the
// trunk's batches: a burst of connections is not limited.
func TestFullBatchesAloneDoNotLimitNewFlows(t *testing.T) {
	r := newNATRig(t, []lb.ServiceSpec{clusterIP(backendOf(pods[1], 8080))}, PortRange{})
	for round := range 4 {
		for i := range DefaultBatch {
			syn := l4frame(t, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: [4]byte{10, 200, byte(round), byte(i)}, dstIP: vip, sport: 1024, dport: 80, syn: true})
			if err := r.trunk.Inject(syn); err != nil {
				t.Fatal(err)
			}
		}
		r.w.Poll()
		if n := len(r.pods[1].Sent()); n != DefaultBatch {
			t.Errorf("round %d: %d of %d SYNs through (drops %v)", round, n, DefaultBatch, r.drops())
		}
	}
}
