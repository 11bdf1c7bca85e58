package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Defaults and bounds of IperfOptions.
const (
	DefaultIperfBinary       = "iperf3"
	DefaultIperfPort         = 5201
	DefaultIperfDuration     = 3 * time.Second
	DefaultIperfStartTimeout = 3 * time.Second
	MaxIperfStreams          = 128
	// iperfSlack is how much longer than its duration a run may take
	// (connecting, the exchange of results) before it is killed.
	iperfSlack = 15 * time.Second
	// iperfConnectTimeout is the client's --connect-timeout, in ms.
	iperfConnectTimeout = 3000
)

var (
	// ErrIperfMissing reports that the iperf3 binary (or ip, to enter a
	// namespace) is not installed.
	ErrIperfMissing = errors.New("iperf3 not found")
	// ErrIperf reports an iperf3 run that failed; the message carries
	// iperf3's own error.
	ErrIperf = errors.New("iperf3 failed")
)

// IperfOptions configures Iperf. The zero value of a field picks its
// default; Server is required.
type IperfOptions struct {
	// Binary is the iperf3 program, a path or a name on PATH. Default
	// "iperf3".
	Binary string
	// ServerNetns and ClientNetns are the namespaces (names under
	// /run/netns, as `ip netns exec` takes them) the server and the client
	// run in; "" is the namespace the process started in.
	ServerNetns string
	ClientNetns string
	// Server is the address the client connects to: the server's, or a
	// Service VIP in front of it.
	Server netip.Addr
	// Port is the server's port (-p). Default 5201.
	Port uint16
	// ServerRunning says a server already listens at Server:Port (a pod's
	// own iperf3 -s): Iperf starts none.
	ServerRunning bool
	// Duration is the client's -t, rounded up to whole seconds, 1 s up to
	// MaxDuration. Default 3 s.
	Duration time.Duration
	// Streams is the number of parallel streams (-P), 1..128. Default 1.
	Streams int
	// UDP sends UDP (-u) instead of TCP.
	UDP bool
	// Bitrate is the target rate in bits/s (-b); 0 keeps iperf3's default
	// (1 Mbit/s for UDP, unlimited for TCP).
	Bitrate uint64
	// Length is the buffer (TCP) or datagram (UDP) size in bytes (-l); 0
	// keeps iperf3's default.
	Length int
	// Reverse makes the server send and the client receive (-R).
	Reverse bool
	// StartTimeout bounds the wait for the server to listen. Default 3 s.
	StartTimeout time.Duration
}

