package packet

import "encoding/binary"

// RewriteIPv4Src sets ip's source address to src and updates the IPv4 header
// checksum and, if l4 is the packet's TCP or UDP header, its checksum.
// See the package documentation for l4.
func RewriteIPv4Src(ip IPv4, l4 []byte, src [4]byte) {
	old := ip.Src()
	ip.SetSrc(src)
	if off, udp := l4ChecksumOffset(ip, l4); off >= 0 {
		updateL4Checksum(l4[off:], udp, UpdateChecksum32(binary.BigEndian.Uint16(l4[off:]), old, src))
	}
}

// RewriteIPv4Dst sets ip's destination address to dst and updates the IPv4
// header checksum and, if l4 is the packet's TCP or UDP header, its checksum.
func RewriteIPv4Dst(ip IPv4, l4 []byte, dst [4]byte) {
	old := ip.Dst()
	ip.SetDst(dst)
	if off, udp := l4ChecksumOffset(ip, l4); off >= 0 {
		updateL4Checksum(l4[off:], udp, UpdateChecksum32(binary.BigEndian.Uint16(l4[off:]), old, dst))
	}
}

// RewriteSrcPort sets the source port of the TCP or UDP header l4 and
// updates its checksum. It reports false, changing nothing, when l4 is not
// the packet's TCP or UDP header.
func RewriteSrcPort(ip IPv4, l4 []byte, port uint16) bool {
	return rewritePort(ip, l4, tcpSrcPort, port)
}

// RewriteDstPort sets the destination port of the TCP or UDP header l4 and
// updates its checksum. It reports false, changing nothing, when l4 is not
// the packet's TCP or UDP header.
func RewriteDstPort(ip IPv4, l4 []byte, port uint16) bool {
	return rewritePort(ip, l4, tcpDstPort, port)
}

// RewriteICMPEchoID sets the identifier of the ICMPv4 echo request or reply
// l4 and updates its checksum. It reports false, changing nothing, when l4
// is not a whole ICMPv4 echo header of an unfragmented packet or a first
// fragment.
func RewriteICMPEchoID(ip IPv4, l4 []byte, id uint16) bool {
	if ip.Protocol() != IPProtoICMP || ip.FragOffset() != 0 || len(l4) < ICMPv4Len {
		return false
	}
	icmp := ICMPv4(l4)
	if !icmp.IsEcho() {
		return false
	}
	old := icmp.ID()
	icmp.SetID(id)
	icmp.SetChecksum(UpdateChecksum16(icmp.Checksum(), old, id))
	return true
}

// The port offsets are the same in TCP and UDP headers.
func rewritePort(ip IPv4, l4 []byte, portOff int, port uint16) bool {
	off, udp := l4ChecksumOffset(ip, l4)
	if off < 0 {
		return false
	}
	old := binary.BigEndian.Uint16(l4[portOff:])
	binary.BigEndian.PutUint16(l4[portOff:], port)
	updateL4Checksum(l4[off:], udp, UpdateChecksum16(binary.BigEndian.Uint16(l4[off:]), old, port))
	return true
}

// l4ChecksumOffset returns the offset of the checksum field in l4 and whether
// l4 is UDP, or -1 if l4 is not a whole TCP or UDP header of ip.
func l4ChecksumOffset(ip IPv4, l4 []byte) (off int, udp bool) {
	if ip.FragOffset() != 0 {
		return -1, false
	}
	switch ip.Protocol() {
	case IPProtoTCP:
		if len(l4) >= TCPLen {
			return tcpChecksum, false
		}
	case IPProtoUDP:
		if len(l4) >= UDPLen {
			return udpChecksum, true
		}
	}
	return -1, false
}

// updateL4Checksum stores the updated checksum c in field, applying the UDP
// rules for 0.
func updateL4Checksum(field []byte, udp bool, c uint16) {
	if udp {
		if binary.BigEndian.Uint16(field) == 0 {
			return
		}
		if c == 0 {
			c = 0xFFFF
		}
	}
	binary.BigEndian.PutUint16(field, c)
}
