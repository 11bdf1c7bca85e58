package packet

// Status is how far [Parsed.Decode] got through a frame. The zero Status
// belongs to a Parsed that has not been decoded.
type Status uint8

// Decode results.
const (
	// StatusOK: every header Decode knows in the frame is present and
	// consistent.
	StatusOK Status = iota + 1
	// StatusTruncated: the frame ends inside the Ethernet header, a tag, the
	// ARP message, the IPv6 fixed header or the IPv4 header; or the IPv4
	// datagram (TotalLen) ends inside the TCP, UDP or ICMPv4 header. A frame
	// cut after the IPv4 header is StatusMalformed: its total length is then
	// larger than the frame.
	StatusTruncated
	// StatusMalformed: a header is present but contradicts itself or the
	// frame: wrong IP version, IPv4 IHL < 5, IPv4 total length smaller than
	// the header or larger than the frame, IPv6 payload longer than the
	// frame, TCP data offset < 5.
	StatusMalformed
	// StatusUnsupported: an EtherType other than IPv4, ARP, IPv6 and the VLAN
	// TPIDs, more than MaxTags tags, or ARP for anything but Ethernet/IPv4.
	StatusUnsupported
)

// String returns the status in lower case, as used in drop reasons.
func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusTruncated:
		return "truncated"
	case StatusMalformed:
		return "malformed"
	case StatusUnsupported:
		return "unsupported"
	}
	return "undecoded"
}

// MaxTags is the number of VLAN tags Decode reads. A frame with more has
// Tags == MaxTags+1 and Status [StatusUnsupported].
const MaxTags = 2

// Parsed is what Decode learnt about one frame. It holds no slices or
// pointers, so one value can be reused for every frame; offsets index the
// frame passed to Decode.
//
// Decode fills fields in frame order and stops at the first problem: the
// fields of every header it finished are set and all others are zero. So when
// Status is not OK, fields of the headers before the problem are still valid.
// In particular:
//   - Tags, VID, PCP, InnerVID: set for each tag fully present.
//   - EtherType, L3Off: set once the tags are read (EtherType is otherwise
//     the last TPID read).
//   - IPv4 fields (IPProto to FirstFragment): set when EtherType is IPv4
//     and the whole IPv4 header, options included, is present with version
//     4 and IHL >= 5.
//   - L4Off: also requires a consistent total length.
//   - SrcPort, DstPort, TCPFlags, ICMP fields: also require an unfragmented
//     packet or a first fragment whose datagram holds the whole L4 header.
//   - ARP fields: set with Status OK when EtherType is ARP.
//   - IPv6: only EtherType, L3Off and Status.
type Parsed struct {
	Status Status

	// Tags is the number of VLAN tags (0x8100, 0x88A8 or 0x9100) read:
	// 0, 1, 2 (QinQ), or MaxTags+1 when there were more.
	Tags uint8
	// PCP is the priority of the outer tag.
	PCP uint8
	// VID is the VLAN ID of the outer tag; 0 for an untagged frame and for
	// a priority-only tag (check Tags to tell them apart).
	VID uint16
	// InnerVID is the VLAN ID of the second tag when Tags >= 2.
	InnerVID uint16
	// EtherType is the type after the tags.
	EtherType EtherType
	// L3Off is the offset of the L3 header: EthernetLen + Tags*VLANTagLen.
	L3Off uint16

	// IPProto is the IPv4 protocol, such as IPProtoTCP.
	IPProto uint8
	// IPHeaderLen is the IPv4 header length in bytes, options included.
	IPHeaderLen uint8
	// IPTotalLen is the IPv4 total length; the frame may hold padding after
	// it.
	IPTotalLen uint16
	// Src and Dst are the IPv4 addresses.
	Src, Dst [4]byte
	// Fragment is set for any IPv4 fragment (MF set or offset non-zero).
	Fragment bool
	// FirstFragment is set for a fragment at offset 0. A packet carries an
	// L4 header when !Fragment || FirstFragment.
	FirstFragment bool

	// L4Off is the offset of the first byte after the IPv4 header: the L4
	// header, or for a non-first fragment the fragment's data.
	L4Off uint16
	// SrcPort and DstPort are the TCP or UDP ports.
	SrcPort, DstPort uint16
	// TCPFlags is the TCP flag byte (TCPFlagFIN...).
	TCPFlags uint8
	// ICMPType and ICMPCode are the ICMPv4 type and code.
	ICMPType, ICMPCode uint8
	// ICMPID is the echo identifier; 0 for other ICMPv4 types.
	ICMPID uint16

	// ARPOp is the ARP operation (ARPRequest, ARPReply).
	ARPOp uint16
	// ARPSenderIP and ARPTargetIP are the ARP protocol addresses.
	ARPSenderIP, ARPTargetIP [4]byte
	// ARPSenderMAC is the ARP sender hardware address.
	ARPSenderMAC [6]byte
}

