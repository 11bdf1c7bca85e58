// Package agent is trunkline's control plane on a node: it reads the
// configuration, loads and attaches the XDP programs, opens the AF_XDP
// sockets, runs one dataplane worker per trunk queue, feeds them the
// attachment table and serves the local API.
package agent

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/vlan"
	"github.com/trunkline/trunkline/xdp"
	"go.yaml.in/yaml/v3"
)

// DefaultAPISocket is where the agent serves its local API.
const DefaultAPISocket = "/run/trunkline/trunkline.sock"

// Config is the agent's configuration file. examples/trunkline.yaml
// documents every key.
type Config struct {
	// Trunk is the trunk ENI's interface name.
	Trunk string `yaml:"trunk"`
	// NodeIP is the node's own IPv4 address; pods' traffic to it goes to
	// the node's kernel.
	NodeIP string `yaml:"nodeIP"`
	// GatewayMAC is the VPC gateway's MAC, the destination of every frame
	// sent on the trunk.
	GatewayMAC string `yaml:"gatewayMAC"`
	// Queues is the number of trunk RX queues served, one worker each.
	Queues int `yaml:"queues"`
	// XDPMode is native (default) or generic.
	XDPMode string `yaml:"xdpMode"`
	// APISocket is the local API's unix socket.
	APISocket string `yaml:"apiSocket"`
	// MetricsAddr serves /metrics, /healthz and /readyz over HTTP
	// (default 127.0.0.1:9797, loopback only; "off" for none).
	MetricsAddr string `yaml:"metricsAddr"`
	// WorkerCPUs pins worker i to WorkerCPUs[i % len]; empty: not pinned.
	WorkerCPUs []int `yaml:"workerCPUs"`
	// WorkerPolicy is the workers' scheduling: "fifo" (default: SCHED_FIFO
	// at WorkerPriority, so a worker takes frames before the kernel's NAPI
	// thread on its core receives more than it can take) or "normal".
	WorkerPolicy string `yaml:"workerPolicy"`
	// WorkerPriority is the SCHED_FIFO priority, 1..99 (default 1).
	WorkerPriority int `yaml:"workerPriority"`
	// BusyPollMicros turns on preferred busy polling of the trunk's
	// queues (0: off, the default): a worker's poll runs the queue's NAPI
	// itself for up to this long instead of waking the kernel's NAPI thread.
	BusyPollMicros int `yaml:"busyPollMicros"`
	// Batch is the descriptors per ring operation (default 64).
	Batch int `yaml:"batch"`
	// UMEM sizes each worker's frame memory.
	UMEM UMEMConfig `yaml:"umem"`
	// Pods are static attachments, standing until the CNI registers pods.
	Pods []PodConfig `yaml:"pods"`
	// Services are static Service ports (the Kubernetes watch adds its own).
	Services []ServiceConfig `yaml:"services"`
	// SNATPorts is the range of node ports SNAT uses, "lo-hi" (default
	// 61000-65000). Keep it out of the kernel's ephemeral range
	// (net.ipv4.ip_local_port_range) and of the NodePort range.
	SNATPorts string `yaml:"snatPorts"`
	// Conntrack sizes the connection table.
	Conntrack ConntrackConfig `yaml:"conntrack"`
	// GatewayIP is the VPC gateway's address: the default gateway the CNI
	// plugin gives pods.
	GatewayIP string `yaml:"gatewayIP"`
	// Branches are the branch attachments this node owns and hands out to
	// the pods the CNI plugin registers (a cloud ENI API can provide them
	// later, behind BranchProvider).
	Branches []BranchConfig `yaml:"branches"`
	// RegistryFile persists the registered pods across agent restarts
	// (default /var/lib/trunkline/registry.json).
	RegistryFile string `yaml:"registryFile"`
	// StateFile keeps the connection table, session affinities and SNAT
	// ports across agent restarts: written at SIGTERM and every
	// StateInterval, read at start before traffic is taken (default
	// trunkline.state next to APISocket, on tmpfs; "off": start empty
	// every time).
	StateFile string `yaml:"stateFile"`
	// StateInterval is how often the state file is written while the
	// agent runs, bounding what a crash loses (default 5s; "off": only at
	// SIGTERM).
	StateInterval string `yaml:"stateInterval"`
	// NonMasqueradeCIDRs are the VPC's prefixes. When set, pods' TCP and
	// UDP traffic to anywhere else is masqueraded: SNATed to nodeIP and
	// sent untagged, as the node's own traffic. Empty: no masquerade.
	NonMasqueradeCIDRs []string `yaml:"nonMasqueradeCIDRs"`
}

