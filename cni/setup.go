package cni

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Attachment is a pod's branch attachment: what the agent hands out for a
// pod interface.
type Attachment struct {
	// VLAN is the branch's VLAN ID on the trunk (1..4094).
	VLAN uint16
	// IP is the pod's IPv4 address. It is always configured as a /32,
	// whatever the prefix length.
	IP netip.Prefix
	// MAC is set on the pod's interface.
	MAC net.HardwareAddr
	// Gateway is the pod's next hop, reached on-link and resolved by a
	// permanent neighbour entry to the host veth's MAC.
	Gateway netip.Addr
}

// PodLink describes a wired pod interface.
type PodLink struct {
	HostVeth    string           // host end's name, HostVethName(containerID, ifname)
	HostVethMAC net.HardwareAddr // host end's MAC, the pod's gateway MAC
	HostIfindex int              // host end's index in the host namespace
	PodIfname   string           // pod end's name in the pod namespace
	PodMAC      net.HardwareAddr // pod end's MAC (the attachment's)
	PodIfindex  int              // pod end's index in the pod namespace
	MTU         int              // of both ends
}

// podAddr returns the attachment's address as a host prefix (/32).
func (a Attachment) podAddr() netip.Prefix {
	return netip.PrefixFrom(a.IP.Addr(), a.IP.Addr().BitLen())
}

// validate reports every problem with a, ifname and mtu together.
func validate(ifname string, a Attachment, mtu int) error {
	var errs []error
	if ifname == "" || len(ifname) >= unix.IFNAMSIZ || strings.ContainsAny(ifname, "/: \t\n") || ifname == "." || ifname == ".." {
		errs = append(errs, fmt.Errorf("interface name %q is not a valid Linux interface name", ifname))
	}
	if mtu < MinMTU || mtu > MaxMTU {
		errs = append(errs, fmt.Errorf("mtu %d is out of range %d..%d", mtu, MinMTU, MaxMTU))
	}
	if a.VLAN < 1 || a.VLAN > 4094 {
		errs = append(errs, fmt.Errorf("attachment VLAN %d is out of range 1..4094", a.VLAN))
	}
	if !a.IP.IsValid() || !a.IP.Addr().Is4() || a.IP.Addr().IsUnspecified() {
		errs = append(errs, fmt.Errorf("attachment IP %v is not an IPv4 address (only IPv4 is supported)", a.IP))
	}
	if !a.Gateway.Is4() || a.Gateway.IsUnspecified() {
		errs = append(errs, fmt.Errorf("attachment gateway %v is not an IPv4 address", a.Gateway))
	} else if a.IP.IsValid() && a.Gateway == a.IP.Addr() {
		errs = append(errs, fmt.Errorf("attachment gateway %v is the pod's own address", a.Gateway))
	}
	if len(a.MAC) != 6 || a.MAC[0]&1 != 0 || [6]byte(a.MAC) == [6]byte{} {
		errs = append(errs, fmt.Errorf("attachment MAC %v is not a unicast Ethernet address", a.MAC))
	}
	return errors.Join(errs...)
}

// isNotFound reports whether err says a link does not exist.
func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV)
}

