package cni

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
)

// pluginConf is a network configuration for the plugin talking to socket.
func pluginConf(socket string, extra string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"trunkline","type":"trunkline-cni","agentSocket":%q%s}`, socket, extra))
}

// wantCode fails t unless err is a *types.Error with code.
func wantCode(t *testing.T, err error, code uint) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) || te.Code != code {
		t.Fatalf("err = %v (%T); want a CNI error with code %d", err, err, code)
	}
}

func TestStatus(t *testing.T) {
	f := newFakeAgent(t, 1)
	args := &skel.CmdArgs{StdinData: pluginConf(f.socket, "")}
	if err := Status(args); err != nil {
		t.Errorf("Status with a ready agent: %v", err)
	}
	f.set(func(f *fakeAgent) { f.ready = false })
	wantCode(t, Status(args), types.ErrPluginNotAvailable)

	gone := &skel.CmdArgs{StdinData: pluginConf(filepath.Join(shortTempDir(t), "none.sock"), "")}
	err := Status(gone)
	wantCode(t, err, types.ErrPluginNotAvailable)
	if !strings.Contains(err.Error(), "is the DaemonSet running?") {
		t.Errorf("Status without an agent: %v; want it to say what to do", err)
	}
	wantCode(t, Status(&skel.CmdArgs{StdinData: []byte(`{"cniVersion":"1.1.0","name":"x","type":"t","mtu":1}`)}), types.ErrInvalidNetworkConfig)
}

func TestGC(t *testing.T) {
	f := newFakeAgent(t, 4)
	c := NewClient(f.socket)
	for _, id := range []string{"keep", "stale1", "stale2"} {
		if _, err := c.Allocate(t.Context(), id, "eth0", ""); err != nil {
			t.Fatal(err)
		}
	}
	err := GC(&skel.CmdArgs{StdinData: pluginConf(f.socket, `,"cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]`)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.lastRequest(), `POST /v1/attachments/gc {"valid":[{"containerID":"keep","ifname":"eth0"}]}`; got != want {
		t.Errorf("request = %s\nwant      %s", got, want)
	}
	if !f.registered("keep", "eth0") || f.registered("stale1", "eth0") || f.registered("stale2", "eth0") {
		t.Errorf("after GC: %v", f.regs)
	}
	wantCode(t, GC(&skel.CmdArgs{StdinData: pluginConf(f.socket, `,"cni.dev/valid-attachments":[{"containerID":"","ifname":"eth0"}]`)}), types.ErrInvalidNetworkConfig)
	wantCode(t, GC(&skel.CmdArgs{StdinData: pluginConf(filepath.Join(shortTempDir(t), "none.sock"), "")}), types.ErrTryAgainLater)
}

func TestDelIsBestEffort(t *testing.T) {
	args := &skel.CmdArgs{ContainerID: "tcni-del-none", IfName: "eth0", Netns: "/var/run/netns/tcni-no-such-ns",
		StdinData: pluginConf(filepath.Join(shortTempDir(t), "none.sock"), "")}
	for i := range 2 {
		if err := Del(args); err != nil {
			t.Errorf("DEL %d without an agent, veth or netns: %v", i+1, err)
		}
	}
	f := newFakeAgent(t, 1)
	args.StdinData = pluginConf(f.socket, "")
	if _, err := NewClient(f.socket).Allocate(t.Context(), args.ContainerID, "eth0", ""); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := Del(args); err != nil {
			t.Errorf("DEL %d: %v", i+1, err)
		}
	}
	if f.registered(args.ContainerID, "eth0") {
		t.Error("DEL did not release the attachment")
	}
	f.set(func(f *fakeAgent) { f.fail["DELETE"] = http.StatusInternalServerError })
	if err := Del(args); err == nil {
		t.Error("DEL succeeded though the agent failed to release: the runtime would not retry")
	}
	args.StdinData = []byte(`{"cniVersion":"9.9.9","name":"x","type":"t"}`)
	wantCode(t, Del(args), types.ErrIncompatibleCNIVersion)
}

// A chained IPAM plugin that cannot run fails ADD before the agent is
// asked for anything (the end-to-end test runs the real host-local).
func TestAddWithAnIPAMThatCannotRun(t *testing.T) {
	f := newFakeAgent(t, 1)
	t.Setenv("CNI_PATH", t.TempDir()) // no host-local there
	_, err := add(t.Context(), &skel.CmdArgs{ContainerID: "c", IfName: "eth0", Netns: "/var/run/netns/x",
		StdinData: pluginConf(f.socket, `,"ipam":{"type":"host-local"}`)})
	if err == nil || !strings.Contains(err.Error(), "ipam host-local") {
		t.Errorf("err = %v, want one naming ipam host-local", err)
	}
	_, err = add(t.Context(), &skel.CmdArgs{ContainerID: "c", IfName: "eth0", Netns: "/var/run/netns/x",
		StdinData: pluginConf(f.socket, `,"ipam":{"subnet":"10.0.0.0/24"}`)})
	wantCode(t, err, types.ErrInvalidNetworkConfig)
	if f.lastRequest() != "" {
		t.Errorf("the agent was called: %s", f.lastRequest())
	}
}

