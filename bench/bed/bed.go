// Package bed builds the test bed that trunkline's tests and bench share: an
// emulated cloud VPC, a node and its pods, each in its own network namespace.
//
// The kernel here has no 8021q module, so the VPC is a namespace of its own:
//
//	P-wire   interface "wire" (the VPC gateway 10.100.0.1/16, MAC
//	         02:00:0a:64:00:01; 198.18.0.1/32 on lo stands for the outside).
//	         tc-BPF on wire: egress pushes the 802.1Q tag of the destination
//	         pod, ingress pops any tag, as the cloud's vSwitch does.
//	P-node   interface "trunk" (veth peer of wire, node IP 10.100.0.2/16, MAC
//	         02:00:0a:64:00:02) and hpod<i>, the host end of each pod's veth,
//	         with a /32 route to the pod.
//	P-pod<i> interface "eth0" with the pod's /32, its gateway 10.100.0.1
//	         reached on-link through a permanent neighbour entry naming the
//	         MAC of hpod<i>.
//
// Pod i (1-based) has IP 10.100.(1+(i-1)/250).(1+(i-1)%250) — 10.100.1.i for
// the first 250 —, MAC 02:00:0a:64 followed by the last two bytes of its IP,
// VLAN 100+i, host veth hpod<i> with MAC 02:00:0a:65:<i>>8>:<i&0xff>.
//
// Every bed has a prefix P; its names never collide with another prefix's,
// and its links live only in its own namespaces. Its state file
// <StateDir>/<P>/bed.json is written before anything is created, so Sweep
// can remove what a crashed run left.
package bed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
)

// Defaults of Options.
const (
	DefaultPrefix   = "tl"
	DefaultPods     = 3
	DefaultStateDir = "/run/trunkline-bed"
	// MaxPods bounds Options.Pods: VLAN IDs (100+i) and the address scheme
	// have room for more, but nothing needs it.
	MaxPods = 1000
)

// Names of the files in a bed's state directory.
const (
	stateFile  = "bed.json"
	configFile = "trunkline.yaml"
	apiSocket  = "trunkline.sock"
)

// Interface names; they repeat in every bed, each in its own namespaces.
const (
	wireIfname  = "wire"
	trunkIfname = "trunk"
	podIfname   = "eth0"
)

var (
	// ErrInvalidOptions reports Options that Up cannot build a bed from.
	ErrInvalidOptions = errors.New("invalid bed options")
	// ErrExists reports a bed (or a namespace of one) already present under
	// the prefix Up was asked to use.
	ErrExists = errors.New("bed already exists")
	// ErrNotFound reports a prefix with no state file.
	ErrNotFound = errors.New("bed not found")
)

// The VPC's fixed addresses.
var (
	vpcPrefix    = netip.MustParsePrefix("10.100.0.0/16")
	gatewayIP    = netip.MustParseAddr("10.100.0.1")
	nodeIP       = netip.MustParseAddr("10.100.0.2")
	outsideIP    = netip.MustParseAddr("198.18.0.1")
	gatewayMAC   = mustMAC("02:00:0a:64:00:01")
	trunkMAC     = mustMAC("02:00:0a:64:00:02")
	prefixSyntax = regexp.MustCompile(`^[a-z][a-z0-9_]{0,15}$`)
)

// Options says what bed to build. The zero value builds the default bed.
type Options struct {
	// Prefix names the bed: its namespaces are <Prefix>-wire, <Prefix>-node
	// and <Prefix>-pod<i>. A lower-case letter, then up to 15 lower-case
	// letters, digits or '_'. Default "tl".
	Prefix string
	// Pods is how many pod namespaces to make, 1..MaxPods. Default 3.
	Pods int
	// StateDir holds one directory per bed (state file, agent config, API
	// socket). An absolute path; default /run/trunkline-bed.
	StateDir string
	// Servers, when set, is a trunkline binary: Up starts its serve-echo
	// in every pod (see StartServers).
	Servers string
	// Logger receives progress (debug), a line when the bed is up (info)
	// and clean-up trouble (warn). Default: discard.
	Logger *slog.Logger
}

