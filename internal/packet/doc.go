// Package packet reads and rewrites Ethernet, 802.1Q/802.1ad, ARP, IPv4,
// IPv6, TCP, UDP and ICMPv4 headers in place.
//
// Each header is a view, a named []byte starting at the header's first byte,
// with getters and setters at fixed offsets. A view's methods assume the
// slice holds at least the header's Len bytes (IPv4 and TCP: their stated
// header length) and panic like any out-of-range slice index otherwise; use
// them on frames that [Parsed.Decode] has checked.
//
// [Parsed.Decode] classifies a whole frame into one reusable struct without
// allocating, panicking or returning an error: a frame it cannot use is
// described by [Parsed.Status].
//
// Checksums follow RFC 1071; every rewrite updates them incrementally as in
// RFC 1624, equation 3.
//
// # NAT rewrites
//
// [RewriteIPv4Src], [RewriteIPv4Dst], [RewriteSrcPort], [RewriteDstPort] and
// [RewriteICMPEchoID] change one field of an IPv4 packet in place and update
// every checksum that covers it. ip is the packet's IPv4 header and l4 the
// bytes after it (frame[p.L4Off:] after Decode). l4 is treated as a TCP or
// UDP header only when ip.Protocol says so, ip is not a fragment at a non-zero
// offset, and l4 holds the whole minimum header ([TCPLen], [UDPLen]);
// otherwise only the IPv4 header changes. So for a non-first fragment an
// address rewrite touches only the IPv4 header: the L4 checksum is in the
// first fragment. A UDP checksum of 0 ("none") stays 0, and a UDP checksum
// that updates to 0 is written as 0xFFFF (RFC 768).
package packet
