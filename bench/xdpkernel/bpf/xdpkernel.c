// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The bench's xdp-kernel peer: the forwarding trunkline does (VLAN demux,
// Service DNAT with a conntrack-like reverse map, reverse NAT, tag push, MAC
// rewrite), done in the kernel by XDP programs, as Cilium or Katran would.
//
//   xk_trunk  on the trunk: a tagged frame goes to the pod of its VID (tag
//             popped), or, when it is IPv4 TCP/UDP to a Service VIP:port, to
//             a backend picked by a hash of its 5-tuple (DNAT). Untagged
//             IPv4 to a Service VIP:port is load-balanced the same way (the
//             VPC routes the Service range to the node untagged); every
//             other untagged frame is the node's own and passes.
//   xk_pod    on each pod's host veth: IPv4 and ARP from the pod get the
//             pod's tag and go out of the trunk, IPv4 reverse-NATed when it
//             answers a Service flow; IPv4 to the node's own address and ARP
//             asking for it pass to the node's kernel.
//
// Frames leave through bpf_redirect into a veth: its peer must have a NAPI
// (GRO or an XDP program on it), or the kernel drops them (Go side).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define VLAN_HLEN 4
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_QINQ1_ 0x9100
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define ARP_HLEN 28     // Ethernet/IPv4 ARP
#define ARP_OFF_TPA 24  // target protocol address, from the ARP header
#define UDP_OFF_CSUM 6  // from the L4 header
#define TCP_OFF_CSUM 16

char __license[] SEC("license") = "Dual BSD/GPL";

// Set by the loader.
volatile const __u32 trunk_ifindex;
volatile const __be32 node_ip;
volatile const __u8 trunk_mac[ETH_ALEN];
volatile const __u8 gateway_mac[ETH_ALEN];

// Outcomes, the index of counters. Keep in step with the Go side.
enum counter {
	C_TO_POD,           // trunk → pod of the frame's VID
	C_TO_BACKEND,       // trunk → Service backend (DNAT)
	C_TRUNK_PASS,       // trunk → the node's kernel (untagged, priority tag)
	C_TO_TRUNK,         // pod → trunk
	C_TO_TRUNK_REVNAT,  // pod → trunk, reverse-NATed to the VIP
	C_POD_PASS,         // pod → the node's kernel (its address, not IPv4/ARP)
	C_DROP_UNKNOWN_VLAN,
	C_DROP_NO_BACKEND,
	C_DROP_BACKEND_NOT_LOCAL,
	C_DROP_FRAGMENT,
	C_DROP_MALFORMED,
	C_DROP_UNSUPPORTED, // QinQ, 802.1ad
	C_DROP_UNKNOWN_POD,
	C_DROP_HEADROOM,
	C_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// A pod attached to the node.
struct pod {
	__u32 ifindex;              // its host veth
	__u16 vid;
	__u8 mac[ETH_ALEN];         // the pod's eth0
	__u8 host_mac[ETH_ALEN];    // the host veth's
	__u16 pad;
};

// The pods, three ways. Sizes are set by the loader.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u16);
	__type(value, struct pod);
} pods_by_vid SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, struct pod);
} pods_by_ip SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct pod);
} pods_by_ifindex SEC(".maps");

struct svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

// A Service's backends are backends[first .. first+count).
struct svc {
	__u32 first;
	__u32 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 17);
	__type(key, struct svc_key);
	__type(value, struct svc);
} services SEC(".maps");

struct backend {
	__be32 ip;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 20);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

// The reverse mapping of a translated flow, as the backend's replies carry
// it.
struct flow_key {
	__be32 backend_ip;
	__be32 client_ip;
	__be16 backend_port;
	__be16 client_port;
	__u8 proto;
	__u8 pad[3];
};

struct frontend {
	__be32 vip;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct flow_key);
	__type(value, struct frontend);
} flows SEC(".maps");

static __always_inline int count(__u32 c, int action)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &c);
	if (v)
		*v += 1;
	return action;
}

