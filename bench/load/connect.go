package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults and bounds of ConnectOptions.
const (
	DefaultConnectWorkers  = 8
	DefaultConnectThreads  = 1
	DefaultConnectDuration = 2 * time.Second
	DefaultConnectWarmup   = 200 * time.Millisecond
	DefaultConnectTimeout  = time.Second
	DefaultMessageBytes    = 8
	MaxConnectWorkers      = 1024
	MaxConnectThreads      = 64
	MaxMessageBytes        = 4096
	// maxSetupSamples bounds the set-up latencies kept (over all
	// threads); past it each thread keeps a uniform sample (reservoir
	// sampling).
	maxSetupSamples = 1 << 20
)

// ConnectOptions configures ConnectRate. The zero value of a field picks
// its default; Target is required.
type ConnectOptions struct {
	// Netns is the network namespace the client's sockets live in: a name
	// under /run/netns or a path; "" is the namespace the process started
	// in.
	Netns string
	// Target is a TCP echo server (a pod's 9001, a Service VIP's port).
	Target netip.AddrPort
	// Workers is how many connections are in progress at once, each one
	// connecting, echoing, closing and starting over, 1..1024. Default 8.
	Workers int
	// Threads is how many event-loop threads drive the workers between
	// them, 1..64 and at most Workers. Default 1: on a 2-core machine the
	// other core is the server's.
	Threads int
	// Warmup is how long connections are made and not counted before the
	// measured window; negative for none. Default 200 ms.
	Warmup time.Duration
	// Duration is the measured window, up to MaxDuration. Default 2 s.
	Duration time.Duration
	// Count, when positive, bounds the connections attempted in the
	// window: the run ends at Duration or Count, whichever comes first.
	// 0: Duration alone.
	Count int
	// Timeout bounds the connect, and then the echo, of one connection.
	// Default 1 s.
	Timeout time.Duration
	// MessageBytes is what each connection writes and reads back,
	// 1..MaxMessageBytes. Default 8.
	MessageBytes int
}