// withDefaults fills in defaults and reports every problem together.
func (o Options) withDefaults() (Options, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Pods == 0 {
		o.Pods = DefaultPods
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if !prefixSyntax.MatchString(o.Prefix) {
		errs = append(errs, fmt.Errorf("prefix %q: want a lower-case letter then up to 15 of [a-z0-9_]", o.Prefix))
	}
	if o.Pods < 1 || o.Pods > MaxPods {
		errs = append(errs, fmt.Errorf("pods %d: want 1..%d", o.Pods, MaxPods))
	}
	if !filepath.IsAbs(o.StateDir) {
		errs = append(errs, fmt.Errorf("state dir %q: want an absolute path", o.StateDir))
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	o.StateDir = filepath.Clean(o.StateDir)
	return o, nil
}

// Wire is the VPC side: the namespace that plays the cloud's vSwitch and
// gateway.
type Wire struct {
	Netns  string
	Ifname string
	// IP is the VPC gateway's address (10.100.0.1, in 10.100.0.0/16).
	IP netip.Addr
	// OutsideIP is an address outside the VPC, local to the wire namespace,
	// for SNAT tests.
	OutsideIP netip.Addr
	// MAC is the VPC gateway's MAC, the one the node sends to.
	MAC net.HardwareAddr
}

// Node is the node's side of the trunk: the namespace the agent runs in.
type Node struct {
	Netns    string
	Trunk    string
	IP       netip.Addr
	TrunkMAC net.HardwareAddr
}

// Pod is one pod: its namespace, its interface and the host end of its veth
// (in the node namespace).
type Pod struct {
	Name        string
	Netns       string
	Ifname      string
	IP          netip.Addr
	MAC         net.HardwareAddr
	VLAN        uint16
	HostVeth    string
	HostVethMAC net.HardwareAddr
}

// Bed is a built (or loaded) bed. Its exported fields describe the layout;
// treat them as read-only.
type Bed struct {
	Prefix string
	// ConfigPath is the agent's config file, written by Up.
	ConfigPath string
	Wire       Wire
	Node       Node
	Pods       []Pod
	// Services put every pod behind a ClusterIP (and NodePorts), in the
	// agent's config.
	Services []Service
	// Branches are the node's free branch attachments, for pods the CNI
	// plugin adds.
	Branches []Branch

	stateDir string
	log      *slog.Logger
}

// newBed computes the layout of a bed from validated options.
func newBed(o Options) *Bed {
	dir := filepath.Join(o.StateDir, o.Prefix)
	b := &Bed{
		Prefix:     o.Prefix,
		ConfigPath: filepath.Join(dir, configFile),
		Wire: Wire{
			Netns:     o.Prefix + "-wire",
			Ifname:    wireIfname,
			IP:        gatewayIP,
			OutsideIP: outsideIP,
			MAC:       gatewayMAC,
		},
		Node: Node{
			Netns:    o.Prefix + "-node",
			Trunk:    trunkIfname,
			IP:       nodeIP,
			TrunkMAC: trunkMAC,
		},
		stateDir: o.StateDir,
		log:      o.Logger,
	}
	for i := 1; i <= o.Pods; i++ {
		ip := PodIP(i)
		a := ip.As4()
		b.Pods = append(b.Pods, Pod{
			Name:        "pod" + strconv.Itoa(i),
			Netns:       o.Prefix + "-pod" + strconv.Itoa(i),
			Ifname:      podIfname,
			IP:          ip,
			MAC:         net.HardwareAddr{0x02, 0x00, a[0], a[1], a[2], a[3]},
			VLAN:        uint16(100 + i),
			HostVeth:    "hpod" + strconv.Itoa(i),
			HostVethMAC: net.HardwareAddr{0x02, 0x00, 0x0a, 0x65, byte(i >> 8), byte(i)},
		})
	}
	b.Services = bedServices()
	b.Branches = bedBranches()
	return b
}

// PodIP is the address of pod i (1-based): 10.100.1.1 … 10.100.1.250, then
// 10.100.2.1 … and so on, 250 pods per /24.
func PodIP(i int) netip.Addr {
	n := i - 1
	return netip.AddrFrom4([4]byte{10, 100, byte(1 + n/250), byte(1 + n%250)})
}

// Dir is the bed's state directory.
func (b *Bed) Dir() string { return filepath.Join(b.stateDir, b.Prefix) }

// APISocket is where the agent is told (in its config) to serve its API.
func (b *Bed) APISocket() string { return filepath.Join(b.Dir(), apiSocket) }

// Netns lists the bed's namespaces: wire, node, then the pods in order.
func (b *Bed) Netns() []string {
	names := []string{b.Wire.Netns, b.Node.Netns}
	for _, p := range b.Pods {
		names = append(names, p.Netns)
	}
	return names
}

// Pod returns the pod with the given name ("pod2"), or nil.
func (b *Bed) Pod(name string) *Pod {
	for i := range b.Pods {
		if b.Pods[i].Name == name {
			return &b.Pods[i]
		}
	}
	return nil
}

// Command returns a command that runs name inside netns (through
// `ip netns exec`, which also gives it the namespace's /sys).
func (b *Bed) Command(ctx context.Context, netns string, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns, name}, args...)...)
}

// Load re-reads the layout of the bed with the given prefix from its state
// file in stateDir (default DefaultStateDir). It does not check that the
// namespaces are still there.
func Load(prefix string, stateDir string) (*Bed, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	path := filepath.Join(stateDir, prefix, stateFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load bed %q: %w: no %s (is the bed up? `trunkline bed up` makes one)", prefix, ErrNotFound, path)
	}
	if err != nil {
		return nil, fmt.Errorf("load bed %q: %w", prefix, err)
	}
	var l Layout
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, fmt.Errorf("load bed %q: %s: %w", prefix, path, err)
	}
	b, err := l.bed()
	if err != nil {
		return nil, fmt.Errorf("load bed %q: %s: %w", prefix, path, err)
	}
	if b.Prefix != prefix {
		return nil, fmt.Errorf("load bed %q: %s describes bed %q", prefix, path, b.Prefix)
	}
	b.stateDir = filepath.Clean(stateDir)
	b.log = slog.New(slog.DiscardHandler)
	return b, nil
}

// SetLogger replaces the logger of a loaded bed.
func (b *Bed) SetLogger(l *slog.Logger) {
	if l != nil {
		b.log = l
	}
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}
