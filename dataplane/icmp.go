package dataplane

import (
	"encoding/binary"

	"github.com/trunkline/trunkline/dataplane/port"
	"github.com/trunkline/trunkline/internal/packet"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
)

// isICMPError reports whether the decoded packet is an ICMP error that
// quotes another packet (destination unreachable, fragmentation needed
// among them; time exceeded; parameter problem).
func (w *Worker) isICMPError() bool {
	p := &w.pkt
	return p.IPProto == 1 && !p.Fragment && (p.ICMPType == packet.ICMPv4DestUnreachable || p.ICMPType == packet.ICMPv4TimeExceeded || p.ICMPType == 12)
}

// natICMPError translates an ICMP error about a translated flow: the
// quoted packet is one the node translated, so its addresses and ports
// are put back as the error's recipient sent them, and the error's own
// addresses follow (a backend's error comes from the frontend). So path
// MTU discovery works through a Service. It reports false, leaving the
// frame to the caller, when the quoted packet belongs to no translated
// flow.
func (w *Worker) natICMPError(d port.Desc, b []byte) bool {
	p := &w.pkt
	l3 := int(p.L3Off)
	icmp := b[p.L4Off : l3+int(p.IPTotalLen)]
	if len(icmp) < 8+packet.IPv4Len+8 {
		return false
	}
	inner := packet.IPv4(icmp[8:])
	ihl := inner.HeaderLen()
	if inner.Version() != 4 || ihl < packet.IPv4Len || len(inner) < ihl+8 {
		return false
	}
	proto := inner.Protocol()
	if proto != lb.TCP && proto != lb.UDP {
		return false
	}
	il4 := inner[ihl:]
	src, dst := inner.Src(), inner.Dst()
	sport, dport := binary.BigEndian.Uint16(il4[0:]), binary.BigEndian.Uint16(il4[2:])
	// The quoted packet went from the error's recipient; a reply to it
	// would carry the inverse tuple, which is what conntrack knows.
	key := conntrack.Key{SrcIP: dst, DstIP: src, SrcPort: dport, DstPort: sport, Proto: proto}
	c, dir, ok := w.ct.Lookup(key, 0, w.now)
	if !ok {
		return false
	}
	// back is the tuple the recipient saw for its own packet.
	back := c.Orig
	if dir == conntrack.DirOriginal {
		back = conntrack.Key{SrcIP: c.Reply.DstIP, DstIP: c.Reply.SrcIP, SrcPort: c.Reply.DstPort, DstPort: c.Reply.SrcPort, Proto: proto}
	}
	// The quoted header and the 8 bytes of ports (the UDP checksum among
	// them; a TCP checksum is not quoted).
	var l4 []byte
	if proto == lb.UDP {
		l4 = il4[:8]
	}
	if back.SrcIP != src {
		packet.RewriteIPv4Src(inner, l4, back.SrcIP)
	}
	if back.DstIP != dst {
		packet.RewriteIPv4Dst(inner, l4, back.DstIP)
	}
	if back.SrcPort != sport {
		packet.RewriteSrcPort(inner, l4, back.SrcPort)
		binary.BigEndian.PutUint16(il4[0:], back.SrcPort)
	}
	if back.DstPort != dport {
		packet.RewriteDstPort(inner, l4, back.DstPort)
		binary.BigEndian.PutUint16(il4[2:], back.DstPort)
	}
	// The error goes to the recipient's own address; an error the
	// translated destination sent comes from the address the recipient
	// sent to.
	outer := packet.IPv4(b[l3:])
	newSrc, newDst := p.Src, back.SrcIP
	if p.Src == dst {
		newSrc = back.DstIP
	}
	if newSrc != p.Src {
		packet.RewriteIPv4Src(outer, nil, newSrc)
	}
	if newDst != p.Dst {
		packet.RewriteIPv4Dst(outer, nil, newDst)
	}
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint16(icmp[2:], packet.Fold(packet.Checksum(icmp, 0)))
	w.route(d, b, newSrc, newDst)
	return true
}
