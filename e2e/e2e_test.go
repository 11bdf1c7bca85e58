// Package e2e tests trunkline end to end, as an operator runs it: the real
// binary, on the test bed's real namespaces, veths and AF_XDP sockets, with
// real clients.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/bench/agentproc"
	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/internal/privtest"
)

// binary is the trunkline executable the tests run, built once.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "trunkline-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "trunkline")
	out, err := exec.Command("go", "build", "-o", binary, "../cmd/trunkline").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build trunkline: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is a bed with echo servers in its pods.
type env struct {
	t *testing.T
	b *bed.Bed
	// configPath is the agent config startAgent uses; the bed's by default.
	configPath string
}

func newEnv(t *testing.T, prefix string, pods int) *env {
	t.Helper()
	privtest.Require(t)
	bed.Sweep(bed.DefaultStateDir, prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bed.Up(ctx, bed.Options{Prefix: prefix, Pods: pods})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Down(); err != nil {
			t.Errorf("bed down: %v", err)
		}
		out, _ := exec.Command("ip", "netns", "list").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, prefix+"-") {
				t.Errorf("namespace %s left behind", l)
			}
		}
		if _, err := os.Stat(filepath.Join(bed.DefaultStateDir, prefix)); err == nil {
			t.Errorf("state dir of bed %s left behind", prefix)
		}
	})
	for _, p := range b.Pods {
		srv := b.Command(context.Background(), p.Netns, binary, "serve-echo", "--name", p.Name, "--timeout", "5m")
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	}
	for _, p := range b.Pods {
		for _, port := range []uint16{bed.HTTPPort, bed.TCPEchoPort} {
			if err := bed.WaitListening(t.Context(), p.Netns, port); err != nil {
				t.Fatal(err)
			}
		}
	}
	return &env{t: t, b: b, configPath: b.ConfigPath}
}

func (e *env) startAgent(args ...string) *agentproc.Proc {
	e.t.Helper()
	var log bytes.Buffer
	p, err := agentproc.Start(context.Background(), agentproc.Options{
		Binary: binary, Netns: e.b.Node.Netns, Config: e.configPath, Socket: e.b.APISocket(), Args: args, Log: &syncWriter{w: &log},
	})
	if err != nil {
		e.t.Fatalf("start agent: %v\n%s", err, log.String())
	}
	e.t.Cleanup(func() { p.Kill() })
	return p
}

// syncWriter lets the agent's stdout and stderr share one buffer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// tool finds a program the test needs (in the repository's bin/ first,
// then on PATH); without it the test skips, or fails under CI=true, and
// says how to install it.
func tool(t *testing.T, name, install string) string {
	t.Helper()
	if p, err := exec.LookPath(filepath.Join(binDir(), name)); err == nil {
		return p
	}
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no %s: %s", name, install)
		}
		t.Skipf("no %s: %s", name, install)
	}
	return p
}

