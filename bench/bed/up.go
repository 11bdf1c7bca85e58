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
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Up builds a bed: it writes the state file, then makes the namespaces,
// links, addresses, routes, the wire's tc programs, and the agent's config.
// On any failure it removes what it made and returns an error naming the
// step. A bed with the same prefix must not exist (ErrExists).
func Up(ctx context.Context, o Options) (_ *Bed, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("bed up: %w", err)
	}
	b := newBed(o)
	fail := func(step string, err error) error {
		return fmt.Errorf("bed %s up: %s: %w", b.Prefix, step, err)
	}

	// Claim the prefix: no namespace of it may exist, and the state
	// directory is created exclusively.
	existing, err := b.leftoverNetns()
	if err != nil {
		return nil, fail("list namespaces", err)
	}
	if len(existing) > 0 {
		return nil, fail("claim prefix", fmt.Errorf("%w: namespaces %s exist (a bed with this prefix is up, or a run crashed: `trunkline bed sweep` or bed.Sweep removes it)", ErrExists, strings.Join(existing, ", ")))
	}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return nil, fail("make state dir", err)
	}
	if err := os.Mkdir(b.Dir(), 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			err = fmt.Errorf("%w: %s exists (a bed with this prefix is up, or a run crashed: `trunkline bed sweep` or bed.Sweep removes it)", ErrExists, b.Dir())
		}
		return nil, fail("claim prefix", err)
	}
	defer func() {
		if err != nil {
			if derr := b.Down(); derr != nil {
				err = errors.Join(err, fmt.Errorf("and removing the half-built bed: %w", derr))
			}
		}
	}()
	if err := b.writeState(); err != nil {
		return nil, fail("write state file", err)
	}

	start := time.Now()
	if err := b.upWireAndNode(ctx); err != nil {
		return nil, fail("wire and node", err)
	}
	b.log.Debug("bed: wire and node up", "prefix", b.Prefix)
	for i := range b.Pods {
		if err := ctx.Err(); err != nil {
			return nil, fail("pods", err)
		}
		if err := b.upPod(ctx, &b.Pods[i]); err != nil {
			return nil, fail(b.Pods[i].Name, err)
		}
		b.log.Debug("bed: pod up", "prefix", b.Prefix, "pod", b.Pods[i].Name)
	}
	if err := b.attachWirePrograms(); err != nil {
		return nil, fail("wire tc programs", err)
	}
	if err := b.writeConfig(); err != nil {
		return nil, fail("write agent config", err)
	}
	if o.Servers != "" {
		if err := b.StartServers(o.Servers); err != nil {
			return nil, fail("servers", err)
		}
	}
	b.log.Info("bed up", "prefix", b.Prefix, "pods", len(b.Pods), "config", b.ConfigPath, "took", time.Since(start).Round(time.Millisecond))
	return b, nil
}