// SetupPod wires a pod interface for attachment a: a veth pair whose host
// end is HostVethName(containerID, ifname) and whose other end becomes
// ifname in the network namespace at netnsPath (a bind mount such as
// /var/run/netns/X or /proc/PID/ns/net), with a's MAC, a's address as a /32,
// an on-link route to the gateway, a default route via it, a permanent
// neighbour entry gateway → host veth MAC, TX checksum offload off, mtu on
// both ends, both up; and a <pod IP>/32 route via the host end in the host
// namespace. See the package documentation for why.
//
// It is idempotent: when the pair already exists for this container and
// ifname and matches a and mtu, it returns the existing PodLink; a pair left
// half-made (or made for another attachment) is deleted and made anew. On
// any failure everything it created is removed.
//
// SetupPod must be called from the host network namespace.
func SetupPod(containerID, netnsPath, ifname string, a Attachment, mtu int) (res PodLink, err error) {
	if containerID == "" {
		return PodLink{}, errors.New("setup pod: container ID is empty")
	}
	if err := validate(ifname, a, mtu); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: %w", err)
	}
	podNS, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return PodLink{}, fmt.Errorf("setup pod: open network namespace %s: %w", netnsPath, err)
	}
	defer podNS.Close()
	pod, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return PodLink{}, fmt.Errorf("setup pod: netlink in %s: %w", netnsPath, err)
	}
	defer pod.Close()

	hostName := HostVethName(containerID, ifname)
	if old, lerr := netlink.LinkByName(hostName); lerr == nil {
		if link, problems := inspect(hostName, podNS, pod, netnsPath, ifname, a, mtu); len(problems) == 0 {
			return link, nil
		}
		// Half-made by a crash, or made for another attachment: replace it.
		// Deleting one end of a veth deletes the other, and the kernel drops
		// the routes through it.
		if err = netlink.LinkDel(old); err != nil && !isNotFound(err) {
			return PodLink{}, fmt.Errorf("setup pod: delete stale %s: %w", hostName, err)
		}
	} else if !isNotFound(lerr) {
		return PodLink{}, fmt.Errorf("setup pod: look up %s: %w", hostName, lerr)
	}

	tmp, err := tempPeerName()
	if err != nil {
		return PodLink{}, fmt.Errorf("setup pod: %w", err)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: mtu},
		PeerName:  tmp,
		PeerMTU:   uint32(mtu),
	}
	if err = netlink.LinkAdd(veth); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: create veth %s: %w", hostName, err)
	}
	// From here on, deleting the host end undoes everything: the peer goes
	// with it (in whichever namespace it is by then), and so do the routes
	// through either end and the neighbour entry on the peer.
	defer func() {
		if err != nil {
			if derr := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}}); derr != nil && !isNotFound(derr) {
				err = errors.Join(err, fmt.Errorf("roll back: delete %s: %w", hostName, derr))
			}
		}
	}()

	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return PodLink{}, fmt.Errorf("setup pod: look up %s: %w", hostName, err)
	}
	peer, err := netlink.LinkByName(tmp)
	if err != nil {
		return PodLink{}, fmt.Errorf("setup pod: look up peer %s: %w", tmp, err)
	}
	if err = netlink.LinkSetNsFd(peer, int(podNS)); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: move %s into %s: %w", tmp, netnsPath, err)
	}
	if peer, err = pod.LinkByName(tmp); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: look up %s in %s: %w", tmp, netnsPath, err)
	}
	if err = pod.LinkSetName(peer, ifname); err != nil {
		if errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("%s already exists: %w", ifname, err)
		}
		return PodLink{}, fmt.Errorf("setup pod: rename %s to %s in %s: %w", tmp, ifname, netnsPath, err)
	}
	if err = pod.LinkSetHardwareAddr(peer, a.MAC); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: set MAC %v on %s in %s: %w", a.MAC, ifname, netnsPath, err)
	}
	if err = pod.LinkSetMTU(peer, mtu); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: set MTU %d on %s in %s: %w", mtu, ifname, netnsPath, err)
	}
	if err = setTxChecksum(podNS, ifname, false); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: turn TX checksum offload off on %s in %s: %w", ifname, netnsPath, err)
	}
	if err = netlink.LinkSetUp(host); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: bring %s up: %w", hostName, err)
	}
	if err = pod.LinkSetUp(peer); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: bring %s up in %s: %w", ifname, netnsPath, err)
	}
	// Read back what the kernel made (indexes, the host end's MAC).
	if host, err = netlink.LinkByName(hostName); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: look up %s: %w", hostName, err)
	}
	if peer, err = pod.LinkByName(ifname); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: look up %s in %s: %w", ifname, netnsPath, err)
	}

	addr := a.podAddr()
	if err = pod.AddrReplace(peer, &netlink.Addr{IPNet: prefixIPNet(addr)}); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: add %v to %s in %s: %w", addr, ifname, netnsPath, err)
	}
	gw := net.IP(a.Gateway.AsSlice())
	if err = pod.RouteReplace(&netlink.Route{
		LinkIndex: peer.Attrs().Index,
		Dst:       prefixIPNet(netip.PrefixFrom(a.Gateway, 32)),
		Scope:     netlink.SCOPE_LINK,
	}); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: add route %v/32 dev %s in %s: %w", a.Gateway, ifname, netnsPath, err)
	}
	if err = pod.RouteReplace(&netlink.Route{
		LinkIndex: peer.Attrs().Index,
		Dst:       prefixIPNet(netip.MustParsePrefix("0.0.0.0/0")),
		Gw:        gw,
		Scope:     netlink.SCOPE_UNIVERSE,
	}); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: add default route via %v in %s: %w", a.Gateway, netnsPath, err)
	}
	if err = pod.NeighSet(&netlink.Neigh{
		LinkIndex:    peer.Attrs().Index,
		Family:       netlink.FAMILY_V4,
		State:        netlink.NUD_PERMANENT,
		IP:           gw,
		HardwareAddr: host.Attrs().HardwareAddr,
	}); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: add neighbour %v lladdr %v on %s in %s: %w", a.Gateway, host.Attrs().HardwareAddr, ifname, netnsPath, err)
	}
	if err = netlink.RouteReplace(&netlink.Route{
		LinkIndex: host.Attrs().Index,
		Dst:       prefixIPNet(addr),
		Scope:     netlink.SCOPE_LINK,
	}); err != nil {
		return PodLink{}, fmt.Errorf("setup pod: add host route %v dev %s: %w", addr, hostName, err)
	}
	return PodLink{
		HostVeth:    hostName,
		HostVethMAC: host.Attrs().HardwareAddr,
		HostIfindex: host.Attrs().Index,
		PodIfname:   ifname,
		PodMAC:      peer.Attrs().HardwareAddr,
		PodIfindex:  peer.Attrs().Index,
		MTU:         mtu,
	}, nil
}