// dial opens a connection from inside netns; the socket stays in netns and
// can be used from any goroutine.
func dial(t *testing.T, netns, network string, dst netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	err := bed.InNetns(netns, func() error {
		var err error
		c, err = net.DialTimeout(network, dst.String(), 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s %s from %s: %v", network, dst, netns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// udpRoundTrip sends one datagram and waits for its echo.
func udpRoundTrip(c net.Conn, msg []byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], msg) {
		return fmt.Errorf("echo %q, want %q", buf[:n], msg)
	}
	return nil
}

func stats(t *testing.T, p *agentproc.Proc) agent.Stats {
	t.Helper()
	s, err := p.Client.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func podStats(s agent.Stats, name string) agent.PodStats {
	for _, p := range s.Pods {
		if p.Name == name {
			return p
		}
	}
	return agent.PodStats{}
}

func httpGet(t *testing.T, netns string, dst netip.AddrPort) string {
	t.Helper()
	body, _ := httpGetClient(t, netns, dst)
	return body
}

// httpGetClient does GET / and returns the body and the client address the
// server saw (its X-Client header).
func httpGetClient(t *testing.T, netns string, dst netip.AddrPort) (body string, client netip.AddrPort) {
	t.Helper()
	c := dial(t, netns, "tcp", dst)
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", dst)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET http://%s from %s: %v", dst, netns, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	client, _ = netip.ParseAddrPort(resp.Header.Get("X-Client"))
	return strings.TrimSpace(string(b)), client
}

func TestForwardingThroughTheAgent(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tle2e%d", os.Getpid()%10000), 3)
	b := e.b
	a := e.startAgent()

	t.Run("udp request/response is carried and counted exactly", func(t *testing.T) {
		for _, p := range b.Pods {
			c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(p.IP, 9000))
			if err := udpRoundTrip(c, []byte("warm-up"), 2*time.Second); err != nil {
				t.Fatalf("%s: %v", p.Name, err)
			}
			before := podStats(stats(t, a), p.Name)
			const n = 50
			msg := bytes.Repeat([]byte{'x'}, 100)
			for i := range n {
				if err := udpRoundTrip(c, msg, 2*time.Second); err != nil {
					t.Fatalf("%s request %d: %v", p.Name, i, err)
				}
			}
			after := podStats(stats(t, a), p.Name)
			frame := uint64(14 + 20 + 8 + len(msg))
			if d := after.TxPackets - before.TxPackets; d != n {
				t.Errorf("%s: agent sent %d frames to the pod, want %d", p.Name, d, n)
			}
			if d := after.TxBytes - before.TxBytes; d != n*frame {
				t.Errorf("%s: agent sent %d bytes to the pod, want %d", p.Name, d, n*frame)
			}
			if d := after.RxPackets - before.RxPackets; d != n {
				t.Errorf("%s: agent received %d frames from the pod, want %d", p.Name, d, n)
			}
		}
	})

	t.Run("tcp stream from a Go client", func(t *testing.T) {
		for _, p := range b.Pods {
			c := dial(t, b.Wire.Netns, "tcp", netip.AddrPortFrom(p.IP, 9001))
			c.SetDeadline(time.Now().Add(10 * time.Second))
			payload := bytes.Repeat([]byte("trunkline "), 100_000) // 1 MB
			go c.Write(payload)
			got := make([]byte, len(payload))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("%s: echo of 1 MB: %v", p.Name, err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("%s: echo differs", p.Name)
			}
		}
	})

	t.Run("iperf3 for 3 s to each pod", func(t *testing.T) {
		tool(t, "iperf3", "apt-get install iperf3")
		for i, p := range b.Pods {
			before := podStats(stats(t, a), p.Name)
			args := []string{"-c", p.IP.String(), "-t", "3", "-J", "-p", "5201"}
			if i == 0 {
				args = append(args, "-R") // pod → VPC: full-size frames get the tag pushed
			}
			received := iperf3(t, b, p, args)
			after := podStats(stats(t, a), p.Name)
			if received < 1<<20 {
				st, _ := json.MarshalIndent(after, "", "  ")
				t.Errorf("%s: iperf3 moved %d bytes in 3 s; agent stats:\n%s", p.Name, received, st)
			}
			carried := after.TxBytes - before.TxBytes
			if i == 0 {
				carried = after.RxBytes - before.RxBytes
			}
			if carried < uint64(received) {
				t.Errorf("%s: agent carried %d bytes, iperf3 moved %d: traffic bypassed the agent", p.Name, carried, received)
			}
			t.Logf("%s: iperf3 %.0f Mbit/s, agent carried %d bytes", p.Name, float64(received)*8/3/1e6, carried)
		}
	})

	t.Run("pod to pod on the same node", func(t *testing.T) {
		c := dial(t, b.Pods[0].Netns, "udp", netip.AddrPortFrom(b.Pods[1].IP, 9000))
		if err := udpRoundTrip(c, []byte("pod1→pod2"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := httpGet(t, b.Pods[0].Netns, netip.AddrPortFrom(b.Pods[2].IP, 8080)); got != "hello from pod3" {
			t.Errorf("pod1 → pod3 GET = %q", got)
		}
	})

	t.Run("node reaches its pods (kubelet probes)", func(t *testing.T) {
		for _, p := range b.Pods {
			if got := httpGet(t, b.Node.Netns, netip.AddrPortFrom(p.IP, 8080)); got != "hello from "+p.Name {
				t.Errorf("node → %s GET = %q", p.Name, got)
			}
		}
	})

	t.Run("bad frames are dropped and counted, never delivered", func(t *testing.T) {
		testBadFrames(t, b, a)
	})

	t.Run("frames are accounted for while running", func(t *testing.T) {
		for _, u := range stats(t, a).UMEM {
			if u.Held != 0 || u.Free+u.Fill+u.TX != u.Total {
				t.Errorf("UMEM queue %d: %+v; want held 0 and free+fill+tx = total", u.Queue, u)
			}
		}
	})

	t.Run("SIGTERM: exits within 1 s with every frame back, and traffic stops", func(t *testing.T) {
		took, err := a.Stop(2 * time.Second)
		if err != nil {
			t.Fatalf("agent exit: %v (a non-zero exit reports frames not returned to the UMEM)", err)
		}
		if took > time.Second {
			t.Errorf("agent took %s to exit", took)
		}
		for _, ifn := range []string{b.Node.Trunk, b.Pods[0].HostVeth} {
			if xdpAttached(t, b.Node.Netns, ifn) {
				t.Errorf("an XDP program is still attached to %s after the agent exited", ifn)
			}
		}
		c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(b.Pods[0].IP, 9000))
		if err := udpRoundTrip(c, []byte("anyone?"), 500*time.Millisecond); err == nil {
			t.Error("a pod answered with the agent stopped: traffic bypasses the agent")
		}
	})

	t.Run("a restarted agent replaces a crashed one", func(t *testing.T) {
		crashed := e.startAgent()
		crashed.Kill()
		again := e.startAgent()
		c := dial(t, b.Wire.Netns, "udp", netip.AddrPortFrom(b.Pods[1].IP, 9000))
		if err := udpRoundTrip(c, []byte("back"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := again.Stop(2 * time.Second); err != nil {
			t.Error(err)
		}
	})
}

// iperf3 runs an iperf3 server in the pod and a client in the VPC; it
// returns the bytes the receiver got.
func iperf3(t *testing.T, b *bed.Bed, p bed.Pod, clientArgs []string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := b.Command(ctx, p.Netns, "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	waitListening(t, b, p.Netns, 5201)
	out, err := b.Command(ctx, b.Wire.Netns, "iperf3", clientArgs...).Output()
	return iperfReceived(t, p.Name, out, err)
}

// waitListening waits up to 5 s for a TCP listener on port in netns.
func waitListening(t *testing.T, b *bed.Bed, netns string, port uint16) {
	t.Helper()
	if err := bed.WaitListening(t.Context(), netns, port); err != nil {
		t.Fatal(err)
	}
}

// iperfReceived reads the bytes received from iperf3 -J output.
func iperfReceived(t *testing.T, to string, out []byte, err error) int64 {
	t.Helper()
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes int64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &r); jerr != nil || err != nil || r.Error != "" {
		t.Fatalf("iperf3 to %s: %v %v %s\n%s", to, err, jerr, r.Error, out)
	}
	return r.End.SumReceived.Bytes
}
