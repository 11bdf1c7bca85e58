package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trunkline/trunkline/bench/agentproc"
	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/gen"
)

// withConfig makes the env's agent config the bed's plus extra lines.
func (e *env) withConfig(extra string) {
	e.t.Helper()
	cfg, err := os.ReadFile(e.b.ConfigPath)
	if err != nil {
		e.t.Fatal(err)
	}
	path := filepath.Join(e.t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte(strings.TrimSpace(string(cfg))+"\n"+extra+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	e.configPath = path
}

// iperfIntervals runs an iperf3 client with args in netns and returns the
// bits per second of each 1-second interval, and the error iperf3 reported.
func iperfIntervals(ctx context.Context, t *testing.T, b *bed.Bed, netns string, args ...string) ([]float64, string) {
	t.Helper()
	out, err := b.Command(ctx, netns, "iperf3", append(args, "-i", "1", "-J")...).Output()
	var r struct {
		Error     string `json:"error"`
		Intervals []struct {
			Sum struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum"`
		} `json:"intervals"`
	}
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		t.Fatalf("iperf3 %v: %v %v\n%s", args, err, jerr, out)
	}
	if r.Error == "" && err != nil {
		r.Error = err.Error()
	}
	bps := make([]float64, len(r.Intervals))
	for i, iv := range r.Intervals {
		bps[i] = iv.Sum.BitsPerSecond
	}
	return bps, r.Error
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// floodResult is what one flood against a Service did.
type floodResult struct {
	offered      float64   // frames/s the generator sent
	before, mid  float64   // the stream's bits/s before and during the flood
	intervals    []float64 // the stream's Mbit/s per second
	iperfErr     string    // the stream's error (a reset, a closed control connection)
	peak         int       // conntrack entries, the most seen during the flood
	entries      int       // and at its end
	inserts      uint64
	earlyDrops   uint64
	limited      uint64 // new_flow_limit drops
	full         uint64 // conntrack_full drops
	kernelDrops  uint64 // frames the trunk socket's kernel side dropped
	gateShut     bool   // the SYN gate was shut at the flood's end
	ringDrops    uint64 // frames the trunk veth lost before its XDP program ran
	xdpSeen      uint64 // frames the trunk veth's XDP program saw
	afterEntries int
}

// flood runs a 9-second iperf3 stream from the VPC to svc and, from
// 3.2 s for 3.5 s, runs the generator g (its frames go where its spec
// says) at rate frames/s (0: as fast as it goes). Before is the stream's seconds 1-2,
// during its seconds 4-6.
func flood(t *testing.T, b *bed.Bed, a *agentproc.Proc, g *gen.Generator, svc *bed.Service, rate uint64, iperfArgs ...string) floodResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	var (
		r  floodResult
		wg sync.WaitGroup
	)
	wg.Go(func() {
		bps, err := iperfIntervals(ctx, t, b, b.Wire.Netns, append([]string{"-c", svc.VIP.String(), "-p", fmt.Sprint(svc.Port), "-t", "9"}, iperfArgs...)...)
		r.iperfErr = err
		for _, v := range bps {
			r.intervals = append(r.intervals, math.Round(v/1e6))
		}
		if len(bps) >= 7 {
			r.before, r.mid = mean(bps[1:3]), mean(bps[4:7])
		}
	})
	time.Sleep(3200 * time.Millisecond)
	before := stats(t, a)
	wireBefore, trunkBefore := nicStats(t, b, b.Wire.Netns, b.Wire.Ifname), nicStats(t, b, b.Node.Netns, b.Node.Trunk)
	done, genResult := startGen(ctx, g, gen.RunOptions{Netns: b.Wire.Netns, Ifname: b.Wire.Ifname, CPU: vpcCPU, Until: time.Now().Add(3500 * time.Millisecond), Rate: rate})
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		case <-time.After(100 * time.Millisecond):
			r.peak = max(r.peak, stats(t, a).Conntrack.Entries)
		}
	}
	during := stats(t, a)
	wireAfter, trunkAfter := nicStats(t, b, b.Wire.Netns, b.Wire.Ifname), nicStats(t, b, b.Node.Netns, b.Node.Trunk)
	wg.Wait()
	gst := genResult(t)
	r.offered = float64(gst.Offered) / gst.Elapsed.Seconds()
	ct := during.Conntrack
	r.entries, r.peak = ct.Entries, max(r.peak, ct.Entries)
	r.inserts = ct.Inserts - before.Conntrack.Inserts
	r.earlyDrops = ct.EarlyDrops - before.Conntrack.EarlyDrops
	r.limited = during.Drops["new_flow_limit"] - before.Drops["new_flow_limit"]
	r.full = during.Drops["conntrack_full"] - before.Drops["conntrack_full"]
	r.gateShut = during.SYNGateShut
	for i := range during.Interfaces {
		r.kernelDrops += during.Interfaces[i].Kernel.RxDropped - before.Interfaces[i].Kernel.RxDropped
	}
	// The generator's frames the trunk's ring had no room for, and the
	// stream's.
	r.ringDrops = wireAfter["tx_queue_0_xdp_xmit_errors"] - wireBefore["tx_queue_0_xdp_xmit_errors"] +
		trunkAfter["rx_queue_0_drops"] - trunkBefore["rx_queue_0_drops"]
	r.xdpSeen = trunkAfter["rx_queue_0_xdp_packets"] - trunkBefore["rx_queue_0_xdp_packets"]
	r.afterEntries = stats(t, a).Conntrack.Entries
	t.Logf("the trunk veth's XDP program saw %d frames; %d were lost before it, in the veth's ring (%.1f%%)",
		r.xdpSeen, r.ringDrops, 100*float64(r.ringDrops)/float64(max(r.xdpSeen+r.ringDrops, 1)))
	t.Logf("flood %.2f Mpps offered for %s; stream %.0f Mbit/s before, %.0f during (%.0f%%), per second %v; conntrack peak %d of %d, %d inserts, %d early drops, %d new_flow_limit, %d conntrack_full; the trunk socket's kernel side dropped %d frames",
		r.offered/1e6, gst.Elapsed.Round(time.Millisecond), r.before/1e6, r.mid/1e6, 100*r.mid/r.before, r.intervals,
		r.peak, ct.MaxEntries, r.inserts, r.earlyDrops, r.limited, r.full, r.kernelDrops)
	return r
}

