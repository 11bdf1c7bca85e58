package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trunkline/trunkline/agent"
)

// keepAlive is one HTTP/1.1 connection that asks GET / again and again.
type keepAlive struct {
	c  net.Conn
	br *bufio.Reader
}

func (k *keepAlive) get(t *testing.T) string {
	t.Helper()
	k.c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(k.c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	body, err := k.getErr()
	if err != nil {
		t.Fatalf("GET on a running connection: %v", err)
	}
	return body
}

// getErr reads one response to a request already sent.
func (k *keepAlive) getErr() (string, error) {
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return "", err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return strings.TrimSpace(string(b)), nil
}

// without returns the Services with pod removed from their backends, or
// moved to terminatingBackends.
func without(svcs []agent.ServiceConfig, pod string, terminating bool) []agent.ServiceConfig {
	out := slices.Clone(svcs)
	for i := range out {
		out[i].Backends = slices.DeleteFunc(slices.Clone(out[i].Backends), func(b string) bool { return b == pod })
		if terminating {
			out[i].TerminatingBackends = append(slices.Clone(out[i].TerminatingBackends), pod)
		}
	}
	return out
}

func TestBackendChanges(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlbe%d", os.Getpid()%10000), 3)
	b := e.b
	a := e.startAgent()
	ctx := t.Context()
	web := b.Service("default/web")
	udp := b.Service("default/echo-udp")
	svcs, err := a.Client.Services(ctx)
	if err != nil || len(svcs) != len(b.Services) {
		t.Fatalf("services: %v, %v", svcs, err)
	}

	// A running stream, and 30 UDP flows, before any change.
	stream := &keepAlive{c: dial(t, b.Wire.Netns, "tcp", netip.AddrPortFrom(web.VIP, web.Port))}
	stream.br = bufio.NewReader(stream.c)
	keep := strings.TrimPrefix(stream.get(t), "hello from ")
	var flows []net.Conn
	for i := range 30 {
		c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(udp.VIP, udp.Port))
		if err := udpRoundTrip(c, []byte(fmt.Sprint("flow", i)), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		flows = append(flows, c)
	}
	var gone string
	for _, p := range b.Pods {
		if p.Name != keep {
			gone = p.Name
			break
		}
	}

	t.Run("a removed backend gets no new flows; its UDP flows move at once; the running stream goes on", func(t *testing.T) {
		res, err := a.Client.UpdateServices(ctx, without(svcs, gone, false))
		if err != nil {
			t.Fatal(err)
		}
		if res.ExpiredFlows == 0 {
			t.Errorf("no UDP flow expired when %s went away (30 flows over 3 backends)", gone)
		}
		// The pod is gone for good: anything still sent to it would fail.
		killServers(t, b.Pod(gone).Netns)
		for i, c := range flows {
			if err := udpRoundTrip(c, []byte(fmt.Sprint("after", i)), 2*time.Second); err != nil {
				t.Errorf("UDP flow %d after %s went away: %v (a stale flow)", i, gone, err)
			}
		}
		for range 60 {
			if body := httpGet(t, b.Wire.Netns, netip.AddrPortFrom(web.VIP, web.Port)); body == "hello from "+gone {
				t.Fatalf("a new connection reached the removed backend %s", gone)
			}
		}
		for range 5 {
			if got := stream.get(t); got != "hello from "+keep {
				t.Fatalf("the running stream moved to %q", got)
			}
		}
	})

	t.Run("a terminating backend keeps its flows and gets no new ones", func(t *testing.T) {
		if _, err := a.Client.UpdateServices(ctx, without(without(svcs, gone, false), keep, true)); err != nil {
			t.Fatal(err)
		}
		for range 60 {
			if body := httpGet(t, b.Wire.Netns, netip.AddrPortFrom(web.VIP, web.Port)); body == "hello from "+keep {
				t.Fatalf("a new connection reached the terminating backend %s", keep)
			}
		}
		for range 5 {
			if got := stream.get(t); got != "hello from "+keep {
				t.Fatalf("the terminating backend's stream moved to %q", got)
			}
		}
	})

	t.Run("a backend removed while its stream runs drains: the stream goes on", func(t *testing.T) {
		if _, err := a.Client.UpdateServices(ctx, without(without(svcs, gone, false), keep, false)); err != nil {
			t.Fatal(err)
		}
		st, err := a.Client.Status(ctx)
		if err != nil || st.DrainingBackends == 0 {
			t.Fatalf("status after removing %s with a stream to it: %+v, %v; want it draining", keep, st, err)
		}
		for range 5 {
			if got := stream.get(t); got != "hello from "+keep {
				t.Fatalf("the removed backend's stream moved to %q", got)
			}
		}
	})

	t.Run("an invalid update is refused as a whole", func(t *testing.T) {
		bad := slices.Clone(svcs)
		bad[0].Backends = append(slices.Clone(bad[0].Backends), "no-such-pod")
		if _, err := a.Client.UpdateServices(ctx, bad); err == nil || !strings.Contains(err.Error(), "services[0].backends") {
			t.Fatalf("err = %v, want one naming services[0].backends", err)
		}
		if body := httpGet(t, b.Wire.Netns, netip.AddrPortFrom(web.VIP, web.Port)); !strings.HasPrefix(body, "hello from") {
			t.Fatalf("after a refused update: %q", body)
		}
	})
}

// killServers kills the processes running in netns (the pod's servers).
func killServers(t *testing.T, netns string) {
	t.Helper()
	out, _ := exec.Command("ip", "netns", "pids", netns).Output()
	self := fmt.Sprint(os.Getpid())
	for _, pid := range strings.Fields(string(out)) {
		if pid != self {
			exec.Command("kill", "-9", pid).Run()
		}
	}
}
