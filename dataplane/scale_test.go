package dataplane

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/trunkline/trunkline/dataplane/port"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
	"github.com/trunkline/trunkline/vlan"
)

// flowPort receives a template frame again and again, each copy rewritten
// to one of many flows: source address and port from a flow number, and
// the destination VIP from the flow's Service.
type flowPort struct {
	mem      []byte
	template []byte
	addrs    []uint64
	next     uint64 // next flow number
	flows    uint64 // flow numbers wrap here
	services uint64
}

func (p *flowPort) Receive(descs []port.Desc) int {
	for i, a := range p.addrs {
		f := p.mem[a : a+uint64(len(p.template))]
		copy(f, p.template)
		n := p.next % p.flows
		p.next++
		binary.BigEndian.PutUint32(f[26:], 0x0a640000|uint32(n>>16)) // 10.100.0.(n>>16): the client
		binary.BigEndian.PutUint16(f[34:], uint16(n))                // source port
		binary.BigEndian.PutUint32(f[30:], serviceVIP(n%p.services))
		descs[i] = port.Desc{Addr: a, Len: uint32(len(p.template))}
	}
	return len(p.addrs)
}
func (p *flowPort) Transmit(descs []port.Desc) int { return len(descs) }
func (p *flowPort) Flush()                         {}

// serviceVIP is Service i's ClusterIP, in 10.96.0.0/12.
func serviceVIP(i uint64) uint32 { return 0x0a600000 + uint32(i) + 1 }

// scaleWorker is a worker with services Services (one backend each, port
// 80) whose trunk port replays frames of flows distinct flows.
func scaleWorker(tb testing.TB, services int, flows uint64, maxEntries int) (*Worker, *flowPort, *conntrack.Table) {
	tb.Helper()
	mem := staticMemory{area: make([]byte, 4096*DefaultBatch)}
	fp := &flowPort{mem: mem.area, flows: flows, services: uint64(services)}
	for i := range DefaultBatch {
		fp.addrs = append(fp.addrs, uint64(i)*4096+256)
	}
	tbl, _ := vlan.NewTable(pods)
	var vptr atomic.Pointer[vlan.Table]
	vptr.Store(tbl)
	specs := make([]lb.ServiceSpec, services)
	for i := range specs {
		specs[i] = lb.ServiceSpec{Name: fmt.Sprint("svc", i), Proto: lb.TCP, Port: 80,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, serviceVIP(uint64(i)))))},
			Backends:   []lb.Backend{backendOf(pods[i%2], 8080)}}
	}
	st, err := lb.Build(netip.AddrFrom4(nodeIP), specs, 0)
	if err != nil {
		tb.Fatal(err)
	}
	var sptr atomic.Pointer[lb.Table]
	sptr.Store(st)
	ct, err := conntrack.New(conntrack.Options{MaxEntries: maxEntries})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ct.Close() })
	w, err := New(Config{Memory: mem, Poller: alwaysReady{}, Trunk: fp, VLAN: &vptr, GatewayMAC: gatewayMAC,
		Services: &sptr, Conntrack: ct, NodeIP: nodeIP, NodeMAC: nodeMAC, SNATPorts: PortRange{61000, 62000}})
	if err != nil {
		tb.Fatal(err)
	}
	for _, a := range pods {
		w.AttachPod(a.ID, &replayPort{}, nil, nil)
	}
	return w, fp, ct
}

// BenchmarkScale measures, per packet, an established flow's packet
// (conntrack hit + DNAT) and a new flow's first packet (Service lookup,
// Maglev pick, conntrack insert + DNAT), with 1 and with 100,000 Services
// and 1M flows in the table.
func BenchmarkScale(b *testing.B) {
	const flows = 1 << 20
	for _, services := range []int{1, 100_000} {
		syn := l4frame(b, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 1, dport: 80, syn: true})
		ack := l4frame(b, l4spec{src: gatewayMAC, dst: nodeMAC, srcIP: client, dstIP: vip, sport: 1, dport: 80, ack: true, payload: "x"})
		w, fp, ct := scaleWorker(b, services, flows, 4<<20)
		// Open the 1M flows.
		fp.template = syn
		for fp.next < flows {
			w.Poll()
		}
		if n := ct.Len(); n != flows {
			b.Fatalf("%d flows in the table, want %d (drops %v)", n, flows, w.Counters().Drops[DropConntrackFull].Load())
		}
		b.Run(fmt.Sprintf("hit/services=%d/flows=1M", services), func(b *testing.B) {
			fp.template, fp.next = ack, 0
			runFrames(b, w)
		})
		b.Run(fmt.Sprintf("new/services=%d/flows=1M", services), func(b *testing.B) {
			// New flows: flow numbers past the 1M open ones, removed after
			// each run so the table stays at 1M.
			fp.template, fp.next, fp.flows = syn, flows, 1<<24
			before := ct.Stats().Inserts
			runFrames(b, w)
			b.StopTimer()
			if ins := ct.Stats().Inserts - before; ins+DefaultBatch < uint64(b.N) {
				b.Fatalf("%d new flows inserted for %d frames", ins, b.N)
			}
			ct.DeleteIf(func(c *conntrack.Conn) bool { return c.Orig.SrcIP[3] >= flows>>16 })
			fp.flows = flows
		})
	}
}

// runFrames polls the worker for at least b.N frames, one op per frame.
func runFrames(b *testing.B, w *Worker) {
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; {
		n += w.Poll()
	}
}
