package load

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pairClient is a udpClient on one end of a datagram socket pair; serve
// runs on the other end (its own goroutine) with each request it receives
// and the peer fd, until the test ends.
func pairClient(t *testing.T, timeout time.Duration, busy bool, serve func(peer int, req []byte)) *udpClient {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := &udpClient{fd: fds[0], req: make([]byte, 64), resp: make([]byte, 65), timeout: timeout, busy: busy, epoch: time.Now()}
	if busy {
		if err := unix.SetNonblock(c.fd, true); err != nil {
			t.Fatal(err)
		}
	} else if err := c.setRcvTimeout(timeout); err != nil {
		t.Fatal(err)
	}
	peer := fds[1]
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, err := unix.Read(peer, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return
			}
			serve(peer, buf[:n])
		}
	}()
	t.Cleanup(func() {
		unix.Shutdown(peer, unix.SHUT_RDWR) // wakes the peer's read
		<-done
		unix.Close(peer)
		c.close()
	})
	return c
}

func echo(peer int, req []byte) { unix.Write(peer, req) }

func TestRoundTripAnswered(t *testing.T) {
	for _, busy := range []bool{false, true} {
		c := pairClient(t, time.Second, busy, echo)
		for seq := uint64(1); seq <= 100; seq++ {
			rtt, r, err := c.roundTrip(seq)
			if err != nil || r != answered || rtt <= 0 || rtt > time.Second {
				t.Fatalf("busy=%v seq %d: rtt %v, reply %d, err %v; want answered", busy, seq, rtt, r, err)
			}
		}
		if c.stale != 0 {
			t.Errorf("busy=%v: %d stale, want 0", busy, c.stale)
		}
	}
}

// TestRoundTripStale: a late echo of an earlier request, and a datagram of
// the wrong size, are skipped; the request's own echo still counts.
func TestRoundTripStale(t *testing.T) {
	for _, busy := range []bool{false, true} {
		c := pairClient(t, time.Second, busy, func(peer int, req []byte) {
			old := append([]byte(nil), req...)
			binary.LittleEndian.PutUint64(old, binary.LittleEndian.Uint64(req)-1)
			unix.Write(peer, old)
			unix.Write(peer, req[:20])
			unix.Write(peer, req)
		})
		for seq := uint64(1); seq <= 3; seq++ {
			if _, r, err := c.roundTrip(seq); err != nil || r != answered {
				t.Fatalf("busy=%v seq %d: reply %d, err %v; want answered", busy, seq, r, err)
			}
		}
		if c.stale != 6 {
			t.Errorf("busy=%v: %d stale, want 6", busy, c.stale)
		}
	}
}

func TestRoundTripLost(t *testing.T) {
	for _, busy := range []bool{false, true} {
		const timeout = 30 * time.Millisecond
		c := pairClient(t, timeout, busy, func(int, []byte) {})
		start := time.Now()
		_, r, err := c.roundTrip(1)
		took := time.Since(start)
		if err != nil || r != lost {
			t.Fatalf("busy=%v: reply %d, err %v; want lost", busy, r, err)
		}
		if took < timeout || took > timeout+500*time.Millisecond {
			t.Errorf("busy=%v: lost after %v, want about %v", busy, took, timeout)
		}
	}
}

// TestRoundTripStop: stop wakes a round trip blocked in its receive.
func TestRoundTripStop(t *testing.T) {
	for _, busy := range []bool{false, true} {
		c := pairClient(t, 10*time.Second, busy, func(int, []byte) {})
		time.AfterFunc(50*time.Millisecond, c.stop)
		start := time.Now()
		_, r, err := c.roundTrip(1)
		if err != nil || r != stopped {
			t.Fatalf("busy=%v: reply %d, err %v; want stopped", busy, r, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("busy=%v: stopped after %v, want about 50ms", busy, took)
		}
		if _, r, _ := c.roundTrip(2); r != stopped {
			t.Errorf("busy=%v: round trip after stop: reply %d, want stopped", busy, r)
		}
	}
}

func TestRoundTripAllocs(t *testing.T) {
	for _, busy := range []bool{false, true} {
		c := pairClient(t, time.Second, busy, echo)
		seq := uint64(0)
		allocs := testing.AllocsPerRun(1000, func() {
			seq++
			if _, r, err := c.roundTrip(seq); err != nil || r != answered {
				t.Fatalf("seq %d: reply %d, err %v", seq, r, err)
			}
		})
		if allocs != 0 {
			t.Errorf("busy=%v: %v allocations per round trip, want 0", busy, allocs)
		}
	}
}