func (o ConnectOptions) withDefaults() (ConnectOptions, error) {
	if o.Workers == 0 {
		o.Workers = DefaultConnectWorkers
	}
	if o.Threads == 0 {
		o.Threads = DefaultConnectThreads
	}
	if o.Warmup == 0 {
		o.Warmup = DefaultConnectWarmup
	} else if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.Duration == 0 {
		o.Duration = DefaultConnectDuration
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultConnectTimeout
	}
	if o.MessageBytes == 0 {
		o.MessageBytes = DefaultMessageBytes
	}
	var errs []error
	if err := checkTarget(o.Target); err != nil {
		errs = append(errs, err)
	}
	if o.Workers < 1 || o.Workers > MaxConnectWorkers {
		errs = append(errs, fmt.Errorf("workers %d: want 1..%d", o.Workers, MaxConnectWorkers))
	}
	if o.Threads < 1 || o.Threads > min(MaxConnectThreads, max(o.Workers, 1)) {
		errs = append(errs, fmt.Errorf("threads %d: want 1..%d and no more than workers (%d)", o.Threads, MaxConnectThreads, o.Workers))
	}
	if o.Warmup > MaxDuration {
		errs = append(errs, fmt.Errorf("warm-up %v: want at most %v", o.Warmup, MaxDuration))
	}
	if o.Duration < 0 || o.Duration > MaxDuration {
		errs = append(errs, fmt.Errorf("duration %v: want 0..%v", o.Duration, MaxDuration))
	}
	if o.Count < 0 {
		errs = append(errs, fmt.Errorf("count %d: want 0 (no bound) or more", o.Count))
	}
	if o.Timeout < time.Millisecond || o.Timeout > time.Minute {
		errs = append(errs, fmt.Errorf("timeout %v: want 1ms..1m", o.Timeout))
	}
	if o.MessageBytes < 1 || o.MessageBytes > MaxMessageBytes {
		errs = append(errs, fmt.Errorf("message %d bytes: want 1..%d", o.MessageBytes, MaxMessageBytes))
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("connect rate: %w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return o, nil
}

// ConnectErrors counts failed connections by kind.
type ConnectErrors struct {
	// Refused: the connect was answered by a RST or an ICMP unreachable.
	Refused int
	// Timeout: no answer to the connect, or no echo, within the timeout.
	Timeout int
	// Reset: the connection was reset (or the socket's write side broken)
	// after it was established.
	Reset int
	// Other: anything else (no route, no local port, the peer closed before
	// echoing, a wrong echo).
	Other int
}

// Total is the number of failed connections.
func (e ConnectErrors) Total() int { return e.Refused + e.Timeout + e.Reset + e.Other }

func (e *ConnectErrors) add(o ConnectErrors) {
	e.Refused += o.Refused
	e.Timeout += o.Timeout
	e.Reset += o.Reset
	e.Other += o.Other
}

// ConnectResult is what ConnectRate measured.
type ConnectResult struct {
	// CPS is Connections per second of Window.
	CPS float64
	// Window is the measured time: Duration, or less when Count or ctx
	// ended the run early.
	Window time.Duration
	// Connections and Errors count the connections begun in the window:
	// those that connected and echoed, and those that failed.
	Connections int
	Errors      ConnectErrors
	// TotalConnections and TotalErrors count the whole run, warm-up
	// included.
	TotalConnections int
	TotalErrors      ConnectErrors
	// Setup describes the set-up latency (connect() to the client seeing
	// the connection established) of the connections in the window; past
	// about a million connections it is estimated from a uniform sample of
	// them. It includes the time an established connection waits for its
	// event loop: with many workers per thread (16 on one thread: p50
	// ~100 µs over a veth pair, against ~20 µs with 1), it measures the
	// client's queue more than the path; compare dataplanes at equal
	// Workers, or use few workers for set-up latency.
	Setup Summary
	// FirstOther is the first error of kind Other, for diagnosis ("" when
	// none).
	FirstOther string
}

// ConnectRate measures how many new TCP connections per second can be made
// to an echo server from inside a network namespace. Each of Workers keeps
// one connection going at a time: a non-blocking connect bounded by the
// timeout, a short message written, its echo read back, and the socket
// closed with SO_LINGER 0 — a RST instead of a FIN — before the next. An
// orderly close would leave every client socket in TIME_WAIT for 60 s,
// holding its (address, port) pair: at tens of thousands of connections a
// second the ~28,000 ephemeral ports run out within a second and connect
// fails with EADDRNOTAVAIL. The RST also spares the server TIME_WAIT, and
// the measurement is of set-up, not teardown.
//
// The workers are spread over Threads event loops, each an OS thread that
// entered Netns (so its sockets are made there) and is thrown away
// afterwards; a loop sleeps in epoll_wait only when none of its
// connections can move, so the client costs a few system calls per
// connection and no thread hand-offs.
//
// Counting starts after a warm-up; the run ends at Duration, at Count or
// when ctx is done (then with ctx's error and what was measured so far).
// Failures are counted by kind, never returned: an error means the run
// could not start.
func ConnectRate(ctx context.Context, o ConnectOptions) (ConnectResult, error) {
	o, err := o.withDefaults()
	if err != nil {
		return ConnectResult{}, err
	}
	ns, err := openNetns(o.Netns)
	if err != nil {
		return ConnectResult{}, fmt.Errorf("connect rate: %w", err)
	}
	if ns != nil {
		defer ns.Close()
	}
	start := time.Now()
	warmEnd := start.Add(o.Warmup)
	end := warmEnd.Add(o.Duration)
	var budget *atomic.Int64
	if o.Count > 0 {
		budget = new(atomic.Int64)
		budget.Store(int64(o.Count))
	}
	msg := make([]byte, o.MessageBytes)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	loops := make([]*connLoop, o.Threads)
	errs := make([]error, o.Threads)
	var wg sync.WaitGroup
	for t := range loops {
		domain, sa := sockaddr(o.Target)
		slots := make([]connSlot, o.Workers/o.Threads+btoi(t < o.Workers%o.Threads))
		for i := range slots {
			slots[i] = connSlot{fd: -1, buf: make([]byte, len(msg))}
		}
		l := &connLoop{
			domain: domain, sa: sa, msg: msg, timeout: o.Timeout, done: ctx.Done(),
			warmEnd: warmEnd, end: end, budget: budget,
			slots: slots, events: make([]unix.EpollEvent, eventBatch),
			keep: max(maxSetupSamples/o.Threads, 1024),
			rng:  rand.New(rand.NewPCG(uint64(t), uint64(start.UnixNano()))),
		}
		loops[t] = l
		wg.Go(func() {
			if err := lockInto(ns); err != nil {
				errs[t] = err
				return
			}
			errs[t] = l.run()
		})
	}
	wg.Wait()
	stop := time.Now()
	if err := errors.Join(errs...); err != nil {
		return ConnectResult{}, fmt.Errorf("connect rate: %w", err)
	}

	var res ConnectResult
	var setups []time.Duration
	for _, l := range loops {
		res.Connections += l.ok
		res.TotalConnections += l.okTotal
		res.Errors.add(l.errs)
		res.TotalErrors.add(l.errsTotal)
		setups = append(setups, l.setups...)
		if res.FirstOther == "" && l.other != nil {
			res.FirstOther = l.other.Error()
		}
	}
	if stop.After(end) {
		stop = end
	}
	res.Window = stop.Sub(warmEnd)
	if res.Window > 0 {
		res.CPS = float64(res.Connections) / res.Window.Seconds()
	} else {
		res.Window = 0
	}
	res.Setup = Summarize(setups)
	return res, ctx.Err()
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Errors of one connection found by the client itself.
var (
	errTimedOut   = errors.New("timed out")
	errClosed     = errors.New("peer closed the connection before echoing")
	errWrongEcho  = errors.New("echo differs from the message")
	errShortWrite = errors.New("message not written in one go")
)

// connLoop is one event-loop thread: it keeps its slots' connections in
// progress, each a small state machine driven by edge-triggered epoll, so
// the thread sleeps only when none of them can move. Its fields are its own
// until run returns.
type connLoop struct {
	domain  int
	sa      unix.Sockaddr
	msg     []byte // shared, read-only
	timeout time.Duration
	done    <-chan struct{}
	warmEnd time.Time
	end     time.Time
	budget  *atomic.Int64 // nil: no count bound

	epfd   int
	slots  []connSlot
	events []unix.EpollEvent
	ev     unix.EpollEvent // EpollCtl's argument, kept off the heap path
	active int             // slots with a connection in progress

	ok, okTotal     int
	errs, errsTotal ConnectErrors
	other           error // first error of kind Other
	setups          []time.Duration
	keep            int // capacity of setups
	seen            int // set-ups offered to setups
	rng             *rand.Rand
}

// connSlot is one connection in progress (fd ≥ 0) or an idle slot.
type connSlot struct {
	fd        int
	connected bool
	inWindow  bool // begun in the measured window
	t0        time.Time
	deadline  time.Time // of the connect, then of the echo
	setup     time.Duration
	got       int // echo bytes read
	buf       []byte
}

// epollEvents is what every socket is watched for, once, edge-triggered:
// writable (connected), readable (the echo), errors and hang-ups.
const epollEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// eventBatch is how many events one epoll_wait returns at most.
const eventBatch = 64

// epollWait bounds one sleep, so timeouts and ctx are noticed within it.
const epollWait = 5 // ms

// run makes connections in every slot until end, ctx is done or the
// budget runs out; those begun from warmEnd on are counted in the window.
// Connections still in progress then are closed and not counted.
func (l *connLoop) run() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	l.epfd = epfd
	defer unix.Close(epfd)
	defer func() {
		for i := range l.slots {
			if l.slots[i].fd >= 0 {
				unix.Close(l.slots[i].fd)
			}
		}
	}()
	for i := range l.slots {
		l.start(i)
	}
	lastScan := time.Now()
	for l.active > 0 {
		select {
		case <-l.done:
			return nil
		default:
		}
		n, err := unix.EpollWait(l.epfd, l.events, epollWait)
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		now := time.Now()
		for _, ev := range l.events[:max(n, 0)] {
			l.advance(int(ev.Fd), ev.Events, now)
		}
		if now.Sub(lastScan) >= time.Millisecond {
			lastScan = now
			for i := range l.slots {
				if s := &l.slots[i]; s.fd >= 0 && now.After(s.deadline) {
					l.finish(i, errTimedOut)
				}
			}
		}
	}
	return nil
}

// start begins a connection in idle slot i, unless the run is over.
// Connections that fail at once are counted and replaced.
func (l *connLoop) start(i int) {
	s := &l.slots[i]
	for {
		select {
		case <-l.done:
			return
		default:
		}
		now := time.Now()
		if !now.Before(l.end) {
			return
		}
		s.inWindow = !now.Before(l.warmEnd)
		if s.inWindow && l.budget != nil && l.budget.Add(-1) < 0 {
			return
		}
		fd, err := unix.Socket(l.domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			l.tally(s.inWindow, 0, fmt.Errorf("tcp socket: %w", err))
			continue
		}
		// Close sends a RST and frees the port at once: see ConnectRate.
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
			unix.Close(fd)
			l.tally(s.inWindow, 0, fmt.Errorf("set SO_LINGER: %w", err))
			continue
		}
		s.t0 = time.Now()
		err = unix.Connect(fd, l.sa)
		if err != nil && err != unix.EINPROGRESS {
			unix.Close(fd)
			l.tally(s.inWindow, 0, err)
			continue
		}
		// Added after connect: an unconnected socket polls as hung up.
		// Already connected or not, the add reports the current state.
		l.ev = unix.EpollEvent{Events: epollEvents, Fd: int32(i)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &l.ev); err != nil {
			unix.Close(fd)
			l.tally(s.inWindow, 0, fmt.Errorf("epoll_ctl: %w", err))
			continue
		}
		s.fd, s.connected, s.got = fd, false, 0
		s.deadline = s.t0.Add(l.timeout)
		l.active++
		return
	}
}

// advance moves slot i on after epoll reported events for it.
func (l *connLoop) advance(i int, events uint32, now time.Time) {
	s := &l.slots[i]
	if s.fd < 0 {
		return
	}
	if !s.connected {
		if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		soerr, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soerr != 0 {
			err = unix.Errno(soerr)
		}
		if err == nil && events&unix.EPOLLOUT == 0 {
			err = errClosed
		}
		if err != nil {
			l.finish(i, err)
			return
		}
		s.connected = true
		s.setup = now.Sub(s.t0)
		// A fresh socket's send buffer takes the whole (small) message.
		n, err := unix.Write(s.fd, l.msg)
		if err == nil && n != len(l.msg) {
			err = errShortWrite
		}
		if err != nil {
			l.finish(i, err)
			return
		}
		s.deadline = now.Add(l.timeout)
		return
	}
	if events&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP|unix.EPOLLRDHUP) == 0 {
		return
	}
	for s.got < len(s.buf) { // edge-triggered: read until EAGAIN or done
		n, err := unix.Read(s.fd, s.buf[s.got:])
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
		case err != nil:
			l.finish(i, err)
			return
		case n == 0:
			l.finish(i, errClosed)
			return
		default:
			s.got += n
		}
	}
	if !bytes.Equal(s.buf, l.msg) {
		l.finish(i, errWrongEcho)
		return
	}
	l.finish(i, nil)
}

