package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trunkline/trunkline/internal/privtest"
)

// runAgent runs `trunkline run` in netns and returns its combined output and
// exit error.
func runAgent(t *testing.T, netns string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", netns, binary, "run"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func xdpAttached(t *testing.T, netns, ifname string) bool {
	t.Helper()
	out := privtest.Run(t, "ip", "-n", netns, "-d", "link", "show", ifname)
	return strings.Contains(out, "prog/xdp")
}

func TestInvalidConfigAttachesNothing(t *testing.T) {
	privtest.Require(t)
	ns := privtest.Netns(t, fmt.Sprintf("tlcfg%d", os.Getpid()%10000))
	privtest.Run(t, "ip", "-n", ns, "link", "add", "trunk", "type", "veth", "peer", "name", "peer")
	privtest.Run(t, "ip", "-n", ns, "link", "set", "trunk", "up")
	cfg := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(cfg, []byte(`trunk: trunk
nodeIP: 10.0.0.2
gatewayMAC: "ff:ff:ff:ff:ff:ff"
queues: 0
pods:
  - {name: p, vlan: 5000, ip: 10.0.1.1, mac: "02:00:00:00:00:01", hostVeth: hp}
`), 0o644)
	out, err := runAgent(t, ns, "--config", cfg)
	if err == nil {
		t.Fatalf("agent accepted an invalid config:\n%s", out)
	}
	for _, want := range []string{"gatewayMAC:", "pods[0].vlan: 5000"} {
		if !strings.Contains(out, want) {
			t.Errorf("output does not report %q:\n%s", want, out)
		}
	}
	if xdpAttached(t, ns, "trunk") {
		t.Error("an XDP program is attached to trunk after a rejected config")
	}
}

func TestNativeAttachFailureSaysWhatToDo(t *testing.T) {
	privtest.Require(t)
	ns := privtest.Netns(t, fmt.Sprintf("tlatt%d", os.Getpid()%10000))
	privtest.Run(t, "ip", "-n", ns, "link", "set", "lo", "mtu", "1500") // fits a UMEM frame
	cfg := filepath.Join(t.TempDir(), "lo.yaml")
	sock := filepath.Join(t.TempDir(), "api.sock")
	os.WriteFile(cfg, []byte(fmt.Sprintf("trunk: lo\nnodeIP: 10.0.0.2\ngatewayMAC: \"02:00:00:00:00:01\"\napiSocket: %s\n", sock)), 0o644)
	out, err := runAgent(t, ns, "--config", cfg)
	if err == nil {
		t.Fatalf("native XDP on lo attached:\n%s", out)
	}
	for _, want := range []string{"native XDP on lo", "--xdp-mode=generic"} {
		if !strings.Contains(out, want) {
			t.Errorf("error does not say %q:\n%s", want, out)
		}
	}
	if xdpAttached(t, ns, "lo") {
		t.Error("a program stayed attached to lo")
	}
}
