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
	"strings"
	"testing"
	"time"

	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/bench/agentproc"
	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/internal/kubetest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// TestRestartKeepsFlows restarts the agent under established flows: an
// iperf3 TCP stream each way from the VPC through a ClusterIP (DNAT to a pod, with
// ClientIP affinity) and a pod's masqueraded TCP connection to outside the
// VPC (SNAT to a node port).
//
//   - SIGTERM then start (an upgrade): the old agent writes its state file
//     once its workers stop, the new one restores it before it takes
//     traffic. Both flows go on, the stream to the same backend, without a
//     reset; TCP retransmits what the gap lost.
//   - SIGKILL then start (a crash): the new agent is ready within 2 s and
//     new flows work at once. Established flows see what the last periodic
//     snapshot (stateInterval, 1 s here) held: flows older than it go on as
//     after a SIGTERM; a flow opened since is unknown to the new agent, and
//     is picked up mid-stream when its client sends first (the ACK makes a
//     new entry; Maglev and the hashed SNAT port choose as before when
//     backends did not change), while a packet its backend sends first
//     leaves untranslated and the client answers it with a reset.
func TestRestartKeepsFlows(t *testing.T) {
	tool(t, "iperf3", "apt-get install iperf3")
	e := newEnv(t, fmt.Sprintf("tlrst%d", os.Getpid()%10000), 3)
	b := e.b
	out := b.Wire.OutsideIP.String()
	srv := b.Command(t.Context(), b.Wire.Netns, binary, "serve-echo", "--name", "outside", "--timeout", "5m",
		"--http", out+":8080", "--udp", out+":9000", "--tcp", out+":9001")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	waitListening(t, b, b.Wire.Netns, 9001)
	iperf := b.Service("default/iperf")
	for _, p := range b.Pods {
		s := b.Command(t.Context(), p.Netns, "iperf3", "-s", "-p", fmt.Sprint(iperf.TargetPort))
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Process.Kill(); s.Wait() })
	}
	for _, p := range b.Pods {
		waitListening(t, b, p.Netns, iperf.TargetPort)
	}
	a := e.startAgent()

	t.Run("SIGTERM and start: an iperf3 stream through a ClusterIP and a masqueraded flow go on", func(t *testing.T) {
		masq := dial(t, b.Pods[1].Netns, "tcp", netip.MustParseAddrPort(out+":9001"))
		echoOn(t, masq, "before")
		stream := startIperf(t, b, iperf, 6)
		time.Sleep(2 * time.Second)
		before := flowsTo(t, a, iperf)
		if len(before) < 3 {
			t.Fatalf("iperf3's control and data connections not tracked: %v", before)
		}

		stop := time.Now()
		took, err := a.Stop(2 * time.Second)
		if err != nil {
			t.Fatalf("SIGTERM: %v (took %s)", err, took)
		}
		a = e.startAgent()
		gap := time.Since(stop)

		st := stats(t, a).State
		if !st.Final || st.Refused != "" || st.Restored < 3 {
			t.Errorf("restored %+v; want the shutdown snapshot with iperf3's 3 connections and the masqueraded one", st)
		}
		after := flowsTo(t, a, iperf)
		for client, backend := range before {
			if after[client] != backend {
				t.Errorf("iperf3 connection from %s: backend %s before the restart, %q after", client, backend, after[client])
			}
		}
		echoOn(t, masq, "after")
		res := stream.wait(t)
		if res.bytes < 1<<20 {
			t.Errorf("iperf3 moved %d bytes", res.bytes)
		}
		if d := stats(t, a).Drops; d["conntrack_invalid"] != 0 || d["no_service"] != 0 {
			t.Errorf("the new agent did not know some flow: drops %v", d)
		}
		t.Logf("SIGTERM → new agent ready: %s (old agent exited in %s); iperf3 %.0f Mbit/s each way over 6 s, %d retransmits; restored %d connections and %d affinities from %d bytes",
			gap.Round(time.Millisecond), took.Round(time.Millisecond), float64(res.bytes)*8/6/1e6, res.retransmits, st.Restored, st.RestoredAffinity,
			stateFileSize(t, filepath.Join(b.Dir(), "trunkline.state")))
	})

	t.Run("SIGKILL and start: ready within 2 s, new flows at once, flows in the last snapshot go on", func(t *testing.T) {
		a.Stop(2 * time.Second)
		cfg, err := os.ReadFile(b.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		fast := filepath.Join(t.TempDir(), "fast.yaml")
		os.WriteFile(fast, []byte(strings.TrimSpace(string(cfg))+"\nstateInterval: 1s\n"), 0o644)
		e.configPath = fast
		a = e.startAgent()

		masq := dial(t, b.Pods[2].Netns, "tcp", netip.MustParseAddrPort(out+":9001"))
		echoOn(t, masq, "before")
		stream := startIperf(t, b, iperf, 6)
		time.Sleep(2500 * time.Millisecond) // two snapshots hold both
		before := flowsTo(t, a, iperf)
		// A connection opened right before the crash, most likely after
		// the last snapshot; its client speaks first after the crash. (The
		// pause lets the client's delayed ACK of the echo through: had the
		// backend retransmitted the echo after the crash, its segment would
		// have come first and the client would have reset the connection.)
		echoTCP := b.Service("default/echo-tcp")
		young := dial(t, b.Wire.Netns, "tcp", netip.AddrPortFrom(echoTCP.VIP, echoTCP.Port))
		echoOn(t, young, "young")
		time.Sleep(200 * time.Millisecond)

		a.Kill()
		crash := time.Now()
		a = startAgentWithin(t, e, 2*time.Second)
		ready := time.Since(crash)
		web := b.Service("default/web")
		if body := httpGet(t, b.Wire.Netns, netip.AddrPortFrom(web.VIP, web.Port)); !strings.HasPrefix(body, "hello from pod") {
			t.Errorf("a new connection to %s after the crash: %q", web.VIP, body)
		}
		newFlows := time.Since(crash)

		st := stats(t, a).State
		if st.Final || st.Refused != "" || st.Restored < 3 {
			t.Errorf("restored %+v; want a periodic snapshot with iperf3's 3 connections and the masqueraded one", st)
		}
		after := flowsTo(t, a, iperf)
		for client, backend := range before {
			if after[client] != backend {
				t.Errorf("iperf3 connection from %s: backend %s before the crash, %q after", client, backend, after[client])
			}
		}
		echoOn(t, masq, "after")
		echoOn(t, young, "young, after")
		res := stream.wait(t)
		t.Logf("SIGKILL → new agent ready: %s, a new connection through a ClusterIP answered %s after the crash; iperf3 %.0f Mbit/s each way, %d retransmits; restored %d connections (snapshot %.1f s old)",
			ready.Round(time.Millisecond), newFlows.Round(time.Millisecond), float64(res.bytes)*8/6/1e6, res.retransmits, st.Restored, st.SnapshotAgeSeconds)
	})
}

