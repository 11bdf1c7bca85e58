package xdpkernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/internal/privtest"
)

// bedPrefix names the beds these tests build.
const bedPrefix = "tlxk"

// upBed builds a bed with two pods running serve-echo, removed when the
// test ends (also on failure).
func upBed(t *testing.T) *bed.Bed {
	t.Helper()
	privtest.Require(t)
	binary := filepath.Join(t.TempDir(), "trunkline")
	if out, err := exec.Command("go", "build", "-o", binary, "github.com/trunkline/trunkline/cmd/trunkline").CombinedOutput(); err != nil {
		t.Fatalf("build trunkline (the pods' serve-echo): %v\n%s", err, out)
	}
	stateDir := t.TempDir()
	if err := bed.Sweep(stateDir, bedPrefix); err != nil {
		t.Fatalf("sweep a bed %s left by an earlier run: %v", bedPrefix, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	b, err := bed.Up(ctx, bed.Options{Prefix: bedPrefix, Pods: 2, StateDir: stateDir, Servers: binary})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Down(); err != nil {
			t.Errorf("bed down: %v", err)
		}
	})
	return b
}

// attach attaches a peer to b with svcs; it is closed when the test ends
// (Close is idempotent).
func attach(t *testing.T, b *bed.Bed, svcs ...Service) *Peer {
	t.Helper()
	o := FromBed(b)
	o.Services = svcs
	p, err := Attach(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return p
}

// udpEcho sends msg from a new socket in netns to dst and returns who
// answered.
func udpEcho(netns string, dst netip.AddrPort, msg string) (netip.AddrPort, error) {
	var conn *net.UDPConn
	err := bed.InNetns(netns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", nil)
		return err
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer conn.Close()
	buf := make([]byte, 1500)
	// A lost first datagram (ARP on the way) is resent.
	for try := range 5 {
		if _, err := conn.WriteToUDPAddrPort([]byte(msg), dst); err != nil {
			return netip.AddrPort{}, err
		}
		conn.SetReadDeadline(time.Now().Add(time.Duration(100<<try) * time.Millisecond))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		if string(buf[:n]) != msg {
			return from, fmt.Errorf("UDP echo from %v: %q, want %q", from, buf[:n], msg)
		}
		return netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
	}
	return netip.AddrPort{}, fmt.Errorf("UDP echo %v from %s: no answer", dst, netns)
}

// tcpEcho connects from netns to dst, sends msg and reads it back.
func tcpEcho(netns string, dst netip.AddrPort, msg string, timeout time.Duration) error {
	var conn net.Conn
	err := bed.InNetns(netns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", dst.String(), timeout)
		return err
	})
	if err != nil {
		return fmt.Errorf("TCP echo %v from %s: %w", dst, netns, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := conn.Read(buf); err != nil {
		return fmt.Errorf("TCP echo %v: %w", dst, err)
	}
	if string(buf) != msg {
		return fmt.Errorf("TCP echo %v: %q, want %q", dst, buf, msg)
	}
	return nil
}

// groState reads whether GRO is on at e.
func groState(t *testing.T, e Endpoint) bool {
	t.Helper()
	out, err := ethtool(e, "-k", e.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(out, "generic-receive-offload: on")
}

// xdpAttached lists the XDP programs `ip -d link` and `bpftool net` show in
// netns.
func xdpAttached(t *testing.T, netns string) (ipLink, bpftool []string) {
	t.Helper()
	out, err := exec.Command("ip", "-n", netns, "-d", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "prog/xdp") {
			ipLink = append(ipLink, strings.TrimSpace(line))
		}
	}
	out, err = exec.Command("ip", "netns", "exec", netns, "bpftool", "net", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool net show: %v\n%s", err, out)
	}
	section := ""
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasSuffix(line, ":"):
			section = line
		case line != "" && section == "xdp:":
			bpftool = append(bpftool, line)
		}
	}
	return ipLink, bpftool
}

func TestOnBed(t *testing.T) {
	b := upBed(t)
	pod1, pod2 := b.Pods[0], b.Pods[1]
	tcpSvc := Service{VIP: netip.MustParseAddr("10.96.0.13"), Port: bed.TCPEchoPort, Protocol: TCP, Backends: []netip.AddrPort{
		netip.AddrPortFrom(pod1.IP, bed.TCPEchoPort), netip.AddrPortFrom(pod2.IP, bed.TCPEchoPort)}}
	udpSvc := Service{VIP: netip.MustParseAddr("10.96.0.12"), Port: 53, Protocol: UDP, Backends: []netip.AddrPort{
		netip.AddrPortFrom(pod1.IP, bed.UDPEchoPort), netip.AddrPortFrom(pod2.IP, bed.UDPEchoPort)}}
	wire := Endpoint{Netns: b.Wire.Netns, Ifname: b.Wire.Ifname}
	eth0 := Endpoint{Netns: pod1.Netns, Ifname: pod1.Ifname}
	groBefore := map[Endpoint]bool{wire: groState(t, wire), eth0: groState(t, eth0)}

	t.Run("forwarding", func(t *testing.T) {
		fdsBefore := openFDs(t)
		p := attach(t, b, tcpSvc, udpSvc)
		for e, before := range groBefore {
			if !groState(t, e) {
				t.Errorf("GRO off on %v while attached (was on before: %v)", e, before)
			}
		}
		if ipLink, bpftool := xdpAttached(t, b.Node.Netns); len(ipLink) != 3 || len(bpftool) != 3 {
			t.Errorf("XDP in %s: ip link %q, bpftool %q; want the trunk and two host veths", b.Node.Netns, ipLink, bpftool)
		}
		ctx := t.Context()
		for _, pod := range b.Pods {
			if _, err := bed.Ping(ctx, b.Wire.Netns, pod.IP); err != nil {
				t.Error(err)
			}
			dst := netip.AddrPortFrom(pod.IP, bed.UDPEchoPort)
			if from, err := udpEcho(b.Wire.Netns, dst, "direct "+pod.Name); err != nil || from != dst {
				t.Errorf("UDP echo %v: from %v, %v", dst, from, err)
			}
			if err := tcpEcho(b.Wire.Netns, netip.AddrPortFrom(pod.IP, bed.TCPEchoPort), "direct "+pod.Name, 2*time.Second); err != nil {
				t.Error(err)
			}
		}
		const flows = 20
		for i := range flows {
			vip := netip.AddrPortFrom(udpSvc.VIP, udpSvc.Port)
			if from, err := udpEcho(b.Wire.Netns, vip, fmt.Sprint("udp flow ", i)); err != nil || from != vip {
				t.Errorf("UDP echo %v: answer from %v, %v; want from the VIP", vip, from, err)
			}
			if err := tcpEcho(b.Wire.Netns, netip.AddrPortFrom(tcpSvc.VIP, tcpSvc.Port), fmt.Sprint("tcp flow ", i), 2*time.Second); err != nil {
				t.Error(err)
			}
		}
		fl, err := p.Flows()
		if err != nil {
			t.Fatal(err)
		}
		picked := map[Protocol]map[netip.Addr]int{TCP: {}, UDP: {}}
		for _, f := range fl {
			picked[f.Protocol][f.Backend.Addr()]++
		}
		for proto, m := range picked {
			if len(m) != 2 {
				t.Errorf("%v: backends picked over %d flows: %v, want both pods", proto, flows, m)
			}
		}
		c, err := p.Counters()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("counters: %+v", c)
		if c.ToPod == 0 || c.ToBackend < 2*flows || c.ToTrunk == 0 || c.ToTrunkRevNAT < 2*flows || c.TrunkPassed == 0 {
			t.Errorf("counters did not move as expected: %+v", c)
		}

		// A second peer on the same interfaces fails, says why, and leaves
		// the first as it was.
		if p2, err := Attach(FromBed(b)); err == nil {
			p2.Close()
			t.Error("a second Attach on the same bed succeeded")
		} else {
			t.Logf("second Attach: %v", err)
			if !strings.Contains(err.Error(), "detach it first") {
				t.Errorf("second Attach: %v; want it to say what to do", err)
			}
		}
		if err := tcpEcho(b.Wire.Netns, netip.AddrPortFrom(tcpSvc.VIP, tcpSvc.Port), "after a failed Attach", 2*time.Second); err != nil {
			t.Error(err)
		}

		// 100,000 Services, the bench's largest scale, plus the two.
		start := time.Now()
		many := manyServices(100_000, pod1.IP, pod2.IP)
		if err := p.SetServices(append(many, tcpSvc, udpSvc)); err != nil {
			t.Fatal(err)
		}
		t.Logf("SetServices with %d Services (%d backends): %v", len(many)+2, 2*len(many)+4, time.Since(start).Round(time.Millisecond))
		if err := tcpEcho(b.Wire.Netns, netip.AddrPortFrom(many[99_999].VIP, many[99_999].Port), "one of many", 2*time.Second); err != nil {
			t.Error(err)
		}
		start = time.Now()
		if err := p.SetServices([]Service{tcpSvc}); err != nil {
			t.Fatal(err)
		}
		t.Logf("SetServices back to 1 Service: %v", time.Since(start).Round(time.Millisecond))
		if err := tcpEcho(b.Wire.Netns, netip.AddrPortFrom(tcpSvc.VIP, tcpSvc.Port), "after the many", 2*time.Second); err != nil {
			t.Error(err)
		}
		if _, err := udpEcho(b.Wire.Netns, netip.AddrPortFrom(udpSvc.VIP, udpSvc.Port), "removed"); err == nil {
			t.Error("the UDP Service still answers after SetServices removed it")
		}

		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := p.Counters(); !errors.Is(err, ErrClosed) {
			t.Errorf("Counters after Close: %v, want ErrClosed", err)
		}
		if fds := openFDs(t); fds != fdsBefore {
			t.Errorf("%d open file descriptors after Close, %d before Attach", fds, fdsBefore)
		}
		if ipLink, bpftool := xdpAttached(t, b.Node.Netns); len(ipLink)+len(bpftool) != 0 {
			t.Errorf("XDP still attached in %s after Close: ip link %q, bpftool %q", b.Node.Netns, ipLink, bpftool)
		}
		for e, before := range groBefore {
			if now := groState(t, e); now != before {
				t.Errorf("GRO on %v: %v after Close, %v before Attach", e, now, before)
			}
		}
		if err := tcpEcho(b.Wire.Netns, netip.AddrPortFrom(tcpSvc.VIP, tcpSvc.Port), "closed", 500*time.Millisecond); err == nil {
			t.Error("the TCP VIP still answers after Close")
		}
	})
	t.Run("generator", func(t *testing.T) { testGeneratorCrosses(t, b) })
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// manyServices makes n TCP Services on 10.97.x.y:9001 and up, each with both pods
// as backends.
func manyServices(n int, a, b netip.Addr) []Service {
	svcs := make([]Service, n)
	for i := range svcs {
		svcs[i] = Service{
			VIP:      netip.AddrFrom4([4]byte{10, byte(97 + i>>16), byte(i >> 8), byte(i)}),
			Port:     bed.TCPEchoPort,
			Protocol: TCP,
			Backends: []netip.AddrPort{netip.AddrPortFrom(a, bed.TCPEchoPort), netip.AddrPortFrom(b, bed.TCPEchoPort)},
		}
	}
	return svcs
}
