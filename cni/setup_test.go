package cni

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// requireRoot skips a privileged test outside CI and fails it in CI.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("privileged test: must run as root in CI (creates network namespaces and veths)")
	}
	t.Skip("privileged test: needs root to create network namespaces and veths")
}

// run runs a command and returns its combined output, failing the test on error.
func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testPod is one pod sandbox for a test: a named netns "tcni…" removed at
// the end (even on failure), with a container ID and an attachment.
type testPod struct {
	name, path, containerID string
	a                       Attachment
}

// newTestPod creates a network namespace and an attachment with pod address
// 10.213.<n>.5.
func newTestPod(t *testing.T, n int) *testPod {
	t.Helper()
	requireRoot(t)
	var b [4]byte
	rand.Read(b[:])
	name := "tcni" + hex.EncodeToString(b[:])
	run(t, "ip", "netns", "add", name)
	p := &testPod{
		name:        name,
		path:        "/var/run/netns/" + name,
		containerID: "tcni-" + t.Name() + "-" + name,
		a: Attachment{
			VLAN:    uint16(100 + n),
			IP:      netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, byte(n), 5}), 32),
			MAC:     net.HardwareAddr{0x02, 0, 0x0a, 0xd5, byte(n), 5},
			Gateway: netip.MustParseAddr("169.254.1.1"),
		},
	}
	t.Cleanup(func() {
		if err := TeardownPod(p.path, "eth0", p.containerID); err != nil {
			t.Errorf("cleanup teardown: %v", err)
		}
		if _, err := os.Stat(p.path); err == nil {
			if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v %s", name, err, out)
			}
		}
	})
	return p
}

func (p *testPod) hostVeth() string { return HostVethName(p.containerID, "eth0") }

// assertGone checks that nothing of p is left in the host namespace.
func (p *testPod) assertGone(t *testing.T) {
	t.Helper()
	if _, err := netlink.LinkByName(p.hostVeth()); err == nil {
		t.Errorf("host veth %s still exists", p.hostVeth())
	}
	if out := run(t, "ip", "route", "show", p.a.IP.Addr().String()); strings.TrimSpace(out) != "" {
		t.Errorf("host route to %v still exists: %s", p.a.IP, out)
	}
	if out := run(t, "ip", "-br", "link"); strings.Contains(out, "tlp") {
		t.Errorf("temporary peer left in host namespace:\n%s", out)
	}
}

func TestSetupPod(t *testing.T) {
	p := newTestPod(t, 1)
	link, err := SetupPod(p.containerID, p.path, "eth0", p.a, 1400)
	if err != nil {
		t.Fatalf("SetupPod: %v", err)
	}
	if link.HostVeth != p.hostVeth() || link.PodIfname != "eth0" || link.PodMAC.String() != p.a.MAC.String() || link.MTU != 1400 || link.HostIfindex == 0 || link.PodIfindex == 0 || len(link.HostVethMAC) != 6 {
		t.Errorf("PodLink = %+v", link)
	}

	// Look from inside the pod with the real tools.
	ipn := func(args ...string) string { return run(t, append([]string{"ip", "-n", p.name}, args...)...) }
	if out := ipn("addr", "show", "dev", "eth0"); !strings.Contains(out, "inet 10.213.1.5/32 ") ||
		!strings.Contains(out, "link/ether 02:00:0a:d5:01:05") || !strings.Contains(out, "mtu 1400") || !strings.Contains(out, "state UP") {
		t.Errorf("pod eth0:\n%s", out)
	}
	routes := ipn("route", "show")
	for _, want := range []string{"default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"} {
		if !strings.Contains(routes, want) {
			t.Errorf("pod routes lack %q:\n%s", want, routes)
		}
	}
	if neigh := ipn("neigh", "show", "dev", "eth0"); !strings.Contains(neigh, "169.254.1.1 lladdr "+link.HostVethMAC.String()+" PERMANENT") {
		t.Errorf("pod neighbours:\n%s", neigh)
	}
	if _, err := exec.LookPath("ethtool"); err == nil {
		if out := run(t, "ip", "netns", "exec", p.name, "ethtool", "-k", "eth0"); !strings.Contains(out, "tx-checksumming: off") {
			t.Errorf("ethtool -k eth0:\n%s", out)
		}
	} else {
		t.Log("no ethtool binary: TX checksum offload checked through the ioctl only (CheckPod)")
	}
	if out := run(t, "ip", "route", "show", "10.213.1.5"); !strings.Contains(out, "10.213.1.5 dev "+link.HostVeth+" scope link") {
		t.Errorf("host route: %q", out)
	}
	if out := run(t, "ip", "link", "show", link.HostVeth); !strings.Contains(out, "mtu 1400") || !strings.Contains(out, "state UP") {
		t.Errorf("host veth:\n%s", out)
	}
	if err := CheckPod(p.path, "eth0", p.a); err != nil {
		t.Errorf("CheckPod after SetupPod: %v", err)
	}

	// The host reaches the pod over the /32 route, and the pod answers
	// through its gateway neighbour entry.
	echoThroughPod(t, p)

	// Idempotent: same call, same result, nothing changed.
	again, err := SetupPod(p.containerID, p.path, "eth0", p.a, 1400)
	if err != nil {
		t.Fatalf("second SetupPod: %v", err)
	}
	if !reflect.DeepEqual(again, link) {
		t.Errorf("second SetupPod = %+v, want %+v", again, link)
	}

	if err := TeardownPod(p.path, "eth0", p.containerID); err != nil {
		t.Fatalf("TeardownPod: %v", err)
	}
	if err := TeardownPod(p.path, "eth0", p.containerID); err != nil {
		t.Fatalf("second TeardownPod: %v", err)
	}
	p.assertGone(t)
	if out := ipn("-br", "link"); strings.Contains(out, "eth0") {
		t.Errorf("pod still has eth0:\n%s", out)
	}
}

