package kproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/internal/privtest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// bedPrefix names the test's bed; its namespaces are tlkp-wire, tlkp-node
// and tlkp-pod<i>.
const bedPrefix = "tlkp"

// upKernelBed builds the trunkline binary, brings up a two-pod bed with its
// echo servers and turns on the kernel path; the bed goes down when the
// test ends.
func upKernelBed(t *testing.T) *bed.Bed {
	t.Helper()
	binary := filepath.Join(t.TempDir(), "trunkline")
	if out, err := exec.Command("go", "build", "-o", binary, "github.com/trunkline/trunkline/cmd/trunkline").CombinedOutput(); err != nil {
		t.Fatalf("build trunkline: %v\n%s", err, out)
	}
	bed.Sweep(bed.DefaultStateDir, bedPrefix)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	b, err := bed.Up(ctx, bed.Options{Prefix: bedPrefix, Pods: 2, Servers: binary})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Down(); err != nil {
			t.Errorf("bed down: %v", err)
		}
	})
	for _, p := range b.Pods {
		if err := bed.WaitListening(ctx, p.Netns, bed.HTTPPort); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.EnableKernelPath(); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKernelPeer installs each mode's ruleset in a bed's node, reaches the
// Services from the VPC, checks both backends serve and that off-cluster
// clients are masqueraded, then removes the ruleset and checks that nothing
// of it is left and the VIPs are dead.
func TestKernelPeer(t *testing.T) {
	privtest.Require(t)
	b := upKernelBed(t)
	var backends []netip.Addr
	for _, p := range b.Pods {
		backends = append(backends, p.IP)
	}
	vip := func(last byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 96, 0, last}) }
	web := Service{Name: "default/web", VIP: vip(10), Port: 80, NodePort: 30080, Protocol: TCP, TargetPort: bed.HTTPPort, Backends: backends}
	udpEcho := Service{Name: "default/echo-udp", VIP: vip(12), Port: 53, Protocol: UDP, TargetPort: bed.UDPEchoPort, Backends: backends}
	tcpEcho := Service{Name: "default/echo-tcp", VIP: vip(13), Port: bed.TCPEchoPort, Protocol: TCP, Backends: backends}

	for _, mode := range []Mode{ModeIPTables, ModeNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			r, err := Install(ctx, Options{
				Netns:       b.Node.Netns,
				Mode:        mode,
				ClusterCIDR: netip.MustParsePrefix("10.100.0.0/16"),
				Services:    []Service{web, udpEcho, tcpEcho},
			})
			if err != nil {
				t.Fatal(err)
			}
			removed := false
			t.Cleanup(func() {
				if !removed {
					r.Remove(context.Background())
				}
			})
			t.Logf("%s ruleset: %d bytes, loaded in %v", mode, r.Bytes, r.LoadTime)
			if left, err := Leftovers(ctx, b.Node.Netns); err != nil || len(left) == 0 {
				t.Fatalf("Leftovers after Install: %v, %v", left, err)
			}
			if _, err := Install(ctx, Options{Netns: b.Node.Netns, Mode: mode, Services: []Service{web}}); err == nil || !strings.Contains(err.Error(), ErrExists.Error()) {
				t.Errorf("second Install: %v, want ErrExists", err)
			}

			flushConntrack(t, b.Node.Netns)
			const n = 20
			for i := range n {
				msg := fmt.Sprintf("tcp %d", i)
				if got, err := tcpRoundTrip(b.Wire.Netns, netip.AddrPortFrom(tcpEcho.VIP, tcpEcho.Port), msg); err != nil || got != msg {
					t.Fatalf("TCP echo via %s:%d: %q, %v", tcpEcho.VIP, tcpEcho.Port, got, err)
				}
				msg = fmt.Sprintf("udp %d", i)
				if got, err := udpRoundTrip(b.Wire.Netns, netip.AddrPortFrom(udpEcho.VIP, udpEcho.Port), msg); err != nil || got != msg {
					t.Fatalf("UDP echo via %s:%d: %q, %v", udpEcho.VIP, udpEcho.Port, got, err)
				}
			}
			// Each connection was DNATed to one backend; over 20, both.
			for _, s := range []Service{tcpEcho, udpEcho} {
				picked := backendsPicked(t, b.Node.Netns, s)
				t.Logf("%s: %v", s.Name, picked)
				total := 0
				for _, be := range backends {
					if picked[be] == 0 {
						t.Errorf("%s: backend %s never picked in %d connections: %v", s.Name, be, n, picked)
					}
					total += picked[be]
				}
				if total != n {
					t.Errorf("%s: %d DNATed flows, want %d: %v", s.Name, total, n, picked)
				}
			}

			// Clients in the cluster CIDR keep their address; others are
			// masqueraded to the node's; NodePorts always are.
			for _, c := range []struct {
				from netip.Addr
				to   netip.AddrPort
				seen netip.Addr
			}{
				{b.Wire.IP, netip.AddrPortFrom(web.VIP, web.Port), b.Wire.IP},
				{b.Wire.OutsideIP, netip.AddrPortFrom(web.VIP, web.Port), b.Node.IP},
				{b.Wire.IP, netip.AddrPortFrom(b.Node.IP, web.NodePort), b.Node.IP},
			} {
				name, client, err := httpGet(b.Wire.Netns, c.from, c.to)
				if err != nil {
					t.Errorf("HTTP %s → %s: %v", c.from, c.to, err)
					continue
				}
				if !strings.HasPrefix(name, "pod") || client != c.seen {
					t.Errorf("HTTP %s → %s: answered by %q, which saw the client as %s; want a pod that saw %s", c.from, c.to, name, client, c.seen)
				}
			}

			if err := r.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			removed = true
			if err := r.Remove(ctx); err != nil {
				t.Errorf("second Remove: %v", err)
			}
			if left, err := Leftovers(ctx, b.Node.Netns); err != nil || len(left) > 0 {
				t.Errorf("Leftovers after Remove: %v, %v", left, err)
			}
			for _, cmd := range [][]string{{"iptables-save"}, {"nft", "list", "ruleset"}} {
				out, err := b.Command(ctx, b.Node.Netns, cmd[0], cmd[1:]...).CombinedOutput()
				if err != nil {
					t.Fatalf("%s: %v\n%s", cmd, err, out)
				}
				for _, bad := range []string{"KUBE-", "kube-proxy"} {
					if strings.Contains(string(out), bad) {
						t.Errorf("%s after Remove still shows %s:\n%s", cmd, bad, out)
					}
				}
			}
			flushConntrack(t, b.Node.Netns)
			if got, err := tcpRoundTrip(b.Wire.Netns, netip.AddrPortFrom(tcpEcho.VIP, tcpEcho.Port), "gone?"); err == nil {
				t.Errorf("TCP echo via %s still answers after Remove: %q", tcpEcho.VIP, got)
			}
			if got, err := udpRoundTrip(b.Wire.Netns, netip.AddrPortFrom(udpEcho.VIP, udpEcho.Port), "gone?"); err == nil {
				t.Errorf("UDP echo via %s still answers after Remove: %q", udpEcho.VIP, got)
			}
		})
	}
}

