package load

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trunkline/trunkline/internal/privtest"
)

// The privileged tests' two namespaces, joined by a veth pair: the client
// side and the server side.
const (
	clientNetns = "tlld-a"
	serverNetns = "tlld-b"
	udpEcho     = 9000
	tcpEcho     = 9001
	udpSink     = 9002 // reads and never answers
	closedPort  = 9099
	iperfPort   = 5299
)

var (
	clientIP = netip.MustParseAddr("10.211.0.1")
	serverIP = netip.MustParseAddr("10.211.0.2")
)

// vethPair makes tlld-a and tlld-b joined by a veth pair, with a UDP echo,
// a UDP sink and a TCP echo served in tlld-b from this process; all of it
// goes when the test ends.
func vethPair(t *testing.T) {
	t.Helper()
	privtest.Require(t)
	privtest.Netns(t, clientNetns)
	privtest.Netns(t, serverNetns)
	privtest.Run(t, "ip", "link", "add", "tlld0", "netns", clientNetns, "type", "veth", "peer", "name", "tlld1", "netns", serverNetns)
	privtest.Run(t, "ip", "-n", clientNetns, "addr", "add", clientIP.String()+"/24", "dev", "tlld0")
	privtest.Run(t, "ip", "-n", serverNetns, "addr", "add", serverIP.String()+"/24", "dev", "tlld1")
	privtest.Run(t, "ip", "-n", clientNetns, "link", "set", "tlld0", "up")
	privtest.Run(t, "ip", "-n", serverNetns, "link", "set", "tlld1", "up")

	var (
		udp, sink net.PacketConn
		tcp       net.Listener
	)
	err := privtest.In(serverNetns, func() error {
		var err error
		if udp, err = net.ListenPacket("udp", netip.AddrPortFrom(serverIP, udpEcho).String()); err != nil {
			return err
		}
		if sink, err = net.ListenPacket("udp", netip.AddrPortFrom(serverIP, udpSink).String()); err != nil {
			return err
		}
		tcp, err = net.Listen("tcp", netip.AddrPortFrom(serverIP, tcpEcho).String())
		return err
	})
	if err != nil {
		t.Fatalf("echo servers in %s: %v", serverNetns, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		udp.Close()
		sink.Close()
		tcp.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			udp.WriteTo(buf[:n], from)
		}
	})
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				// Not io.Copy(c, c): it splices, through pipes Go keeps in
				// a pool, which would look like leaked descriptors.
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			})
		}
	})
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// noFDLeak fails t if fn leaves file descriptors open.
func noFDLeak(t *testing.T, fn func()) {
	t.Helper()
	before := openFDs(t)
	fn()
	// The Go runtime may be closing a descriptor of its own; allow it a
	// moment.
	for deadline := time.Now().Add(time.Second); openFDs(t) > before && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if after := openFDs(t); after > before {
		t.Errorf("%d file descriptors before, %d after", before, after)
	}
}

// nothingRunsIn fails t if a process (other than this one) is in netns.
func nothingRunsIn(t *testing.T, netns string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", netns).Output()
	if err != nil {
		t.Fatalf("ip netns pids %s: %v", netns, err)
	}
	self := strconv.Itoa(os.Getpid())
	for f := range strings.FieldsSeq(string(out)) {
		if f != self {
			t.Errorf("process %s still runs in %s", f, netns)
		}
	}
}

func checkLatency(t *testing.T, name string, r LatencyResult) {
	t.Helper()
	t.Logf("%s: %d answered, %d lost, %d stale in %v; min %v p50 %v p90 %v p99 %v p99.9 %v max %v mean %v",
		name, r.Count, r.Lost, r.Stale, r.Elapsed.Round(time.Millisecond), r.Min, r.P50, r.P90, r.P99, r.P999, r.Max, r.Mean)
	if r.Count == 0 || r.Lost != 0 || r.Requests != r.Count+r.Lost {
		t.Errorf("%s: %d requests, %d answered, %d lost; want answers and no losses", name, r.Requests, r.Count, r.Lost)
	}
	if !(0 < r.Min && r.Min <= r.P50 && r.P50 <= r.P90 && r.P90 <= r.P99 && r.P99 <= r.P999 && r.P999 <= r.Max) {
		t.Errorf("%s: percentiles out of order: %+v", name, r.Summary)
	}
	if r.P50 > 10*time.Millisecond || r.Max > time.Second {
		t.Errorf("%s: p50 %v, max %v: implausible over a veth pair", name, r.P50, r.Max)
	}
	if len(r.Samples) != r.Count || !slices.IsSorted(r.Samples) || r.Samples[0] != r.Min || r.Samples[len(r.Samples)-1] != r.Max {
		t.Errorf("%s: %d samples (sorted %v) for %d answers", name, len(r.Samples), slices.IsSorted(r.Samples), r.Count)
	}
}

