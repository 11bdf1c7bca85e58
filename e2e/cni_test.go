package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/cni"
	"github.com/trunkline/trunkline/internal/privtest"
)

// cniRuntime runs the trunkline-cni binary as a container runtime does:
// CNI_* in the environment, the plugin's configuration on stdin, in the
// node's network namespace (where kubelet runs).
type cniRuntime struct {
	t      *testing.T
	plugin string
	node   string // netns
	conf   map[string]any
}

// cniRun is one plugin run's outcome.
type cniRun struct {
	stdout, stderr string
	err            error
}

// cniError decodes the error a failed run printed on stdout.
func (r cniRun) cniError() types.Error {
	var e types.Error
	json.Unmarshal([]byte(r.stdout), &e)
	return e
}

// binDir is the repository's bin/, where `make deps` installs cnitool and
// the reference host-local IPAM plugin.
func binDir() string {
	d, _ := filepath.Abs("../bin")
	return d
}

// newCNIRuntime builds the plugin and runs it for bed b's node.
func newCNIRuntime(t *testing.T, b *bed.Bed) *cniRuntime {
	t.Helper()
	return &cniRuntime{t: t, plugin: buildPlugin(t), node: b.Node.Netns, conf: map[string]any{
		"cniVersion": "1.1.0", "name": "trunkline", "type": "trunkline-cni", "agentSocket": b.APISocket(),
	}}
}

func (c *cniRuntime) run(command, containerID, netns string, prevResult json.RawMessage) cniRun {
	c.t.Helper()
	conf := map[string]any{}
	for k, v := range c.conf {
		conf[k] = v
	}
	if prevResult != nil {
		conf["prevResult"] = prevResult
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", c.node, c.plugin)
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command,
		"CNI_CONTAINERID="+containerID,
		"CNI_NETNS="+netns,
		"CNI_IFNAME=eth0",
		"CNI_PATH="+filepath.Dir(c.plugin)+":"+binDir(),
	)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return cniRun{stdout: out.String(), stderr: errOut.String(), err: err}
}

// must runs a command that has to succeed and returns its stdout.
func (c *cniRuntime) must(command, containerID, netns string, prevResult json.RawMessage) string {
	c.t.Helper()
	r := c.run(command, containerID, netns, prevResult)
	if r.err != nil {
		c.t.Fatalf("CNI %s %s: %v\nstdout: %s\nstderr: %s", command, containerID, r.err, r.stdout, r.stderr)
	}
	return r.stdout
}