// BranchConfig is one branch attachment of the node: a VLAN on the trunk,
// the address and MAC that go with it.
type BranchConfig struct {
	VLAN int    `yaml:"vlan"`
	IP   string `yaml:"ip"`
	MAC  string `yaml:"mac"`
}

// ConntrackConfig sizes the connection table.
type ConntrackConfig struct {
	// MaxEntries bounds the tracked connections (default 1048576); when
	// full, new flows are dropped and established ones kept.
	MaxEntries int `yaml:"maxEntries"`
}

// ServiceConfig is one Service port.
type ServiceConfig struct {
	// Name is namespace/name (and :port) for people and metrics.
	Name string `yaml:"name" json:"name,omitempty"`
	// Protocol is TCP (default) or UDP.
	Protocol   string `yaml:"protocol" json:"protocol,omitempty"`
	Port       int    `yaml:"port" json:"port,omitempty"`
	TargetPort int    `yaml:"targetPort" json:"targetPort,omitempty"`
	ClusterIP  string `yaml:"clusterIP" json:"clusterIP,omitempty"`
	// NodePort is served on nodeIP:nodePort; 0: none.
	NodePort        int      `yaml:"nodePort" json:"nodePort,omitempty"`
	ExternalIPs     []string `yaml:"externalIPs" json:"externalIPs,omitempty"`
	LoadBalancerIPs []string `yaml:"loadBalancerIPs" json:"loadBalancerIPs,omitempty"`
	// ExternalTrafficPolicy is Cluster (default: SNAT to the node, any
	// backend) or Local (node-local backends only, client IP kept).
	ExternalTrafficPolicy string `yaml:"externalTrafficPolicy" json:"externalTrafficPolicy,omitempty"`
	// SessionAffinity is None (default) or ClientIP.
	SessionAffinity        string `yaml:"sessionAffinity" json:"sessionAffinity,omitempty"`
	SessionAffinitySeconds int    `yaml:"sessionAffinitySeconds" json:"sessionAffinitySeconds,omitempty"`
	// Backends are pod names of this file or IPv4 addresses (pods on other
	// nodes), each served on TargetPort.
	Backends []string `yaml:"backends" json:"backends,omitempty"`
	// TerminatingBackends are backends that are shutting down (serving,
	// not ready): their flows go on, they get no new ones.
	TerminatingBackends []string `yaml:"terminatingBackends" json:"terminatingBackends,omitempty"`
}

// UMEMConfig sizes a worker's frame memory.
type UMEMConfig struct {
	// Frames per worker (default 4096 + 64 × podFill: enough for 64 pods;
	// with more pods per node, 4096 + pods × podFill).
	Frames int `yaml:"frames"`
	// FrameSize is 2048 (default) or 4096; a frame with its 802.1Q tag
	// must fit FrameSize-256 bytes: MTU 1500 needs 2048, up to 3800 needs
	// 4096.
	FrameSize int `yaml:"frameSize"`
	// PodFill is how many frames an idle pod's socket keeps posted for
	// receive (default 256); a busy pod's grows to its ring size (512). A
	// burst from a pod longer than what is posted is dropped by the kernel
	// (stats: kernel.fillRingEmpty).
	PodFill int `yaml:"podFill"`
}

// PodConfig is one pod's branch attachment.
type PodConfig struct {
	Name     string `yaml:"name"`
	VLAN     int    `yaml:"vlan"`
	IP       string `yaml:"ip"`
	MAC      string `yaml:"mac"`
	HostVeth string `yaml:"hostVeth"`
}