// writeState writes the state file atomically.
func (b *Bed) writeState() error {
	data, err := json.MarshalIndent(b.Layout(), "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(b.Dir(), stateFile), append(data, '\n'))
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// baseSysctls are written in every namespace of the bed before its links
// are made, so the bed does not depend on what IPv4 settings a new namespace
// inherits from the host: IPv6 off (the VPC emulation is IPv4 only, and
// router solicitations would only add noise on the trunk), no forwarding,
// no reverse-path filter, no proxy ARP.
var baseSysctls = []string{
	"net.ipv6.conf.all.disable_ipv6", "1",
	"net.ipv6.conf.default.disable_ipv6", "1",
	"net.ipv4.ip_forward", "0",
	"net.ipv4.conf.all.rp_filter", "0",
	"net.ipv4.conf.default.rp_filter", "0",
	"net.ipv4.conf.all.proxy_arp", "0",
	"net.ipv4.conf.default.proxy_arp", "0",
}

func (b *Bed) upWireAndNode(ctx context.Context) error {
	for _, ns := range []string{b.Wire.Netns, b.Node.Netns} {
		if err := addNetns(ctx, ns); err != nil {
			return err
		}
		if err := sysctls(ns, baseSysctls...); err != nil {
			return err
		}
	}
	nodeNs, err := os.Open(filepath.Join(netnsDir, b.Node.Netns))
	if err != nil {
		return err
	}
	defer nodeNs.Close()

	err = withHandle(b.Wire.Netns, func(h *netlink.Handle) error {
		la := netlink.NewLinkAttrs()
		la.Name, la.HardwareAddr = b.Wire.Ifname, b.Wire.MAC
		// One queue on each end (veth defaults to one per CPU): the
		// agent's config says queues: 1, and an AF_XDP socket bound to
		// queue 0 would miss frames the peer sends on queue 1.
		la.NumTxQueues, la.NumRxQueues = 1, 1
		veth := &netlink.Veth{
			LinkAttrs:        la,
			PeerName:         b.Node.Trunk,
			PeerHardwareAddr: b.Node.TrunkMAC,
			PeerNamespace:    netlink.NsFd(nodeNs.Fd()),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s peer %s/%s: %w", b.Wire.Netns, b.Wire.Ifname, b.Node.Netns, b.Node.Trunk, err)
		}
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := h.AddrAdd(lo, addr(b.Wire.OutsideIP, 32)); err != nil {
			return fmt.Errorf("add %s to lo: %w", b.Wire.OutsideIP, err)
		}
		return upWithAddr(h, b.Wire.Ifname, addr(b.Wire.IP, vpcPrefix.Bits()))
	})
	if err != nil {
		return err
	}
	err = withHandle(b.Node.Netns, func(h *netlink.Handle) error {
		if err := upWithAddr(h, b.Node.Trunk, addr(b.Node.IP, vpcPrefix.Bits())); err != nil {
			return err
		}
		// The node's own default route is the VPC gateway, as in the cloud.
		trunk, err := h.LinkByName(b.Node.Trunk)
		if err != nil {
			return err
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: trunk.Attrs().Index, Gw: b.Wire.IP.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", b.Wire.IP, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The VPC routes the Services' range to the node (untagged, to the
	// node's address), as a cloud route table would.
	err = withHandle(b.Wire.Netns, func(h *netlink.Handle) error {
		wire, err := h.LinkByName(b.Wire.Ifname)
		if err != nil {
			return err
		}
		dst := &net.IPNet{IP: ServiceCIDR.Addr().AsSlice(), Mask: net.CIDRMask(ServiceCIDR.Bits(), 32)}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: wire.Attrs().Index, Dst: dst, Gw: b.Node.IP.AsSlice()}); err != nil {
			return fmt.Errorf("route %s via %s: %w", ServiceCIDR, b.Node.IP, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The wire's sockets send through a veth whose frames cross AF_XDP on
	// the trunk: complete checksums in software. The tags tc pushes must be
	// in the frame's bytes, not in skb metadata: no TX VLAN offload on the
	// wire, no RX VLAN offload on the trunk (nor TX, for the kernel peer).
	if err := ethtoolOff(ctx, b.Wire.Netns, b.Wire.Ifname, "tx", "txvlan"); err != nil {
		return err
	}
	return ethtoolOff(ctx, b.Node.Netns, b.Node.Trunk, "rxvlan", "txvlan")
}

func (b *Bed) upPod(ctx context.Context, p *Pod) error {
	if err := addNetns(ctx, p.Netns); err != nil {
		return err
	}
	if err := sysctls(p.Netns, baseSysctls...); err != nil {
		return err
	}
	podNs, err := os.Open(filepath.Join(netnsDir, p.Netns))
	if err != nil {
		return err
	}
	defer podNs.Close()

	err = withHandle(b.Node.Netns, func(h *netlink.Handle) error {
		la := netlink.NewLinkAttrs()
		la.Name, la.HardwareAddr = p.HostVeth, p.HostVethMAC
		la.NumTxQueues, la.NumRxQueues = 1, 1
		veth := &netlink.Veth{
			LinkAttrs:        la,
			PeerName:         p.Ifname,
			PeerHardwareAddr: p.MAC,
			PeerNamespace:    netlink.NsFd(podNs.Fd()),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s peer %s/%s: %w", b.Node.Netns, p.HostVeth, p.Netns, p.Ifname, err)
		}
		host, err := upLink(h, p.HostVeth)
		if err != nil {
			return err
		}
		route := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: addr(p.IP, 32).IPNet, Scope: netlink.SCOPE_LINK}
		if err := h.RouteAdd(route); err != nil {
			return fmt.Errorf("route %s dev %s: %w", p.IP, p.HostVeth, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = withHandle(p.Netns, func(h *netlink.Handle) error {
		if err := upWithAddr(h, p.Ifname, addr(p.IP, 32)); err != nil {
			return err
		}
		eth, err := h.LinkByName(p.Ifname)
		if err != nil {
			return err
		}
		gw := addr(b.Wire.IP, 32)
		if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: gw.IPNet, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route %s dev %s: %w", b.Wire.IP, p.Ifname, err)
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.IP}); err != nil {
			return fmt.Errorf("default route via %s: %w", b.Wire.IP, err)
		}
		neigh := &netlink.Neigh{
			LinkIndex:    eth.Attrs().Index,
			Family:       unix.AF_INET,
			State:        netlink.NUD_PERMANENT,
			IP:           gw.IP,
			HardwareAddr: p.HostVethMAC,
		}
		if err := h.NeighSet(neigh); err != nil {
			return fmt.Errorf("neighbour %s lladdr %s: %w", b.Wire.IP, p.HostVethMAC, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return ethtoolOff(ctx, p.Netns, p.Ifname, "tx")
}

// addr is ip/bits as a netlink address.
func addr(ip netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, ip.BitLen())}}
}

func upLink(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return l, nil
}

func upWithAddr(h *netlink.Handle, name string, a *netlink.Addr) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", a.IPNet, name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// Down removes the bed: it kills the processes still in its namespaces,
// deletes the namespaces (and with them every link and tc program), and
// removes its state directory. Repeating it is fine.
func (b *Bed) Down() error {
	return sweepPrefix(b.stateDir, b.Prefix, b.Netns(), b.log)
}

// Sweep removes what crashed runs left in stateDir (default
// DefaultStateDir). With a prefix, it removes that bed: the namespaces its
// state file names and any namespace named <prefix>-wire, <prefix>-node or
// <prefix>-pod<N>, whether or not a state file is there. With prefix "", it
// does that for every bed that has a directory in stateDir, and touches no
// other namespace.
func Sweep(stateDir, prefix string) error {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	log := slog.New(slog.DiscardHandler)
	if prefix != "" {
		if !prefixSyntax.MatchString(prefix) {
			return fmt.Errorf("sweep: %w: prefix %q", ErrInvalidOptions, prefix)
		}
		return sweepPrefix(stateDir, prefix, nil, log)
	}
	entries, err := os.ReadDir(stateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || !prefixSyntax.MatchString(e.Name()) {
			continue
		}
		errs = append(errs, sweepPrefix(stateDir, e.Name(), nil, log))
	}
	return errors.Join(errs...)
}

// sweepPrefix removes the namespaces of one bed (those given, those its
// state file names, those whose names match the prefix) and then, if all of
// them are gone, its state directory.
func sweepPrefix(stateDir, prefix string, names []string, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	if b, err := Load(prefix, stateDir); err == nil {
		for _, n := range b.Netns() {
			want[n] = true
		}
	}
	tmp := &Bed{Prefix: prefix}
	left, err := tmp.leftoverNetns()
	if err != nil {
		return fmt.Errorf("bed %s down: %w", prefix, err)
	}
	for _, n := range left {
		want[n] = true
	}
	var errs []error
	for n := range want {
		if err := removeNetns(ctx, n); err != nil {
			errs = append(errs, err)
			log.Warn("bed down: namespace not removed", "netns", n, "err", err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("bed %s down: %w (state dir %s kept so a later sweep finds the rest)", prefix, errors.Join(errs...), filepath.Join(stateDir, prefix))
	}
	if err := os.RemoveAll(filepath.Join(stateDir, prefix)); err != nil {
		return fmt.Errorf("bed %s down: %w", prefix, err)
	}
	return nil
}

// leftoverNetns lists the existing namespaces whose names belong to the
// bed's prefix.
func (b *Bed) leftoverNetns() ([]string, error) {
	all, err := listNetns()
	if err != nil {
		return nil, err
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(b.Prefix) + `-(wire|node|pod[0-9]+)$`)
	var mine []string
	for _, n := range all {
		if re.MatchString(n) {
			mine = append(mine, n)
		}
	}
	return mine, nil
}

// StartServers runs `binary serve-echo` in every pod: HTTP on HTTPPort,
// UDP and TCP echo on UDPEchoPort and TCPEchoPort. They run until the bed
// goes down (which kills every process in its namespaces), at most a day.
func (b *Bed) StartServers(binary string) error {
	for _, p := range b.Pods {
		cmd := b.Command(context.Background(), p.Netns, binary, "serve-echo", "--name", p.Name, "--timeout", "24h",
			"--http", fmt.Sprintf(":%d", HTTPPort), "--udp", fmt.Sprintf(":%d", UDPEchoPort), "--tcp", fmt.Sprintf(":%d", TCPEchoPort))
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("server in %s: %w", p.Name, err)
		}
		go cmd.Wait() // reap it if this process outlives it
	}
	for _, p := range b.Pods {
		if err := WaitListening(context.Background(), p.Netns, TCPEchoPort); err != nil {
			return err
		}
	}
	return nil
}

// WaitListening waits until something listens on TCP port in netns, or ctx
// ends (a 5 s bound when ctx has no deadline).
func WaitListening(ctx context.Context, netns string, port uint16) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	for {
		out, _ := Run(ctx, "ip", "netns", "exec", netns, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
		if strings.TrimSpace(out) != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing listens on TCP port %d in %s: %w", port, netns, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
