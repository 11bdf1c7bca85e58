// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The bench's traffic generator and sink.
//
//   gen_frame  run with BPF_PROG_TEST_RUN in live-frames mode
//              (BPF_F_TEST_XDP_LIVE_FRAMES): rewrites the frame's headers
//              from the template in cfg, sets the UDP source port from a
//              per-CPU counter, and returns XDP_TX, so the kernel sends the
//              frame out of the ingress interface given in the run's context.
//              The kernel recycles the pages of live frames after the
//              receiver has changed them (tag popped, MACs rewritten), so
//              every header byte is written on every run.
//   sink       attached to the receiving interface: counts and drops the
//              bench's frames (IPv4 UDP to cfg's port, tagged or not) and
//              passes everything else (ARP must still work).
//   sink_tc    the same as a tc (TCX ingress) program, for interfaces that
//              must not run XDP: an XDP program on a veth makes the kernel
//              copy every skb it receives into a page-pool page first.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_HLEN 14
#define VLAN_HLEN 4
#define IP_HLEN 20
#define UDP_HLEN 8
#define TCP_HLEN 20
#define ETH_P_IP 0x0800
#define ETH_P_8021Q 0x8100
#define IPPROTO_UDP 17

// The longest header template: Ethernet + 802.1Q + IPv4 + TCP.
#define MAX_HDR (ETH_HLEN + VLAN_HLEN + IP_HLEN + TCP_HLEN)

char __license[] SEC("license") = "Dual BSD/GPL";

// Set by the loader before the programs are loaded.
volatile const __u8 hdr[MAX_HDR];   // header template, hdr_len bytes used
volatile const __u32 hdr_len = MAX_HDR; // UDP: 42 untagged, 46 tagged; TCP: 54, 58
volatile const __u32 sport_off = MAX_HDR - TCP_HLEN; // L4 source port offset in hdr
// l4csum_off is the offset in hdr of an L4 checksum kept valid as the
// source port and address vary (TCP), 0 for none (UDP: checksum 0).
volatile const __u32 l4csum_off = 0;
volatile const __u16 sport_base = 1024;
volatile const __u16 flows = 1;     // distinct source ports, >= 1
volatile const __u32 hosts = 1;     // distinct source addresses, 1..65536
volatile const __u32 saddr_off = ETH_HLEN + 12; // IPv4 source address offset in hdr
volatile const __u16 sink_dport = 9; // the sink counts UDP to this port

// gen_count[0]: frames the generator offered on this CPU.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_count SEC(".maps");

// gen_pace paces the generator when rate is not 0: a frame goes out only
// while fewer than rate × (time since the first frame) have, else it is
// dropped uncounted. Written by the loader before each run.
struct pace {
	__u64 rate;     // frames per second; 0: as fast as the kernel sends
	__u64 start_ns; // first frame of the run, 0 until then
	__u64 sent;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pace);
} gen_pace SEC(".maps");

// sink_count[0]: bench frames seen; [1]: other frames passed.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int gen_frame(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&gen_count, &key);
	if (!n)
		return XDP_ABORTED;
	if (data + MAX_HDR > data_end)
		return XDP_ABORTED;
	struct pace *pc = bpf_map_lookup_elem(&gen_pace, &key);
	if (pc && pc->rate) {
		__u64 now = bpf_ktime_get_ns();
		if (!pc->start_ns)
			pc->start_ns = now;
		// In microseconds, so a long run at a high rate cannot overflow.
		if (pc->sent >= (now - pc->start_ns) / 1000 * pc->rate / 1000000)
			return XDP_DROP;
		pc->sent++;
	}

	__u8 *p = data;