// startGen runs g in the background. done is closed when the run ends;
// result then returns its figures, failing the test on its error.
func startGen(ctx context.Context, g *gen.Generator, o gen.RunOptions) (done <-chan struct{}, result func(*testing.T) gen.RunStats) {
	var (
		st  gen.RunStats
		err error
		ch  = make(chan struct{})
	)
	go func() {
		defer close(ch)
		st, err = g.Run(ctx, o)
	}()
	return ch, func(t *testing.T) gen.RunStats {
		t.Helper()
		<-ch
		if err != nil {
			t.Fatalf("generator: %v", err)
		}
		return st
	}
}

// nicStats are an interface's ethtool counters.
func nicStats(t *testing.T, b *bed.Bed, netns, ifname string) map[string]uint64 {
	t.Helper()
	out, err := b.Command(context.Background(), netns, "ethtool", "-S", ifname).Output()
	if err != nil {
		t.Fatalf("ethtool -S %s: %v", ifname, err)
	}
	m := map[string]uint64{}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); ok && err == nil {
			m[k] = n
		}
	}
	return m
}

// vpcCPU is the CPU the flood tests give the VPC side: the generator, the
// VPC's clients, the wire's receive and with them the trunk's receive
// (bed.SteerVPC), as a node's NIC queues are served off the dataplane's
// cores; the agent's worker and the pods have the other CPU.
const vpcCPU = 0

// floodMaxEntries is the connection table's bound in the flood tests.
const floodMaxEntries = 4096

// floodBed brings up a 2-pod bed for a flood from the VPC: the spoofed
// sources 172.16.0.0/16 are blackholed in the VPC (the answers to them
// vanish there; without the route the bed's VPC would answer each with an
// ICMP unreachable), the agent's table is bounded at floodMaxEntries, the
// VPC side works on vpcCPU and each pod runs an iperf3 server.
func floodBed(t *testing.T, prefix string) (*bed.Bed, *agentproc.Proc) {
	e := newEnv(t, prefix, 2)
	b := e.b
	tool(t, "iperf3", "apt-get install iperf3")
	if out, err := b.Command(context.Background(), b.Wire.Netns, "ip", "route", "add", "blackhole", "172.16.0.0/16").CombinedOutput(); err != nil {
		t.Fatalf("blackhole route: %v\n%s", err, out)
	}
	e.withConfig(fmt.Sprintf("conntrack:\n  maxEntries: %d", floodMaxEntries))
	a := e.startAgent()
	// The VPC — the generator, the stream's client and the wire's receive
	// — works on one CPU, and with it the trunk's receive (see
	// bed.SteerVPC): the node's NIC queue off the worker's CPU.
	if err := b.SteerVPC(vpcCPU); err != nil {
		t.Fatal(err)
	}
	for _, p := range b.Pods {
		srv := b.Command(context.Background(), p.Netns, "iperf3", "-s", "-p", fmt.Sprint(bed.IperfPort))
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
		waitListening(t, b, p.Netns, bed.IperfPort)
	}
	return b, a
}

