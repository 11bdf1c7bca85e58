package xdp

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Poller blocks a worker in poll(2) until one of its sockets has received
// frames, so an idle worker costs no CPU and never competes with the
// kernel's NAPI work on a small machine. It implements port.Poller; port
// indices are the worker's.
type Poller struct {
	fds     []unix.PollFd // fds[0] is the wake eventfd
	ports   []int         // ports[i] is the port index of fds[i+1]
	wakefd  int
	scratch [8]byte
}

// NewPoller makes a poller with no sockets.
func NewPoller() (*Poller, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &Poller{fds: []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, wakefd: fd}, nil
}

// Set makes the poller watch fd as port index idx; fd < 0 stops watching idx.
// Call it from the worker's goroutine.
func (p *Poller) Set(idx, fd int) {
	for i, pi := range p.ports {
		if pi == idx {
			if fd < 0 {
				p.ports = append(p.ports[:i], p.ports[i+1:]...)
				p.fds = append(p.fds[:i+1], p.fds[i+2:]...)
			} else {
				p.fds[i+1].Fd = int32(fd)
			}
			return
		}
	}
	if fd >= 0 {
		p.ports = append(p.ports, idx)
		p.fds = append(p.fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	}
}

// Wait implements port.Poller.
func (p *Poller) Wait(ready []int, timeoutMs int) (int, error) {
	for i := range p.fds {
		p.fds[i].Revents = 0
	}
	_, err := unix.Poll(p.fds, timeoutMs)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return 0, nil
		}
		return 0, fmt.Errorf("poll: %w", err)
	}
	if p.fds[0].Revents != 0 {
		unix.Read(p.wakefd, p.scratch[:])
	}
	n := 0
	for i, pi := range p.ports {
		if p.fds[i+1].Revents&(unix.POLLIN|unix.POLLERR) != 0 && n < len(ready) {
			ready[n] = pi
			n++
		}
	}
	return n, nil
}

// Wake implements port.Poller: it interrupts a blocked Wait.
func (p *Poller) Wake() {
	var one = [8]byte{1}
	unix.Write(p.wakefd, one[:])
}

// Close releases the wake eventfd.
func (p *Poller) Close() error { return unix.Close(p.wakefd) }
