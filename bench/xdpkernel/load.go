package xdpkernel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/trunkline/trunkline/bench/bed"
)

// loadConfig is what the programs are loaded with: their constants and the
// sizes of their maps.
type loadConfig struct {
	trunkIfindex int
	trunkMAC     [6]byte
	gatewayMAC   [6]byte
	nodeIP       netip.Addr
	pods         int
	maxServices  int
	maxBackends  int // per half of the backend map
	maxFlows     int
}

// load loads the programs and their maps into objs, not attached.
func load(c loadConfig, objs *xdpKernelObjects) error {
	spec, err := loadXdpKernel()
	if err != nil {
		return err
	}
	pods := max(c.pods, 1)
	for name, n := range map[string]int{
		xdpKernelMapPodsByVid:     pods,
		xdpKernelMapPodsByIp:      pods,
		xdpKernelMapPodsByIfindex: pods,
		xdpKernelMapServices:      c.maxServices,
		xdpKernelMapBackends:      2 * c.maxBackends,
		xdpKernelMapFlows:         c.maxFlows,
	} {
		spec.Maps[name].MaxEntries = uint32(n)
	}
	if int(spec.Maps[xdpKernelMapCounters].MaxEntries) != int(numCounters) {
		return fmt.Errorf("the BPF object has %d counters, this package %d: run `go generate ./bench/xdpkernel`", spec.Maps[xdpKernelMapCounters].MaxEntries, numCounters)
	}
	for name, v := range map[string]any{
		xdpKernelVarTrunkIfindex: uint32(c.trunkIfindex),
		xdpKernelVarNodeIp:       c.nodeIP.As4(),
		xdpKernelVarTrunkMac:     c.trunkMAC,
		xdpKernelVarGatewayMac:   c.gatewayMAC,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return fmt.Errorf("load programs: %+v", verr)
		}
		return fmt.Errorf("load programs (needs root: CAP_BPF, CAP_NET_ADMIN): %w", err)
	}
	return nil
}

// be32 is an IPv4 address as the programs see it: its 4 bytes in packet
// order, read as a native integer.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// addrFrom32 undoes be32.
func addrFrom32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// be16 is a port as the programs see it (network order, read natively); it
// is its own inverse.
func be16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// inNetns runs fn in netns on a thread thrown away afterwards, or directly
// when netns is "" (the process's own).
func inNetns(netns string, fn func() error) error {
	if netns == "" {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		return fn()
	}
	return bed.InNetns(netns, fn)
}

// ifindexes resolves interface names in netns.
func ifindexes(netns string, names []string) ([]int, error) {
	idx := make([]int, len(names))
	err := inNetns(netns, func() error {
		var errs []error
		for i, n := range names {
			ifc, err := net.InterfaceByName(n)
			if err != nil {
				errs = append(errs, fmt.Errorf("interface %s: %w", n, err))
				continue
			}
			idx[i] = ifc.Index
		}
		return errors.Join(errs...)
	})
	if err != nil {
		where := "this namespace"
		if netns != "" {
			where = "namespace " + netns
		}
		return nil, fmt.Errorf("in %s: %w", where, err)
	}
	return idx, nil
}

// groChange is a GRO setting Attach changed.
type groChange struct {
	at       Endpoint
	turnedOn bool
}

// ethtoolTimeout bounds one ethtool run.
const ethtoolTimeout = 10 * time.Second

// ethtool runs ethtool with args inside e's namespace.
func ethtool(e Endpoint, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ethtoolTimeout)
	defer cancel()
	if e.Netns == "" {
		return bed.Run(ctx, "ethtool", args...)
	}
	return bed.Run(ctx, "ip", append([]string{"netns", "exec", e.Netns, "ethtool"}, args...)...)
}

// groOn turns GRO on at e if it is off: a veth with GRO has a NAPI, so its
// peer can redirect XDP frames into it.
func groOn(e Endpoint) (groChange, error) {
	ch := groChange{at: e}
	out, err := ethtool(e, "-k", e.Ifname)
	if err != nil {
		return ch, fmt.Errorf("%w (is ethtool installed?)", err)
	}
	on, found := false, false
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "generic-receive-offload:"); ok {
			on, found = strings.HasPrefix(strings.TrimSpace(v), "on"), true
		}
	}
	if !found {
		return ch, fmt.Errorf("ethtool -k %s shows no generic-receive-offload line", e)
	}
	if on {
		return ch, nil
	}
	if _, err := ethtool(e, "-K", e.Ifname, "gro", "on"); err != nil {
		return ch, err
	}
	ch.turnedOn = true
	return ch, nil
}

// undo turns GRO off again; an interface or namespace that is gone is fine.
func (ch groChange) undo() error {
	if !ch.turnedOn {
		return nil
	}
	if ch.at.Netns != "" && !netnsExists(ch.at.Netns) {
		return nil
	}
	if _, err := ethtool(ch.at, "-K", ch.at.Ifname, "gro", "off"); err != nil {
		if strings.Contains(err.Error(), "No such device") || strings.Contains(err.Error(), "does not exist") {
			return nil
		}
		return fmt.Errorf("turn GRO off again on %s: %w", ch.at, err)
	}
	return nil
}

func netnsExists(name string) bool {
	return inNetns(name, func() error { return nil }) == nil
}
