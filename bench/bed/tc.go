package bed

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The tc filters the bed attaches (classic clsact + cls_bpf, direct-action)
// carry this priority and handle, so the bed removes only its own. Classic
// tc, not TCX: a filter stays attached after the process that made it exits
// (`trunkline bed up` returns), and goes away with its namespace.
const (
	tcPriority = 0xbed
	tcHandle   = 0xbed
)

// attachWirePrograms loads the VLAN programs for the wire, fills vid_by_ip
// from the pods, and attaches them: egress pushes the destination pod's tag,
// ingress pops.
func (b *Bed) attachWirePrograms() error {
	return b.attachVLANPrograms(b.Wire.Netns, b.Wire.Ifname, func(o *vlanTagObjects) *ebpf.Program { return o.WireEgress })
}

// EnableKernelPath makes the node's kernel the dataplane (the bench's
// `kernel` peer): in the node namespace, tc-BPF on the trunk pops tags on
// ingress and pushes the SOURCE pod's tag on egress; IPv4 forwarding on; proxy
// ARP on the trunk (no delay), so the wire resolves pod addresses to the
// trunk's MAC. Pods then reach the wire through the node's routes. Run no
// agent on the trunk meanwhile.
func (b *Bed) EnableKernelPath() error {
	err := b.attachVLANPrograms(b.Node.Netns, b.Node.Trunk, func(o *vlanTagObjects) *ebpf.Program { return o.NodeEgress })
	if err == nil {
		err = sysctls(b.Node.Netns,
			"net.ipv4.conf."+b.Node.Trunk+".proxy_arp", "1",
			"net.ipv4.neigh."+b.Node.Trunk+".proxy_delay", "0",
			"net.ipv4.ip_forward", "1",
		)
	}
	if err != nil {
		return fmt.Errorf("bed %s: enable kernel path: %w", b.Prefix, err)
	}
	return nil
}

// DisableKernelPath undoes EnableKernelPath: forwarding and proxy ARP off,
// the bed's tc filters removed from the trunk (and the clsact qdisc, if
// nothing else uses it). The trunk is then free for trunkline. Repeating it
// is fine.
func (b *Bed) DisableKernelPath() error {
	err := sysctls(b.Node.Netns,
		"net.ipv4.ip_forward", "0",
		"net.ipv4.conf."+b.Node.Trunk+".proxy_arp", "0",
	)
	if err == nil {
		err = withHandle(b.Node.Netns, func(h *netlink.Handle) error {
			return detachVLANPrograms(h, b.Node.Trunk)
		})
	}
	if err != nil {
		return fmt.Errorf("bed %s: disable kernel path: %w", b.Prefix, err)
	}
	return nil
}

// attachVLANPrograms loads a fresh copy of the VLAN programs (with its own
// vid_by_ip), fills the map and attaches pop_ingress and the chosen egress
// program to ifname in netns, replacing the bed's earlier filters there.
func (b *Bed) attachVLANPrograms(netns, ifname string, egress func(*vlanTagObjects) *ebpf.Program) error {
	var objs vlanTagObjects
	if err := loadVlanTagObjects(&objs, nil); err != nil {
		return fmt.Errorf("load VLAN programs: %w", err)
	}
	// The kernel keeps what tc holds; our descriptors go.
	defer objs.Close()
	for _, p := range b.Pods {
		if err := objs.VidByIp.Put(p.IP.As4(), p.VLAN); err != nil {
			return fmt.Errorf("vid_by_ip %s → %d: %w", p.IP, p.VLAN, err)
		}
	}
	for _, br := range b.Branches {
		if err := objs.VidByIp.Put(br.IP.As4(), br.VLAN); err != nil {
			return fmt.Errorf("vid_by_ip %s → %d: %w", br.IP, br.VLAN, err)
		}
	}
	return withHandle(netns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", ifname, netns, err)
		}
		qdisc := &netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
			QdiscType:  "clsact",
		}
		if err := h.QdiscReplace(qdisc); err != nil {
			return fmt.Errorf("clsact qdisc on %s: %w", ifname, err)
		}
		for _, f := range []struct {
			parent uint32
			prog   *ebpf.Program
		}{
			{netlink.HANDLE_MIN_INGRESS, objs.PopIngress},
			{netlink.HANDLE_MIN_EGRESS, egress(&objs)},
		} {
			info, err := f.prog.Info()
			if err != nil {
				return err
			}
			filter := &netlink.BpfFilter{
				FilterAttrs: netlink.FilterAttrs{
					LinkIndex: l.Attrs().Index,
					Parent:    f.parent,
					Handle:    tcHandle,
					Priority:  tcPriority,
					Protocol:  unix.ETH_P_ALL,
				},
				Fd:           f.prog.FD(),
				Name:         "trunkline-bed-" + info.Name,
				DirectAction: true,
			}
			if err := h.FilterReplace(filter); err != nil {
				return fmt.Errorf("tc filter %s on %s: %w", info.Name, ifname, err)
			}
		}
		return nil
	})
}

// detachVLANPrograms removes the bed's filters from ifname and the clsact
// qdisc when no filter is left on it.
func detachVLANPrograms(h *netlink.Handle, ifname string) error {
	l, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifname, err)
	}
	idx := l.Attrs().Index
	left := 0
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		filters, err := h.FilterList(l, parent)
		if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				continue // no clsact qdisc
			}
			return fmt.Errorf("list tc filters on %s: %w", ifname, err)
		}
		for _, f := range filters {
			a := f.Attrs()
			if a.Priority != tcPriority || a.Handle != tcHandle {
				left++
				continue
			}
			if err := h.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete tc filter on %s: %w", ifname, err)
			}
		}
	}
	if left > 0 {
		return nil
	}
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := h.QdiscDel(qdisc); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete clsact qdisc on %s: %w", ifname, err)
	}
	return nil
}