// echoThroughPod serves TCP echo in the pod's namespace on the pod address
// and talks to it from the host namespace.
func echoThroughPod(t *testing.T, p *testPod) {
	t.Helper()
	ns, err := netns.GetFromPath(p.path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var ln net.Listener
	if err := inNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(p.a.IP.Addr().String(), "0"))
		return err
	}); err != nil {
		t.Fatalf("listen in pod: %v", err)
	}
	done := make(chan struct{})
	defer func() { ln.Close(); <-done }()
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Write([]byte("echo " + line))
	}()
	c, err := net.DialTimeout("tcp4", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatalf("dial pod %v from host: %v", ln.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "echo hello\n" {
		t.Fatalf("echo from pod = %q, %v", got, err)
	}
}

func TestSetupPodRollsBackWhenIfnameTaken(t *testing.T) {
	p := newTestPod(t, 2)
	// No dummy module here: a veth pair stands in for someone else's eth0.
	run(t, "ip", "-n", p.name, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
	_, err := SetupPod(p.containerID, p.path, "eth0", p.a, 1500)
	if err == nil || !strings.Contains(err.Error(), "eth0 already exists") {
		t.Fatalf("SetupPod with eth0 taken: err = %v, want 'eth0 already exists'", err)
	}
	p.assertGone(t)
	out := run(t, "ip", "-n", p.name, "-br", "link")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 {
		t.Errorf("pod namespace should hold only lo and the pre-existing eth0 and other0:\n%s", out)
	}
	if out := run(t, "ip", "-n", p.name, "link", "show", "eth0"); strings.Contains(out, "02:00:0a:d5") {
		t.Errorf("the pre-existing eth0 was touched:\n%s", out)
	}
}

func TestSetupPodRejectsBadInput(t *testing.T) {
	p := newTestPod(t, 3)
	bad := p.a
	bad.MAC = net.HardwareAddr{1, 0, 0, 0, 0, 1}
	bad.VLAN = 0
	_, err := SetupPod(p.containerID, p.path, "eth0", bad, 100)
	for _, want := range []string{"mtu 100 is out of range 576..9000", "VLAN 0", "not a unicast Ethernet address"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to mention %q", err, want)
		}
	}
	if _, err := SetupPod(p.containerID, "/var/run/netns/tcni-does-not-exist", "eth0", p.a, 1500); err == nil {
		t.Error("SetupPod into a missing namespace succeeded")
	}
	p.assertGone(t)
}

func TestSetupPodReplacesHalfMadePair(t *testing.T) {
	p := newTestPod(t, 4)
	// A crash right after creating the pair: host end exists, peer still in
	// the host namespace under its temporary name.
	run(t, "ip", "link", "add", p.hostVeth(), "type", "veth", "peer", "name", "tlpcrashed0")
	link, err := SetupPod(p.containerID, p.path, "eth0", p.a, 1500)
	if err != nil {
		t.Fatalf("SetupPod over a half-made pair: %v", err)
	}
	if err := CheckPod(p.path, "eth0", p.a); err != nil {
		t.Errorf("CheckPod: %v", err)
	}
	if _, err := netlink.LinkByName("tlpcrashed0"); err == nil {
		t.Error("the half-made peer is still there")
	}
	// A different attachment for the same container replaces the pair.
	other := p.a
	other.IP = netip.MustParsePrefix("10.213.4.6/32")
	other.MAC = net.HardwareAddr{0x02, 0, 0x0a, 0xd5, 4, 6}
	link2, err := SetupPod(p.containerID, p.path, "eth0", other, 1500)
	if err != nil {
		t.Fatalf("SetupPod with a new attachment: %v", err)
	}
	if err := CheckPod(p.path, "eth0", other); err != nil {
		t.Errorf("CheckPod new attachment: %v", err)
	}
	if link2.HostIfindex == link.HostIfindex {
		t.Error("pair was not replaced")
	}
	if out := run(t, "ip", "route", "show", "10.213.4.5"); strings.TrimSpace(out) != "" {
		t.Errorf("old host route left: %s", out)
	}
}

func TestTeardownPodAfterNetnsDeleted(t *testing.T) {
	p := newTestPod(t, 5)
	if _, err := SetupPod(p.containerID, p.path, "eth0", p.a, 1500); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "netns", "del", p.name)
	// The pair goes with the namespace, asynchronously.
	for i := 0; i < 100; i++ {
		if _, err := netlink.LinkByName(p.hostVeth()); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 2; i++ {
		if err := TeardownPod(p.path, "eth0", p.containerID); err != nil {
			t.Fatalf("TeardownPod #%d with the namespace gone: %v", i+1, err)
		}
	}
	if err := TeardownPod("", "eth0", p.containerID); err != nil {
		t.Fatalf("TeardownPod with no namespace path: %v", err)
	}
	p.assertGone(t)
}

func TestCheckPodReportsWhatIsWrong(t *testing.T) {
	p := newTestPod(t, 6)
	link, err := SetupPod(p.containerID, p.path, "eth0", p.a, 1500)
	if err != nil {
		t.Fatal(err)
	}
	where := "eth0 in " + p.path
	expect := func(want ...string) {
		t.Helper()
		err := CheckPod(p.path, "eth0", p.a)
		if err == nil {
			t.Fatalf("CheckPod found nothing wrong, want %q", want)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("CheckPod = %q\nwant it to say %q", err, w)
			}
		}
	}
	// Break one thing at a time; SetupPod repairs it each time (it replaces
	// a pair that does not match). Removing the last address also flushes
	// the pod's routes, so it comes first and alone.
	for _, tc := range []struct {
		breakIt []string
		want    []string
	}{
		{[]string{"ip", "-n", p.name, "addr", "del", "10.213.6.5/32", "dev", "eth0"},
			[]string{where + " has no address 10.213.6.5/32"}},
		{[]string{"ip", "-n", p.name, "route", "del", "default"},
			[]string{where + " has no default route via 169.254.1.1 dev eth0"}},
		{[]string{"ip", "-n", p.name, "route", "del", "169.254.1.1/32", "dev", "eth0"},
			[]string{where + " has no route 169.254.1.1/32 dev eth0 scope link"}},
		{[]string{"ip", "-n", p.name, "neigh", "del", "169.254.1.1", "dev", "eth0"},
			[]string{where + " has no neighbour entry 169.254.1.1 lladdr "}},
		{[]string{"ip", "route", "del", "10.213.6.5/32", "dev", link.HostVeth},
			[]string{"host namespace has no route 10.213.6.5/32 dev " + link.HostVeth}},
		{[]string{"ip", "-n", p.name, "link", "set", "eth0", "down"},
			[]string{where + " is down"}},
		{[]string{"ip", "netns", "exec", p.name, "ethtool", "-K", "eth0", "tx", "on"},
			[]string{where + " has TX checksum offload on, want off"}},
	} {
		if tc.breakIt[0] == "ip" && tc.breakIt[1] == "netns" {
			if _, err := exec.LookPath("ethtool"); err != nil {
				continue
			}
		}
		run(t, tc.breakIt...)
		expect(tc.want...)
		if link, err = SetupPod(p.containerID, p.path, "eth0", p.a, 1500); err != nil {
			t.Fatalf("SetupPod to repair %q: %v", tc.breakIt, err)
		}
		if err := CheckPod(p.path, "eth0", p.a); err != nil {
			t.Errorf("CheckPod after repairing %q: %v", tc.breakIt, err)
		}
	}

	other := p.a
	other.MAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 9}
	if err := CheckPod(p.path, "eth0", other); err == nil || !strings.Contains(err.Error(), where+" has MAC 02:00:0a:d5:06:05, want 02:00:00:00:00:09") {
		t.Errorf("CheckPod with another MAC = %v", err)
	}
	if err := CheckPod(p.path, "eth1", p.a); err == nil || err.Error() != "eth1 in "+p.path+" does not exist" {
		t.Errorf("CheckPod eth1 = %v", err)
	}
}