// settings is a Config after validation, in the types the agent uses.
type settings struct {
	cfg        Config
	nodeIP     netip.Addr
	gatewayMAC [6]byte
	mode       xdp.AttachMode
	pods       []podSettings
	services   []lb.ServiceSpec
	gatewayIP  netip.Addr
	branches   []podSettings // Name empty
	nonMasq    []netip.Prefix
	snatLo     uint16
	snatHi     uint16
	// stateInterval is StateInterval; 0 for off.
	stateInterval time.Duration
}

type podSettings struct {
	PodConfig
	ip  netip.Addr
	mac [6]byte
}

// maxFrameSize is the largest UMEM frame: a page, as XDP wants a frame.
const maxFrameSize = 4096

// ErrInvalidConfig is wrapped by every configuration error.
var ErrInvalidConfig = errors.New("invalid configuration")

// LoadConfig reads and parses a configuration file; unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, path, err)
	}
	return c, nil
}

func (c *Config) setDefaults() {
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.XDPMode == "" {
		c.XDPMode = "native"
	}
	if c.APISocket == "" {
		c.APISocket = DefaultAPISocket
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = DefaultMetricsAddr
	}
	if c.WorkerPolicy == "" {
		c.WorkerPolicy = "fifo"
	}
	if c.WorkerPriority == 0 {
		c.WorkerPriority = 1
	}
	if c.UMEM.FrameSize == 0 {
		c.UMEM.FrameSize = 2048
	}
	if c.RegistryFile == "" {
		c.RegistryFile = "/var/lib/trunkline/registry.json"
	}
	if c.SNATPorts == "" {
		c.SNATPorts = "61000-65000"
	}
	if c.StateFile == "" {
		// Next to the API socket: /run is tmpfs, so the periodic writes
		// cost memory, not disk, and a reboot (which ends every flow)
		// starts empty.
		c.StateFile = filepath.Join(filepath.Dir(c.APISocket), "trunkline.state")
	}
	if c.StateInterval == "" {
		c.StateInterval = "5s"
	}
	if c.UMEM.PodFill == 0 {
		c.UMEM.PodFill = 256
	}
	if c.UMEM.Frames == 0 {
		// The trunk's fill ring, its TX in flight, and podFill for each of
		// 64 pods (kubelet allows 110; size it for your nodes).
		c.UMEM.Frames = 2*trunkRing + c.UMEM.PodFill*64
	}
}

