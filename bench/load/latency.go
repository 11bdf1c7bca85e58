package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults and bounds of LatencyOptions.
const (
	DefaultPayloadBytes    = 64
	DefaultLatencyDuration = 2 * time.Second
	DefaultLatencyWarmup   = 200 * time.Millisecond
	DefaultLatencyCount    = 1_000_000
	DefaultRequestTimeout  = 250 * time.Millisecond
	// MinPayloadBytes holds the sequence number and the send timestamp.
	MinPayloadBytes = 16
	// MaxPayloadBytes is the largest UDP payload over IPv4.
	MaxPayloadBytes = 65507
	// MaxLatencyCount bounds LatencyOptions.Count: the samples slice is
	// allocated up front, 8 bytes a request.
	MaxLatencyCount = 10_000_000
	// MaxDuration bounds every client's measured duration and warm-up.
	MaxDuration = time.Hour
	// NoCPU leaves a client thread unpinned.
	NoCPU = -1
)

// ErrInvalidOptions reports options a client cannot run with; the message
// lists every problem.
var ErrInvalidOptions = errors.New("invalid load options")

// LatencyOptions configures Latency. Apart from CPU, the zero value of a
// field picks its default; Target is required.
type LatencyOptions struct {
	// Netns is the network namespace the client's socket lives in: a name
	// under /run/netns or a path; "" is the namespace the process started
	// in.
	Netns string
	// Target is the UDP echo server (a pod's 9000, a Service VIP's port).
	Target netip.AddrPort
	// PayloadBytes is the request's UDP payload, MinPayloadBytes ..
	// MaxPayloadBytes: a sequence number (8 bytes, little-endian), the send
	// time (8 bytes, nanoseconds since the run began), zeros. Default 64.
	PayloadBytes int
	// Warmup is how long requests are sent and not recorded before the
	// measurement; negative for none. Default 200 ms.
	Warmup time.Duration
	// Duration bounds the measurement, up to MaxDuration. Default 2 s.
	Duration time.Duration
	// Count bounds the measured requests (answered or lost), up to
	// MaxLatencyCount; the run ends at Duration or Count, whichever comes
	// first. Default 1,000,000.
	Count int
	// Timeout is how long a request waits for its echo before it counts as
	// lost (lost requests are not in the percentiles). Default 250 ms.
	Timeout time.Duration
	// CPU pins the client's thread to this CPU; NoCPU (-1) leaves it
	// unpinned. Note that the zero value pins to CPU 0.
	CPU int
	// BusyPoll spins on a non-blocking socket instead of sleeping in a
	// blocking receive: lower and steadier round trips, one core at 100%.
	BusyPoll bool
}