func (o IperfOptions) withDefaults() (IperfOptions, error) {
	if o.Binary == "" {
		o.Binary = DefaultIperfBinary
	}
	if o.Port == 0 {
		o.Port = DefaultIperfPort
	}
	if o.Duration == 0 {
		o.Duration = DefaultIperfDuration
	}
	if o.Streams == 0 {
		o.Streams = 1
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = DefaultIperfStartTimeout
	}
	var errs []error
	if err := checkTarget(netip.AddrPortFrom(o.Server, o.Port)); err != nil {
		errs = append(errs, fmt.Errorf("server: %w", err))
	}
	for _, ns := range []string{o.ServerNetns, o.ClientNetns} {
		if strings.ContainsRune(ns, '/') {
			errs = append(errs, fmt.Errorf("netns %q: want a name under %s (`ip netns exec` takes names)", ns, netnsDir))
		}
	}
	if o.Duration < 0 || o.Duration > MaxDuration {
		errs = append(errs, fmt.Errorf("duration %v: want 1s..%v", o.Duration, MaxDuration))
	}
	if o.Streams < 1 || o.Streams > MaxIperfStreams {
		errs = append(errs, fmt.Errorf("streams %d: want 1..%d", o.Streams, MaxIperfStreams))
	}
	if o.Length < 0 {
		errs = append(errs, fmt.Errorf("length %d: want 0 (iperf3's default) or more", o.Length))
	}
	if o.StartTimeout < 0 {
		errs = append(errs, fmt.Errorf("start timeout %v: want more than 0", o.StartTimeout))
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("iperf: %w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return o, nil
}

// seconds is Duration as iperf3's -t.
func (o IperfOptions) seconds() int {
	return max(1, int(math.Ceil(o.Duration.Seconds())))
}

// clientArgs are the client's arguments.
func (o IperfOptions) clientArgs() []string {
	args := []string{"-c", o.Server.String(), "-p", strconv.Itoa(int(o.Port)),
		"-t", strconv.Itoa(o.seconds()), "-J", "--connect-timeout", strconv.Itoa(iperfConnectTimeout)}
	if o.Streams > 1 {
		args = append(args, "-P", strconv.Itoa(o.Streams))
	}
	if o.UDP {
		args = append(args, "-u")
	}
	if o.Bitrate > 0 {
		args = append(args, "-b", strconv.FormatUint(o.Bitrate, 10))
	}
	if o.Length > 0 {
		args = append(args, "-l", strconv.Itoa(o.Length))
	}
	if o.Reverse {
		args = append(args, "-R")
	}
	return args
}

// IperfResult is what an iperf3 run reported.
type IperfResult struct {
	// Protocol is "TCP" or "UDP".
	Protocol string
	Streams  int
	// Seconds is how long the receiver measured.
	Seconds float64
	// SentBytes and SentBitsPerSecond are the sender's totals (the client,
	// or the server with Reverse); ReceivedBytes and
	// ReceivedBitsPerSecond the receiver's.
	SentBytes             int64
	SentBitsPerSecond     float64
	ReceivedBytes         int64
	ReceivedBitsPerSecond float64
	// Retransmits is the sender's TCP retransmissions (TCP only).
	Retransmits int
	// Packets, LostPackets, LostPercent and Jitter are the receiver's UDP
	// figures (UDP only).
	Packets     int
	LostPackets int
	LostPercent float64
	Jitter      time.Duration
}

// Gbps is the received rate in Gbit/s.
func (r IperfResult) Gbps() float64 { return r.ReceivedBitsPerSecond / 1e9 }

// Iperf runs iperf3 between two namespaces: a one-off server (`iperf3 -s
// -1`, unless ServerRunning) in ServerNetns, then the client (`iperf3 -c
// … -J`) in ClientNetns, and returns the client's figures. Whatever it
// started is killed and waited for before it returns, on success, failure
// or ctx's end. The run is bounded by its duration plus 15 s.
func Iperf(ctx context.Context, o IperfOptions) (_ IperfResult, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return IperfResult{}, err
	}
	bin, err := exec.LookPath(o.Binary)
	if err != nil {
		return IperfResult{}, fmt.Errorf("iperf: %w: %w (install it: apt-get install iperf3)", ErrIperfMissing, err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return IperfResult{}, fmt.Errorf("iperf: %w", err)
	}
	if o.ServerNetns != "" || o.ClientNetns != "" {
		if _, err := exec.LookPath("ip"); err != nil {
			return IperfResult{}, fmt.Errorf("iperf: %w: ip, to enter a namespace: %w (install it: apt-get install iproute2)", ErrIperfMissing, err)
		}
	}
	for _, ns := range []string{o.ServerNetns, o.ClientNetns} {
		if ns == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err != nil {
			return IperfResult{}, fmt.Errorf("iperf: netns %s: %w (does it exist? `ip netns list`)", ns, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(o.seconds())*time.Second+iperfSlack)
	defer cancel()

	if !o.ServerRunning {
		srv, err := startIperfServer(ctx, bin, o)
		if err != nil {
			return IperfResult{}, fmt.Errorf("iperf: %w", err)
		}
		defer srv.stop()
	}

	client := netnsCommand(ctx, o.ClientNetns, bin, o.clientArgs()...)
	var stdout, stderr bytes.Buffer
	client.Stdout, client.Stderr = &stdout, &stderr
	runErr := client.Run()
	res, perr := parseIperf(stdout.Bytes())
	switch {
	case perr == nil && runErr == nil:
		return res, nil
	case ctx.Err() != nil:
		return res, fmt.Errorf("iperf client to %s: %w", o.Server, ctx.Err())
	case errors.Is(perr, ErrIperf): // iperf3's own error, the most telling
		return res, fmt.Errorf("iperf client to %s:%d: %w", o.Server, o.Port, perr)
	case runErr != nil:
		return res, fmt.Errorf("iperf client to %s:%d: %w: %w: %s", o.Server, o.Port, ErrIperf, runErr, firstLine(stderr.String()))
	default:
		return res, fmt.Errorf("iperf client to %s:%d: %w", o.Server, o.Port, perr)
	}
}

// netnsCommand is name with args, run in netns through `ip netns exec` (""
// runs it directly). `ip netns exec` execs the program, so the Process is
// the program itself.
func netnsCommand(ctx context.Context, netns, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if netns == "" {
		cmd = exec.CommandContext(ctx, name, args...)
	} else {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns, name}, args...)...)
	}
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// iperfServer is a running `iperf3 -s -1`.
type iperfServer struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd.Wait returned
	output bytes.Buffer  // stdout and stderr, readable once exited is closed
}

// startIperfServer starts the server and waits until it listens.
func startIperfServer(ctx context.Context, bin string, o IperfOptions) (_ *iperfServer, err error) {
	s := &iperfServer{exited: make(chan struct{})}
	s.cmd = netnsCommand(ctx, o.ServerNetns, bin, "-s", "-1", "-p", strconv.Itoa(int(o.Port)))
	s.cmd.Stdout, s.cmd.Stderr = &s.output, &s.output
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start iperf3 server: %w", err)
	}
	go func() {
		s.cmd.Wait()
		close(s.exited)
	}()
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	deadline := time.NewTimer(o.StartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	comm := filepath.Base(bin)
	for {
		if listening(s.cmd.Process.Pid, comm, o.Port) {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("%w: server on port %d in netns %q exited: %s (port in use? try another Port)",
				ErrIperf, o.Port, o.ServerNetns, firstLine(s.output.String()))
		case <-ctx.Done():
			return nil, fmt.Errorf("iperf3 server: %w", ctx.Err())
		case <-deadline.C:
			return nil, fmt.Errorf("%w: server not listening on port %d after %v", ErrIperf, o.Port, o.StartTimeout)
		case <-tick.C:
		}
	}
}

// stop kills the server unless it has exited (a one-off server exits after
// its test), and waits for it.
func (s *iperfServer) stop() {
	select {
	case <-s.exited:
		return
	case <-time.After(200 * time.Millisecond):
	}
	s.cmd.Process.Kill()
	<-s.exited
}

// listening reports whether process pid is comm (it may still be `ip`,
// before its exec) and has a TCP socket listening on port, in its own
// network namespace.
func listening(pid int, comm string, port uint16) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(b)) != truncComm(comm) {
		return false
	}
	suffix := fmt.Sprintf(":%04X", port)
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st …; st 0A is LISTEN.
			fields := strings.Fields(sc.Text())
			if len(fields) > 3 && strings.HasSuffix(fields[1], suffix) && fields[3] == "0A" {
				f.Close()
				return true
			}
		}
		f.Close()
	}
	return false
}

