package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
)

func TestServicesThroughTheAgent(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlsvc%d", os.Getpid()%10000), 3)
	b := e.b
	a := e.startAgent()
	web := b.Service("default/web")
	local := b.Service("default/web-local")
	udp := b.Service("default/echo-udp")
	if web == nil || local == nil || udp == nil {
		t.Fatalf("the bed lacks its Services: %+v", b.Services)
	}

	t.Run("300 TCP connections to a ClusterIP spread over the backends", func(t *testing.T) {
		const n = 300
		per := map[string]int{}
		for i := range n {
			body, client := httpGetClient(t, b.Wire.Netns, netip.AddrPortFrom(web.VIP, web.Port))
			if !strings.HasPrefix(body, "hello from pod") {
				t.Fatalf("connection %d: %q", i, body)
			}
			if client.Addr() != b.Wire.IP {
				t.Fatalf("ClusterIP from the VPC: backend saw %s, want the client %s", client, b.Wire.IP)
			}
			per[strings.TrimPrefix(body, "hello from ")]++
		}
		for _, p := range b.Pods {
			share := float64(per[p.Name]) / n
			if share < 0.20 || share > 0.47 {
				t.Errorf("%s got %d of %d connections (%.0f%%), want 20%%–47%%", p.Name, per[p.Name], n, share*100)
			}
		}
		t.Logf("connections per backend: %v", per)
	})

	t.Run("UDP request/response through a ClusterIP", func(t *testing.T) {
		c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(udp.VIP, udp.Port))
		for i := range 50 {
			if err := udpRoundTrip(c, []byte(fmt.Sprintf("q%d", i)), 2*time.Second); err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
		}
	})

	t.Run("iperf3 through a ClusterIP for 3 s", func(t *testing.T) {
		iperf := b.Service("default/iperf")
		for _, p := range b.Pods {
			srv := b.Command(t.Context(), p.Netns, "iperf3", "-s", "-p", fmt.Sprint(iperf.TargetPort))
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { srv.Process.Kill(); srv.Wait() }()
		}
		for _, p := range b.Pods {
			waitListening(t, b, p.Netns, iperf.TargetPort)
		}
		out, err := b.Command(t.Context(), b.Wire.Netns, "iperf3", "-c", iperf.VIP.String(), "-p", fmt.Sprint(iperf.Port), "-t", "3", "-J").Output()
		received := iperfReceived(t, "the VIP", out, err)
		if received < 1<<20 {
			t.Errorf("iperf3 through the VIP moved %d bytes", received)
		}
		t.Logf("iperf3 through %s: %.0f Mbit/s", iperf.VIP, float64(received)*8/3/1e6)
	})

	t.Run("a pod reaches a Service whose backend is itself", func(t *testing.T) {
		self := b.Pods[0]
		for i := range 100 {
			body, client := httpGetClient(t, self.Netns, netip.AddrPortFrom(web.VIP, web.Port))
			if body != "hello from "+self.Name {
				continue
			}
			if client.Addr() != b.Node.IP {
				t.Errorf("hairpin: the pod saw itself as %s, want the node %s (SNAT)", client, b.Node.IP)
			}
			t.Logf("hairpin after %d connections", i+1)
			return
		}
		t.Fatalf("100 connections from %s to %s never reached %s", self.Name, web.VIP, self.Name)
	})

	t.Run("NodePort, policy Cluster: the backend sees the node", func(t *testing.T) {
		for range 10 {
			body, client := httpGetClient(t, b.Wire.Netns, netip.AddrPortFrom(b.Node.IP, web.NodePort))
			if !strings.HasPrefix(body, "hello from pod") || client.Addr() != b.Node.IP {
				t.Fatalf("NodePort %d: %q from %s, want a pod that saw %s", web.NodePort, body, client, b.Node.IP)
			}
		}
	})

	t.Run("NodePort, policy Local: the backend sees the client", func(t *testing.T) {
		for range 10 {
			body, client := httpGetClient(t, b.Wire.Netns, netip.AddrPortFrom(b.Node.IP, local.NodePort))
			if !strings.HasPrefix(body, "hello from pod") || client.Addr() != b.Wire.IP {
				t.Fatalf("NodePort %d: %q from %s, want a pod that saw %s", local.NodePort, body, client, b.Wire.IP)
			}
		}
	})

	t.Run("the node's own traffic still reaches the node", func(t *testing.T) {
		// Untagged traffic that is not the agent's passes to the node's
		// kernel, which refuses a port nothing listens on.
		err := bed.InNetns(b.Wire.Netns, func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(b.Node.IP, 22).String(), 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("TCP to the node's port 22: %v, want connection refused by the node's kernel", err)
		}
	})

	st := stats(t, a)
	if st.Conntrack.Entries == 0 || st.Conntrack.Inserts < 300 {
		t.Errorf("conntrack: %+v; want the flows above tracked", st.Conntrack)
	}
	for reason, n := range st.Drops {
		if n != 0 {
			t.Errorf("drops[%s] = %d, want none", reason, n)
		}
	}
}