func (o LatencyOptions) withDefaults() (LatencyOptions, error) {
	if o.PayloadBytes == 0 {
		o.PayloadBytes = DefaultPayloadBytes
	}
	if o.Warmup == 0 {
		o.Warmup = DefaultLatencyWarmup
	} else if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.Duration == 0 {
		o.Duration = DefaultLatencyDuration
	}
	if o.Count == 0 {
		o.Count = DefaultLatencyCount
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultRequestTimeout
	}
	var errs []error
	if err := checkTarget(o.Target); err != nil {
		errs = append(errs, err)
	}
	if o.PayloadBytes < MinPayloadBytes || o.PayloadBytes > MaxPayloadBytes {
		errs = append(errs, fmt.Errorf("payload %d bytes: want %d..%d", o.PayloadBytes, MinPayloadBytes, MaxPayloadBytes))
	}
	if o.Warmup > MaxDuration {
		errs = append(errs, fmt.Errorf("warm-up %v: want at most %v", o.Warmup, MaxDuration))
	}
	if o.Duration < 0 || o.Duration > MaxDuration {
		errs = append(errs, fmt.Errorf("duration %v: want 0..%v", o.Duration, MaxDuration))
	}
	if o.Count < 0 || o.Count > MaxLatencyCount {
		errs = append(errs, fmt.Errorf("count %d: want 1..%d", o.Count, MaxLatencyCount))
	}
	if o.Timeout < time.Millisecond || o.Timeout > time.Minute {
		errs = append(errs, fmt.Errorf("timeout %v: want 1ms..1m", o.Timeout))
	}
	if o.CPU < NoCPU || o.CPU >= runtime.NumCPU() {
		errs = append(errs, fmt.Errorf("cpu %d: want 0..%d, or %d (NoCPU) for no pinning", o.CPU, runtime.NumCPU()-1, NoCPU))
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("latency: %w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return o, nil
}

// LatencyResult is what Latency measured. The embedded Summary describes
// the answered requests' round trips; Count is how many were answered.
type LatencyResult struct {
	Summary
	// Requests is how many requests were measured: Count answered plus
	// Lost.
	Requests int
	// Lost is how many measured requests got no echo within the timeout
	// (or were refused by an ICMP error).
	Lost int
	// Stale is how many replies were ignored: late echoes of earlier
	// requests, or datagrams that were not an echo of the request.
	Stale int
	// Elapsed is how long the measurement took.
	Elapsed time.Duration
	// Samples are the answered requests' round trips, in ascending order,
	// for a CDF.
	Samples []time.Duration
}

// Latency measures UDP round trips to an echo server from inside a network
// namespace, one request in flight at a time: it sends a datagram, waits
// for the echo of that datagram (matched by sequence number; anything else
// is counted as stale and ignored) and records the round trip, measured on
// the monotonic clock. It warms up first, then measures until Duration or
// Count, whichever comes first, or until ctx is done; then it returns what
// it measured with ctx's error. The loop does not allocate: the samples
// slice is sized for Count up front. The client runs on an OS thread of its
// own, optionally pinned (CPU), which is thrown away afterwards.
func Latency(ctx context.Context, o LatencyOptions) (LatencyResult, error) {
	o, err := o.withDefaults()
	if err != nil {
		return LatencyResult{}, err
	}
	ns, err := openNetns(o.Netns)
	if err != nil {
		return LatencyResult{}, fmt.Errorf("latency: %w", err)
	}
	if ns != nil {
		defer ns.Close()
	}
	samples := make([]time.Duration, 0, o.Count)
	type outcome struct {
		res LatencyResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := runLatency(ctx, ns, o, samples)
		done <- outcome{res, err}
	}()
	out := <-done
	if out.err != nil {
		out.err = fmt.Errorf("latency to %s: %w", o.Target, out.err)
	}
	return out.res, out.err
}

// runLatency is Latency on a goroutine of its own, whose thread it takes
// over (namespace, pinning) and never gives back.
func runLatency(ctx context.Context, ns *os.File, o LatencyOptions, samples []time.Duration) (LatencyResult, error) {
	var res LatencyResult
	if err := lockInto(ns); err != nil {
		return res, err
	}
	if o.CPU != NoCPU {
		var set unix.CPUSet
		set.Set(o.CPU)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return res, fmt.Errorf("pin to cpu %d: %w (is it in the process's allowed CPUs?)", o.CPU, err)
		}
	}
	c, err := dialUDP(o.Target, o.PayloadBytes, o.Timeout, o.BusyPoll)
	if err != nil {
		return res, err
	}
	defer c.close()
	stopWatch := context.AfterFunc(ctx, c.stop)
	defer stopWatch()

	start := time.Now()
	c.epoch = start
	var seq uint64
	for warmEnd := start.Add(o.Warmup); time.Now().Before(warmEnd); {
		seq++
		if _, r, err := c.roundTrip(seq); err != nil {
			return res, err
		} else if r == stopped {
			return res, ctx.Err()
		}
	}
	c.stale = 0
	begin := time.Now()
	end := begin.Add(o.Duration)
	for res.Requests < o.Count && time.Now().Before(end) {
		seq++
		rtt, r, err := c.roundTrip(seq)
		if err != nil {
			return res, err
		}
		if r == stopped {
			break
		}
		res.Requests++
		if r == answered {
			samples = append(samples, rtt)
		} else {
			res.Lost++
		}
	}
	res.Elapsed = time.Since(begin)
	res.Stale = c.stale
	res.Summary = Summarize(samples)
	res.Samples = samples
	return res, ctx.Err()
}

// reply is how a round trip ended.
type reply int

const (
	answered reply = iota
	lost
	stopped // the client was stopped (ctx done)
)

// udpClient is one connected UDP socket and its buffers. Only stop may be
// called from another goroutine.
type udpClient struct {
	fd      int
	req     []byte
	resp    []byte // one byte longer than req: a longer reply does not match
	timeout time.Duration
	busy    bool
	// shortened is set while SO_RCVTIMEO is less than timeout (after a
	// stale reply).
	shortened bool
	epoch     time.Time
	stale     int

	stopped atomic.Bool
	mu      sync.Mutex // guards closed against stop's shutdown
	closed  bool
}

// dialUDP makes a UDP socket connected to target, in the calling thread's
// namespace.
func dialUDP(target netip.AddrPort, payload int, timeout time.Duration, busy bool) (_ *udpClient, err error) {
	domain, sa := sockaddr(target)
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	c := &udpClient{fd: fd, req: make([]byte, payload), resp: make([]byte, payload+1), timeout: timeout, busy: busy}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if err := unix.Connect(fd, sa); err != nil {
		return nil, fmt.Errorf("connect: %w (is there a route to it from this namespace?)", err)
	}
	if busy {
		if err := unix.SetNonblock(fd, true); err != nil {
			return nil, fmt.Errorf("set non-blocking: %w", err)
		}
	} else if err := c.setRcvTimeout(timeout); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *udpClient) setRcvTimeout(d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("set SO_RCVTIMEO: %w", err)
	}
	return nil
}