// tempPeerName returns a random name for the pod end while it is still in
// the host namespace.
func tempPeerName() (string, error) {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random peer name: %w", err)
	}
	return "tlp" + hex.EncodeToString(b[:]), nil
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// TeardownPod removes what SetupPod made for containerID and ifname: the
// host route to the pod and the veth pair (both ends). It is best effort and
// idempotent: a missing veth, a missing route or a network namespace that is
// already gone is not an error. Only failures to delete something that
// exists are reported.
func TeardownPod(netnsPath, ifname, containerID string) error {
	var errs []error
	hostName := HostVethName(containerID, ifname)
	host, err := netlink.LinkByName(hostName)
	switch {
	case err == nil:
		routes, rerr := netlink.RouteList(host, netlink.FAMILY_V4)
		if rerr != nil {
			errs = append(errs, fmt.Errorf("teardown pod: list routes via %s: %w", hostName, rerr))
		}
		for _, r := range routes {
			if r.Dst == nil || r.Protocol == unix.RTPROT_KERNEL {
				continue
			}
			if derr := netlink.RouteDel(&r); derr != nil && !errors.Is(derr, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("teardown pod: delete route %v dev %s: %w", r.Dst, hostName, derr))
			}
		}
		if derr := netlink.LinkDel(host); derr != nil && !isNotFound(derr) {
			errs = append(errs, fmt.Errorf("teardown pod: delete %s: %w", hostName, derr))
		}
	case !isNotFound(err):
		errs = append(errs, fmt.Errorf("teardown pod: look up %s: %w", hostName, err))
	}
	// The pod end normally went with the host end. If the namespace is still
	// there and holds a veth named ifname (a pair whose host end was renamed
	// or lost), delete it too: the pod is going away.
	if netnsPath != "" {
		if errs2 := teardownPodEnd(netnsPath, ifname); errs2 != nil {
			errs = append(errs, errs2)
		}
	}
	return errors.Join(errs...)
}

