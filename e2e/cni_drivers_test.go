package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/internal/privtest"
)

// execInNode implements invoke.Exec with `ip netns exec`.
type execInNode struct{ netns string }

func (e execInNode) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.netns, pluginPath)
	cmd.Env = environ
	cmd.Stdin = strings.NewReader(string(stdin))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var te types.Error
		if json.Unmarshal(out, &te) == nil && te.Code != 0 {
			return nil, &te
		}
		return nil, fmt.Errorf("%s: %v: %s%s", pluginPath, err, out, stderr.String())
	}
	return out, nil
}

func (e execInNode) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e execInNode) Decode(b []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(b)
}

func buildPlugin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	plugin := filepath.Join(dir, "trunkline-cni")
	if out, err := exec.Command("go", "build", "-o", plugin, "../cmd/trunkline-cni").CombinedOutput(); err != nil {
		t.Fatalf("build trunkline-cni: %v\n%s", err, out)
	}
	return plugin
}

func conflist(socket string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"trunkline","plugins":[{"type":"trunkline-cni","agentSocket":%q}]}`, socket))
}

// servePod runs the echo servers in a pod namespace the plugin wired.
func servePod(t *testing.T, b *bed.Bed, netns string) {
	t.Helper()
	srv := b.Command(context.Background(), netns, binary, "serve-echo", "--name", "cnipod", "--timeout", "2m")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	if err := bed.WaitListening(t.Context(), netns, bed.TCPEchoPort); err != nil {
		t.Fatal(err)
	}
}

// vpcReaches checks TCP and UDP from the VPC to a pod's servers.
func vpcReaches(t *testing.T, b *bed.Bed, ip netip.Addr) {
	t.Helper()
	if got := httpGet(t, b.Wire.Netns, netip.AddrPortFrom(ip, bed.HTTPPort)); got != "hello from cnipod" {
		t.Errorf("TCP from the VPC to %s: %q", ip, got)
	}
	c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(ip, bed.UDPEchoPort))
	if err := udpRoundTrip(c, []byte("over udp"), 2*time.Second); err != nil {
		t.Errorf("UDP from the VPC to %s: %v", ip, err)
	}
}

// TestCNIThroughLibcni drives the plugin with libcni, as container runtimes
// do: ADD, traffic from the VPC, CHECK, CHECK after the veth is deleted by
// hand, DEL twice, DEL after the netns is gone, STATUS and GC.
func TestCNIThroughLibcni(t *testing.T) {
	prefix := fmt.Sprintf("tllib%d", os.Getpid()%10000)
	e := newEnv(t, prefix, 1)
	b := e.b
	a := e.startAgent()
	plugin := buildPlugin(t)
	list, err := libcni.ConfListFromBytes(conflist(b.APISocket()))
	if err != nil {
		t.Fatal(err)
	}
	cn := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(plugin)}, t.TempDir(), execInNode{netns: b.Node.Netns})
	ctx := t.Context()
	if err := cn.GetStatusNetworkList(ctx, list); err != nil {
		t.Fatalf("STATUS with the agent ready: %v", err)
	}
	podNS := privtest.Netns(t, prefix+"-pod")
	rt := &libcni.RuntimeConf{ContainerID: "libcni-1", NetNS: "/var/run/netns/" + podNS, IfName: "eth0"}
	res, err := cn.AddNetworkList(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	r, err := types100.GetResult(res)
	if err != nil || len(r.IPs) != 1 {
		t.Fatalf("ADD result %v: %v", res, err)
	}
	ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	servePod(t, b, podNS)
	vpcReaches(t, b, ip)
	if err := cn.CheckNetworkList(ctx, list, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	privtest.Run(t, "ip", "-n", b.Node.Netns, "link", "del", r.Interfaces[0].Name)
	if err := cn.CheckNetworkList(ctx, list, rt); err == nil || !strings.Contains(err.Error(), r.Interfaces[0].Name) && !strings.Contains(err.Error(), "eth0") {
		t.Errorf("CHECK after the veth was deleted: %v; want an error naming what is missing", err)
	} else {
		t.Logf("CHECK after the veth was deleted: %v", err)
	}
	for i := range 2 {
		if err := cn.DelNetworkList(ctx, list, rt); err != nil {
			t.Errorf("DEL %d: %v", i+1, err)
		}
	}
	// DEL after the netns is gone.
	rt2 := &libcni.RuntimeConf{ContainerID: "libcni-2", NetNS: "/var/run/netns/" + privtest.Netns(t, prefix+"-gone"), IfName: "eth0"}
	if _, err := cn.AddNetworkList(ctx, list, rt2); err != nil {
		t.Fatal(err)
	}
	privtest.Delete(prefix + "-gone")
	if err := cn.DelNetworkList(ctx, list, rt2); err != nil {
		t.Errorf("DEL after the netns is gone: %v", err)
	}
	// GC: one valid, one stale.
	rt3 := &libcni.RuntimeConf{ContainerID: "libcni-valid", NetNS: "/var/run/netns/" + privtest.Netns(t, prefix+"-v"), IfName: "eth0"}
	rt4 := &libcni.RuntimeConf{ContainerID: "libcni-stale", NetNS: "/var/run/netns/" + privtest.Netns(t, prefix+"-s"), IfName: "eth0"}
	for _, x := range []*libcni.RuntimeConf{rt3, rt4} {
		if _, err := cn.AddNetworkList(ctx, list, x); err != nil {
			t.Fatal(err)
		}
	}
	if err := cn.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "libcni-valid", IfName: "eth0"}}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	regs := registrations(t, b.APISocket())
	if len(regs) != 1 || regs["libcni-valid"] == "" {
		t.Errorf("after GC: %v; want only libcni-valid", regs)
	}
	cn.DelNetworkList(ctx, list, rt3)
	cn.DelNetworkList(ctx, list, rt4)

	// The agent down: STATUS says 50, ADD says 11 and names the socket.
	a.Stop(2 * time.Second)
	var te *types.Error
	if err := cn.GetStatusNetworkList(ctx, list); !errors.As(err, &te) || te.Code != 50 {
		t.Errorf("STATUS with the agent down: %v; want code 50", err)
	}
	rt5 := &libcni.RuntimeConf{ContainerID: "libcni-down", NetNS: "/var/run/netns/" + privtest.Netns(t, prefix+"-d"), IfName: "eth0"}
	if _, err := cn.AddNetworkList(ctx, list, rt5); !errors.As(err, &te) || te.Code != 11 || !strings.Contains(err.Error(), b.APISocket()) {
		t.Errorf("ADD with the agent down: %v; want code 11 naming %s", err, b.APISocket())
	}
}

// TestCNIThroughCnitool drives the plugin with cnitool.
func TestCNIThroughCnitool(t *testing.T) {
	cnitool := tool(t, "cnitool", "`make deps` installs it in bin/")
	prefix := fmt.Sprintf("tltool%d", os.Getpid()%10000)
	e := newEnv(t, prefix, 1)
	b := e.b
	a := e.startAgent()
	plugin := buildPlugin(t)
	confDir := t.TempDir()
	os.WriteFile(filepath.Join(confDir, "10-trunkline.conflist"), conflist(b.APISocket()), 0o644)
	podNS := privtest.Netns(t, prefix+"-pod")
	tool := func(args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", b.Node.Netns, cnitool}, args...)...)
		cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+filepath.Dir(plugin), "CNI_IFNAME=eth0")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := tool("add", "trunkline", "/var/run/netns/"+podNS)
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	var r types100.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.IPs) != 1 {
		t.Fatalf("cnitool add printed %q: %v", out, err)
	}
	ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	servePod(t, b, podNS)
	vpcReaches(t, b, ip)
	if out, err := tool("check", "trunkline", "/var/run/netns/"+podNS); err != nil {
		t.Errorf("cnitool check: %v\n%s", err, out)
	}
	// ADD with the agent down: an error naming the socket (cnitool does
	// not print the code; TestCNIThroughLibcni checks it is 11).
	a.Stop(2 * time.Second)
	other := privtest.Netns(t, prefix+"-down")
	out, err = tool("add", "trunkline", "/var/run/netns/"+other)
	if err == nil || !strings.Contains(out, b.APISocket()) {
		t.Errorf("cnitool add with the agent down: %v\n%q; want code 11 naming %s", err, out, b.APISocket())
	}
	for i := range 2 {
		if out, err := tool("del", "trunkline", "/var/run/netns/"+podNS); err != nil {
			t.Errorf("cnitool del %d: %v\n%s", i+1, err, out)
		}
	}
}

func registrations(t *testing.T, socket string) map[string]string {
	t.Helper()
	var body struct {
		Attachments []struct{ ContainerID, State string } `json:"attachments"`
	}
	out, err := exec.Command("curl", "-s", "--unix-socket", socket, "http://trunkline/v1/attachments").Output()
	if err != nil || json.Unmarshal(out, &body) != nil {
		t.Fatalf("list attachments: %v %s", err, out)
	}
	m := map[string]string{}
	for _, a := range body.Attachments {
		m[a.ContainerID] = a.State
	}
	return m
}