// Incremental checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')). The
// values are 16-bit words as they lie in the packet; one's complement sums
// do not care about byte order as long as it is the same throughout.
static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline void csum_replace2(__u16 *sum, __u16 from, __u16 to)
{
	__u32 s = (__u16)~*sum + (__u32)(__u16)~from + to;
	*sum = ~csum_fold(s);
}

static __always_inline void csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 s = (__u16)~*sum + (__u32)(__u16)~(from & 0xffff) + (__u16)~(from >> 16) +
		  (to & 0xffff) + (to >> 16);
	*sum = ~csum_fold(s);
}

// A UDP checksum of 0 means "none" over IPv4: it stays 0, and a computed 0
// is sent as 0xffff.
static __always_inline void l4_replace4(__u8 proto, __u16 *sum, __u32 from, __u32 to)
{
	if (proto == IPPROTO_UDP && *sum == 0)
		return;
	csum_replace4(sum, from, to);
	if (proto == IPPROTO_UDP && *sum == 0)
		*sum = 0xffff;
}

static __always_inline void l4_replace2(__u8 proto, __u16 *sum, __u16 from, __u16 to)
{
	if (proto == IPPROTO_UDP && *sum == 0)
		return;
	csum_replace2(sum, from, to);
	if (proto == IPPROTO_UDP && *sum == 0)
		*sum = 0xffff;
}

static __always_inline __u32 flow_hash(__u32 saddr, __u32 daddr, __u32 ports, __u32 proto)
{
	__u32 h = saddr * 0x9e3779b1u;
	h ^= daddr;
	h ^= h >> 15;
	h *= 0x85ebca6bu;
	h ^= ports;
	h *= 0xc2b2ae35u;
	h ^= h >> 13;
	h ^= proto;
	h *= 0x27d4eb2fu;
	h ^= h >> 16;
	return h;
}

static __always_inline int is_tag(__u16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD_) ||
	       proto == bpf_htons(ETH_P_QINQ1_);
}

// L4 checksum field of a TCP or UDP header, or NULL when it is not in the
// frame.
static __always_inline __u16 *l4_csum(void *l4, void *end, __u8 proto)
{
	__u16 *sum = l4 + (proto == IPPROTO_TCP ? TCP_OFF_CSUM : UDP_OFF_CSUM);
	if ((void *)(sum + 1) > end)
		return NULL;
	return sum;
}

// Result of service(): NOT_SERVICE, or a counter (a drop, or C_TO_BACKEND
// with *to set).
#define NOT_SERVICE C_MAX

// service load-balances an IPv4 packet when it goes to a Service VIP:port:
// picks a backend, remembers the reverse mapping, rewrites destination
// address and port with their checksums.
static __always_inline __u32 service(struct iphdr *ip, void *end, struct pod **to)
{
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return NOT_SERVICE;
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return NOT_SERVICE; // no ports: not recognisable as a Service's
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return C_DROP_MALFORMED;
	__be16 *ports = (void *)ip + ihl;
	if ((void *)(ports + 2) > end)
		return C_DROP_MALFORMED;

	struct svc_key sk = { .vip = ip->daddr, .port = ports[1], .proto = ip->protocol };
	struct svc *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return NOT_SERVICE;
	if (ip->frag_off & bpf_htons(IP_MF))
		return C_DROP_FRAGMENT;
	__u32 n = svc->count;
	if (n == 0)
		return C_DROP_NO_BACKEND;
	__u32 h = flow_hash(ip->saddr, ip->daddr, ((__u32)ports[0] << 16) | ports[1], ip->protocol);
	__u32 idx = svc->first + h % n;
	struct backend *be = bpf_map_lookup_elem(&backends, &idx);
	if (!be)
		return C_DROP_NO_BACKEND;
	__be32 bip = be->ip;
	__be16 bport = be->port;
	struct pod *pod = bpf_map_lookup_elem(&pods_by_ip, &bip);
	if (!pod)
		return C_DROP_BACKEND_NOT_LOCAL;

	struct flow_key fk = {
		.backend_ip = bip,
		.client_ip = ip->saddr,
		.backend_port = bport,
		.client_port = ports[0],
		.proto = ip->protocol,
	};
	struct frontend *fe = bpf_map_lookup_elem(&flows, &fk);
	if (!fe || fe->vip != sk.vip || fe->port != sk.port) {
		struct frontend nfe = { .vip = sk.vip, .port = sk.port };
		bpf_map_update_elem(&flows, &fk, &nfe, BPF_ANY);
	}

	__u16 *sum = l4_csum(ports, end, ip->protocol);
	if (!sum)
		return C_DROP_MALFORMED;
	l4_replace4(ip->protocol, sum, ip->daddr, bip);
	l4_replace2(ip->protocol, sum, ports[1], bport);
	csum_replace4(&ip->check, ip->daddr, bip);
	ip->daddr = bip;
	ports[1] = bport;
	*to = pod;
	return C_TO_BACKEND;
}