// dialTimeout bounds every exchange; a dead VIP costs this much.
const dialTimeout = time.Second

// tcpRoundTrip connects from netns to addr, sends msg and reads as much
// back.
func tcpRoundTrip(netns string, addr netip.AddrPort, msg string) (string, error) {
	var c net.Conn
	err := bed.InNetns(netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr.String(), dialTimeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dialTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err = io.ReadFull(c, buf)
	return string(buf), err
}

// udpSourcePort is the last source port udpRoundTrip used.
var udpSourcePort atomic.Int32

func init() { udpSourcePort.Store(40000) }

// udpRoundTrip sends msg from a fresh socket (a fresh flow) in netns to
// addr and waits for the echo. Each call uses a source port of its own: one
// after another, the kernel's random pick repeats now and then, and a
// repeated port is one conntrack flow, not two.
func udpRoundTrip(netns string, addr netip.AddrPort, msg string) (string, error) {
	var c net.Conn
	err := bed.InNetns(netns, func() error {
		var err error
		c, err = net.DialUDP("udp4", &net.UDPAddr{Port: int(udpSourcePort.Add(1))}, net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dialTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// httpGet asks the pods' HTTP server at addr, from netns with source
// address from, who answers and whom it saw.
func httpGet(netns string, from netip.Addr, addr netip.AddrPort) (name string, client netip.Addr, err error) {
	var c net.Conn
	err = bed.InNetns(netns, func() error {
		d := net.Dialer{Timeout: dialTimeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
		var err error
		c, err = d.Dial("tcp4", addr.String())
		return err
	})
	if err != nil {
		return "", client, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(dialTimeout))
	req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
	req.Close = true
	if err := req.Write(c); err != nil {
		return "", client, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return "", client, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", client, err
	}
	ap, err := netip.ParseAddrPort(resp.Header.Get("X-Client"))
	if err != nil {
		return "", client, fmt.Errorf("X-Client header: %w", err)
	}
	return strings.TrimSpace(strings.TrimPrefix(string(body), "hello from ")), ap.Addr(), nil
}

// conntrack runs fn with a netfilter netlink handle in netns.
func conntrack(t *testing.T, netns string, fn func(h *netlink.Handle) error) {
	t.Helper()
	var h *netlink.Handle
	if err := bed.InNetns(netns, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := fn(h); err != nil {
		t.Fatal(err)
	}
}

// flushConntrack forgets the flows of netns.
func flushConntrack(t *testing.T, netns string) {
	t.Helper()
	conntrack(t, netns, func(h *netlink.Handle) error { return h.ConntrackTableFlush(netlink.ConntrackTable) })
}

// backendsPicked counts, among the flows netns tracks to the Service's
// VIP and port, how many each backend answered.
func backendsPicked(t *testing.T, netns string, s Service) map[netip.Addr]int {
	t.Helper()
	picked := map[netip.Addr]int{}
	proto := uint8(unix.IPPROTO_TCP)
	if s.Protocol == UDP {
		proto = unix.IPPROTO_UDP
	}
	conntrack(t, netns, func(h *netlink.Handle) error {
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, f := range flows {
			dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
			if f.Forward.Protocol != proto || dst.Unmap() != s.VIP || f.Forward.DstPort != s.Port {
				continue
			}
			src, _ := netip.AddrFromSlice(f.Reverse.SrcIP)
			picked[src.Unmap()]++
		}
		return nil
	})
	return picked
}

// TestCleanupKeepsOthers loads both modes' rules (as a crashed run would
// leave them) next to another program's iptables rule and nft table, and
// checks that Install used --noflush, that Cleanup removes kube-proxy's
// objects only, and that Leftovers then reports none.
func TestCleanupKeepsOthers(t *testing.T) {
	privtest.Require(t)
	netns := privtest.Netns(t, "tlkp-clean")
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	foreignRule := []string{"-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.1/32", "-j", "RETURN"}
	privtest.Run(t, "ip", append([]string{"netns", "exec", netns, "iptables"}, foreignRule...)...)
	privtest.Run(t, "ip", "netns", "exec", netns, "nft", "add table ip other; add chain ip other c; add rule ip other c counter")

	o := fixture(ModeIPTables)
	o.Netns = netns
	r, err := Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !r.NoFlush {
		t.Error("Install into a nat table with another rule did not use --noflush")
	}
	o.Mode = ModeNFTables
	script, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runIn(ctx, netns, script, "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	left, err := Leftovers(ctx, netns)
	if err != nil {
		t.Fatal(err)
	}
	hasNFT, hasIPT := false, false
	for _, l := range left {
		hasNFT = hasNFT || l == "nft table ip kube-proxy"
		hasIPT = hasIPT || strings.HasPrefix(l, "iptables nat rule -A PREROUTING")
	}
	if !hasNFT || !hasIPT {
		t.Errorf("Leftovers missed something: %q", left)
	}

	if err := Cleanup(ctx, netns); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(ctx, netns); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
	if left, err := Leftovers(ctx, netns); err != nil || len(left) > 0 {
		t.Errorf("Leftovers after Cleanup: %q, %v", left, err)
	}
	save := privtest.Run(t, "ip", "netns", "exec", netns, "iptables-save", "-t", "nat")
	if !strings.Contains(save, "-A POSTROUTING -s 192.0.2.1/32 -j RETURN") || strings.Contains(save, "KUBE-") {
		t.Errorf("nat after Cleanup:\n%s", save)
	}
	if out := privtest.Run(t, "ip", "netns", "exec", netns, "nft", "list", "tables"); !strings.Contains(out, "table ip other") {
		t.Errorf("Cleanup took another program's table: %s", out)
	}
}
