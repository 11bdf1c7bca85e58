// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// XDP programs of the trunkline agent. They only steer frames: every
// decision about a frame's meaning is taken in userspace.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_8021AD_ 0x88A8
#define ETH_P_QINQ1_ 0x9100
#define MAX_QUEUES 64
#define MAX_POD_SOCKETS 16384

// Sockets of the trunk, by RX queue.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} trunk_xsks SEC(".maps");

// Sockets of the pods' host veths, by slot.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_POD_SOCKETS);
	__type(key, __u32);
	__type(value, __u32);
} pod_xsks SEC(".maps");

struct pod_key {
	__u32 ifindex;
	__u32 queue;
};

// (host veth ifindex, RX queue) -> slot in pod_xsks.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POD_SOCKETS);
	__type(key, struct pod_key);
	__type(value, __u32);
} pod_slots SEC(".maps");

// The node's own IPv4 addresses: pods' traffic to them goes to the kernel.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} node_addrs SEC(".maps");

// Service frontend addresses (ClusterIP, ExternalIP, LoadBalancer): their
// untagged traffic is the agent's.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, __u32);
	__type(value, __u8);
} vips SEC(".maps");

struct port_key {
	__u16 port; // network order
	__u8 proto;
	__u8 pad;
};

// NodePorts on the node's addresses.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct port_key);
	__type(value, __u8);
} node_ports SEC(".maps");

struct port_range {
	__u16 lo, hi; // host order; lo 0: none
};

// The node's SNAT ports: replies to translated flows come back to them.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_range);
} snat_ports SEC(".maps");

// While the agent's connection table is flooded, SYNs to Service frontends
// are shed here, before they cost a copy into the agent's memory, down to
// a rate per CPU (a token bucket kept in time: credit_ns grows with the
// clock up to burst_ns, each SYN let through costs cost_ns). The agent
// shuts the gate (sets until_ns, on CLOCK_MONOTONIC) while its workers see
// the table at its bound, and lets it open by itself when they no longer do.
struct syn_gate {
	__u64 until_ns;
	__u64 cost_ns;
	__u64 burst_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct syn_gate);
} syn_gate SEC(".maps");

struct syn_bucket {
	__u64 credit_ns;
	__u64 last_ns;
	__u64 shed; // SYNs dropped on this CPU
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct syn_bucket);
} syn_buckets SEC(".maps");

// shed_syn reports whether ip, a packet to a Service frontend, is a TCP
// SYN (without ACK: a new flow) to drop because the gate is shut and this
// CPU's bucket is empty.
static __always_inline int shed_syn(struct iphdr *ip, void *end)
{
	__u32 zero = 0;
	if (ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(0x1fff)))
		return 0;
	__u32 ihl = ip->ihl * 4;
	if (ihl < 20 || ihl > 60)
		return 0;
	__u8 *tcp = (void *)ip + ihl;
	if ((void *)(tcp + 14) > end || (tcp[13] & 0x12) != 0x02)
		return 0;
	struct syn_gate *g = bpf_map_lookup_elem(&syn_gate, &zero);
	if (!g || !g->until_ns)
		return 0;
	// The coarse clock (the last tick's time, no clock read: the precise
	// one cost the flood's receive path 3% of a CPU here); a tick is far
	// below the bucket's depth.
	__u64 now = bpf_ktime_get_coarse_ns();
	if (now >= g->until_ns)
		return 0;
	struct syn_bucket *b = bpf_map_lookup_elem(&syn_buckets, &zero);
	if (!b)
		return 0;
	__u64 credit = b->credit_ns + (now - b->last_ns);
	if (credit > g->burst_ns)
		credit = g->burst_ns;
	b->last_ns = now;
	if (credit >= g->cost_ns) {
		b->credit_ns = credit - g->cost_ns;
		return 0;
	}
	b->credit_ns = credit;
	b->shed++;
	return 1;
}

// snat_port reports whether port (network order) is one of the node's
// SNAT ports.
static __always_inline int snat_port(__u16 port)
{
	__u32 zero = 0;
	struct port_range *r = bpf_map_lookup_elem(&snat_ports, &zero);
	__u16 p = bpf_ntohs(port);
	return r && r->lo && p >= r->lo && p <= r->hi;
}