static __always_inline void set_macs(struct ethhdr *eth, const __u8 *dst, const __u8 *src)
{
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++) {
		eth->h_dest[i] = dst[i];
		eth->h_source[i] = src[i];
	}
}

// deliver sends the frame to pod's host veth: the tag (if any) popped, the
// MACs rewritten to the pod's (rewrite) or kept.
static __always_inline int deliver(struct xdp_md *ctx, struct pod *pod, int tagged, int rewrite, __u32 c)
{
	__u32 ifindex = pod->ifindex;
	__u8 dst[ETH_ALEN], src[ETH_ALEN];

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return count(C_DROP_MALFORMED, XDP_DROP);
	if (rewrite) {
		__builtin_memcpy(dst, pod->mac, ETH_ALEN);
		__builtin_memcpy(src, pod->host_mac, ETH_ALEN);
	} else {
		__builtin_memcpy(dst, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(src, eth->h_source, ETH_ALEN);
	}
	if (tagged) {
		if (bpf_xdp_adjust_head(ctx, VLAN_HLEN))
			return count(C_DROP_MALFORMED, XDP_DROP);
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		eth = data;
		if ((void *)(eth + 1) > end)
			return count(C_DROP_MALFORMED, XDP_DROP);
	}
	if (tagged || rewrite)
		set_macs(eth, dst, src);
	count(c, 0);
	return bpf_redirect(ifindex, 0);
}

SEC("xdp")
int xk_trunk(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return count(C_TRUNK_PASS, XDP_PASS);

	struct pod *pod = NULL;
	__u32 c;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		// Untagged: the node's own, unless it is for a Service.
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return count(C_TRUNK_PASS, XDP_PASS);
		c = service(ip, end, &pod);
		if (c == NOT_SERVICE)
			return count(C_TRUNK_PASS, XDP_PASS);
		if (c != C_TO_BACKEND || !pod)
			return count(c, XDP_DROP);
		return deliver(ctx, pod, 0, 1, c);
	}
	if (eth->h_proto == bpf_htons(ETH_P_8021AD_) || eth->h_proto == bpf_htons(ETH_P_QINQ1_))
		return count(C_DROP_UNSUPPORTED, XDP_DROP);
	if (eth->h_proto != bpf_htons(ETH_P_8021Q))
		return count(C_TRUNK_PASS, XDP_PASS);

	__be16 *vlan = (void *)(eth + 1);
	if ((void *)(vlan + 2) > end)
		return count(C_DROP_MALFORMED, XDP_DROP);
	__u16 vid = bpf_ntohs(vlan[0]) & 0x0fff;
	__be16 inner = vlan[1];
	if (is_tag(inner))
		return count(C_DROP_UNSUPPORTED, XDP_DROP);
	if (vid == 0)
		return count(C_TRUNK_PASS, XDP_PASS); // priority-tagged: the node's
	pod = bpf_map_lookup_elem(&pods_by_vid, &vid);
	if (!pod)
		return count(C_DROP_UNKNOWN_VLAN, XDP_DROP);
	if (inner != bpf_htons(ETH_P_IP))
		return deliver(ctx, pod, 1, 0, C_TO_POD); // ARP and the rest

	struct iphdr *ip = (void *)(vlan + 2);
	if ((void *)(ip + 1) > end)
		return count(C_DROP_MALFORMED, XDP_DROP);
	struct pod *backend = NULL;
	c = service(ip, end, &backend);
	if (c == NOT_SERVICE)
		return deliver(ctx, pod, 1, 1, C_TO_POD);
	if (c != C_TO_BACKEND || !backend)
		return count(c, XDP_DROP);
	return deliver(ctx, backend, 1, 1, c);
}