func TestAddPoolExhaustedIsTryAgainLater(t *testing.T) {
	f := newFakeAgent(t, 0)
	err := Add(&skel.CmdArgs{ContainerID: "c", IfName: "eth0", Netns: "/var/run/netns/x", StdinData: pluginConf(f.socket, "")})
	wantCode(t, err, types.ErrTryAgainLater)
	if !strings.Contains(err.Error(), "no branch attachment left") {
		t.Errorf("err = %v", err)
	}
}

func TestAddRollsBackWhenSetupFails(t *testing.T) {
	f := newFakeAgent(t, 1)
	args := &skel.CmdArgs{ContainerID: "tcni-rollback-setup", IfName: "eth0", Netns: "/var/run/netns/tcni-no-such-ns", StdinData: pluginConf(f.socket, "")}
	_, err := add(t.Context(), args)
	if err == nil || !strings.Contains(err.Error(), "tcni-no-such-ns") {
		t.Fatalf("err = %v; want the netns failure", err)
	}
	if f.registered(args.ContainerID, "eth0") {
		t.Error("the attachment was not released after the failed ADD")
	}
}

func TestAddAttachDelCheck(t *testing.T) {
	p := newTestPod(t, 41)
	f := newFakeAgent(t, 2)
	args := &skel.CmdArgs{ContainerID: p.containerID, IfName: "eth0", Netns: p.path, StdinData: pluginConf(f.socket, `,"mtu":1400`)}

	res, err := add(t.Context(), args)
	if err != nil {
		t.Fatal(err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if r.CNIVersion != "1.1.0" || len(r.Interfaces) != 2 || r.Interfaces[0].Name != p.hostVeth() || len(r.IPs) != 1 ||
		r.IPs[0].Address.String() != "10.100.2.1/32" || r.IPs[0].Gateway.String() != "10.100.0.1" || len(r.Routes) != 1 {
		t.Errorf("result = %+v", r)
	}
	reg, err := NewClient(f.socket).Get(t.Context(), p.containerID, "eth0")
	if err != nil || reg.State != StateAttached || reg.HostVeth != p.hostVeth() {
		t.Errorf("registration = %+v, %v; want attached on %s", reg, err, p.hostVeth())
	}
	again, err := add(t.Context(), args)
	if err != nil {
		t.Fatalf("second ADD: %v", err)
	}
	if a, b := resultJSON(t, again), resultJSON(t, res); a != b {
		t.Errorf("second ADD = %s\nfirst       %s", a, b)
	}
	if err := Check(args); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	// The agent forgets the pod: CHECK says so.
	f.set(func(f *fakeAgent) { f.regs[p.containerID+"/eth0"].State = StateAllocated })
	if err := Check(args); err == nil || !strings.Contains(err.Error(), `state "allocated"`) {
		t.Errorf("CHECK with the agent not forwarding: %v", err)
	}
	// The pod's address goes: CHECK says so.
	f.set(func(f *fakeAgent) { f.regs[p.containerID+"/eth0"].State = StateAttached })
	run(t, "ip", "-n", p.name, "addr", "del", "10.100.2.1/32", "dev", "eth0")
	if err := Check(args); err == nil || !strings.Contains(err.Error(), "10.100.2.1/32") {
		t.Errorf("CHECK without the pod's address: %v", err)
	}

	for i := range 2 {
		if err := Del(args); err != nil {
			t.Errorf("DEL %d: %v", i+1, err)
		}
	}
	if _, err := netlink.LinkByName(p.hostVeth()); err == nil {
		t.Errorf("host veth %s still exists after DEL", p.hostVeth())
	}
	if f.registered(p.containerID, "eth0") {
		t.Error("DEL did not release the attachment")
	}
	if err := Check(args); !errors.Is(err, ErrNotRegistered) && (err == nil || !strings.Contains(err.Error(), "no attachment registered")) {
		t.Errorf("CHECK after DEL: %v", err)
	}
}

func TestAddRollsBackWhenAttachFails(t *testing.T) {
	p := newTestPod(t, 42)
	f := newFakeAgent(t, 1)
	f.set(func(f *fakeAgent) { f.fail["PUT"] = http.StatusInternalServerError })
	args := &skel.CmdArgs{ContainerID: p.containerID, IfName: "eth0", Netns: p.path, StdinData: pluginConf(f.socket, "")}
	_, err := add(t.Context(), args)
	if !errors.Is(err, ErrAgentFailed) {
		t.Fatalf("err = %v; want the attach failure", err)
	}
	p.a.IP = netip.MustParsePrefix("10.100.2.1/32")
	p.assertGone(t)
	if f.registered(p.containerID, "eth0") {
		t.Error("the attachment was not released after the failed ADD")
	}
	if out := run(t, "ip", "-n", p.name, "-br", "link"); strings.Contains(out, "eth0") {
		t.Errorf("pod interface left behind:\n%s", out)
	}
}

func resultJSON(t *testing.T, r types.Result) string {
	t.Helper()
	var b strings.Builder
	if err := r.PrintTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
