package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestTopInATerminal runs `trunkline top` in a real terminal (tmux) while
// traffic flows, and reads the screen after two refreshes.
func TestTopInATerminal(t *testing.T) {
	tool(t, "tmux", "apt-get install tmux")
	e := newEnv(t, fmt.Sprintf("tltop%d", os.Getpid()%10000), 2)
	b := e.b
	e.startAgent()
	session := fmt.Sprintf("trunkline-top-%d", os.Getpid())
	cmd := fmt.Sprintf("%s top --socket %s --interval 500ms --count 60", binary, b.APISocket())
	if out, err := exec.Command("tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", cmd).CombinedOutput(); err != nil {
		t.Fatalf("tmux: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("tmux", "kill-session", "-t", session).Run() })
	// Traffic to pod1 while top refreshes at least twice.
	c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(b.Pods[0].IP, 9000))
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		if err := udpRoundTrip(c, []byte("top"), time.Second); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("tmux", "capture-pane", "-p", "-t", session).Output()
	if err != nil {
		t.Fatal(err)
	}
	screen := string(out)
	for _, p := range b.Pods {
		if !strings.Contains(screen, p.Name) {
			t.Errorf("top does not show %s:\n%s", p.Name, screen)
		}
	}
	// pod1's line shows non-zero packet rates.
	line := regexp.MustCompile(`(?m)^\s*pod1 \(vlan \d+\)\s+(\S+)\s+\S+\s+(\S+)`).FindStringSubmatch(screen)
	if line == nil || line[1] == "0" || line[2] == "0" {
		t.Errorf("top shows no traffic for pod1 (%q):\n%s", line, screen)
	}
}
