// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The bed's emulation of the cloud vSwitch: tc-BPF (clsact, direct-action)
// programs that push or pop the 802.1Q tag of a pod, looked up by IPv4 address
// in vid_by_ip.
//
//   wire_egress  on the wire veth, egress: tag of the DESTINATION pod
//                (IPv4 destination, ARP target address).
//   node_egress  on the node's trunk, egress (the kernel peer): tag of the
//                SOURCE pod (IPv4 source, ARP sender address).
//   pop_ingress  on either, ingress: pops one tag.
//
// bpf_skb_vlan_push only stores the tag in the skb's metadata; the kernel
// writes it into the frame's bytes on transmit only when the device lacks TX
// VLAN offload, so the bed turns txvlan off on the interfaces these run on.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TC_ACT_OK 0

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

// Offsets from the start of the frame (untagged Ethernet).
#define OFF_ETH_TYPE 12
#define OFF_IP_SRC (ETH_HLEN + 12)
#define OFF_IP_DST (ETH_HLEN + 16)
#define OFF_ARP_HDR ETH_HLEN
#define OFF_ARP_SPA (ETH_HLEN + 14)
#define OFF_ARP_TPA (ETH_HLEN + 24)

char __license[] SEC("license") = "Dual BSD/GPL";

// vid_by_ip maps a pod's IPv4 address, as its 4 bytes appear in the packet,
// to the pod's VLAN ID.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u16);
	__uint(max_entries, 4096);
} vid_by_ip SEC(".maps");

// arp_ipv4 is the fixed part of an Ethernet/IPv4 ARP header.
struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
};

enum which_addr {
	SOURCE,
	DESTINATION,
};

static __always_inline int push_tag(struct __sk_buff *skb, enum which_addr which)
{
	__be16 type;
	__u32 addr;
	int off;

	if (skb->vlan_present)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, OFF_ETH_TYPE, &type, sizeof(type)) < 0)
		return TC_ACT_OK;

	switch (type) {
	case bpf_htons(ETH_P_IP):
		off = which == SOURCE ? OFF_IP_SRC : OFF_IP_DST;
		break;
	case bpf_htons(ETH_P_ARP): {
		struct arp_ipv4 arp;

		if (bpf_skb_load_bytes(skb, OFF_ARP_HDR, &arp, sizeof(arp)) < 0)
			return TC_ACT_OK;
		if (arp.htype != bpf_htons(1) || arp.ptype != bpf_htons(ETH_P_IP) ||
		    arp.hlen != 6 || arp.plen != 4)
			return TC_ACT_OK;
		off = which == SOURCE ? OFF_ARP_SPA : OFF_ARP_TPA;
		break;
	}
	default:
		return TC_ACT_OK; // already tagged, IPv6, anything else: untouched
	}

	if (bpf_skb_load_bytes(skb, off, &addr, sizeof(addr)) < 0)
		return TC_ACT_OK;
	__u16 *vid = bpf_map_lookup_elem(&vid_by_ip, &addr);
	if (!vid)
		return TC_ACT_OK; // not a pod (the node, the outside): untagged
	bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), *vid & 0x0fff);
	return TC_ACT_OK;
}

SEC("tc")
int wire_egress(struct __sk_buff *skb)
{
	return push_tag(skb, DESTINATION);
}

SEC("tc")
int node_egress(struct __sk_buff *skb)
{
	return push_tag(skb, SOURCE);
}

SEC("tc")
int pop_ingress(struct __sk_buff *skb)
{
	// On receive the kernel has usually moved the tag into the skb's
	// metadata already; bpf_skb_vlan_pop handles both places.
	if (skb->vlan_present || skb->protocol == bpf_htons(ETH_P_8021Q) ||
	    skb->protocol == bpf_htons(ETH_P_8021AD))
		bpf_skb_vlan_pop(skb);
	return TC_ACT_OK;
}
