package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
)

// outsideListener counts the datagrams that reach the bed's outside address
// on port, by source.
type outsideListener struct {
	pc   net.PacketConn
	mu   sync.Mutex
	from map[netip.AddrPort]int
}

func listenOutside(t *testing.T, b *bed.Bed, port uint16) *outsideListener {
	t.Helper()
	l := &outsideListener{from: map[netip.AddrPort]int{}}
	err := bed.InNetns(b.Wire.Netns, func() error {
		var err error
		l.pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(b.Wire.OutsideIP, port).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := l.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			l.mu.Lock()
			l.from[from.(*net.UDPAddr).AddrPort()]++
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *outsideListener) sources() map[netip.AddrPort]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[netip.AddrPort]int, len(l.from))
	for k, v := range l.from {
		m[k] = v
	}
	return m
}

// udpSockets opens n UDP sockets in netns, socket i connected to dst(i).
func udpSockets(t *testing.T, netns string, n int, dst func(i int) netip.AddrPort) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	err := bed.InNetns(netns, func() error {
		for i := range n {
			c, err := net.Dial("udp4", dst(i).String())
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	if err != nil {
		t.Fatalf("%d UDP sockets in %s: %v", n, netns, err)
	}
	return conns
}

func waitFor(d time.Duration, ok func() bool) {
	for deadline := time.Now().Add(d); !ok() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMasquerade(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlmsq%d", os.Getpid()%10000), 3)
	b := e.b
	srv := b.Command(t.Context(), b.Wire.Netns, binary, "serve-echo", "--name", "outside", "--timeout", "5m",
		"--http", b.Wire.OutsideIP.String()+":8080", "--udp", b.Wire.OutsideIP.String()+":9000", "--tcp", b.Wire.OutsideIP.String()+":9001")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	waitListening(t, b, b.Wire.Netns, 8080)
	a := e.startAgent()

	t.Run("a pod reaches the outside as the node", func(t *testing.T) {
		body, client := httpGetClient(t, b.Pods[0].Netns, netip.AddrPortFrom(b.Wire.OutsideIP, 8080))
		if body != "hello from outside" || client.Addr() != b.Node.IP {
			t.Fatalf("GET outside: %q, seen from %s; want the node %s", body, client, b.Node.IP)
		}
	})

	t.Run("5,000 concurrent UDP flows get distinct ports", func(t *testing.T) {
		const remotes, perPod = 5, 5000 / 3
		var ls []*outsideListener
		for r := range remotes {
			ls = append(ls, listenOutside(t, b, uint16(7000+r)))
		}
		total := 0
		for _, p := range b.Pods {
			n := perPod
			if p.Name == b.Pods[0].Name {
				n = 5000 - 2*perPod
			}
			// Spread over remotes: ports are per remote address and port.
			remote := func(i int) netip.AddrPort { return netip.AddrPortFrom(b.Wire.OutsideIP, uint16(7000+i%remotes)) }
			for i, c := range udpSockets(t, p.Netns, n, remote) {
				if _, err := c.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				total++
				if i%200 == 199 {
					// Concurrent flows, not one burst: a burst longer than
					// the frames a pod's socket has posted is dropped
					// (counted as the kernel's fillRingEmpty).
					time.Sleep(5 * time.Millisecond)
				}
			}
		}
		arrived := func() int {
			n := 0
			for _, l := range ls {
				n += len(l.sources())
			}
			return n
		}
		waitFor(5*time.Second, func() bool { return arrived() >= total })
		for r, l := range ls {
			ports := map[uint16]bool{}
			seen := l.sources()
			for from := range seen {
				if from.Addr() != b.Node.IP {
					t.Fatalf("a flow arrived from %s, want the node %s", from, b.Node.IP)
				}
				ports[from.Port()] = true
			}
			if len(ports) != len(seen) {
				t.Errorf("remote %d: %d flows from %d distinct ports", r, len(seen), len(ports))
			}
		}
		if n := arrived(); n != total {
			st := stats(t, a)
			t.Errorf("%d of %d flows arrived; drops %v, pods %+v", n, total, st.Drops, st.Pods)
		}
	})

	t.Run("a range of 100 ports: 100 of 150 flows work, 50 are dropped and counted", func(t *testing.T) {
		a.Stop(2 * time.Second)
		// The ports are counted: start without the flows above (the
		// agent would restore those in the new range).
		os.Remove(filepath.Join(b.Dir(), "trunkline.state"))
		cfg, err := os.ReadFile(b.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		small := filepath.Join(t.TempDir(), "small.yaml")
		os.WriteFile(small, []byte(strings.TrimSpace(string(cfg))+"\nsnatPorts: 62000-62099\n"), 0o644)
		e.configPath = small
		a2 := e.startAgent()
		l := listenOutside(t, b, 7100)
		conns := udpSockets(t, b.Pods[1].Netns, 150, func(int) netip.AddrPort { return netip.AddrPortFrom(b.Wire.OutsideIP, 7100) })
		for _, c := range conns {
			c.Write([]byte("first"))
		}
		waitFor(3*time.Second, func() bool { return len(l.sources()) >= 100 })
		time.Sleep(200 * time.Millisecond)
		first := l.sources()
		if len(first) != 100 {
			t.Fatalf("%d of 150 flows arrived over a range of 100 ports", len(first))
		}
		st := stats(t, a2)
		if d := st.Drops["snat_exhausted"]; d != 50 {
			t.Errorf("snat_exhausted = %d, want 50", d)
		}
		if n := st.Conntrack.SNATPortsInUse; n != 100 {
			t.Errorf("SNAT ports in use = %d, want all 100", n)
		}
		// The flows that got a port keep working.
		for _, c := range conns {
			c.Write([]byte("again"))
		}
		waitFor(3*time.Second, func() bool {
			n := 0
			for _, v := range l.sources() {
				if v >= 2 {
					n++
				}
			}
			return n >= 100
		})
		again := 0
		for from, v := range l.sources() {
			if v >= 2 && first[from] == 1 {
				again++
			}
		}
		if again != 100 {
			t.Errorf("%d of the first 100 flows kept working", again)
		}
	})
}
