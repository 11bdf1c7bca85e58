package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/trunkline/trunkline/agent"
)

// TestCLI runs the operator commands against the agent on the bed, in JSON
// and as tables.
func TestCLI(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlcli%d", os.Getpid()%10000), 2)
	b := e.b
	e.startAgent()
	web := b.Service("default/web")
	for range 4 {
		httpGet(t, b.Wire.Netns, netip.AddrPortFrom(web.VIP, web.Port))
	}
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(binary, append(args, "--socket", b.APISocket())...).CombinedOutput()
		if err != nil {
			t.Fatalf("trunkline %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(cli("status", "-o", "json")), &st); err != nil || !st.Ready || st.Pods != 2 || st.Services != len(b.Services) {
		t.Errorf("status: %+v, %v", st, err)
	}
	var pods []agent.PodStats
	if err := json.Unmarshal([]byte(cli("pods", "-o", "json")), &pods); err != nil || len(pods) != 2 || pods[0].HostVeth != b.Pods[0].HostVeth {
		t.Errorf("pods: %+v, %v", pods, err)
	}
	var svcs []agent.ServiceConfig
	if err := json.Unmarshal([]byte(cli("services", "-o", "json")), &svcs); err != nil || len(svcs) != len(b.Services) || svcs[0].Name != "default/web" {
		t.Errorf("services: %+v, %v", svcs, err)
	}
	var ct agent.ConntrackList
	if err := json.Unmarshal([]byte(cli("conntrack", "--vip", web.VIP.String(), "-o", "json")), &ct); err != nil {
		t.Fatal(err)
	}
	if len(ct.Flows) != 4 || ct.Flows[0].Service != netip.AddrPortFrom(web.VIP, web.Port).String() || ct.Flows[0].Proto != "tcp" || ct.ByState["TIME_WAIT"]+ct.ByState["CLOSE"]+ct.ByState["FIN_WAIT"]+ct.ByState["CLOSE_WAIT"]+ct.ByState["LAST_ACK"] != 4 {
		t.Errorf("conntrack --vip %s: %+v, want the 4 finished connections", web.VIP, ct)
	}
	var stats agent.Stats
	if err := json.Unmarshal([]byte(cli("stats", "-o", "json")), &stats); err != nil || len(stats.Pods) != 2 || len(stats.Interfaces) != 1 ||
		stats.Conntrack.Inserts < 4 || len(stats.UMEM) != 1 || stats.UMEM[0].Held != 0 {
		t.Errorf("stats: %+v, %v", stats, err)
	}
	var none agent.ConntrackList
	json.Unmarshal([]byte(cli("conntrack", "--proto", "udp", "-o", "json")), &none)
	if len(none.Flows) != 0 {
		t.Errorf("conntrack --proto udp: %+v, want none", none)
	}
	for cmd, want := range map[string]string{"status": "ready", "pods": "HOST VETH", "services": "default/web", "conntrack": "by state:", "stats": "DROP REASON"} {
		if out := cli(cmd); !strings.Contains(out, want) {
			t.Errorf("trunkline %s table lacks %q:\n%s", cmd, want, out)
		}
	}
}