func TestCNIPlugin(t *testing.T) {
	prefix := fmt.Sprintf("tlcni%d", os.Getpid()%10000)
	e := newEnv(t, prefix, 1)
	b := e.b
	a := e.startAgent()

	rt := newCNIRuntime(t, b)
	podNS := privtest.Netns(t, prefix+"-cnipod")
	podPath := "/var/run/netns/" + podNS
	const cid = "e2e-cni-pod-1"
	hostVeth := cni.HostVethName(cid, "eth0")
	vethExists := func(name string) bool {
		return exec.Command("ip", "-n", b.Node.Netns, "link", "show", name).Run() == nil
	}

	if got := rt.must("VERSION", "", "", nil); !strings.Contains(got, `"1.1.0"`) || !strings.Contains(got, `"0.4.0"`) {
		t.Errorf("VERSION = %s", got)
	}
	rt.must("STATUS", "", "", nil)

	// ADD: the pod gets the pool's first branch.
	branch := b.Branches[0]
	podAddr := netip.PrefixFrom(branch.IP, 32)
	first := rt.must("ADD", cid, podPath, nil)
	var res types100.Result
	if err := json.Unmarshal([]byte(first), &res); err != nil {
		t.Fatalf("ADD result %q: %v", first, err)
	}
	if res.CNIVersion != "1.1.0" || len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostVeth ||
		res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != podPath {
		t.Errorf("ADD interfaces: %s", first)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != podAddr.String() || res.IPs[0].Gateway.String() != b.Wire.IP.String() {
		t.Errorf("ADD ips: %s; want %s via %s", first, podAddr, b.Wire.IP)
	}
	if res.Interfaces[1].Mac != branch.MAC.String() {
		t.Errorf("pod MAC %s, want the branch's %s", res.Interfaces[1].Mac, branch.MAC)
	}
	reg, err := cni.NewClient(b.APISocket()).Get(t.Context(), cid, "eth0")
	if err != nil || reg.VLAN != branch.VLAN || reg.State != cni.StateAttached || reg.HostVeth != hostVeth {
		t.Errorf("agent's registration = %+v, %v; want VLAN %d attached on %s", reg, err, branch.VLAN, hostVeth)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("ADD routes: %s", first)
	}
	out := privtest.Run(t, "ip", "-n", b.Node.Netns, "-d", "link", "show", hostVeth)
	if !strings.Contains(out, "prog/xdp") {
		t.Errorf("the agent has no XDP program on %s after ADD:\n%s", hostVeth, out)
	}

	t.Run("the pod reaches the VPC gateway through the agent", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if _, err := bed.Ping(ctx, podNS, b.Wire.IP); err != nil {
			t.Errorf("ping %s from the pod: %v", b.Wire.IP, err)
		}
		var l net.Listener
		if err := bed.InNetns(b.Wire.Netns, func() (err error) {
			l, err = net.Listen("tcp", netip.AddrPortFrom(b.Wire.IP, 0).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		peer := make(chan string, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				peer <- err.Error()
				return
			}
			defer c.Close()
			io.Copy(c, c)
			peer <- c.RemoteAddr().String()
		}()
		c := dial(t, podNS, "tcp", netip.MustParseAddrPort(l.Addr().String()))
		c.SetDeadline(time.Now().Add(3 * time.Second))
		msg := []byte("hello from a CNI pod")
		c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo through the gateway: %q, %v", got, err)
		}
		c.Close()
		if p := <-peer; !strings.HasPrefix(p, branch.IP.String()+":") {
			t.Errorf("the gateway saw the pod as %s; want %s", p, branch.IP)
		}
	})

	t.Run("ADD again gives the same result", func(t *testing.T) {
		if again := rt.must("ADD", cid, podPath, nil); again != first {
			t.Errorf("second ADD:\n%s\nfirst:\n%s", again, first)
		}
	})

	t.Run("CHECK passes, and fails precisely when the pod is broken", func(t *testing.T) {
		rt.must("CHECK", cid, podPath, json.RawMessage(first))
		privtest.Run(t, "ip", "-n", podNS, "route", "del", "default")
		r := rt.run("CHECK", cid, podPath, json.RawMessage(first))
		if r.err == nil || !strings.Contains(r.stdout, "default") {
			t.Errorf("CHECK without the default route: %v\n%s", r.err, r.stdout)
		}
		rt.must("ADD", cid, podPath, nil) // repairs
		rt.must("CHECK", cid, podPath, json.RawMessage(first))
	})

	t.Run("DEL twice", func(t *testing.T) {
		rt.must("DEL", cid, podPath, json.RawMessage(first))
		rt.must("DEL", cid, podPath, json.RawMessage(first))
		if vethExists(hostVeth) {
			t.Errorf("host veth %s still exists after DEL", hostVeth)
		}
		if out := privtest.Run(t, "ip", "-n", podNS, "-br", "link"); strings.Contains(out, "eth0") {
			t.Errorf("pod interface left after DEL:\n%s", out)
		}
		r := rt.run("CHECK", cid, podPath, json.RawMessage(first))
		if r.err == nil {
			t.Error("CHECK passed after DEL")
		}
	})

	t.Run("an MTU whose frames do not fit the agent's UMEM frames: ADD fails saying so, and leaves nothing", func(t *testing.T) {
		const cidBig = "e2e-cni-pod-jumbo"
		rt.conf["mtu"] = 9000 // the bed's agent has 2 KiB frames: MTU 1774 at most
		r := rt.run("ADD", cidBig, podPath, nil)
		delete(rt.conf, "mtu")
		if r.err == nil {
			t.Fatalf("ADD with MTU 9000 succeeded: %s", r.stdout)
		}
		msg := r.cniError().Msg + ": " + r.cniError().Details
		if !strings.Contains(msg, "MTU 9000") || !strings.Contains(msg, "umem.frameSize") {
			t.Errorf("ADD's error does not name the MTU and the frame size: %s %s", r.stdout, r.stderr)
		}
		t.Logf("ADD with MTU 9000: %s", msg)
		if vethExists(cni.HostVethName(cidBig, "eth0")) {
			t.Error("the failed ADD left its host veth")
		}
		if out := privtest.Run(t, "ip", "-n", podNS, "-br", "link"); strings.Contains(out, "eth0") {
			t.Errorf("the failed ADD left the pod's interface:\n%s", out)
		}
		if _, err := cni.NewClient(b.APISocket()).Get(t.Context(), cidBig, "eth0"); err == nil {
			t.Error("the agent still holds a registration for the failed ADD")
		}
		rt.must("DEL", cidBig, podPath, nil) // what a runtime does after a failed ADD
	})

	t.Run("agent stopped: STATUS says plugin not available, ADD try again later, DEL succeeds", func(t *testing.T) {
		const cid2 = "e2e-cni-pod-2"
		second := rt.must("ADD", cid2, podPath, nil)
		if _, err := a.Stop(2 * time.Second); err != nil {
			t.Errorf("agent exit: %v", err)
		}
		r := rt.run("STATUS", "", "", nil)
		if r.err == nil || r.cniError().Code != types.ErrPluginNotAvailable {
			t.Errorf("STATUS with the agent stopped: %v\n%s", r.err, r.stdout)
		}
		r = rt.run("ADD", "e2e-cni-pod-3", podPath, nil)
		if r.err == nil || r.cniError().Code != types.ErrTryAgainLater || !strings.Contains(r.stdout, "is the DaemonSet running?") {
			t.Errorf("ADD with the agent stopped: %v\n%s", r.err, r.stdout)
		}
		rt.must("DEL", cid2, podPath, json.RawMessage(second))
		rt.must("DEL", cid2, podPath, json.RawMessage(second))
		if vethExists(cni.HostVethName(cid2, "eth0")) {
			t.Error("host veth still exists after DEL with the agent stopped")
		}
	})
}

// TestCNIPodsSurviveAgentRestarts: pods the plugin registered get their
// sockets back when the agent restarts (after SIGTERM or a crash), with no
// CNI call; a pod deleted while the agent was down is released when it
// comes back.
func TestCNIPodsSurviveAgentRestarts(t *testing.T) {
	prefix := fmt.Sprintf("tlcnr%d", os.Getpid()%10000)
	e := newEnv(t, prefix, 1)
	b := e.b
	a := e.startAgent()
	rt := newCNIRuntime(t, b)
	nsA, nsB := privtest.Netns(t, prefix+"-a"), privtest.Netns(t, prefix+"-b")
	rt.must("ADD", "pod-a", "/var/run/netns/"+nsA, nil)
	rt.must("ADD", "pod-b", "/var/run/netns/"+nsB, nil)
	reaches := func(ns string) error {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		_, err := bed.Ping(ctx, ns, b.Wire.IP)
		return err
	}
	for _, ns := range []string{nsA, nsB} {
		if err := reaches(ns); err != nil {
			t.Fatalf("%s before any restart: %v", ns, err)
		}
	}
	registered := func(c *cni.Client) map[string]string {
		regs, err := c.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, g := range regs {
			m[g.ContainerID] = g.State
		}
		return m
	}

	// SIGTERM, then a new agent: both pods forward again.
	if _, err := a.Stop(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := reaches(nsA); err == nil {
		t.Fatal("pod A reached the VPC with the agent stopped")
	}
	a = e.startAgent()
	for _, ns := range []string{nsA, nsB} {
		if err := reaches(ns); err != nil {
			t.Errorf("%s after a restart: %v", ns, err)
		}
	}

	// A crash, and pod B deleted while the agent is down.
	a.Kill()
	rt.must("DEL", "pod-b", "/var/run/netns/"+nsB, nil)
	a = e.startAgent()
	if err := reaches(nsA); err != nil {
		t.Errorf("pod A after a crash: %v", err)
	}
	got := registered(cni.NewClient(b.APISocket()))
	if got["pod-a"] != cni.StateAttached || len(got) != 1 {
		t.Errorf("registrations after the restart: %v; want pod-a attached, pod-b released", got)
	}
	// Its branch is free again.
	nsC := privtest.Netns(t, prefix+"-c")
	rt.must("ADD", "pod-c", "/var/run/netns/"+nsC, nil)
	if err := reaches(nsC); err != nil {
		t.Errorf("a new pod on the released branch: %v", err)
	}
	rt.must("DEL", "pod-a", "/var/run/netns/"+nsA, nil)
	rt.must("DEL", "pod-c", "/var/run/netns/"+nsC, nil)
}

// TestCNIConcurrentAdds: 50 ADDs at once get 50 distinct branches; after
// the agent is killed (SIGKILL) and started again, every pod is reachable
// from the VPC within 2 s, with no CNI call; DELs at once free them.
func TestCNIConcurrentAdds(t *testing.T) {
	prefix := fmt.Sprintf("tlcnc%d", os.Getpid()%10000)
	e := newEnv(t, prefix, 1)
	b := e.b
	a := e.startAgent()
	rt := newCNIRuntime(t, b)
	const n = 50
	if len(b.Branches) < n {
		t.Fatalf("the bed's node owns %d branches, want %d", len(b.Branches), n)
	}
	nss := make([]string, n)
	for i := range nss {
		nss[i] = privtest.Netns(t, fmt.Sprintf("%s-p%d", prefix, i))
	}
	results := make([]cniRun, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = rt.run("ADD", fmt.Sprintf("pod-%d", i), "/var/run/netns/"+nss[i], nil) })
	}
	wg.Wait()
	var podIPs []netip.Addr
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("ADD %d: %v\n%s%s", i, r.err, r.stdout, r.stderr)
		}
		var res types100.Result
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res.IPs) != 1 {
			t.Fatalf("ADD %d result %q: %v", i, r.stdout, err)
		}
		ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
		podIPs = append(podIPs, ip)
	}
	regs, err := cni.NewClient(b.APISocket()).List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ips, vlans := map[netip.Addr]bool{}, map[uint16]bool{}
	for _, g := range regs {
		vlans[g.VLAN] = true
	}
	for _, ip := range podIPs {
		ips[ip] = true
	}
	if len(ips) != n || len(vlans) != n {
		t.Errorf("%d ADDs at once got %d distinct IPs and %d distinct VLANs", n, len(ips), len(vlans))
	}

	// A crash and a restart: every pod answers the VPC again, no CNI call.
	a.Kill()
	start := time.Now()
	e.startAgent()
	var mu sync.Mutex
	unreachable := map[netip.Addr]error{}
	for _, ip := range podIPs {
		wg.Go(func() {
			ctx, cancel := context.WithDeadline(t.Context(), start.Add(2*time.Second))
			defer cancel()
			if _, err := bed.Ping(ctx, b.Wire.Netns, ip); err != nil {
				mu.Lock()
				unreachable[ip] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(unreachable) > 0 {
		t.Errorf("%d of %d pods not reachable from the VPC within 2 s of the restart: %v", len(unreachable), n, unreachable)
	}
	t.Logf("all %d pods answered within %v of the agent's restart", n-len(unreachable), time.Since(start).Round(time.Millisecond))

	for i := range n {
		wg.Go(func() { results[i] = rt.run("DEL", fmt.Sprintf("pod-%d", i), "/var/run/netns/"+nss[i], nil) })
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Errorf("DEL %d: %v\n%s%s", i, r.err, r.stdout, r.stderr)
		}
	}
	if regs, _ := cni.NewClient(b.APISocket()).List(t.Context()); len(regs) != 0 {
		t.Errorf("%d registrations left after every DEL", len(regs))
	}
}

// TestCNIGC: GC with one valid and one stale attachment releases the stale
// one only.
func TestCNIGC(t *testing.T) {
	prefix := fmt.Sprintf("tlcng%d", os.Getpid()%10000)
	e := newEnv(t, prefix, 1)
	b := e.b
	e.startAgent()
	rt := newCNIRuntime(t, b)
	nsA, nsB := privtest.Netns(t, prefix+"-a"), privtest.Netns(t, prefix+"-b")
	rt.must("ADD", "keep", "/var/run/netns/"+nsA, nil)
	rt.must("ADD", "stale", "/var/run/netns/"+nsB, nil)
	rt.conf["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "keep", "ifname": "eth0"}}
	rt.must("GC", "", "", nil)
	delete(rt.conf, "cni.dev/valid-attachments")
	regs, err := cni.NewClient(b.APISocket()).List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != 1 || regs[0].ContainerID != "keep" || regs[0].State != cni.StateAttached {
		t.Fatalf("after GC: %+v; want only keep, attached", regs)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if _, err := bed.Ping(ctx, nsA, b.Wire.IP); err != nil {
		t.Errorf("the valid pod after GC: %v", err)
	}
	rt.must("DEL", "keep", "/var/run/netns/"+nsA, nil)
	rt.must("DEL", "stale", "/var/run/netns/"+nsB, nil)
}

// TestCNILatency measures the real plugin's ADD and DEL over
// TRUNKLINE_CNI_PODS pods (default 10; the README's figures use 200) and
// logs the median and p99. It asserts only that every call succeeds.
func TestCNILatency(t *testing.T) {
	n := 10
	if v := os.Getenv("TRUNKLINE_CNI_PODS"); v != "" {
		fmt.Sscan(v, &n)
	}
	prefix := fmt.Sprintf("tlcnl%d", os.Getpid()%10000)
	e := newEnv(t, prefix, 1)
	b := e.b
	cfg, err := os.ReadFile(b.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	skip := false
	for _, l := range strings.Split(string(cfg), "\n") {
		switch {
		case l == "branches:":
			skip = true
			lines = append(lines, l)
			for i := 1; i <= n; i++ {
				lines = append(lines, fmt.Sprintf("  - {vlan: %d, ip: 10.100.%d.%d, mac: \"02:00:0a:64:%02x:%02x\"}", 3000+i, 210+i/250, 1+i%250, 210+i/250, 1+i%250))
			}
			continue
		case skip && strings.HasPrefix(l, "  - "):
			continue
		}
		skip = false
		lines = append(lines, l)
	}
	e.configPath = filepath.Join(t.TempDir(), "many.yaml")
	os.WriteFile(e.configPath, []byte(strings.Join(lines, "\n")), 0o644)
	e.startAgent()
	rt := newCNIRuntime(t, b)
	nss := make([]string, n)
	for i := range nss {
		nss[i] = privtest.Netns(t, fmt.Sprintf("%s-p%d", prefix, i))
	}
	add := make([]time.Duration, n)
	del := make([]time.Duration, n)
	for i := range n {
		start := time.Now()
		rt.must("ADD", fmt.Sprintf("lat-%d", i), "/var/run/netns/"+nss[i], nil)
		add[i] = time.Since(start)
	}
	for i := range n {
		start := time.Now()
		rt.must("DEL", fmt.Sprintf("lat-%d", i), "/var/run/netns/"+nss[i], nil)
		del[i] = time.Since(start)
	}
	q := func(d []time.Duration, p float64) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[min(len(s)-1, int(p*float64(len(s))))]
	}
	t.Logf("%d pods, one after another, each through the plugin binary (process start included): ADD median %v p99 %v; DEL median %v p99 %v",
		n, q(add, 0.5).Round(time.Microsecond), q(add, 0.99).Round(time.Microsecond), q(del, 0.5).Round(time.Microsecond), q(del, 0.99).Round(time.Microsecond))
}

// TestCNIChainedHostLocal: the reference host-local IPAM plugin chooses the
// pod's address; the agent supplies the VLAN of the branch with that
// address, and the pod is reachable from the VPC.
func TestCNIChainedHostLocal(t *testing.T) {
	if _, err := os.Stat(filepath.Join(binDir(), "host-local")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no host-local in bin/: `make deps` installs it")
		}
		t.Skip("no host-local in bin/: `make deps` installs it")
	}
	prefix := fmt.Sprintf("tlhl%d", os.Getpid()%10000)
	e := newEnv(t, prefix, 1)
	b := e.b
	e.startAgent()
	rt := newCNIRuntime(t, b)
	dataDir := t.TempDir()
	pick := b.Branches[5].IP // host-local hands out its range's first address
	rt.conf["ipam"] = map[string]any{
		"type": "host-local", "dataDir": dataDir,
		"ranges": [][]map[string]string{{{"subnet": "10.100.200.0/24", "rangeStart": pick.String(), "rangeEnd": pick.String()}}},
	}
	podNS := privtest.Netns(t, prefix+"-pod")
	out := rt.must("ADD", "hl-pod", "/var/run/netns/"+podNS, nil)
	var res types100.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 || res.IPs[0].Address.IP.String() != pick.String() {
		t.Fatalf("ADD with host-local: %s (%v); want %s", out, err, pick)
	}
	reg, err := cni.NewClient(b.APISocket()).Get(t.Context(), "hl-pod", "eth0")
	if err != nil || reg.VLAN != b.Branches[5].VLAN {
		t.Fatalf("registration %+v, %v; want the VLAN of the branch with %s (%d)", reg, err, pick, b.Branches[5].VLAN)
	}
	servePod(t, b, podNS)
	vpcReaches(t, b, pick)
	rt.must("DEL", "hl-pod", "/var/run/netns/"+podNS, nil)
	if _, err := os.Stat(filepath.Join(dataDir, "trunkline", pick.String())); !os.IsNotExist(err) {
		t.Errorf("host-local still holds %s after DEL: %v", pick, err)
	}
}