// startAgentWithin starts an agent and fails the test if it is not ready
// within d.
func startAgentWithin(t *testing.T, e *env, d time.Duration) *agentproc.Proc {
	t.Helper()
	var log bytes.Buffer
	p, err := agentproc.Start(context.Background(), agentproc.Options{
		Binary: binary, Netns: e.b.Node.Netns, Config: e.configPath, Socket: e.b.APISocket(), Log: &syncWriter{w: &log}, ReadyTimeout: d,
	})
	if err != nil {
		t.Fatalf("agent not ready within %s: %v\n%s", d, err, log.String())
	}
	t.Cleanup(func() { p.Kill() })
	return p
}

// echoOn writes msg on c, an echo server's connection, and reads it back.
func echoOn(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("echo %q: %v", msg, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, got, err)
	}
}

// flowsTo returns the backend of each tracked connection to svc, by client.
func flowsTo(t *testing.T, a *agentproc.Proc, svc *bed.Service) map[string]string {
	t.Helper()
	l, err := a.Client.Conntrack(context.Background(), "vip="+svc.VIP.String())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, f := range l.Flows {
		if f.State == "ESTABLISHED" {
			m[f.Client] = f.Backend
		}
	}
	return m
}

// iperfRun is an iperf3 client running in the VPC.
type iperfRun struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

type iperfResult struct {
	bytes       int64
	retransmits int
}