// TestNoLeaks runs whole cycles and checks that goroutines and file
// descriptors come back to where they were.
func TestNoLeaks(t *testing.T) {
	p := newTestPod(t, 7)
	cycle := func() {
		link, err := SetupPod(p.containerID, p.path, "eth0", p.a, 1500)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := SetupPod(p.containerID, p.path, "eth0", p.a, 1500); err != nil {
			t.Fatal(err)
		}
		if err := CheckPod(p.path, "eth0", p.a); err != nil {
			t.Fatal(err)
		}
		if _, err := Result("1.1.0", link, p.a, p.path, "eth0"); err != nil {
			t.Fatal(err)
		}
		if err := TeardownPod(p.path, "eth0", p.containerID); err != nil {
			t.Fatal(err)
		}
	}
	cycle() // warm up lazily opened package state
	g0, f0 := runtime.NumGoroutine(), countFDs(t)
	for range 5 {
		cycle()
	}
	var g1, f1 int
	for range 50 { // goroutines of the namespace helper may still be exiting
		if g1, f1 = runtime.NumGoroutine(), countFDs(t); g1 <= g0 && f1 <= f0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if g1 > g0 {
		t.Errorf("goroutines: %d before, %d after", g0, g1)
	}
	if f1 > f0 {
		t.Errorf("fds: %d before, %d after", f0, f1)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
