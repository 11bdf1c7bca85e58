package xdp

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Poller blocks a worker in epoll_wait(2) until one of its sockets has
// received frames, so an idle worker costs no CPU and never competes with the
// kernel's NAPI work on a small machine. It implements port.Poller; port
// indices are the worker's. A wait costs what the ready sockets cost, not
// what all of them do: with 250 pods, poll(2) asked 251 sockets each round.
type Poller struct {
	epfd    int
	wakefd  int
	fds     map[int]int // port index → its socket's fd
	events  []unix.EpollEvent
	scratch [8]byte
}

// wakeData marks the wake eventfd's events; a socket's carry its port index
// + 1 (epoll data is the event's Fd field).
const wakeData = 0

// NewPoller makes a poller with no sockets.
func NewPoller() (_ *Poller, err error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(epfd)
		}
	}()
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeData}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("epoll: watch eventfd: %w", err)
	}
	return &Poller{epfd: epfd, wakefd: fd, fds: map[int]int{}}, nil
}

// Set makes the poller watch fd as port index idx; fd < 0 stops watching idx.
// Call it from the worker's goroutine.
func (p *Poller) Set(idx, fd int) {
	if old, ok := p.fds[idx]; ok {
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, old, nil) // a closed fd is gone already
		delete(p.fds, idx)
	}
	if fd < 0 {
		return
	}
	// Level-triggered: a socket with frames left after a batch stays ready.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(idx + 1)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err == nil {
		p.fds[idx] = fd
		if len(p.events) < len(p.fds)+1 {
			p.events = make([]unix.EpollEvent, len(p.fds)+1)
		}
	}
}

// Wait implements port.Poller: at most len(ready) ports are reported.
func (p *Poller) Wait(ready []int, timeoutMs int) (int, error) {
	evs := p.events
	if len(evs) == 0 {
		evs = p.scratchEvents()
	}
	if len(evs) > len(ready)+1 {
		evs = evs[:len(ready)+1]
	}
	n, err := unix.EpollWait(p.epfd, evs, timeoutMs)
	if err != nil {
		if errors.Is(err, unix.EINTR) {
			return 0, nil
		}
		return 0, fmt.Errorf("epoll_wait: %w", err)
	}
	k := 0
	for _, ev := range evs[:n] {
		if ev.Fd == wakeData {
			unix.Read(p.wakefd, p.scratch[:])
			continue
		}
		if ev.Events&(unix.EPOLLIN|unix.EPOLLERR) != 0 && k < len(ready) {
			ready[k] = int(ev.Fd) - 1
			k++
		}
	}
	return k, nil
}

// scratchEvents is the event buffer before any socket was added (the wake
// eventfd only).
func (p *Poller) scratchEvents() []unix.EpollEvent {
	p.events = make([]unix.EpollEvent, 1)
	return p.events
}

// Wake implements port.Poller: it interrupts a blocked Wait.
func (p *Poller) Wake() {
	var one = [8]byte{1}
	unix.Write(p.wakefd, one[:])
}

// Close releases the epoll instance and the wake eventfd.
func (p *Poller) Close() error {
	return errors.Join(unix.Close(p.epfd), unix.Close(p.wakefd))
}