SEC("xdp")
int xk_pod(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 dst[ETH_ALEN], src[ETH_ALEN];
	__u32 c = C_TO_TRUNK;

	if ((void *)(eth + 1) > end)
		return count(C_DROP_MALFORMED, XDP_DROP);
	__u32 ifindex = ctx->ingress_ifindex;
	struct pod *pod = bpf_map_lookup_elem(&pods_by_ifindex, &ifindex);
	if (!pod)
		return count(C_DROP_UNKNOWN_POD, XDP_DROP);
	__u16 vid = pod->vid;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return count(C_DROP_MALFORMED, XDP_DROP);
		if (ip->daddr == node_ip)
			return count(C_POD_PASS, XDP_PASS);
		if ((ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) &&
		    !(ip->frag_off & bpf_htons(IP_OFFSET))) {
			__u32 ihl = ip->ihl * 4;
			if (ihl < sizeof(*ip))
				return count(C_DROP_MALFORMED, XDP_DROP);
			__be16 *ports = (void *)ip + ihl;
			if ((void *)(ports + 2) > end)
				return count(C_DROP_MALFORMED, XDP_DROP);
			struct flow_key fk = {
				.backend_ip = ip->saddr,
				.client_ip = ip->daddr,
				.backend_port = ports[0],
				.client_port = ports[1],
				.proto = ip->protocol,
			};
			struct frontend *fe = bpf_map_lookup_elem(&flows, &fk);
			if (fe) {
				__be32 vip = fe->vip;
				__be16 vport = fe->port;
				__u16 *sum = l4_csum(ports, end, ip->protocol);
				if (!sum)
					return count(C_DROP_MALFORMED, XDP_DROP);
				l4_replace4(ip->protocol, sum, ip->saddr, vip);
				l4_replace2(ip->protocol, sum, ports[0], vport);
				csum_replace4(&ip->check, ip->saddr, vip);
				ip->saddr = vip;
				ports[0] = vport;
				c = C_TO_TRUNK_REVNAT;
			}
		}
#pragma unroll
		for (int i = 0; i < ETH_ALEN; i++) {
			dst[i] = gateway_mac[i];
			src[i] = trunk_mac[i];
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		__u8 *arp = (void *)(eth + 1);
		if ((void *)(arp + ARP_HLEN) > end)
			return count(C_DROP_MALFORMED, XDP_DROP);
		__be32 tpa;
		__builtin_memcpy(&tpa, arp + ARP_OFF_TPA, sizeof(tpa));
		if (tpa == node_ip)
			return count(C_POD_PASS, XDP_PASS);
		__builtin_memcpy(dst, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(src, eth->h_source, ETH_ALEN);
	} else {
		return count(C_POD_PASS, XDP_PASS);
	}

	if (bpf_xdp_adjust_head(ctx, -VLAN_HLEN))
		return count(C_DROP_HEADROOM, XDP_DROP);
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	__be16 *vlan = (void *)(eth + 1);
	if ((void *)(vlan + 1) > end)
		return count(C_DROP_MALFORMED, XDP_DROP);
	set_macs(eth, dst, src);
	eth->h_proto = bpf_htons(ETH_P_8021Q);
	vlan[0] = bpf_htons(vid & 0x0fff);
	count(c, 0);
	return bpf_redirect(trunk_ifindex, 0);
}