// TestSYNFlood floods a Service VIP from the VPC with TCP SYNs from a
// million spoofed sources while a TCP stream to the same Service runs.
// At 300,000 SYNs/s — about three times the new flows a worker can start
// here, each costing the backend pod's work inside the worker's transmit;
// without new_flow_limit the stream stops — the stream keeps at least
// half its throughput. At the generator's full rate (2-4 million/s
// here, where it shares its CPU with the trunk's receive) the trunk
// program's SYN gate sheds the excess in XDP, before any copy to the
// agent, and the stream keeps at least half its throughput too. Either
// way the connection table stays within its bound, embryonic flows are
// dropped early and excess SYNs are limited, both counted, the stream is
// not reset, and afterwards the Service takes new connections.
//
// The trunk's receive must not share the worker's CPU for the full-rate
// point: on two CPUs, with the trunk veth's receive on the worker's CPU,
// the flood's receive path (the veth's ring, the XDP program, freeing the
// dropped frames) took half that CPU before the gate could drop a frame,
// and at 3.5-4.2 million/s the veth's ring overflowed, the stream's
// frames among the lost, and the stream fell to 15-48%.
func TestSYNFlood(t *testing.T) {
	b, a := floodBed(t, fmt.Sprintf("tlfld%d", os.Getpid()%10000))
	svc := b.Service("default/iperf")
	g, err := gen.NewGenerator(gen.FrameSpec{
		TCPSYN: true, SrcMAC: b.Wire.MAC, DstMAC: b.Node.TrunkMAC,
		SrcIP: netip.MustParseAddr("172.16.0.0"), Hosts: 256, SrcPortBase: 1024, Flows: 4096,
		DstIP: svc.VIP, DstPort: svc.Port,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	check := func(t *testing.T, r floodResult) {
		t.Helper()
		if r.iperfErr != "" || r.before == 0 {
			t.Errorf("the stream failed during the flood: %q, %.0f Mbit/s before it", r.iperfErr, r.before/1e6)
		}
		if r.peak > floodMaxEntries || r.afterEntries > floodMaxEntries {
			t.Errorf("conntrack held %d entries (%d after), bound %d", r.peak, r.afterEntries, floodMaxEntries)
		}
		if r.earlyDrops == 0 || r.limited == 0 {
			t.Errorf("%d early drops and %d new_flow_limit drops: the flood never met the table's bound", r.earlyDrops, r.limited)
		}
		if !r.gateShut {
			t.Error("the SYN gate was open at the flood's end (synGateShut false)")
		}
	}
	// The stream is paced at 500 Mbit/s, what this 2-core bed carries with
	// room to spare (unpaced it takes the whole worker by itself, and any
	// extra load then costs it throughput, flood or not).
	t.Run("300,000 SYNs/s: the stream keeps half its throughput", func(t *testing.T) {
		r := flood(t, b, a, g, svc, 300_000, "-b", "500M", "-A", fmt.Sprint(vpcCPU))
		check(t, r)
		if r.mid < r.before/2 {
			t.Errorf("the stream fell to %.0f%% of its throughput during the flood, want at least 50%%", 100*r.mid/r.before)
		}
	})
	t.Run("the generator's full rate: the stream keeps half its throughput", func(t *testing.T) {
		r := flood(t, b, a, g, svc, 0, "-b", "500M", "-A", fmt.Sprint(vpcCPU))
		check(t, r)
		if r.mid < r.before/2 {
			t.Errorf("the stream fell to %.0f%% of its throughput during the flood, want at least 50%% (%.1f%% of the frames were lost in the trunk veth's ring, before any program)",
				100*r.mid/r.before, 100*float64(r.ringDrops)/float64(max(r.xdpSeen+r.ringDrops, 1)))
		}
	})
	t.Run("the SYN gate opens and the Service takes new connections after the floods", func(t *testing.T) {
		for deadline := time.Now().Add(3 * time.Second); stats(t, a).SYNGateShut; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the SYN gate is still shut 3 s after the flood")
			}
		}
		echoAfter(t, b)
	})
}

// echoAfter opens a new TCP connection to the echo Service and checks an
// echo comes back within 3 s.
func echoAfter(t *testing.T, b *bed.Bed) {
	t.Helper()
	echo := b.Service("default/echo-tcp")
	c := dial(t, b.Wire.Netns, "tcp", netip.AddrPortFrom(echo.VIP, echo.Port))
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "after" {
		t.Fatalf("echo after the flood: %q %v", buf, err)
	}
}