// agent_port reports whether a packet to one of the node's addresses is
// the agent's: TCP/UDP to a NodePort or an SNAT port, or an ICMP error
// about a packet the agent sent from an SNAT port.
static __always_inline int agent_port(struct iphdr *ip, void *end)
{
	__u32 ihl = ip->ihl * 4;
	if (ihl < 20 || ihl > 60)
		return 0;
	if (ip->protocol == IPPROTO_ICMP) {
		__u8 *icmp = (void *)ip + ihl;
		if ((void *)(icmp + 8 + 20 + 4) > end)
			return 0;
		if (icmp[0] != 3 && icmp[0] != 11 && icmp[0] != 12)
			return 0;
		struct iphdr *inner = (void *)(icmp + 8);
		__u32 iihl = inner->ihl * 4;
		if (iihl < 20 || iihl > 60 || (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))
			return 0;
		__u16 *iports = (void *)inner + iihl;
		if ((void *)(iports + 2) > end)
			return 0;
		return snat_port(iports[0]);
	}
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return 0;
	__u16 *ports = (void *)ip + ihl;
	if ((void *)(ports + 2) > end)
		return 0;
	struct port_key k = { .port = ports[1], .proto = ip->protocol };
	if (bpf_map_lookup_elem(&node_ports, &k))
		return 1;
	return snat_port(ports[1]);
}

static __always_inline int is_tag(__u16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD_) ||
	       proto == bpf_htons(ETH_P_QINQ1_);
}

// trunk: 802.1Q-tagged frames go to the socket of their RX queue; untagged
// and priority-tagged (VID 0) frames are the node's own and pass.
SEC("xdp")
int tl_trunk(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		// Untagged: the node's own, unless it is for a Service frontend
		// or a reply to a flow the agent translated.
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		__u32 dst = ip->daddr;
		if (bpf_map_lookup_elem(&vips, &dst) ||
		    (bpf_map_lookup_elem(&node_addrs, &dst) && agent_port(ip, end))) {
			if (shed_syn(ip, end))
				return XDP_DROP;
			return bpf_redirect_map(&trunk_xsks, ctx->rx_queue_index, XDP_PASS);
		}
		return XDP_PASS;
	}
	if (!is_tag(eth->h_proto))
		return XDP_PASS;
	if (data + ETH_HLEN + 4 <= end && eth->h_proto == bpf_htons(ETH_P_8021Q)) {
		__u16 tci = bpf_ntohs(*(__u16 *)(data + ETH_HLEN));
		__u16 inner = *(__u16 *)(data + ETH_HLEN + 2);
		if ((tci & 0x0fff) == 0 && !is_tag(inner))
			return XDP_PASS;
	}
	return bpf_redirect_map(&trunk_xsks, ctx->rx_queue_index, XDP_PASS);
}

// pod: on a pod's host veth every frame goes to the pod's socket, except
// IPv4 to the node's own addresses and ARP asking for them, which the node's
// kernel handles (kubelet probes, host-network agents) — but not when they
// go to a NodePort or are replies to a flow the agent translated to the
// node's address.
SEC("xdp")
int tl_pod(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) <= end) {
			__u32 dst = ip->daddr;
			if (bpf_map_lookup_elem(&node_addrs, &dst) && !agent_port(ip, end))
				return XDP_PASS;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		// Ethernet/IPv4 ARP: target IP at offset 24 of the ARP header.
		if (data + ETH_HLEN + 28 <= end) {
			__u32 tpa;
			__builtin_memcpy(&tpa, data + ETH_HLEN + 24, 4);
			if (bpf_map_lookup_elem(&node_addrs, &tpa))
				return XDP_PASS;
		}
	}
	struct pod_key key = { .ifindex = ctx->ingress_ifindex, .queue = ctx->rx_queue_index };
	__u32 *slot = bpf_map_lookup_elem(&pod_slots, &key);
	if (!slot)
		return XDP_PASS;
	return bpf_redirect_map(&pod_xsks, *slot, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
