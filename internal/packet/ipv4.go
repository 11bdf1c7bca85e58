package packet

import "encoding/binary"

const (
	ipv4VersionIHL = 0
	ipv4TOS        = 1
	ipv4TotalLen   = 2
	ipv4ID         = 4
	ipv4FlagsFrag  = 6
	ipv4TTL        = 8
	ipv4Protocol   = 9
	ipv4Checksum   = 10
	ipv4Src        = 12
	ipv4Dst        = 16

	ipv4FlagsShift = 13
	ipv4FragMask   = 0x1FFF
)

// IPv4Len is the length of an IPv4 header without options.
const IPv4Len = 20

// IPv4MaxLen is the length of an IPv4 header with the most options.
const IPv4MaxLen = 60

// IPv4 flags as returned by [IPv4.Flags].
const (
	IPv4FlagMF uint8 = 1 << 0 // more fragments
	IPv4FlagDF uint8 = 1 << 1 // don't fragment
)

// IP protocol numbers that Decode parses.
const (
	IPProtoICMP uint8 = 1
	IPProtoTCP  uint8 = 6
	IPProtoUDP  uint8 = 17
)

// IPv4 is a view of an IPv4 header and what follows it.
//
// Setters other than SetChecksum keep the header checksum as valid as it was
// by updating it incrementally; to build a header from scratch, set the
// fields and then SetChecksum(ComputeChecksum()).
type IPv4 []byte

// Version returns the IP version field; 4 for IPv4.
func (b IPv4) Version() uint8 { return b[ipv4VersionIHL] >> 4 }

// IHL returns the header length in 32-bit words.
func (b IPv4) IHL() uint8 { return b[ipv4VersionIHL] & 0x0F }

// HeaderLen returns the header length in bytes, options included.
func (b IPv4) HeaderLen() int { return int(b.IHL()) * 4 }

// TOS returns the type of service (DSCP and ECN) byte.
func (b IPv4) TOS() uint8 { return b[ipv4TOS] }

// TotalLen returns the length of the datagram (or fragment) in bytes,
// header included.
func (b IPv4) TotalLen() uint16 { return binary.BigEndian.Uint16(b[ipv4TotalLen:]) }

// ID returns the identification field.
func (b IPv4) ID() uint16 { return binary.BigEndian.Uint16(b[ipv4ID:]) }

// Flags returns the three flag bits: [IPv4FlagDF], [IPv4FlagMF].
func (b IPv4) Flags() uint8 {
	return uint8(binary.BigEndian.Uint16(b[ipv4FlagsFrag:]) >> ipv4FlagsShift)
}

// FragOffset returns the fragment offset in bytes (the field times 8).
func (b IPv4) FragOffset() uint16 {
	return (binary.BigEndian.Uint16(b[ipv4FlagsFrag:]) & ipv4FragMask) * 8
}

// IsFragment reports whether b is a fragment: MF is set or the offset is
// not zero.
func (b IPv4) IsFragment() bool { return b.MoreFragments() || b.FragOffset() != 0 }

// MoreFragments reports whether the MF flag is set.
func (b IPv4) MoreFragments() bool { return b.Flags()&IPv4FlagMF != 0 }

// DontFragment reports whether the DF flag is set.
func (b IPv4) DontFragment() bool { return b.Flags()&IPv4FlagDF != 0 }

// TTL returns the time to live.
func (b IPv4) TTL() uint8 { return b[ipv4TTL] }

// Protocol returns the protocol of the payload, such as [IPProtoTCP].
func (b IPv4) Protocol() uint8 { return b[ipv4Protocol] }

// Checksum returns the header checksum field.
func (b IPv4) Checksum() uint16 { return binary.BigEndian.Uint16(b[ipv4Checksum:]) }

// Src returns the source address.
func (b IPv4) Src() [4]byte { return [4]byte(b[ipv4Src:]) }

// Dst returns the destination address.
func (b IPv4) Dst() [4]byte { return [4]byte(b[ipv4Dst:]) }

// Payload returns the bytes after the header up to TotalLen, cut short at
// the end of b; it is empty when TotalLen is smaller than the header.
func (b IPv4) Payload() []byte {
	hl, end := b.HeaderLen(), min(int(b.TotalLen()), len(b))
	if hl >= end {
		return nil
	}
	return b[hl:end]
}

// ComputeChecksum returns the header checksum computed over the header
// (options included) with the checksum field taken as zero.
func (b IPv4) ComputeChecksum() uint16 {
	hl := b.HeaderLen()
	return Fold(Checksum(b[ipv4Checksum+2:hl], Checksum(b[:ipv4Checksum], 0)))
}

// ValidChecksum reports whether the header checksum field is correct.
func (b IPv4) ValidChecksum() bool { return Fold(Checksum(b[:b.HeaderLen()], 0)) == 0 }

// SetTOS sets the type of service byte.
func (b IPv4) SetTOS(tos uint8) { b.setByte(ipv4TOS, tos) }

// SetTotalLen sets the total length.
func (b IPv4) SetTotalLen(n uint16) { b.setWord(ipv4TotalLen, n) }

// SetID sets the identification field.
func (b IPv4) SetID(id uint16) { b.setWord(ipv4ID, id) }

// SetTTL sets the time to live.
func (b IPv4) SetTTL(ttl uint8) { b.setByte(ipv4TTL, ttl) }

// SetChecksum sets the header checksum field and nothing else.
func (b IPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(b[ipv4Checksum:], c) }

// SetSrc sets the source address.
func (b IPv4) SetSrc(ip [4]byte) { b.setAddr(ipv4Src, ip) }

// SetDst sets the destination address.
func (b IPv4) SetDst(ip [4]byte) { b.setAddr(ipv4Dst, ip) }

func (b IPv4) setWord(off int, v uint16) {
	old := binary.BigEndian.Uint16(b[off:])
	binary.BigEndian.PutUint16(b[off:], v)
	b.SetChecksum(UpdateChecksum16(b.Checksum(), old, v))
}

func (b IPv4) setByte(off int, v uint8) {
	w := off &^ 1
	old := binary.BigEndian.Uint16(b[w:])
	b[off] = v
	b.SetChecksum(UpdateChecksum16(b.Checksum(), old, binary.BigEndian.Uint16(b[w:])))
}

func (b IPv4) setAddr(off int, ip [4]byte) {
	old := [4]byte(b[off:])
	copy(b[off:], ip[:])
	b.SetChecksum(UpdateChecksum32(b.Checksum(), old, ip))
}