#pragma unroll
	for (int i = 0; i < MAX_HDR; i++) {
		if (i < hdr_len)
			p[i] = hdr[i];
	}
	__u64 c = *n;
	*n = c + 1;
	__u16 sport = sport_base + (__u16)(c % flows);
	__u32 off = sport_off;
	if (off > MAX_HDR - 2)
		return XDP_ABORTED;
	__be16 *sp = (void *)(p + off);
	if ((void *)(sp + 1) > data_end)
		return XDP_ABORTED;
	*sp = bpf_htons(sport);
	// The L4 checksum's change (RFC 1624: HC' = ~(~HC + ~m + m')).
	__u32 l4sum = (__u16)~sport_base + (__u32)sport;
	if (hosts > 1) {
		// Source address (n/flows)%hosts above the template's, whose low 16
		// bits leave room, and the IPv4 checksum updated to match (RFC 1624:
		// HC' = ~(~HC + ~m + m')).
		__u32 so = saddr_off;
		if (so > MAX_HDR - 4)
			return XDP_ABORTED;
		__be16 *lo = (void *)(p + so + 2);
		__be16 *csum = (void *)(p + so - 2); // the header checksum, 10 bytes in
		if ((void *)(lo + 1) > data_end)
			return XDP_ABORTED;
		__u16 m = bpf_ntohs(*lo);
		__u16 m2 = m + (__u16)((c / flows) % hosts);
		*lo = bpf_htons(m2);
		__u32 sum = (__u16)~bpf_ntohs(*csum) + (__u32)(__u16)~m + m2;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		*csum = bpf_htons((__u16)~sum);
		l4sum += (__u32)(__u16)~m + m2; // the pseudo-header's source address
	}
	if (l4csum_off) {
		__u32 co = l4csum_off;
		if (co > MAX_HDR - 2)
			return XDP_ABORTED;
		__be16 *l4c = (void *)(p + co);
		if ((void *)(l4c + 1) > data_end)
			return XDP_ABORTED;
		__u32 sum = (__u16)~bpf_ntohs(*l4c) + l4sum;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		*l4c = bpf_htons((__u16)~sum);
	}
	return XDP_TX;
}

// is_bench_frame says whether data..data_end is one of the generator's
// frames.
static __always_inline int is_bench_frame(void *data, void *data_end)
{
	__u8 *p = data;
	__u32 l3 = ETH_HLEN;

	// The shortest frame the generator makes is longer than this.
	if (data + ETH_HLEN + VLAN_HLEN + IP_HLEN + UDP_HLEN > data_end)
		return 0;
	__be16 type = *(__be16 *)(p + 12);
	if (type == bpf_htons(ETH_P_8021Q)) {
		type = *(__be16 *)(p + 16);
		l3 += VLAN_HLEN;
	}
	if (type != bpf_htons(ETH_P_IP))
		return 0;
	__u8 *ip = p + l3;
	if (ip[0] != 0x45 || ip[9] != IPPROTO_UDP)
		return 0;
	__be16 dport = *(__be16 *)(ip + IP_HLEN + 2);
	return dport == bpf_htons(sink_dport);
}

// count adds one to sink_count[bench ? 0 : 1].
static __always_inline void count(int bench)
{
	__u32 key = bench ? 0 : 1;
	__u64 *n = bpf_map_lookup_elem(&sink_count, &key);
	if (n)
		*n += 1;
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	int bench = is_bench_frame((void *)(long)ctx->data, (void *)(long)ctx->data_end);
	count(bench);
	return bench ? XDP_DROP : XDP_PASS;
}

#define TC_ACT_UNSPEC (-1)
#define TC_ACT_SHOT 2

SEC("tc")
int sink_tc(struct __sk_buff *skb)
{
	// The kernel may have moved a tag into skb metadata: then the frame
	// in data is untagged, which is_bench_frame handles.
	int bench = is_bench_frame((void *)(long)skb->data, (void *)(long)skb->data_end);
	count(bench);
	// Other frames go on to the interface's next programs (TCX_NEXT): a
	// TC_ACT_OK here would end tc processing, and the bed's classic tc
	// programs (the wire's tag pop) would never see them.
	return bench ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}