func teardownPodEnd(netnsPath, ifname string) error {
	podNS, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil // gone, or not a namespace any more: nothing to do
	}
	defer podNS.Close()
	pod, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return nil
	}
	defer pod.Close()
	link, err := pod.LinkByName(ifname)
	if err != nil || link.Type() != "veth" {
		return nil
	}
	if err := pod.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("teardown pod: delete %s in %s: %w", ifname, netnsPath, err)
	}
	return nil
}

// CheckPod verifies that the pod interface ifname in netnsPath is wired for
// a as SetupPod wires it, and reports every difference in one error whose
// lines say exactly what is wrong, e.g. "eth0 in /var/run/netns/x has no
// address 10.100.1.5/32". The host end is found through the veth's peer
// index, and its <pod IP>/32 route is checked too.
func CheckPod(netnsPath, ifname string, a Attachment) error {
	if err := validate(ifname, a, DefaultMTU); err != nil {
		return fmt.Errorf("check pod: %w", err)
	}
	podNS, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return fmt.Errorf("check pod: open network namespace %s: %w", netnsPath, err)
	}
	defer podNS.Close()
	pod, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return fmt.Errorf("check pod: netlink in %s: %w", netnsPath, err)
	}
	defer pod.Close()
	_, problems := inspect("", podNS, pod, netnsPath, ifname, a, 0)
	if len(problems) == 0 {
		return nil
	}
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = errors.New(p)
	}
	return errors.Join(errs...)
}