// finish closes slot i's connection (with a RST), counts it and starts the
// next one in the slot.
func (l *connLoop) finish(i int, err error) {
	s := &l.slots[i]
	unix.Close(s.fd) // also takes it out of the epoll set
	s.fd = -1
	l.active--
	l.tally(s.inWindow, s.setup, err)
	s.setup = 0
	l.start(i)
}

func (l *connLoop) tally(inWindow bool, setup time.Duration, err error) {
	if err == nil {
		l.okTotal++
		if inWindow {
			l.ok++
			l.sample(setup)
		}
		return
	}
	var k ConnectErrors
	switch err {
	case unix.ECONNREFUSED:
		k.Refused = 1
	case errTimedOut, unix.ETIMEDOUT:
		k.Timeout = 1
	case unix.ECONNRESET, unix.EPIPE, unix.ECONNABORTED:
		k.Reset = 1
	default:
		k.Other = 1
		if l.other == nil {
			l.other = err
			if err == unix.EADDRNOTAVAIL {
				l.other = fmt.Errorf("%w (out of local ports: too many connections in TIME_WAIT?)", err)
			}
		}
	}
	l.errsTotal.add(k)
	if inWindow {
		l.errs.add(k)
	}
}

// sample keeps setup in a uniform sample of at most keep set-ups
// (algorithm R).
func (l *connLoop) sample(setup time.Duration) {
	l.seen++
	if len(l.setups) < l.keep {
		l.setups = append(l.setups, setup)
		return
	}
	if j := l.rng.IntN(l.seen); j < l.keep {
		l.setups[j] = setup
	}
}
