package bench

import "fmt"

// Metrics: what a measurement yields.
const (
	metricPPS     = "pps"     // frames per second at a sink
	metricGbps    = "gbps"    // iperf3's goodput
	metricLatency = "latency" // request/response round trips
	metricCPS     = "cps"     // TCP connections per second
)

// testCase is one measurement point: what is measured, under which load.
// Every dataplane measures the same cases in each round.
type testCase struct {
	scenario  string
	metric    string
	direction string // WireToPod or PodToWire for frames; "" otherwise
	size      int    // frame bytes; 0 when not frames
	flows     int    // distinct flows offered; 0 when not counted
	vip       bool   // frames to a ClusterIP rather than a pod
	services  int    // Services loaded in the dataplane
	pods      int    // pods on the bed
	conntrack int    // flows put into the connection table before measuring
}

func (c testCase) String() string {
	s := c.scenario
	if c.direction != "" {
		s += " " + c.direction
	}
	if c.size != 0 {
		s += fmt.Sprintf(" %dB", c.size)
	}
	if c.flows != 0 {
		s += fmt.Sprintf(" flows=%d", c.flows)
	}
	if c.scenario == Scale {
		s += fmt.Sprintf(" %s services=%d pods=%d", c.metric, c.services, c.pods)
		if c.conntrack != 0 {
			s += fmt.Sprintf(" conntrack=%d", c.conntrack)
		}
	}
	return s
}

// plan lists the cases of the scenarios o asks for, grouped by the number
// of pods on the bed (each group has a bed of its own), the main group
// (one pod) first. nBed is the number of Services the bed defines.
func plan(o Options, nBed int) map[int][]testCase {
	groups := map[int][]testCase{}
	add := func(c testCase) {
		if c.services == 0 {
			c.services = nBed
		}
		if c.pods == 0 {
			c.pods = 1
		}
		groups[c.pods] = append(groups[c.pods], c)
	}
	dirs := []string{WireToPod, PodToWire}
	if o.Quick {
		dirs = dirs[:1]
	}
	if o.wants(Throughput) {
		for _, size := range o.Sizes {
			for _, d := range dirs {
				add(testCase{scenario: Throughput, metric: metricPPS, direction: d, size: size, flows: throughputFlows})
			}
		}
	}
	if o.wants(Service) {
		for _, f := range []int{1, ManyFlows} {
			add(testCase{scenario: Service, metric: metricPPS, direction: WireToPod, size: 64, flows: f, vip: true})
		}
	}
	if o.AgentBinary != "" { // the pods' servers are trunkline's serve-echo
		if o.wants(TCP) {
			add(testCase{scenario: TCP, metric: metricGbps, flows: 1})
		}
		if o.wants(Latency) {
			add(testCase{scenario: Latency, metric: metricLatency, flows: 1})
		}
		if o.wants(CPS) {
			add(testCase{scenario: CPS, metric: metricCPS})
		}
	}
	if o.wants(Scale) && o.AgentBinary != "" {
		scalePPS := testCase{scenario: Scale, metric: metricPPS, direction: WireToPod, size: 64, flows: ManyFlows, vip: true}
		scaleCPS := testCase{scenario: Scale, metric: metricCPS}
		// Pods first: each bed's first points show the agent's memory
		// before many Services or flows have been loaded into it.
		for _, n := range o.ScalePods {
			for _, c := range []testCase{scalePPS, scaleCPS} {
				c.pods = n
				add(c)
			}
		}
		for _, n := range o.ScaleServices {
			for _, c := range []testCase{scalePPS, scaleCPS} {
				c.services = n
				add(c)
			}
		}
		for _, n := range o.ScaleConntrack {
			for _, c := range []testCase{scalePPS, scaleCPS} {
				c.conntrack = n
				add(c)
			}
		}
	}
	return groups
}
