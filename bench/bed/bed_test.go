package bed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trunkline/trunkline/agent"
	"github.com/vishvananda/netlink"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"
)

// privileged skips a test that needs root, except under CI=true, where a
// privileged test must run.
func privileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (network namespaces, veths, BPF); CI=true forbids skipping")
	}
	t.Skip("needs root: network namespaces, veths, BPF")
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// upBed builds a bed in a private state dir and removes it when the test
// ends (Down is idempotent, so tests may call it themselves).
func upBed(t *testing.T, prefix string, pods int) *Bed {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	start := time.Now()
	b, err := Up(ctx, Options{Prefix: prefix, Pods: pods, StateDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("bed %s with %d pods up in %v", prefix, pods, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := b.Down(); err != nil {
			t.Errorf("Down: %v", err)
		}
	})
	return b
}

// ping pings dst from netns, for up to 3 s.
func ping(ctx context.Context, netns string, dst netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := Ping(ctx, netns, dst)
	return err
}

// noPing checks that dst does not answer netns within a second.
func noPing(t *testing.T, ctx context.Context, netns string, dst netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := Ping(ctx, netns, dst); !errors.Is(err, ErrNoReply) {
		t.Errorf("ping %s from %s: %v, want no reply", dst, netns, err)
	}
}

// --- pure tests ---

func TestAddressScheme(t *testing.T) {
	for _, c := range []struct {
		i       int
		ip, mac string
		hostMAC string
	}{
		{1, "10.100.1.1", "02:00:0a:64:01:01", "02:00:0a:65:00:01"},
		{2, "10.100.1.2", "02:00:0a:64:01:02", "02:00:0a:65:00:02"},
		{250, "10.100.1.250", "02:00:0a:64:01:fa", "02:00:0a:65:00:fa"},
		{251, "10.100.2.1", "02:00:0a:64:02:01", "02:00:0a:65:00:fb"},
		{256, "10.100.2.6", "02:00:0a:64:02:06", "02:00:0a:65:01:00"},
		{1000, "10.100.4.250", "02:00:0a:64:04:fa", "02:00:0a:65:03:e8"},
	} {
		b := newBed(Options{Prefix: "x", Pods: c.i, StateDir: "/s"})
		p := b.Pods[c.i-1]
		if p.IP.String() != c.ip || p.MAC.String() != c.mac || p.HostVethMAC.String() != c.hostMAC || p.VLAN != uint16(100+c.i) {
			t.Errorf("pod %d: ip %s mac %s host mac %s vlan %d; want %s %s %s %d", c.i, p.IP, p.MAC, p.HostVethMAC, p.VLAN, c.ip, c.mac, c.hostMAC, 100+c.i)
		}
		if p.Name != "pod"+itoa(c.i) || p.Netns != "x-pod"+itoa(c.i) || p.HostVeth != "hpod"+itoa(c.i) || p.Ifname != "eth0" {
			t.Errorf("pod %d names: %+v", c.i, p)
		}
	}
	// Every pod of the largest bed has its own IP, MAC, host MAC and VLAN,
	// inside the VPC and outside 10.100.0.0/24 (gateway, node).
	b := newBed(Options{Prefix: "x", Pods: MaxPods, StateDir: "/s"})
	seen := map[string]bool{}
	for _, p := range b.Pods {
		for _, k := range []string{p.IP.String(), p.MAC.String(), p.HostVethMAC.String(), "vlan" + itoa(int(p.VLAN))} {
			if seen[k] {
				t.Fatalf("%s: %s used twice", p.Name, k)
			}
			seen[k] = true
		}
		if !vpcPrefix.Contains(p.IP) || p.IP.As4()[2] == 0 || p.VLAN > 4094 {
			t.Fatalf("%s: ip %s vlan %d out of range", p.Name, p.IP, p.VLAN)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestOptionsValidation(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil || o.Prefix != "tl" || o.Pods != 3 || o.StateDir != "/run/trunkline-bed" || o.Logger == nil {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	_, err = Options{Prefix: "Bad-Prefix", Pods: MaxPods + 1, StateDir: "relative"}.withDefaults()
	if !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("err = %v, want ErrInvalidOptions", err)
	}
	for _, want := range []string{"prefix", "pods", "state dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not report %s", err, want)
		}
	}
	if _, err := Up(t.Context(), Options{Pods: -1}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("Up with bad options: %v", err)
	}
}

func TestLayoutAndConfig(t *testing.T) {
	b := newBed(Options{Prefix: "p", Pods: 2, StateDir: "/run/trunkline-bed"})
	data, err := json.Marshal(b.Layout())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	wantKeys := func(what string, m map[string]any, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if _, ok := m[k]; !ok {
				t.Errorf("%s: no key %q in %v", what, k, m)
			}
		}
	}
	wantKeys("layout", m, "prefix", "config", "wire", "node", "pods")
	wire := m["wire"].(map[string]any)
	wantKeys("wire", wire, "netns", "ifname", "ip", "mac", "outsideIP")
	wantKeys("node", m["node"].(map[string]any), "netns", "trunk", "ip")
	pod := m["pods"].([]any)[1].(map[string]any)
	wantKeys("pod", pod, "name", "netns", "ifname", "ip", "mac", "vlan", "hostVeth")
	if wire["ip"] != "10.100.0.1" || wire["mac"] != "02:00:0a:64:00:01" || wire["outsideIP"] != "198.18.0.1" || wire["netns"] != "p-wire" {
		t.Errorf("wire = %v", wire)
	}
	if pod["ip"] != "10.100.1.2" || pod["vlan"] != 102.0 || pod["mac"] != "02:00:0a:64:01:02" || pod["hostVeth"] != "hpod2" || pod["netns"] != "p-pod2" {
		t.Errorf("pod = %v", pod)
	}
	if m["config"] != "/run/trunkline-bed/p/trunkline.yaml" {
		t.Errorf("config = %v", m["config"])
	}

	// The layout round-trips through the state file's format.
	var l Layout
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatal(err)
	}
	back, err := l.bed()
	if err != nil {
		t.Fatal(err)
	}
	back.stateDir = b.stateDir
	if got, want := mustJSON(back.Layout()), data; !bytes.Equal(got, want) {
		t.Errorf("round trip:\n got %s\nwant %s", got, want)
	}

	// The agent's config, byte for byte, and as YAML.
	want := "# written by `trunkline bed up`; run the agent inside netns p-node\n" +
		"trunk: trunk\n" +
		"nodeIP: 10.100.0.2\n" +
		"gatewayMAC: \"02:00:0a:64:00:01\"\n" +
		"queues: 1\n" +
		"xdpMode: native\n" +
		"apiSocket: /run/trunkline-bed/p/trunkline.sock\n" +
		"pods:\n" +
		"  - name: pod1\n" +
		"    vlan: 101\n" +
		"    ip: 10.100.1.1\n" +
		"    mac: \"02:00:0a:64:01:01\"\n" +
		"    hostVeth: hpod1\n" +
		"  - name: pod2\n" +
		"    vlan: 102\n" +
		"    ip: 10.100.1.2\n" +
		"    mac: \"02:00:0a:64:01:02\"\n" +
		"    hostVeth: hpod2\n" +
		"gatewayIP: 10.100.0.1\n" +
		"registryFile: /run/trunkline-bed/p/registry.json\n" +
		"branches:\n" +
		"  - {vlan: 2001, ip: 10.100.200.1, mac: \"02:00:0a:64:c8:01\"}\n"
	if got := b.agentConfig(); !strings.HasPrefix(got, want) {
		t.Errorf("config:\n%s\nwant it to start with:\n%s", got, want)
	}
	// The agent accepts it.
	cfgPath := filepath.Join(t.TempDir(), "trunkline.yaml")
	os.WriteFile(cfgPath, []byte(b.agentConfig()), 0o644)
	ac, err := agent.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.New(ac, agent.Options{}); err != nil {
		t.Errorf("the agent rejects the bed's config: %v", err)
	}
	if len(ac.Services) != len(bedServices()) || len(ac.Services[0].Backends) != 2 {
		t.Errorf("config services: %+v", ac.Services)
	}
	var cfg struct {
		Trunk      string `yaml:"trunk"`
		NodeIP     string `yaml:"nodeIP"`
		GatewayMAC string `yaml:"gatewayMAC"`
		Queues     int    `yaml:"queues"`
		XDPMode    string `yaml:"xdpMode"`
		APISocket  string `yaml:"apiSocket"`
		Pods       []struct {
			Name     string `yaml:"name"`
			VLAN     int    `yaml:"vlan"`
			IP       string `yaml:"ip"`
			MAC      string `yaml:"mac"`
			HostVeth string `yaml:"hostVeth"`
		} `yaml:"pods"`
	}
	if err := yaml.Unmarshal([]byte(b.agentConfig()), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.GatewayMAC != "02:00:0a:64:00:01" || cfg.Queues != 1 || len(cfg.Pods) != 2 || cfg.Pods[1].VLAN != 102 || cfg.Pods[1].MAC != "02:00:0a:64:01:02" {
		t.Errorf("config as YAML: %+v", cfg)
	}
	if got := yamlString("/a dir/x: y"); got != `"/a dir/x: y"` {
		t.Errorf("yamlString quotes %q", got)
	}
}

func TestChecksum(t *testing.T) {
	// An echo request whose checksum is known (id 1, seq 1, no payload).
	msg := []byte{8, 0, 0, 0, 0, 1, 0, 1}
	if got := icmpChecksum(msg); got != 0xf7fd {
		t.Fatalf("checksum %#04x, want 0xf7fd", got)
	}
}

// --- privileged tests ---

// TestBed builds one bed and walks through it: layout, namespaces and links,
// the wire's tagging (seen in the bytes on the trunk), the kernel path, and
// Down.
func TestBed(t *testing.T) {
	privileged(t)
	b := upBed(t, "tbed1", 3)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	t.Run("state", func(t *testing.T) {
		loaded, err := Load(b.Prefix, b.stateDir)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := mustJSON(loaded.Layout()), mustJSON(b.Layout()); !bytes.Equal(got, want) {
			t.Errorf("Load:\n got %s\nwant %s", got, want)
		}
		if _, err := Load("nosuch", b.stateDir); !errors.Is(err, ErrNotFound) {
			t.Errorf("Load of a missing bed: %v", err)
		}
		cfg, err := os.ReadFile(b.ConfigPath)
		if err != nil || string(cfg) != b.agentConfig() {
			t.Errorf("config file: %v\n%s", err, cfg)
		}
		if b.ConfigPath != filepath.Join(b.stateDir, "tbed1", "trunkline.yaml") {
			t.Errorf("ConfigPath %s", b.ConfigPath)
		}
		if _, err := Up(ctx, Options{Prefix: b.Prefix, StateDir: b.stateDir}); !errors.Is(err, ErrExists) {
			t.Errorf("second Up with the same prefix: %v", err)
		}
		if _, err := Up(ctx, Options{Prefix: b.Prefix, StateDir: t.TempDir()}); !errors.Is(err, ErrExists) {
			t.Errorf("Up with the same prefix in another state dir: %v", err)
		}
	})

	t.Run("links", func(t *testing.T) { checkLinks(t, ctx, b) })

	t.Run("node reaches pods", func(t *testing.T) {
		for _, p := range b.Pods {
			if err := ping(ctx, b.Node.Netns, p.IP); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("wire tags frames in their bytes", func(t *testing.T) {
		c, err := attachTagCounter(b.Node.Netns, b.Node.Trunk)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		pod2 := b.Pods[1]

		// No agent: the wire's ARP for pod2 arrives tagged 102 and the
		// node's kernel drops it.
		before := counts(t, c)
		noPing(t, ctx, b.Wire.Netns, pod2.IP)
		d := counts(t, c).minus(before)
		t.Logf("frames on the trunk: %v", d)
		if d[pod2.VLAN][frameARP] == 0 {
			t.Errorf("no ARP frame tagged %d arrived", pod2.VLAN)
		}
		for vid, n := range d {
			if vid != pod2.VLAN && n[frameARP]+n[frameIPv4] > 0 {
				t.Errorf("unexpected frames with vid %d (4096 = untagged): %v", vid, n)
			}
		}

		// Frames for the node's own IP leave the wire untagged.
		before = counts(t, c)
		if err := ping(ctx, b.Wire.Netns, b.Node.IP); err != nil {
			t.Fatalf("ping the node from the wire: %v", err)
		}
		d = counts(t, c).minus(before)
		if d[untagged][frameIPv4] == 0 {
			t.Errorf("frames for the node IP: %v, want untagged IPv4", d)
		}
		for vid, n := range d {
			// The wire may still be retrying its ARP for pod2 (tagged).
			if vid != untagged && (n[frameIPv4] > 0 || vid != pod2.VLAN && n[frameARP] > 0) {
				t.Errorf("frames for the node IP: %v, want untagged IPv4 only (besides ARP retries for pod2)", d)
			}
		}

		// The kernel fact the bed is built around: with TX VLAN offload on,
		// the tag tc pushes stays in skb metadata across the veth, and XDP
		// on the trunk sees an untagged frame.
		if _, err := Run(ctx, "ip", "netns", "exec", b.Wire.Netns, "ethtool", "-K", "wire", "txvlan", "on"); err != nil {
			t.Fatal(err)
		}
		before = counts(t, c)
		noPing(t, ctx, b.Wire.Netns, b.Pods[2].IP)
		d = counts(t, c).minus(before)
		if err := ethtoolOff(ctx, b.Wire.Netns, "wire", "txvlan"); err != nil {
			t.Fatal(err)
		}
		t.Logf("with txvlan on: %v", d)
		if d[b.Pods[2].VLAN][frameARP] != 0 || d[untagged][frameARP] == 0 {
			t.Errorf("with txvlan on, XDP saw %v; expected the tag hidden in metadata (untagged ARP)", d)
		}
	})

	t.Run("steer the VPC", func(t *testing.T) {
		rps := func() uint64 {
			t.Helper()
			out, err := Run(ctx, "ip", "netns", "exec", b.Wire.Netns, "cat", "/sys/class/net/"+b.Wire.Ifname+"/queues/rx-0/rps_cpus")
			if err != nil {
				t.Fatal(err)
			}
			v, err := strconv.ParseUint(strings.ReplaceAll(strings.TrimSpace(out), ",", ""), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		if err := b.SteerVPC(runtime.NumCPU()); err == nil {
			t.Error("SteerVPC to a CPU this machine lacks: no error")
		}
		cpu := runtime.NumCPU() - 1
		if err := b.SteerVPC(cpu); err != nil {
			t.Fatal(err)
		}
		if got := rps(); got != 1<<cpu {
			t.Errorf("rps_cpus after SteerVPC(%d) = %#x", cpu, got)
		}
		// Frames still reach the wire with its receive steered.
		if err := ping(ctx, b.Node.Netns, b.Wire.IP); err != nil {
			t.Error(err)
		}
		if err := b.UnsteerVPC(); err != nil {
			t.Fatal(err)
		}
		if got := rps(); got != 0 {
			t.Errorf("rps_cpus after UnsteerVPC = %#x", got)
		}
	})

	t.Run("kernel path", func(t *testing.T) {
		if err := b.EnableKernelPath(); err != nil {
			t.Fatal(err)
		}
		if err := b.EnableKernelPath(); err != nil { // replaces, does not stack
			t.Fatal(err)
		}
		if got := readSysctl(t, b.Node.Netns, "net.ipv4.ip_forward"); got != "1" {
			t.Errorf("ip_forward = %s", got)
		}
		for _, p := range b.Pods {
			if err := ping(ctx, b.Wire.Netns, p.IP); err != nil {
				t.Errorf("wire → %s: %v", p.Name, err)
			}
			if err := ping(ctx, p.Netns, b.Wire.IP); err != nil {
				t.Errorf("%s → gateway: %v", p.Name, err)
			}
			if err := ping(ctx, p.Netns, b.Wire.OutsideIP); err != nil {
				t.Errorf("%s → outside: %v", p.Name, err)
			}
		}

		// What the wire sends a pod arrives tagged in the bytes, IPv4 too.
		c, err := attachTagCounter(b.Node.Netns, b.Node.Trunk)
		if err != nil {
			t.Fatal(err)
		}
		before := counts(t, c)
		if err := ping(ctx, b.Wire.Netns, b.Pods[1].IP); err != nil {
			t.Error(err)
		}
		d := counts(t, c).minus(before)
		c.Close()
		if d[b.Pods[1].VLAN][frameIPv4] == 0 || d[untagged][frameIPv4] != 0 {
			t.Errorf("frames for pod2 arriving on the trunk: %v, want IPv4 tagged %d", d, b.Pods[1].VLAN)
		}

		// The trunk's egress program tags by source pod, in the bytes.
		c, err = attachTagCounter(b.Wire.Netns, b.Wire.Ifname)
		if err != nil {
			t.Fatal(err)
		}
		before = counts(t, c)
		if err := ping(ctx, b.Pods[0].Netns, b.Wire.IP); err != nil {
			t.Error(err)
		}
		d = counts(t, c).minus(before)
		c.Close()
		if d[b.Pods[0].VLAN][frameIPv4] == 0 || d[untagged][frameIPv4] != 0 {
			t.Errorf("frames from pod1 arriving on the wire: %v, want IPv4 tagged %d", d, b.Pods[0].VLAN)
		}

		// TCP both ways, with enough data to need many segments.
		tcpEcho(t, ctx, b.Pods[1].Netns, netip.AddrPortFrom(b.Pods[1].IP, 7070), b.Wire.Netns)
		tcpEcho(t, ctx, b.Wire.Netns, netip.AddrPortFrom(b.Wire.IP, 7071), b.Pods[2].Netns)

		if err := b.DisableKernelPath(); err != nil {
			t.Fatal(err)
		}
		if err := b.DisableKernelPath(); err != nil {
			t.Fatalf("second DisableKernelPath: %v", err)
		}
		if got := readSysctl(t, b.Node.Netns, "net.ipv4.ip_forward"); got != "0" {
			t.Errorf("ip_forward = %s after disable", got)
		}
		if got := readSysctl(t, b.Node.Netns, "net.ipv4.conf.trunk.proxy_arp"); got != "0" {
			t.Errorf("proxy_arp = %s after disable", got)
		}
		out, err := Run(ctx, "ip", "netns", "exec", b.Node.Netns, "tc", "qdisc", "show", "dev", "trunk")
		if err != nil || strings.Contains(out, "clsact") {
			t.Errorf("trunk qdiscs after disable: %q %v", out, err)
		}
		noPing(t, ctx, b.Wire.Netns, b.Pods[0].IP)
		if err := ping(ctx, b.Node.Netns, b.Pods[0].IP); err != nil {
			t.Errorf("node → pod1 after disable: %v", err)
		}
	})

	t.Run("down", func(t *testing.T) {
		// A process left in a namespace is killed.
		sleeper := b.Command(ctx, b.Pods[0].Netns, "sleep", "60")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- sleeper.Wait() }()
		// `ip netns exec` enters the namespace after it starts: wait until
		// the sleeper is there, or Down could look before it arrives.
		inNetns(t, sleeper.Process.Pid, b.Pods[0].Netns)
		if err := b.Down(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			t.Error("process in the pod namespace survived Down")
		}
		checkGone(t, b)
		if err := b.Down(); err != nil {
			t.Errorf("second Down: %v", err)
		}
	})
}

// checkLinks checks the namespaces, links, addresses, routes, neighbours,
// offloads and sysctls Up made.
func checkLinks(t *testing.T, ctx context.Context, b *Bed) {
	for _, ns := range b.Netns() {
		if !netnsExists(ns) {
			t.Errorf("netns %s missing", ns)
		}
		withHandle(ns, func(h *netlink.Handle) error {
			if lo, err := h.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s: lo not up (%v)", ns, err)
			}
			return nil
		})
		if got := readSysctl(t, ns, "net.ipv4.ip_forward"); got != "0" {
			t.Errorf("%s: ip_forward %s", ns, got)
		}
	}
	// Interface names stay inside the bed's namespaces.
	for _, name := range []string{"wire", "trunk", "hpod1"} {
		if _, err := net.InterfaceByName(name); err == nil {
			t.Errorf("%s exists in the root namespace", name)
		}
	}

	withHandle(b.Wire.Netns, func(h *netlink.Handle) error {
		checkLink(t, h, b.Wire.Netns, b.Wire.Ifname, b.Wire.MAC, "10.100.0.1/16")
		checkLink(t, h, b.Wire.Netns, "lo", nil, "198.18.0.1/32")
		return nil
	})
	withHandle(b.Node.Netns, func(h *netlink.Handle) error {
		trunk := checkLink(t, h, b.Node.Netns, b.Node.Trunk, b.Node.TrunkMAC, "10.100.0.2/16")
		if trunk != nil && trunk.Attrs().NumTxQueues != 1 {
			t.Errorf("trunk has %d tx queues, config says 1", trunk.Attrs().NumTxQueues)
		}
		for _, p := range b.Pods {
			l := checkLink(t, h, b.Node.Netns, p.HostVeth, p.HostVethMAC)
			if l == nil {
				continue
			}
			routes, err := h.RouteList(l, unix.AF_INET)
			if err != nil || len(routes) != 1 || routes[0].Dst.String() != p.IP.String()+"/32" || routes[0].Scope != netlink.SCOPE_LINK {
				t.Errorf("node routes on %s: %v %v", p.HostVeth, routes, err)
			}
		}
		return nil
	})
	for _, p := range b.Pods {
		withHandle(p.Netns, func(h *netlink.Handle) error {
			l := checkLink(t, h, p.Netns, p.Ifname, p.MAC, p.IP.String()+"/32")
			if l == nil {
				return nil
			}
			routes, _ := h.RouteList(l, unix.AF_INET)
			var got []string
			for _, r := range routes {
				got = append(got, r.String())
			}
			if len(routes) != 2 || !slices.ContainsFunc(routes, func(r netlink.Route) bool {
				return r.Dst != nil && r.Dst.String() == "10.100.0.1/32" && r.Scope == netlink.SCOPE_LINK
			}) || !slices.ContainsFunc(routes, func(r netlink.Route) bool {
				return (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == "10.100.0.1"
			}) {
				t.Errorf("%s routes: %v", p.Name, got)
			}
			neighs, _ := h.NeighList(l.Attrs().Index, unix.AF_INET)
			if !slices.ContainsFunc(neighs, func(n netlink.Neigh) bool {
				return n.IP.String() == "10.100.0.1" && n.State == netlink.NUD_PERMANENT && n.HardwareAddr.String() == p.HostVethMAC.String()
			}) {
				t.Errorf("%s: no permanent neighbour 10.100.0.1 → %s: %v", p.Name, p.HostVethMAC, neighs)
			}
			return nil
		})
	}

	for _, c := range []struct {
		netns, ifname string
		off           []string
	}{
		{b.Wire.Netns, "wire", []string{"tx-checksumming", "tx-vlan-offload"}},
		{b.Node.Netns, "trunk", []string{"rx-vlan-offload", "tx-vlan-offload"}},
		{b.Pods[0].Netns, "eth0", []string{"tx-checksumming"}},
		{b.Pods[2].Netns, "eth0", []string{"tx-checksumming"}},
	} {
		out, err := Run(ctx, "ip", "netns", "exec", c.netns, "ethtool", "-k", c.ifname)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, f := range c.off {
			if !strings.Contains(out, "\n"+f+": off") {
				t.Errorf("%s/%s: %s not off", c.netns, c.ifname, f)
			}
		}
	}

	out, err := Run(ctx, "ip", "netns", "exec", b.Wire.Netns, "tc", "filter", "show", "dev", "wire", "egress")
	if err != nil || !strings.Contains(out, "wire_egress") || !strings.Contains(out, "direct-action") {
		t.Errorf("wire egress filter: %q %v", out, err)
	}
	out, err = Run(ctx, "ip", "netns", "exec", b.Wire.Netns, "tc", "filter", "show", "dev", "wire", "ingress")
	if err != nil || !strings.Contains(out, "pop_ingress") {
		t.Errorf("wire ingress filter: %q %v", out, err)
	}
}

// checkLink checks that a link is up with the MAC (if not nil) and addresses.
func checkLink(t *testing.T, h *netlink.Handle, netns, name string, mac net.HardwareAddr, addrs ...string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Errorf("%s/%s: %v", netns, name, err)
		return nil
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s/%s is down", netns, name)
	}
	if mac != nil && l.Attrs().HardwareAddr.String() != mac.String() {
		t.Errorf("%s/%s MAC %s, want %s", netns, name, l.Attrs().HardwareAddr, mac)
	}
	got, err := h.AddrList(l, unix.AF_INET)
	if err != nil {
		t.Error(err)
	}
	for _, want := range addrs {
		if !slices.ContainsFunc(got, func(a netlink.Addr) bool { return a.IPNet.String() == want }) {
			t.Errorf("%s/%s has no %s: %v", netns, name, want, got)
		}
	}
	return l
}

func readSysctl(t *testing.T, netns, key string) string {
	t.Helper()
	var v []byte
	err := InNetns(netns, func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

func counts(t *testing.T, c *tagCounter) tagCounts {
	t.Helper()
	n, err := c.counts()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// minus is the difference from an earlier snapshot, without empty entries.
func (a tagCounts) minus(b tagCounts) tagCounts {
	d := tagCounts{}
	for vid, n := range a {
		var m [frameKinds]uint64
		any := false
		for k := range n {
			m[k] = n[k] - b[vid][k]
			any = any || m[k] != 0
		}
		if any {
			d[vid] = m
		}
	}
	return d
}

// tcpEcho listens on addr in serverNs, dials it from clientNs, sends 1 MiB
// and checks it comes back.
func tcpEcho(t *testing.T, ctx context.Context, serverNs string, addr netip.AddrPort, clientNs string) {
	t.Helper()
	var ln net.Listener
	if err := InNetns(serverNs, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(20 * time.Second)
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		c.SetDeadline(deadline)
		_, err = io.Copy(c, c)
		served <- err
	}()

	var conn net.Conn
	if err := InNetns(clientNs, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "tcp4", addr.String())
		return err
	}); err != nil {
		t.Fatalf("dial %s from %s: %v", addr, clientNs, err)
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	sent := bytes.Repeat([]byte("trunkline-bed "), 1<<20/14)
	wrote := make(chan error, 1)
	go func() {
		_, err := conn.Write(sent)
		if err == nil {
			err = conn.(*net.TCPConn).CloseWrite()
		}
		wrote <- err
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("tcp %s → %s: %v", clientNs, addr, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent) {
		t.Fatalf("tcp %s → %s: got %d bytes back, sent %d", clientNs, addr, len(got), len(sent))
	}
}

// checkGone checks that no namespace of the bed and no state dir is left.
func checkGone(t *testing.T, b *Bed) {
	t.Helper()
	left, err := b.leftoverNetns()
	if err != nil || len(left) > 0 {
		t.Errorf("namespaces left: %v %v", left, err)
	}
	if _, err := os.Stat(b.Dir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state dir %s left: %v", b.Dir(), err)
	}
}

func TestSweepAfterCrash(t *testing.T) {
	privileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := t.TempDir()

	// A run that "crashed": the bed is up, a process still runs in it, and
	// nobody holds the *Bed.
	crashed := func(prefix string) (*Bed, chan error) {
		b, err := Up(ctx, Options{Prefix: prefix, Pods: 2, StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Down() })
		cmd := b.Command(ctx, b.Wire.Netns, "sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		return &Bed{Prefix: b.Prefix, stateDir: b.stateDir, Pods: b.Pods, Wire: b.Wire, Node: b.Node}, waited
	}

	b, waited := crashed("tbed2")
	if err := Sweep(dir, "tbed2"); err != nil {
		t.Fatal(err)
	}
	checkGone(t, b)
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Error("process in the wire namespace survived Sweep")
	}

	// Sweep of everything in the state dir; a namespace of the prefix that
	// the state file does not name (left by a run with more pods) goes too.
	b3, waited3 := crashed("tbed3")
	if err := addNetns(ctx, "tbed3-pod9"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNetns(context.Background(), "tbed3-pod9") })
	b4, _ := crashed("tbed4")
	if err := Sweep(dir, ""); err != nil {
		t.Fatal(err)
	}
	checkGone(t, b3)
	checkGone(t, b4)
	if netnsExists("tbed3-pod9") {
		t.Error("tbed3-pod9 survived Sweep")
	}
	<-waited3
	if err := Sweep(dir, ""); err != nil {
		t.Errorf("second Sweep: %v", err)
	}
	if err := Sweep(filepath.Join(dir, "nosuch"), ""); err != nil {
		t.Errorf("Sweep of a missing state dir: %v", err)
	}
}

func TestUpFailureCleansUp(t *testing.T) {
	privileged(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // the first command Up runs fails
	_, err := Up(ctx, Options{Prefix: "tbed5", Pods: 1, StateDir: dir})
	if err == nil {
		t.Fatal("Up with a cancelled context succeeded")
	}
	if !strings.Contains(err.Error(), "wire and node") {
		t.Errorf("error does not name the step: %v", err)
	}
	checkGone(t, &Bed{Prefix: "tbed5", stateDir: dir})
}

func TestTwoBeds(t *testing.T) {
	privileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	a := upBed(t, "tbed6", 2)
	b := upBed(t, "tbed7", 2)
	for _, bed := range []*Bed{a, b} {
		if err := bed.EnableKernelPath(); err != nil {
			t.Fatal(err)
		}
		for _, p := range bed.Pods {
			if err := ping(ctx, bed.Wire.Netns, p.IP); err != nil {
				t.Errorf("%s: wire → %s: %v", bed.Prefix, p.Name, err)
			}
		}
	}
	if err := a.Down(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, a)
	for _, p := range b.Pods {
		if err := ping(ctx, b.Wire.Netns, p.IP); err != nil {
			t.Errorf("%s after the other bed went: wire → %s: %v", b.Prefix, p.Name, err)
		}
	}
}

// TestNoLeaks runs bed cycles and checks that goroutines and file
// descriptors come back to where they were.
func TestNoLeaks(t *testing.T) {
	privileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cycle := func() {
		b, err := Up(ctx, Options{Prefix: "tbed8", Pods: 2, StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Down()
		if err := b.EnableKernelPath(); err != nil {
			t.Fatal(err)
		}
		if err := ping(ctx, b.Pods[0].Netns, b.Wire.IP); err != nil {
			t.Error(err)
		}
		tcpEcho(t, ctx, b.Pods[1].Netns, netip.AddrPortFrom(b.Pods[1].IP, 7072), b.Wire.Netns)
		c, err := attachTagCounter(b.Node.Netns, b.Node.Trunk)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := b.DisableKernelPath(); err != nil {
			t.Error(err)
		}
		if err := b.Down(); err != nil {
			t.Fatal(err)
		}
	}
	cycle() // warm up lazily started runtime and library goroutines
	// No GC while measuring: finalizers would close descriptors that the
	// code forgot to close and hide the leak.
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	goroutines, fds, targets := runtime.NumGoroutine(), openFDs(t), fdTargets(t)
	for range 2 {
		cycle()
	}
	var g, f int
	for range 50 {
		if g, f = runtime.NumGoroutine(), openFDs(t); g <= goroutines && f <= fds {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("leak: goroutines %d → %d, fds %d → %d\nbefore %v\nafter  %v", goroutines, g, fds, f, targets, fdTargets(t))
}

// openFDs counts the descriptors the bed could leak: everything but pipes,
// which belong to os/exec while a command runs (and, under -race, to the race
// runtime, which keeps a pair of its own open at times).
func openFDs(t *testing.T) int {
	n := 0
	for _, target := range fdTargets(t) {
		if !strings.Contains(target, "→pipe:") {
			n++
		}
	}
	return n
}

// fdTargets lists what this process's file descriptors point at.
func fdTargets(t *testing.T) []string {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own descriptor, closed by now
		}
		out = append(out, e.Name()+"→"+target)
	}
	return out
}

// inNetns waits (bounded) until process pid has exec'd into netns.
func inNetns(t *testing.T, pid int, netns string) {
	t.Helper()
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", netns), &want); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var got unix.Stat_t
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &got) == nil && got.Ino == want.Ino && got.Dev == want.Dev &&
			strings.TrimSpace(string(comm)) != "ip" {
			return
		}
	}
	t.Fatalf("process %d did not enter %s within 5s", pid, netns)
}

func TestCPUMask(t *testing.T) {
	for cpu, want := range map[int]string{0: "1", 1: "2", 5: "20", 31: "80000000", 32: "1,00000000", 65: "2,00000000,00000000"} {
		if got := cpuMask(cpu); got != want {
			t.Errorf("cpuMask(%d) = %q, want %q", cpu, got, want)
		}
	}
}
