package xdp

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/trunkline/trunkline/dataplane/port"
	"github.com/trunkline/trunkline/internal/privtest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func udpFrame(t testing.TB, seq int, payload int) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IP{10, 9, 0, 1}, DstIP: net.IP{10, 9, 0, 2}}
	udp := &layers.UDP{SrcPort: 1000, DstPort: layers.UDPPort(2000 + seq%100)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	body := bytes.Repeat([]byte{byte(seq)}, payload)
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(body)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// packetSocket is an AF_PACKET socket on one interface, for injecting and
// capturing frames around the sockets under test.
func packetSocket(t testing.TB, ns, ifname string) (fd, ifindex int) {
	t.Helper()
	err := privtest.In(ns, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		ifindex = l.Attrs().Index
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", ifname, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	tv := unix.Timeval{Usec: 200000}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return fd, ifindex
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestSharedUmemForwarding receives frames on one veth's socket and
// transmits their descriptors on another veth's socket of the same UMEM:
// no byte is copied in userspace, every frame arrives intact, and every UMEM
// frame is accounted for afterwards.
func TestSharedUmemForwarding(t *testing.T) {
	privtest.Require(t)
	ns := privtest.Netns(t, fmt.Sprintf("tlxdp%d", os.Getpid()))
	// No IPv6: the kernel's MLD reports would reach the sockets too.
	privtest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	for _, p := range [][2]string{{"a1", "b1"}, {"a2", "b2"}} {
		privtest.Run(t, "ip", "-n", ns, "link", "add", p[0], "type", "veth", "peer", "name", p[1])
		privtest.Run(t, "ip", "-n", ns, "link", "set", p[0], "up")
		privtest.Run(t, "ip", "-n", ns, "link", "set", p[1], "up")
	}
	var (
		progs  *Programs
		umem   *Umem
		s1, s2 *Socket
	)
	err := privtest.In(ns, func() error {
		var err error
		if progs, err = LoadPrograms(); err != nil {
			return err
		}
		for _, ifn := range []string{"b1", "b2"} {
			if err := progs.AttachPod(ifn, Native); err != nil {
				return err
			}
		}
		if umem, err = NewUmem(UmemOptions{Frames: 1024}); err != nil {
			return err
		}
		b1, _ := netlink.LinkByName("b1")
		b2, _ := netlink.LinkByName("b2")
		if s1, err = NewSocket(umem, SocketOptions{Ifindex: b1.Attrs().Index, RxSize: 512, TxSize: 512, FillSize: 512, CompSize: 512}); err != nil {
			return err
		}
		if s2, err = NewSocket(umem, SocketOptions{Ifindex: b2.Attrs().Index, RxSize: 512, TxSize: 512, FillSize: 512, CompSize: 512, FillTarget: 32}); err != nil {
			return err
		}
		if err := progs.SetPodSocket(b1.Attrs().Index, 0, s1.FD()); err != nil {
			return err
		}
		return progs.SetPodSocket(b2.Attrs().Index, 0, s2.FD())
	})
	if err != nil {
		t.Fatal(err)
	}
	defer progs.Close()

	inj, a1 := packetSocket(t, ns, "a1")
	cap2, _ := packetSocket(t, ns, "a2")
	poller, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer poller.Close()
	poller.Set(1, s1.FD())

	const frames = 2000
	want := map[string]int{}
	got := 0
	captured := make(chan int, 1)
	go func() {
		buf := make([]byte, 4096)
		n := 0
		deadline := time.Now().Add(5 * time.Second)
		for n < frames && time.Now().Before(deadline) {
			m, from, err := unix.Recvfrom(cap2, buf, 0)
			if err != nil {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			if m > 0 && buf[23] == 17 { // IPv4 UDP
				n++
			}
		}
		captured <- n
	}()

	descs := make([]port.Desc, 64)
	ready := make([]int, 4)
	sent := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < frames && time.Now().Before(deadline) {
		for i := 0; i < 64 && sent < frames; i++ {
			f := udpFrame(t, sent, 18)
			want[string(f)]++
			if err := unix.Sendto(inj, f, 0, &unix.SockaddrLinklayer{Ifindex: a1}); err != nil {
				t.Fatalf("inject: %v", err)
			}
			sent++
		}
		if _, err := poller.Wait(ready, 50); err != nil {
			t.Fatal(err)
		}
		for {
			n := s1.Receive(descs)
			if n == 0 {
				break
			}
			fwd := descs[:0]
			for _, d := range descs[:n] {
				if off := d.Addr & (umem.FrameSize() - 1); off < unix.XDP_PACKET_HEADROOM {
					t.Errorf("rx frame at offset %d in its slot: want at least %d bytes of headroom", off, unix.XDP_PACKET_HEADROOM)
				}
				b := umem.Bytes()[d.Addr : d.Addr+uint64(d.Len)]
				if want[string(b)] == 0 {
					t.Logf("received a frame the test did not send: %x", b)
					umem.Release([]port.Desc{d})
					continue
				}
				want[string(b)]--
				fwd = append(fwd, d)
			}
			got += len(fwd)
			if m := s2.Transmit(fwd); m != len(fwd) {
				umem.Release(fwd[m:])
				t.Errorf("tx ring took %d of %d", m, len(fwd))
			}
			s2.Flush()
			s1.Flush()
		}
	}
	if got != frames {
		t.Fatalf("received %d of %d frames", got, frames)
	}
	if n := <-captured; n != frames {
		st, _ := s2.Stats()
		t.Errorf("captured %d of %d forwarded frames on a2 (kicks %d, kick errors %d, socket stats %+v)", n, frames, s2.Kicks, s2.KickErrors, st)
	}
	for deadline := time.Now().Add(time.Second); umem.Accounting().TX > 0 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s2.Flush()
	}
	acc := umem.Accounting()
	if acc.Held != 0 || acc.TX != 0 || acc.Free+acc.Fill != acc.Total {
		t.Errorf("frames after traffic: %+v; want none held or in TX, free+fill = total", acc)
	}
	if err := s1.Close(); err == nil {
		t.Error("closing the umem's owner before its sharer succeeded")
	}
	if err := s2.Close(); err != nil {
		t.Error(err)
	}
	if err := s1.Close(); err != nil {
		t.Error(err)
	}
	if acc := umem.Accounting(); acc.Free != acc.Total {
		t.Errorf("after close: %+v; want every frame free", acc)
	}
	if err := umem.Close(); err != nil {
		t.Error(err)
	}
}

// TestSocketBindFailure binds a second UMEM's socket to a queue a socket
// already holds: NewSocket must return an error (and undo its set-up), not
// panic.
func TestSocketBindFailure(t *testing.T) {
	privtest.Require(t)
	ns := privtest.Netns(t, fmt.Sprintf("tlxdpb%d", os.Getpid()))
	privtest.Run(t, "ip", "-n", ns, "link", "add", "a1", "type", "veth", "peer", "name", "b1")
	privtest.Run(t, "ip", "-n", ns, "link", "set", "a1", "up")
	privtest.Run(t, "ip", "-n", ns, "link", "set", "b1", "up")
	err := privtest.In(ns, func() error {
		b1, err := netlink.LinkByName("b1")
		if err != nil {
			return err
		}
		o := SocketOptions{Ifindex: b1.Attrs().Index, RxSize: 64, TxSize: 64, FillSize: 64, CompSize: 64}
		u1, err := NewUmem(UmemOptions{Frames: 256})
		if err != nil {
			return err
		}
		defer u1.Close()
		s1, err := NewSocket(u1, o)
		if err != nil {
			return err
		}
		defer s1.Close()
		u2, err := NewUmem(UmemOptions{Frames: 256})
		if err != nil {
			return err
		}
		defer u2.Close()
		if s2, err := NewSocket(u2, o); err == nil {
			s2.Close()
			return fmt.Errorf("a second UMEM's socket bound to b1 queue 0, which another socket holds")
		} else {
			t.Logf("second bind: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