// truncComm is name as /proc/PID/comm shows it (at most 15 bytes).
func truncComm(name string) string {
	if len(name) > 15 {
		return name[:15]
	}
	return name
}

// firstLine is the first non-empty line of s, or "no output".
func firstLine(s string) string {
	for line := range strings.Lines(s) {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return "no output"
}

// iperfJSON is the part of iperf3's -J output Iperf reads.
type iperfJSON struct {
	Start struct {
		TestStart struct {
			Protocol   string `json:"protocol"`
			NumStreams int    `json:"num_streams"`
		} `json:"test_start"`
	} `json:"start"`
	End struct {
		SumSent     *iperfSum `json:"sum_sent"`
		SumReceived *iperfSum `json:"sum_received"`
		// Sum is UDP's only summary before iperf 3.10 or so.
		Sum *iperfSum `json:"sum"`
	} `json:"end"`
	Error string `json:"error"`
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int     `json:"retransmits"`
	JitterMs      float64 `json:"jitter_ms"`
	LostPackets   int     `json:"lost_packets"`
	Packets       int     `json:"packets"`
	LostPercent   float64 `json:"lost_percent"`
}

// parseIperf reads iperf3's -J output. iperf3's own "error" is returned
// wrapped in ErrIperf.
func parseIperf(data []byte) (IperfResult, error) {
	var j iperfJSON
	if len(bytes.TrimSpace(data)) == 0 {
		return IperfResult{}, errors.New("iperf3 printed no JSON")
	}
	if err := json.Unmarshal(data, &j); err != nil {
		return IperfResult{}, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if j.Error != "" {
		return IperfResult{}, fmt.Errorf("%w: %s", ErrIperf, j.Error)
	}
	res := IperfResult{Protocol: j.Start.TestStart.Protocol, Streams: j.Start.TestStart.NumStreams}
	sent, recv := j.End.SumSent, j.End.SumReceived
	if sent == nil {
		sent = j.End.Sum
	}
	if recv == nil {
		recv = j.End.Sum
	}
	if sent == nil || recv == nil {
		return res, errors.New("iperf3 JSON: no sum_sent/sum_received (or sum) in \"end\"")
	}
	res.SentBytes, res.SentBitsPerSecond = sent.Bytes, sent.BitsPerSecond
	res.ReceivedBytes, res.ReceivedBitsPerSecond = recv.Bytes, recv.BitsPerSecond
	res.Seconds = recv.Seconds
	if res.Protocol == "UDP" {
		res.Packets, res.LostPackets, res.LostPercent = recv.Packets, recv.LostPackets, recv.LostPercent
		res.Jitter = time.Duration(math.Round(recv.JitterMs * float64(time.Millisecond)))
	} else {
		res.Retransmits = sent.Retransmits
	}
	return res, nil
}