// TestUDPFlood floods the UDP echo Service — it answers every datagram, as
// a DNS server does — from a million spoofed sources while a TCP stream
// runs to another Service. Each datagram and its answer is a connection,
// none of them a stream (nothing follows 2 s later), so the table at its
// bound evicts them for new flows, as nf_conntrack does: the stream keeps
// at least half its throughput and is not reset, and right after the
// flood, with its connections still in the table, a new TCP connection
// works at once. (While an answered UDP flow counted as assured from its
// first answer, 4096 answered datagrams filled the table with flows
// nothing could evict, for two minutes, and no new connection through a
// Service could start.)
func TestUDPFlood(t *testing.T) {
	b, a := floodBed(t, fmt.Sprintf("tludp%d", os.Getpid()%10000))
	svc, udp := b.Service("default/iperf"), b.Service("default/echo-udp")
	g, err := gen.NewGenerator(gen.FrameSpec{
		SrcMAC: b.Wire.MAC, DstMAC: b.Node.TrunkMAC,
		SrcIP: netip.MustParseAddr("172.16.0.0"), Hosts: 256, SrcPortBase: 1024, Flows: 4096,
		DstIP: udp.VIP, DstPort: udp.Port,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, rate := range []uint64{300_000, 0} {
		name := "the generator's full rate"
		if rate != 0 {
			name = fmt.Sprintf("%d datagrams/s", rate)
		}
		t.Run(name, func(t *testing.T) {
			r := flood(t, b, a, g, svc, rate, "-b", "500M", "-A", fmt.Sprint(vpcCPU))
			if r.iperfErr != "" || r.before == 0 {
				t.Errorf("the stream failed during the flood: %q, %.0f Mbit/s before it", r.iperfErr, r.before/1e6)
			}
			if r.mid < r.before/2 {
				t.Errorf("the stream fell to %.0f%% of its throughput during the flood, want at least 50%%", 100*r.mid/r.before)
			}
			if r.peak > floodMaxEntries || r.afterEntries > floodMaxEntries {
				t.Errorf("conntrack held %d entries (%d after), bound %d", r.peak, r.afterEntries, floodMaxEntries)
			}
			if r.earlyDrops == 0 {
				t.Errorf("no early drops: the flood's answered datagrams were never evicted (%d inserts, %d conntrack_full)", r.inserts, r.full)
			}
			echoAfter(t, b)
		})
	}
}

// TestSNATExhaustionSparesEstablishedFlows gives masquerade one SNAT port:
// a pod's established TCP connection to the outside holds it and keeps
// working while every new flow to the same remote is dropped and counted
// (snat_exhausted).
func TestSNATExhaustionSparesEstablishedFlows(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlfld%d", os.Getpid()%10000+1), 2)
	b := e.b
	out := netip.AddrPortFrom(b.Wire.OutsideIP, bed.TCPEchoPort)
	srv := b.Command(context.Background(), b.Wire.Netns, binary, "serve-echo", "--name", "outside", "--timeout", "5m",
		"--http", b.Wire.OutsideIP.String()+":8080", "--udp", b.Wire.OutsideIP.String()+":9000", "--tcp", out.String())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	waitListening(t, b, b.Wire.Netns, bed.TCPEchoPort)
	e.withConfig("snatPorts: 62000-62000")
	a := e.startAgent()

	established := dial(t, b.Pods[0].Netns, "tcp", out)
	echo := func(c interface {
		Write([]byte) (int, error)
		Read([]byte) (int, error)
		SetDeadline(time.Time) error
	}, msg string) error {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo %q, want %q", buf, msg)
		}
		return nil
	}
	if err := echo(established, "first"); err != nil {
		t.Fatalf("the first flow: %v", err)
	}
	before := stats(t, a)
	const attempts = 4
	for i := range attempts {
		p := b.Pods[i%len(b.Pods)]
		err := bed.InNetns(p.Netns, func() error {
			c, err := net.DialTimeout("tcp", out.String(), 300*time.Millisecond)
			if err == nil {
				c.Close()
				return fmt.Errorf("connected")
			}
			return nil
		})
		if err != nil {
			t.Errorf("new flow %d from %s: %v; want no SNAT port for it", i, p.Name, err)
		}
	}
	after := stats(t, a)
	if d := after.Drops["snat_exhausted"] - before.Drops["snat_exhausted"]; d < attempts {
		t.Errorf("snat_exhausted went up by %d, want at least one per new flow (%d)", d, attempts)
	}
	if n := after.Conntrack.SNATPortsInUse; n != 1 {
		t.Errorf("SNAT ports in use = %d, want the one", n)
	}
	for i := range 5 {
		if err := echo(established, fmt.Sprintf("again %d", i)); err != nil {
			t.Fatalf("the established flow after the new ones failed: %v", err)
		}
	}
}
