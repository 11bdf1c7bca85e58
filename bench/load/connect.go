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
	DefaultConnectWorkers  = 4
	DefaultConnectDuration = 2 * time.Second
	DefaultConnectWarmup   = 200 * time.Millisecond
	DefaultConnectTimeout  = time.Second
	DefaultMessageBytes    = 8
	MaxConnectWorkers      = 1024
	MaxMessageBytes        = 4096
	// maxSetupSamples bounds the set-up latencies kept (over all workers);
	// past it each worker keeps a uniform sample (reservoir sampling).
	maxSetupSamples = 1 << 20
	// pollSlice bounds one wait, so a worker notices ctx within it.
	pollSlice = 100 * time.Millisecond
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
	// Workers is how many connections are in progress at once, each on a
	// goroutine of its own (and an OS thread in Netns), 1..1024. Default 4.
	Workers int
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
	// Setup describes the set-up latency (connect() to established) of the
	// connections in the window; past about a million connections it is
	// estimated from a uniform sample of them.
	Setup Summary
	// FirstOther is the first error of kind Other, for diagnosis ("" when
	// none).
	FirstOther string
}

// ConnectRate measures how many new TCP connections per second can be made
// to an echo server from inside a network namespace. Workers run in
// parallel, each in a loop: a non-blocking connect bounded by the timeout,
// a short message written, its echo read back, and the socket closed with
// SO_LINGER 0 — a RST instead of a FIN. An orderly close would leave every
// client socket in TIME_WAIT for 60 s, holding its (address, port) pair:
// at tens of thousands of connections a second the ~28,000 ephemeral ports
// run out within a second and connect fails with EADDRNOTAVAIL. The RST
// also spares the server TIME_WAIT, and measures set-up, not teardown.
//
// The count starts after a warm-up and the run ends at Duration, at Count
// or when ctx is done (then with ctx's error and what was measured so far).
// Failures are counted by kind, never returned: an error means the run
// could not start. Each worker's goroutine enters Netns on its locked OS
// thread, which is thrown away afterwards.
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
	keep := max(maxSetupSamples/o.Workers, 1024)
	msg := make([]byte, o.MessageBytes)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	workers := make([]*connWorker, o.Workers)
	errs := make([]error, o.Workers)
	var wg sync.WaitGroup
	for i := range workers {
		domain, sa := sockaddr(o.Target)
		w := &connWorker{
			domain: domain, sa: sa, msg: msg, buf: make([]byte, len(msg)),
			timeout: o.Timeout, done: ctx.Done(), keep: keep,
			rng: rand.New(rand.NewPCG(uint64(i), uint64(start.UnixNano()))),
		}
		workers[i] = w
		wg.Go(func() {
			if err := lockInto(ns); err != nil {
				errs[i] = err
				return
			}
			w.run(warmEnd, end, budget)
		})
	}
	wg.Wait()
	stop := time.Now()
	if err := errors.Join(errs...); err != nil {
		return ConnectResult{}, fmt.Errorf("connect rate: %w", err)
	}

	var res ConnectResult
	var setups []time.Duration
	for _, w := range workers {
		res.Connections += w.ok
		res.TotalConnections += w.okTotal
		res.Errors.add(w.errs)
		res.TotalErrors.add(w.errsTotal)
		setups = append(setups, w.setups...)
		if res.FirstOther == "" && w.other != nil {
			res.FirstOther = w.other.Error()
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

// Errors of one connection found by the worker itself.
var (
	errTimedOut   = errors.New("timed out")
	errStopped    = errors.New("stopped")
	errClosed     = errors.New("peer closed the connection before echoing")
	errWrongEcho  = errors.New("echo differs from the message")
	errShortWrite = errors.New("message not written in one go")
)

// connWorker makes connections one after another and counts them. Its
// fields are its own until run returns.
type connWorker struct {
	domain  int
	sa      unix.Sockaddr
	msg     []byte // shared, read-only
	buf     []byte
	timeout time.Duration
	done    <-chan struct{}
	pfd     [1]unix.PollFd

	ok, okTotal     int
	errs, errsTotal ConnectErrors
	other           error // first error of kind Other
	setups          []time.Duration
	keep            int // capacity of setups
	seen            int // set-ups offered to setups
	rng             *rand.Rand
}

// run makes connections until end, ctx is done or the budget (when not
// nil) runs out; those begun from warmEnd on are counted in the window.
func (w *connWorker) run(warmEnd, end time.Time, budget *atomic.Int64) {
	for {
		select {
		case <-w.done:
			return
		default:
		}
		now := time.Now()
		if !now.Before(end) {
			return
		}
		inWindow := !now.Before(warmEnd)
		if inWindow && budget != nil && budget.Add(-1) < 0 {
			return
		}
		setup, err := w.once()
		if err == errStopped {
			return
		}
		w.tally(inWindow, setup, err)
	}
}

func (w *connWorker) tally(inWindow bool, setup time.Duration, err error) {
	if err == nil {
		w.okTotal++
		if inWindow {
			w.ok++
			w.sample(setup)
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
		if w.other == nil {
			w.other = err
			if err == unix.EADDRNOTAVAIL {
				w.other = fmt.Errorf("%w (out of local ports: too many connections in TIME_WAIT?)", err)
			}
		}
	}
	w.errsTotal.add(k)
	if inWindow {
		w.errs.add(k)
	}
}

// sample keeps setup in a uniform sample of at most keep set-ups
// (algorithm R).
func (w *connWorker) sample(setup time.Duration) {
	w.seen++
	if len(w.setups) < w.keep {
		w.setups = append(w.setups, setup)
		return
	}
	if j := w.rng.IntN(w.seen); j < w.keep {
		w.setups[j] = setup
	}
}

// once makes one connection: connect, write the message, read its echo,
// close with a RST. It returns the connect's duration.
func (w *connWorker) once() (time.Duration, error) {
	fd, err := unix.Socket(w.domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("tcp socket: %w", err)
	}
	defer unix.Close(fd)
	// Close sends a RST and frees the port at once: see ConnectRate.
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return 0, fmt.Errorf("set SO_LINGER: %w", err)
	}
	t0 := time.Now()
	err = unix.Connect(fd, w.sa)
	if err == unix.EINPROGRESS {
		if err = w.wait(fd, unix.POLLOUT, t0.Add(w.timeout)); err == nil {
			var soerr int
			if soerr, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && soerr != 0 {
				err = unix.Errno(soerr)
			}
		}
	}
	if err != nil {
		return 0, err
	}
	setup := time.Since(t0)

	// A fresh socket's send buffer takes the whole (small) message.
	n, err := unix.Write(fd, w.msg)
	if err != nil {
		return setup, err
	}
	if n != len(w.msg) {
		return setup, errShortWrite
	}
	deadline := time.Now().Add(w.timeout)
	for got := 0; got < len(w.buf); {
		n, err := unix.Read(fd, w.buf[got:])
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			if err := w.wait(fd, unix.POLLIN, deadline); err != nil {
				return setup, err
			}
		case err != nil:
			return setup, err
		case n == 0:
			return setup, errClosed
		default:
			got += n
		}
	}
	if !bytes.Equal(w.buf, w.msg) {
		return setup, errWrongEcho
	}
	return setup, nil
}

// wait polls fd for events until deadline (errTimedOut) or until the run is
// stopped (errStopped). Errors and hang-ups count as ready: the next call
// on fd reports them.
func (w *connWorker) wait(fd int, events int16, deadline time.Time) error {
	w.pfd[0] = unix.PollFd{Fd: int32(fd), Events: events}
	for {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return errTimedOut
		}
		ms := int((min(remaining, pollSlice) + time.Millisecond - 1) / time.Millisecond)
		n, err := unix.Poll(w.pfd[:], ms)
		if err != nil && err != unix.EINTR {
			return err
		}
		if n > 0 {
			return nil
		}
		select {
		case <-w.done:
			return errStopped
		default:
		}
	}
}