// startIperf runs iperf3 to svc for secs seconds, both ways at once: the
// backend's stream is what a restart without state would break (its next
// segment would leave untranslated and the client would reset it).
func startIperf(t *testing.T, b *bed.Bed, svc *bed.Service, secs int) *iperfRun {
	t.Helper()
	r := &iperfRun{done: make(chan error, 1)}
	r.cmd = b.Command(context.Background(), b.Wire.Netns, "iperf3", "-c", svc.VIP.String(), "-p", fmt.Sprint(svc.Port), "-t", fmt.Sprint(secs), "--bidir", "-J")
	r.cmd.Stdout = &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() { r.cmd.Process.Kill(); <-r.done; r.done <- nil })
	return r
}

// wait waits for the client to finish; it fails the test on any error
// iperf3 reports (a reset connection among them).
func (r *iperfRun) wait(t *testing.T) iperfResult {
	t.Helper()
	var err error
	select {
	case err = <-r.done:
		r.done <- err
	case <-time.After(30 * time.Second):
		t.Fatal("iperf3 did not finish in 30 s")
	}
	var j struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes int64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(r.out.Bytes(), &j); err != nil || jerr != nil || j.Error != "" {
		t.Fatalf("iperf3: %v %v %q\n%s", err, jerr, j.Error, r.out.String())
	}
	return iperfResult{bytes: j.End.SumReceived.Bytes, retransmits: j.End.SumSent.Retransmits}
}

func stateFileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestRestartKeepsKubernetesServiceFlows restarts an agent that serves a
// Service from the Kubernetes watch: the new agent starts before the watch
// has delivered it, holds the saved flow, and takes it back when the
// Service arrives, before the client sends again.
func TestRestartKeepsKubernetesServiceFlows(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlrst%dk", os.Getpid()%10000), 3)
	b := e.b
	kubeconfig, client := kubetest.StartIn(t, b.Node.Netns)
	a := e.startAgent("--kubeconfig", kubeconfig)
	ctx := t.Context()
	vip := netip.MustParseAddr("10.96.1.13")
	dst := netip.AddrPortFrom(vip, bed.TCPEchoPort)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default"},
		Spec: corev1.ServiceSpec{ClusterIP: vip.String(), Ports: []corev1.ServicePort{
			{Name: "echo", Protocol: corev1.ProtocolTCP, Port: bed.TCPEchoPort, TargetPort: intstr.FromInt32(bed.TCPEchoPort)},
		}},
	}
	var eps []discoveryv1.Endpoint
	for _, p := range b.Pods {
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{p.IP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("echo"), Port: ptr.To(int32(bed.TCPEchoPort)), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   eps,
	}
	if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	for deadline := time.Now().Add(5 * time.Second); c == nil; time.Sleep(20 * time.Millisecond) {
		bed.InNetns(b.Wire.Netns, func() error {
			var err error
			c, err = net.DialTimeout("tcp", dst.String(), 200*time.Millisecond)
			return err
		})
		if time.Now().After(deadline) {
			t.Fatalf("%s not served within 5 s", dst)
		}
	}
	t.Cleanup(func() { c.Close() })
	echoOn(t, c, "before")
	svcFlow := func(p *agentproc.Proc) string {
		l, err := p.Client.Conntrack(context.Background(), "vip="+vip.String())
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range l.Flows {
			if f.Client == c.LocalAddr().String() {
				return f.Backend
			}
		}
		return ""
	}
	backend := svcFlow(a)
	if backend == "" {
		t.Fatal("the connection is not tracked")
	}

	if _, err := a.Stop(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	a = e.startAgent("--kubeconfig", kubeconfig)
	first := stats(t, a).State
	var st agent.StateStats
	waitFor(5*time.Second, func() bool { st = stats(t, a).State; return st.Restored >= 1 && st.Pending == 0 })
	if st.Restored < 1 || st.Pending != 0 || st.Dropped["service"] != 0 {
		t.Fatalf("the flow of the watched Service was not taken back: %+v", st)
	}
	if got := svcFlow(a); got != backend {
		t.Fatalf("after the restart, before the client spoke: the flow goes to %q, was %s", got, backend)
	}
	echoOn(t, c, "after")
	t.Logf("at start: %d flows restored, %d waiting for their Service; after the watch's first update: %d restored", first.Restored, first.Pending, st.Restored)
}
