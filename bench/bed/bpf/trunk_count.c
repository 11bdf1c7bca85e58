// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// An XDP program that counts the frames arriving on an interface by the
// 802.1Q tag found in their bytes (what an AF_XDP socket would see) and passes
// every frame on. The bed's tests use it to prove that tags cross the veth in
// the frame's bytes, not in skb metadata.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_HLEN 14
#define VLAN_HLEN 4
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

// Slot of a frame in frames_by_vid: VID * KINDS + kind; untagged frames use
// VID UNTAGGED.
#define UNTAGGED 4096
#define KINDS 4
enum kind {
	KIND_ARP,
	KIND_IPV4,
	KIND_OTHER,
	KIND_QINQ, // more than one tag
};

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, (UNTAGGED + 1) * KINDS);
} frames_by_vid SEC(".maps");

SEC("xdp")
int count_tags(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 vid = UNTAGGED;
	__u32 kind;
	__be16 type;

	if (data + ETH_HLEN > end)
		return XDP_PASS;
	type = *(__be16 *)(data + 12);
	if (type == bpf_htons(ETH_P_8021Q) || type == bpf_htons(ETH_P_8021AD)) {
		if (data + ETH_HLEN + VLAN_HLEN > end)
			return XDP_PASS;
		vid = bpf_ntohs(*(__be16 *)(data + 14)) & 0x0fff;
		type = *(__be16 *)(data + 16);
	}

	if (type == bpf_htons(ETH_P_ARP))
		kind = KIND_ARP;
	else if (type == bpf_htons(ETH_P_IP))
		kind = KIND_IPV4;
	else if (type == bpf_htons(ETH_P_8021Q) || type == bpf_htons(ETH_P_8021AD))
		kind = KIND_QINQ;
	else
		kind = KIND_OTHER;

	__u32 key = vid * KINDS + kind;
	__u64 *n = bpf_map_lookup_elem(&frames_by_vid, &key);
	if (n)
		__sync_fetch_and_add(n, 1);
	return XDP_PASS;
}