// stop makes a pending or later roundTrip return stopped: it shuts the
// socket down, which wakes a blocking receive.
func (c *udpClient) stop() {
	c.stopped.Store(true)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
}

func (c *udpClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		unix.Close(c.fd)
	}
}

// roundTrip sends request seq and waits for its echo. An error is returned
// only for a broken socket; a refused or unanswered request is lost.
func (c *udpClient) roundTrip(seq uint64) (time.Duration, reply, error) {
	if c.stopped.Load() {
		return 0, stopped, nil
	}
	if c.shortened {
		if err := c.setRcvTimeout(c.timeout); err != nil {
			return 0, lost, err
		}
		c.shortened = false
	}
	start := time.Now()
	deadline := start.Add(c.timeout)
	binary.LittleEndian.PutUint64(c.req[0:8], seq)
	binary.LittleEndian.PutUint64(c.req[8:16], uint64(start.Sub(c.epoch)))
	for {
		_, err := unix.Write(c.fd, c.req)
		if err == nil {
			break
		}
		if err == unix.EINTR {
			continue
		}
		if c.stopped.Load() {
			return 0, stopped, nil
		}
		if transientSendError(err) {
			return 0, lost, nil
		}
		return 0, lost, fmt.Errorf("send: %w", err)
	}
	for {
		n, err := unix.Read(c.fd, c.resp)
		now := time.Now()
		switch {
		case err == nil && n == len(c.req) && binary.LittleEndian.Uint64(c.resp[0:8]) == seq:
			return now.Sub(start), answered, nil
		case c.stopped.Load():
			return 0, stopped, nil
		case err == nil:
			c.stale++
			remaining := deadline.Sub(now)
			if remaining < time.Microsecond {
				return 0, lost, nil
			}
			if !c.busy {
				// A zero SO_RCVTIMEO would block for ever; remaining is
				// at least 1 µs.
				if err := c.setRcvTimeout(remaining); err != nil {
					return 0, lost, err
				}
				c.shortened = true
			}
		case err == unix.EAGAIN:
			if !c.busy || !now.Before(deadline) {
				return 0, lost, nil
			}
		case err == unix.EINTR:
			if !now.Before(deadline) {
				return 0, lost, nil
			}
		case err == unix.ECONNREFUSED:
			return 0, lost, nil
		default:
			return 0, lost, fmt.Errorf("receive: %w", err)
		}
	}
}

// transientSendError reports errors that lose one request but leave the
// socket usable: a pending ICMP error, a full queue, no route for now.
func transientSendError(err error) bool {
	switch err {
	case unix.ECONNREFUSED, unix.ENOBUFS, unix.EAGAIN, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EHOSTDOWN, unix.ENETDOWN:
		return true
	}
	return false
}
