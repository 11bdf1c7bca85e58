package bench

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/trunkline/trunkline/bench/load"
)

// vipOf is the address of the bed's Service name.
func (s *session) vipOf(name string) netip.AddrPort {
	sv := s.b.Service(name)
	return netip.AddrPortFrom(sv.VIP, sv.Port)
}

// measureLatency sends UDP requests from the wire to the echo Service, one
// in flight, the client on the generator's core.
func (s *session) measureLatency(ctx context.Context, c testCase) (sample, error) {
	res, err := load.Latency(ctx, load.LatencyOptions{
		Netns: s.b.Wire.Netns, Target: s.vipOf("default/echo-udp"),
		Warmup: s.warmup(), Duration: s.o.Duration, CPU: genCPU,
		Count: 200000,
	})
	if err != nil {
		return sample{}, err
	}
	if res.Count == 0 {
		return sample{}, fmt.Errorf("latency: no replies from %v (%d requests lost)", s.vipOf("default/echo-udp"), res.Lost)
	}
	sm := sample{P50: res.P50, P99: res.P99, P999: res.P999, Latencies: res.Samples}
	if res.Requests > 0 {
		sm.LostShare = float64(res.Lost) / float64(res.Requests)
	}
	return sm, nil
}

// measureTCP runs iperf3 from the wire to the pod through the iperf
// Service, one stream.
func (s *session) measureTCP(ctx context.Context, c testCase) (sample, error) {
	vip := s.vipOf("default/iperf")
	res, err := load.Iperf(ctx, load.IperfOptions{
		ServerNetns: s.pod.Netns, ClientNetns: s.b.Wire.Netns,
		Server: vip.Addr(), Port: vip.Port(), Duration: max(s.o.Duration, time.Second), Streams: 1,
	})
	if err != nil {
		return sample{}, err
	}
	return sample{Gbps: res.Gbps()}, nil
}

// Connections a cps measurement keeps in flight, and the client threads
// that drive them.
const (
	cpsWorkers = 16
	cpsThreads = 1
)

// measureCPS opens TCP connections from the wire to the echo Service as
// fast as the pod answers: connect, a few bytes each way, close (RST).
func (s *session) measureCPS(ctx context.Context, c testCase) (sample, error) {
	res, err := load.ConnectRate(ctx, load.ConnectOptions{
		Netns: s.b.Wire.Netns, Target: s.vipOf("default/echo-tcp"),
		Workers: cpsWorkers, Threads: cpsThreads, Warmup: s.warmup(), Duration: s.o.Duration,
	})
	if err != nil {
		return sample{}, err
	}
	if res.Connections == 0 {
		return sample{}, fmt.Errorf("cps: no connection to %v completed (%d refused, %d timed out, %d reset, %d other: %s)",
			s.vipOf("default/echo-tcp"), res.Errors.Refused, res.Errors.Timeout, res.Errors.Reset, res.Errors.Other, res.FirstOther)
	}
	return sample{CPS: res.CPS, FailedPerSec: float64(res.Errors.Total()) / res.Window.Seconds()}, nil
}