// validate checks the whole configuration and reports every problem, each
// with its field path.
func (c Config) validate() (settings, error) {
	c.setDefaults()
	s := settings{cfg: c}
	var errs []error
	bad := func(path, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{path}, a...)...))
	}
	if c.Trunk == "" {
		bad("trunk", "required: the trunk ENI's interface name")
	} else if len(c.Trunk) > 15 {
		bad("trunk", "%q is longer than an interface name (15)", c.Trunk)
	}
	if ip, err := netip.ParseAddr(c.NodeIP); err != nil || !ip.Is4() {
		bad("nodeIP", "%q is not an IPv4 address", c.NodeIP)
	} else {
		s.nodeIP = ip
	}
	if mac, err := parseUnicastMAC(c.GatewayMAC); err != nil {
		bad("gatewayMAC", "%v", err)
	} else {
		s.gatewayMAC = mac
	}
	if c.Queues < 1 || c.Queues > 64 {
		bad("queues", "%d: want 1..64", c.Queues)
	}
	if m, err := xdp.ParseAttachMode(c.XDPMode); err != nil {
		bad("xdpMode", "%q: want native or generic", c.XDPMode)
	} else {
		s.mode = m
	}
	for i, cpu := range c.WorkerCPUs {
		if cpu < 0 || cpu >= 1024 {
			bad(fmt.Sprintf("workerCPUs[%d]", i), "%d: not a CPU number", cpu)
		}
	}
	if c.WorkerPolicy != "fifo" && c.WorkerPolicy != "normal" {
		bad("workerPolicy", "%q: want fifo or normal", c.WorkerPolicy)
	}
	if c.BusyPollMicros < 0 || c.BusyPollMicros > 10000 {
		bad("busyPollMicros", "%d: want 0 (off)..10000", c.BusyPollMicros)
	}
	if c.WorkerPriority < 1 || c.WorkerPriority > 99 {
		bad("workerPriority", "%d: want 1..99", c.WorkerPriority)
	}
	if c.Batch != 0 && (c.Batch < 1 || c.Batch > 1024) {
		bad("batch", "%d: want 1..1024", c.Batch)
	}
	if c.UMEM.FrameSize != 2048 && c.UMEM.FrameSize != maxFrameSize {
		bad("umem.frameSize", "%d: want 2048 or %d", c.UMEM.FrameSize, maxFrameSize)
	}
	if c.UMEM.Frames < 4*trunkRing || c.UMEM.Frames > 1<<20 {
		bad("umem.frames", "%d: want %d..1048576", c.UMEM.Frames, 4*trunkRing)
	}
	if c.StateInterval != "off" {
		if d, err := time.ParseDuration(c.StateInterval); err != nil || d < 100*time.Millisecond || d > time.Hour {
			bad("stateInterval", "%q: want a duration from 100ms to 1h (such as 5s), or off", c.StateInterval)
		} else {
			s.stateInterval = d
		}
	}
	if c.UMEM.PodFill < 8 || c.UMEM.PodFill > podRing {
		bad("umem.podFill", "%d: want 8..%d", c.UMEM.PodFill, podRing)
	}
	seen := map[string]string{}
	claim := func(path, kind, v string) {
		if v == "" {
			return
		}
		k := kind + "=" + v
		if prev, ok := seen[k]; ok {
			bad(path, "%s %s is also used by %s", kind, v, prev)
			return
		}
		seen[k] = path
	}
	for i, p := range c.Pods {
		path := fmt.Sprintf("pods[%d]", i)
		ps := podSettings{PodConfig: p}
		if p.Name == "" {
			bad(path+".name", "required")
		}
		claim(path+".name", "name", p.Name)
		if p.VLAN < vlan.MinVID || p.VLAN > vlan.MaxVID {
			bad(path+".vlan", "%d: want %d..%d", p.VLAN, vlan.MinVID, vlan.MaxVID)
		}
		claim(path+".vlan", "VLAN", fmt.Sprint(p.VLAN))
		if ip, err := netip.ParseAddr(p.IP); err != nil || !ip.Is4() {
			bad(path+".ip", "%q is not an IPv4 address", p.IP)
		} else if ip == s.nodeIP {
			bad(path+".ip", "%s is the node's own address", ip)
		} else {
			ps.ip = ip
		}
		claim(path+".ip", "IP", p.IP)
		if mac, err := parseUnicastMAC(p.MAC); err != nil {
			bad(path+".mac", "%v", err)
		} else {
			ps.mac = mac
		}
		claim(path+".mac", "MAC", p.MAC)
		switch {
		case p.HostVeth == "":
			bad(path+".hostVeth", "required: the pod veth's host end")
		case len(p.HostVeth) > 15:
			bad(path+".hostVeth", "%q is longer than an interface name (15)", p.HostVeth)
		case p.HostVeth == c.Trunk:
			bad(path+".hostVeth", "%q is the trunk", p.HostVeth)
		}
		claim(path+".hostVeth", "host veth", p.HostVeth)
		s.pods = append(s.pods, ps)
	}
	if len(c.Pods) > vlan.MaxAttachments {
		bad("pods", "%d pods: at most %d", len(c.Pods), vlan.MaxAttachments)
	}
	if lo, hi, err := parsePortRange(c.SNATPorts); err != nil {
		bad("snatPorts", "%v", err)
	} else {
		s.snatLo, s.snatHi = lo, hi
	}
	if c.Conntrack.MaxEntries < 0 || c.Conntrack.MaxEntries > 1<<28 {
		bad("conntrack.maxEntries", "%d: want 0 (default) ..268435456", c.Conntrack.MaxEntries)
	}
	if c.GatewayIP != "" {
		if ip, err := netip.ParseAddr(c.GatewayIP); err != nil || !ip.Is4() {
			bad("gatewayIP", "%q is not an IPv4 address", c.GatewayIP)
		} else {
			s.gatewayIP = ip
		}
	} else if len(c.Branches) > 0 {
		bad("gatewayIP", "required with branches: the pods' default gateway")
	}
	for i, br := range c.Branches {
		path := fmt.Sprintf("branches[%d]", i)
		ps := podSettings{PodConfig: PodConfig{VLAN: br.VLAN, IP: br.IP, MAC: br.MAC}}
		if br.VLAN < vlan.MinVID || br.VLAN > vlan.MaxVID {
			bad(path+".vlan", "%d: want %d..%d", br.VLAN, vlan.MinVID, vlan.MaxVID)
		}
		claim(path+".vlan", "VLAN", fmt.Sprint(br.VLAN))
		if ip, err := netip.ParseAddr(br.IP); err != nil || !ip.Is4() {
			bad(path+".ip", "%q is not an IPv4 address", br.IP)
		} else {
			ps.ip = ip
		}
		claim(path+".ip", "IP", br.IP)
		if mac, err := parseUnicastMAC(br.MAC); err != nil {
			bad(path+".mac", "%v", err)
		} else {
			ps.mac = mac
		}
		claim(path+".mac", "MAC", br.MAC)
		s.branches = append(s.branches, ps)
	}
	for i, c := range c.NonMasqueradeCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil || !p.Addr().Is4() {
			bad(fmt.Sprintf("nonMasqueradeCIDRs[%d]", i), "%q is not an IPv4 prefix like 10.0.0.0/8", c)
			continue
		}
		s.nonMasq = append(s.nonMasq, p.Masked())
	}
	if len(errs) == 0 {
		specs, err := s.serviceSpecs(c.Services)
		if err != nil {
			errs = append(errs, err)
		}
		s.services = specs
	}
	if len(errs) > 0 {
		return s, fmt.Errorf("%w:\n  %w", ErrInvalidConfig, joinIndented(errs))
	}
	return s, nil
}