// L4Len returns the number of bytes after the IPv4 header that TotalLen
// covers (the L4 header and payload, or a fragment's data), or 0 when L4Off
// is not set.
func (p *Parsed) L4Len() int {
	if p.L4Off == 0 {
		return 0
	}
	return int(p.IPTotalLen) - int(p.IPHeaderLen)
}

// Decode replaces the contents of p with what it finds in frame, an
// Ethernet II frame without FCS. It does not allocate or panic, does not
// modify or keep frame, and does not validate checksums.
func (p *Parsed) Decode(frame []byte) {
	*p = Parsed{}
	if len(frame) < EthernetLen {
		p.Status = StatusTruncated
		return
	}
	et := Ethernet(frame).Type()
	off := EthernetLen
	for et.IsVLANTag() {
		p.EtherType = et
		if p.Tags == MaxTags {
			p.Tags = MaxTags + 1
			p.Status = StatusUnsupported
			return
		}
		if len(frame) < off+VLANTagLen {
			p.Status = StatusTruncated
			return
		}
		tag := VLANTag(frame[off:])
		if p.Tags == 0 {
			p.VID, p.PCP = tag.VID(), tag.PCP()
		} else {
			p.InnerVID = tag.VID()
		}
		p.Tags++
		et = tag.Type()
		off += VLANTagLen
	}
	p.EtherType = et
	p.L3Off = uint16(off)
	switch et {
	case EtherTypeIPv4:
		p.Status = p.decodeIPv4(frame, off)
	case EtherTypeARP:
		p.Status = p.decodeARP(frame[off:])
	case EtherTypeIPv6:
		p.Status = decodeIPv6(frame[off:])
	default:
		p.Status = StatusUnsupported
	}
}

func (p *Parsed) decodeIPv4(frame []byte, off int) Status {
	if len(frame)-off < IPv4Len {
		return StatusTruncated
	}
	ip := IPv4(frame[off:])
	if ip.Version() != 4 || ip.IHL() < 5 {
		return StatusMalformed
	}
	hl := ip.HeaderLen()
	if len(ip) < hl {
		return StatusTruncated
	}
	p.IPProto = ip.Protocol()
	p.IPHeaderLen = uint8(hl)
	p.IPTotalLen = ip.TotalLen()
	p.Src, p.Dst = ip.Src(), ip.Dst()
	fragOff := ip.FragOffset()
	p.Fragment = ip.MoreFragments() || fragOff != 0
	p.FirstFragment = p.Fragment && fragOff == 0

	tl := int(p.IPTotalLen)
	if tl < hl || tl > len(ip) {
		return StatusMalformed
	}
	p.L4Off = uint16(off + hl)
	if fragOff != 0 {
		return StatusOK
	}
	l4 := ip[hl:tl]
	switch p.IPProto {
	case IPProtoTCP:
		if len(l4) < TCPLen {
			return StatusTruncated
		}
		tcp := TCP(l4)
		if tcp.DataOffset() < TCPLen/4 {
			return StatusMalformed
		}
		if tcp.HeaderLen() > len(l4) {
			return StatusTruncated
		}
		p.SrcPort, p.DstPort, p.TCPFlags = tcp.SrcPort(), tcp.DstPort(), tcp.Flags()
	case IPProtoUDP:
		if len(l4) < UDPLen {
			return StatusTruncated
		}
		udp := UDP(l4)
		p.SrcPort, p.DstPort = udp.SrcPort(), udp.DstPort()
	case IPProtoICMP:
		if len(l4) < ICMPv4Len {
			return StatusTruncated
		}
		icmp := ICMPv4(l4)
		p.ICMPType, p.ICMPCode = icmp.Type(), icmp.Code()
		if icmp.IsEcho() {
			p.ICMPID = icmp.ID()
		}
	}
	return StatusOK
}

func (p *Parsed) decodeARP(b []byte) Status {
	if len(b) < ARPLen {
		return StatusTruncated
	}
	arp := ARP(b)
	if !arp.Valid() {
		return StatusUnsupported
	}
	p.ARPOp = arp.Op()
	p.ARPSenderIP, p.ARPTargetIP = arp.SenderIP(), arp.TargetIP()
	p.ARPSenderMAC = arp.SenderHW()
	return StatusOK
}

func decodeIPv6(b []byte) Status {
	if len(b) < IPv6Len {
		return StatusTruncated
	}
	ip := IPv6(b)
	if ip.Version() != 6 {
		return StatusMalformed
	}
	if IPv6Len+int(ip.PayloadLen()) > len(b) {
		return StatusMalformed
	}
	return StatusOK
}