func TestVeth(t *testing.T) {
	vethPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	echoUDP := netip.AddrPortFrom(serverIP, udpEcho)
	echoTCP := netip.AddrPortFrom(serverIP, tcpEcho)

	t.Run("Latency", func(t *testing.T) {
		noFDLeak(t, func() {
			r, err := Latency(ctx, LatencyOptions{Netns: clientNetns, Target: echoUDP, Duration: time.Second, Warmup: 100 * time.Millisecond,
				Timeout: time.Second, CPU: 1})
			if err != nil {
				t.Fatal(err)
			}
			checkLatency(t, "blocking, cpu1", r)
		})
	})
	t.Run("LatencyBusyPoll", func(t *testing.T) {
		// Unpinned: spinning on a core the echo server needs starves it.
		r, err := Latency(ctx, LatencyOptions{Netns: clientNetns, Target: echoUDP, Duration: 500 * time.Millisecond, Warmup: 50 * time.Millisecond,
			Timeout: time.Second, CPU: NoCPU, BusyPoll: true, PayloadBytes: 1400})
		if err != nil {
			t.Fatal(err)
		}
		checkLatency(t, "busy-poll, 1400 B", r)
	})
	t.Run("LatencyCount", func(t *testing.T) {
		r, err := Latency(ctx, LatencyOptions{Netns: clientNetns, Target: echoUDP, Count: 100, Warmup: -1, CPU: NoCPU, Duration: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if r.Requests != 100 || r.Elapsed > 5*time.Second {
			t.Errorf("count 100: %d requests in %v", r.Requests, r.Elapsed)
		}
	})
	t.Run("LatencyLostAndCancel", func(t *testing.T) {
		// A sink never answers: every request is lost after its timeout.
		r, err := Latency(ctx, LatencyOptions{Netns: clientNetns, Target: netip.AddrPortFrom(serverIP, udpSink), Count: 3, Warmup: -1,
			Timeout: 20 * time.Millisecond, CPU: NoCPU})
		if err != nil || r.Requests != 3 || r.Lost != 3 || r.Count != 0 || len(r.Samples) != 0 {
			t.Errorf("sink: %+v, %v; want 3 requests, all lost", r, err)
		}
		// Cancelling wakes a request blocked in its receive.
		cctx, ccancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer ccancel()
		start := time.Now()
		_, err = Latency(cctx, LatencyOptions{Netns: clientNetns, Target: netip.AddrPortFrom(serverIP, udpSink), Warmup: -1,
			Timeout: 30 * time.Second, Duration: time.Minute, CPU: NoCPU})
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Errorf("cancelled after 200ms: returned %v after %v, want the deadline error at once", err, time.Since(start))
		}
	})

	t.Run("ConnectRate", func(t *testing.T) {
		noFDLeak(t, func() {
			r, err := ConnectRate(ctx, ConnectOptions{Netns: clientNetns, Target: echoTCP, Duration: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%.0f conn/s (%d in %v, %d workers), set-up p50 %v p99 %v; errors %+v; total %d ok, errors %+v",
				r.CPS, r.Connections, r.Window.Round(time.Millisecond), DefaultConnectWorkers, r.Setup.P50, r.Setup.P99, r.Errors, r.TotalConnections, r.TotalErrors)
			if len(r.FirstOther) > 0 {
				t.Logf("first other error: %s", r.FirstOther)
			}
			if r.CPS <= 0 || r.Connections == 0 || r.Errors.Total() != 0 || r.TotalErrors.Total() != 0 || r.FirstOther != "" {
				t.Errorf("want connections and no failures: %+v", r)
			}
			if r.Window < 900*time.Millisecond || r.Window > time.Second || r.TotalConnections < r.Connections {
				t.Errorf("window %v, %d of %d connections counted", r.Window, r.Connections, r.TotalConnections)
			}
			if r.Setup.Count != r.Connections || r.Setup.P50 <= 0 || r.Setup.P50 > r.Setup.P99 {
				t.Errorf("set-up latency %+v for %d connections", r.Setup, r.Connections)
			}
		})
	})
	t.Run("ConnectRateThreads", func(t *testing.T) {
		r, err := ConnectRate(ctx, ConnectOptions{Netns: clientNetns, Target: echoTCP, Duration: 300 * time.Millisecond, Warmup: -1, Workers: 5, Threads: 2})
		if err != nil {
			t.Fatal(err)
		}
		if r.Connections == 0 || r.Errors.Total() != 0 {
			t.Errorf("2 threads, 5 workers: %+v", r)
		}
	})
	t.Run("ConnectRateCount", func(t *testing.T) {
		r, err := ConnectRate(ctx, ConnectOptions{Netns: clientNetns, Target: echoTCP, Count: 50, Warmup: -1, Duration: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if r.Connections+r.Errors.Total() != 50 || r.Window > 5*time.Second {
			t.Errorf("count 50: %d connections, %+v errors in %v", r.Connections, r.Errors, r.Window)
		}
	})
	t.Run("ConnectRateRefused", func(t *testing.T) {
		start := time.Now()
		r, err := ConnectRate(ctx, ConnectOptions{Netns: clientNetns, Target: netip.AddrPortFrom(serverIP, closedPort), Duration: 300 * time.Millisecond, Warmup: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("closed port: %d refused in %v", r.Errors.Refused, r.Window)
		if r.Errors.Refused == 0 || r.Connections != 0 || r.Errors.Total() != r.Errors.Refused || time.Since(start) > 3*time.Second {
			t.Errorf("closed port: %+v after %v; want refusals only, at once", r, time.Since(start))
		}
	})
	t.Run("ConnectRateCancel", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer ccancel()
		start := time.Now()
		r, err := ConnectRate(cctx, ConnectOptions{Netns: clientNetns, Target: echoTCP, Duration: time.Minute, Warmup: -1})
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second || r.Connections == 0 {
			t.Errorf("cancelled after 300ms: %d connections, err %v after %v", r.Connections, err, time.Since(start))
		}
	})

	t.Run("IperfTCP", func(t *testing.T) {
		privtestTool(t, "iperf3")
		r, err := Iperf(ctx, IperfOptions{ServerNetns: serverNetns, ClientNetns: clientNetns, Server: serverIP, Port: iperfPort, Duration: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("iperf3 TCP: %.2f Gbit/s received, %d retransmits", r.Gbps(), r.Retransmits)
		if r.Protocol != "TCP" || r.Gbps() <= 0 || r.ReceivedBytes <= 0 {
			t.Errorf("TCP: %+v", r)
		}
		nothingRunsIn(t, serverNetns)
		nothingRunsIn(t, clientNetns)
	})
	t.Run("IperfUDP", func(t *testing.T) {
		privtestTool(t, "iperf3")
		r, err := Iperf(ctx, IperfOptions{ServerNetns: serverNetns, ClientNetns: clientNetns, Server: serverIP, Port: iperfPort,
			Duration: time.Second, UDP: true, Bitrate: 100_000_000, Length: 1400})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("iperf3 UDP 100 Mbit/s: %.3f Gbit/s received, %d/%d lost, jitter %v", r.Gbps(), r.LostPackets, r.Packets, r.Jitter)
		if r.Protocol != "UDP" || r.Packets == 0 || r.Gbps() <= 0 {
			t.Errorf("UDP: %+v", r)
		}
		nothingRunsIn(t, serverNetns)
	})
	t.Run("IperfNoServer", func(t *testing.T) {
		privtestTool(t, "iperf3")
		_, err := Iperf(ctx, IperfOptions{ClientNetns: clientNetns, Server: serverIP, Port: iperfPort, Duration: time.Second, ServerRunning: true})
		if !errors.Is(err, ErrIperf) || !strings.Contains(err.Error(), "Connection refused") {
			t.Errorf("err = %v, want ErrIperf with iperf3's connection refused", err)
		}
	})
	t.Run("IperfCancel", func(t *testing.T) {
		privtestTool(t, "iperf3")
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		defer ccancel()
		start := time.Now()
		_, err := Iperf(cctx, IperfOptions{ServerNetns: serverNetns, ClientNetns: clientNetns, Server: serverIP, Port: iperfPort, Duration: 30 * time.Second})
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Errorf("cancelled after 1s: err %v after %v", err, time.Since(start))
		}
		nothingRunsIn(t, serverNetns)
		nothingRunsIn(t, clientNetns)
	})
}

// privtestTool finds a program a privileged test needs; without it the test
// skips, or fails under CI=true, saying how to install it.
func privtestTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		msg := name + " not found: apt-get install " + name
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}