func parseUnicastMAC(s string) ([6]byte, error) {
	var out [6]byte
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return out, fmt.Errorf("%q is not a MAC address", s)
	}
	copy(out[:], hw)
	if out[0]&1 != 0 || out == [6]byte{} {
		return out, fmt.Errorf("%s is not a unicast address", hw)
	}
	return out, nil
}

type indented []error

func (e indented) Error() string {
	var b bytes.Buffer
	for i, err := range e {
		if i > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e indented) Unwrap() []error { return e }

func joinIndented(errs []error) error { return indented(errs) }

func parsePortRange(s string) (lo, hi uint16, err error) {
	a, b, ok := strings.Cut(s, "-")
	l, err1 := strconv.Atoi(strings.TrimSpace(a))
	h, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil || l < 1024 || h > 65535 || l > h {
		return 0, 0, fmt.Errorf("%q: want a range like 61000-65000 within 1024-65535", s)
	}
	return uint16(l), uint16(h), nil
}

// spec checks one Service and turns it into the load balancer's spec.
func (sc ServiceConfig) spec(path string, podIPs map[string]netip.Addr, nodeIP netip.Addr) (lb.ServiceSpec, []error) {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: "+format, append([]any{path, field}, a...)...))
	}
	sp := lb.ServiceSpec{Name: sc.Name}
	if sc.Name == "" {
		bad("name", "required")
	}
	switch strings.ToUpper(sc.Protocol) {
	case "", "TCP":
		sp.Proto = lb.TCP
	case "UDP":
		sp.Proto = lb.UDP
	default:
		bad("protocol", "%q: want TCP or UDP", sc.Protocol)
	}
	port := func(field string, v int, required bool) uint16 {
		if v == 0 && !required {
			return 0
		}
		if v < 1 || v > 65535 {
			bad(field, "%d: want 1..65535", v)
			return 0
		}
		return uint16(v)
	}
	sp.Port = port("port", sc.Port, true)
	target := port("targetPort", sc.TargetPort, true)
	sp.NodePort = port("nodePort", sc.NodePort, false)
	addr := func(field, v string) (netip.Addr, bool) {
		ip, err := netip.ParseAddr(v)
		if err != nil || !ip.Is4() {
			bad(field, "%q is not an IPv4 address", v)
			return ip, false
		}
		return ip, true
	}
	if sc.ClusterIP != "" {
		if ip, ok := addr("clusterIP", sc.ClusterIP); ok {
			sp.ClusterIPs = append(sp.ClusterIPs, ip)
		}
	}
	for i, v := range sc.ExternalIPs {
		if ip, ok := addr(fmt.Sprintf("externalIPs[%d]", i), v); ok {
			sp.ExternalIPs = append(sp.ExternalIPs, ip)
		}
	}
	for i, v := range sc.LoadBalancerIPs {
		if ip, ok := addr(fmt.Sprintf("loadBalancerIPs[%d]", i), v); ok {
			sp.LoadBalancerIPs = append(sp.LoadBalancerIPs, ip)
		}
	}
	if len(sp.ClusterIPs)+len(sp.ExternalIPs)+len(sp.LoadBalancerIPs) == 0 && sp.NodePort == 0 {
		bad("clusterIP", "a Service needs a clusterIP, a nodePort, externalIPs or loadBalancerIPs")
	}
	switch sc.ExternalTrafficPolicy {
	case "", "Cluster":
	case "Local":
		sp.ExternalLocal = true
	default:
		bad("externalTrafficPolicy", "%q: want Cluster or Local", sc.ExternalTrafficPolicy)
	}
	switch sc.SessionAffinity {
	case "", "None":
	case "ClientIP":
		secs := sc.SessionAffinitySeconds
		if secs == 0 {
			secs = 10800
		}
		if secs < 1 || secs > 86400 {
			bad("sessionAffinitySeconds", "%d: want 1..86400", secs)
		}
		sp.Affinity = time.Duration(secs) * time.Second
	default:
		bad("sessionAffinity", "%q: want None or ClientIP", sc.SessionAffinity)
	}
	backend := func(field, b string, ready bool) {
		ip, local := podIPs[b]
		if !local {
			var ok bool
			if ip, ok = addr(field, b); !ok {
				return
			}
			for _, pip := range podIPs {
				local = local || pip == ip
			}
		}
		sp.Backends = append(sp.Backends, lb.Backend{IP: ip.As4(), Port: target, Ready: ready, Serving: true, Local: local})
	}
	for i, b := range sc.Backends {
		backend(fmt.Sprintf("backends[%d]", i), b, true)
	}
	for i, b := range sc.TerminatingBackends {
		backend(fmt.Sprintf("terminatingBackends[%d]", i), b, false)
	}
	return sp, errs
}

// serviceSpecs checks Service configs against the pods and node of these
// settings, reporting every problem with its path, and builds them once to
// find conflicts between them.
func (s *settings) serviceSpecs(cfgs []ServiceConfig) ([]lb.ServiceSpec, error) {
	podIPs := map[string]netip.Addr{}
	for _, p := range s.pods {
		podIPs[p.Name] = p.ip
	}
	var specs []lb.ServiceSpec
	var errs []error
	names := map[string]int{}
	for i, sc := range cfgs {
		spec, perrs := sc.spec(fmt.Sprintf("services[%d]", i), podIPs, s.nodeIP)
		if j, dup := names[sc.Name]; dup && sc.Name != "" {
			perrs = append(perrs, fmt.Errorf("services[%d].name: %q is also services[%d]'s", i, sc.Name, j))
		}
		names[sc.Name] = i
		errs = append(errs, perrs...)
		if len(perrs) == 0 {
			specs = append(specs, spec)
		}
	}
	if len(errs) == 0 {
		if _, err := lb.Build(s.nodeIP, specs, 0); err != nil {
			errs = append(errs, fmt.Errorf("services: %w", err))
		}
	}
	return specs, errors.Join(errs...)
}