// inspect compares the live state with what SetupPod makes and returns the
// PodLink it found and every difference. hostName "" means "the pod end's
// peer, whatever its name"; mtu 0 skips the MTU check.
func inspect(hostName string, podNS netns.NsHandle, pod *netlink.Handle, netnsPath, ifname string, a Attachment, mtu int) (PodLink, []string) {
	var problems []string
	where := fmt.Sprintf("%s in %s", ifname, netnsPath)
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	peer, err := pod.LinkByName(ifname)
	if err != nil {
		if isNotFound(err) {
			add("%s does not exist", where)
		} else {
			add("%s: cannot look it up: %v", where, err)
		}
		return PodLink{}, problems
	}
	pa := peer.Attrs()
	if peer.Type() != "veth" {
		add("%s is a %s, not a veth", where, peer.Type())
		return PodLink{}, problems
	}
	var host netlink.Link
	if pa.ParentIndex != 0 {
		host, err = netlink.LinkByIndex(pa.ParentIndex)
	}
	switch {
	case host == nil || err != nil:
		add("%s has no peer in the host namespace", where)
	case host.Type() != "veth":
		add("%s's peer (index %d) in the host namespace is a %s, not a veth", where, pa.ParentIndex, host.Type())
		host = nil
	case hostName != "" && host.Attrs().Name != hostName:
		add("%s's peer in the host namespace is %s, want %s", where, host.Attrs().Name, hostName)
	case host.Attrs().ParentIndex != pa.Index:
		add("%s's peer in the host namespace, %s (index %d), is not paired with it", where, host.Attrs().Name, pa.ParentIndex)
		host = nil
	}
	if hostName != "" && host == nil {
		return PodLink{}, problems
	}

	if pa.HardwareAddr.String() != a.MAC.String() {
		add("%s has MAC %v, want %v", where, pa.HardwareAddr, a.MAC)
	}
	if pa.Flags&net.FlagUp == 0 {
		add("%s is down", where)
	}
	if mtu != 0 && pa.MTU != mtu {
		add("%s has MTU %d, want %d", where, pa.MTU, mtu)
	}
	if on, err := txChecksum(podNS, ifname); err != nil {
		add("%s: cannot read TX checksum offload: %v", where, err)
	} else if on {
		add("%s has TX checksum offload on, want off", where)
	}

	addr := a.podAddr()
	addrs, err := pod.AddrList(peer, netlink.FAMILY_V4)
	if err != nil {
		add("%s: cannot list addresses: %v", where, err)
	} else if !hasAddr(addrs, addr) {
		add("%s has no address %v", where, addr)
	}

	gw := a.Gateway
	routes, err := pod.RouteList(peer, netlink.FAMILY_V4)
	if err != nil {
		add("%s: cannot list routes: %v", where, err)
	} else {
		var gwRoute, defRoute bool
		for _, r := range routes {
			if r.Table != unix.RT_TABLE_MAIN && r.Table != 0 {
				continue
			}
			dst := routeDst(r)
			if dst == netip.PrefixFrom(gw, 32) && r.Scope == netlink.SCOPE_LINK && r.Gw == nil {
				gwRoute = true
			}
			if dst.Bits() == 0 && ipEqual(r.Gw, gw) {
				defRoute = true
			}
		}
		if !gwRoute {
			add("%s has no route %v/32 dev %s scope link", where, gw, ifname)
		}
		if !defRoute {
			add("%s has no default route via %v dev %s", where, gw, ifname)
		}
	}

	if host != nil {
		hmac := host.Attrs().HardwareAddr
		neighs, err := pod.NeighList(pa.Index, netlink.FAMILY_V4)
		if err != nil {
			add("%s: cannot list neighbours: %v", where, err)
		} else {
			found := false
			for _, n := range neighs {
				if !ipEqual(n.IP, gw) {
					continue
				}
				found = true
				if n.State&netlink.NUD_PERMANENT == 0 {
					add("%s has neighbour %v in state %#x, want PERMANENT (%#x)", where, gw, n.State, netlink.NUD_PERMANENT)
				}
				if n.HardwareAddr.String() != hmac.String() {
					add("%s has neighbour %v lladdr %v, want %v (the host veth %s)", where, gw, n.HardwareAddr, hmac, host.Attrs().Name)
				}
			}
			if !found {
				add("%s has no neighbour entry %v lladdr %v", where, gw, hmac)
			}
		}

		ha := host.Attrs()
		hwhere := fmt.Sprintf("host veth %s", ha.Name)
		if ha.Flags&net.FlagUp == 0 {
			add("%s is down", hwhere)
		}
		if mtu != 0 && ha.MTU != mtu {
			add("%s has MTU %d, want %d", hwhere, ha.MTU, mtu)
		}
		hroutes, err := netlink.RouteList(host, netlink.FAMILY_V4)
		if err != nil {
			add("%s: cannot list routes: %v", hwhere, err)
		} else {
			found := false
			for _, r := range hroutes {
				if routeDst(r) == addr && r.Gw == nil && (r.Table == unix.RT_TABLE_MAIN || r.Table == 0) {
					found = true
				}
			}
			if !found {
				add("host namespace has no route %v dev %s", addr, ha.Name)
			}
		}
	}
	if host == nil {
		return PodLink{}, problems
	}
	return PodLink{
		HostVeth:    host.Attrs().Name,
		HostVethMAC: host.Attrs().HardwareAddr,
		HostIfindex: host.Attrs().Index,
		PodIfname:   ifname,
		PodMAC:      pa.HardwareAddr,
		PodIfindex:  pa.Index,
		MTU:         pa.MTU,
	}, problems
}

func hasAddr(addrs []netlink.Addr, want netip.Prefix) bool {
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if ok && netip.PrefixFrom(ip.Unmap(), ones) == want {
			return true
		}
	}
	return false
}

// routeDst returns r's destination; a nil Dst is the default route.
func routeDst(r netlink.Route) netip.Prefix {
	if r.Dst == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	ip, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}

func ipEqual(ip net.IP, a netip.Addr) bool {
	b, ok := netip.AddrFromSlice(ip)
	return ok && b.Unmap() == a
}
