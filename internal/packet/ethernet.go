package packet

import "encoding/binary"

// EtherType is the 16-bit protocol identifier of an Ethernet or VLAN header.
type EtherType uint16

// EtherTypes that Decode recognises.
const (
	EtherTypeIPv4    EtherType = 0x0800
	EtherTypeARP     EtherType = 0x0806
	EtherTypeIPv6    EtherType = 0x86DD
	EtherTypeVLAN    EtherType = 0x8100 // 802.1Q customer tag (C-tag)
	EtherTypeQinQ    EtherType = 0x88A8 // 802.1ad service tag (S-tag)
	EtherTypeQinQOld EtherType = 0x9100 // pre-802.1ad service tag
)

// IsVLANTag reports whether t is the TPID of a VLAN tag: 802.1Q, 802.1ad or
// the older 0x9100.
func (t EtherType) IsVLANTag() bool {
	return t == EtherTypeVLAN || t == EtherTypeQinQ || t == EtherTypeQinQOld
}

const (
	ethDst  = 0
	ethSrc  = 6
	ethType = 12
)

// EthernetLen is the length of an Ethernet II header without tags.
const EthernetLen = 14

// Ethernet is a view of an Ethernet II header. When the frame is tagged,
// Type is the first tag's TPID and the tag follows as a [VLANTag].
type Ethernet []byte

// Dst returns the destination MAC address.
func (b Ethernet) Dst() [6]byte { return [6]byte(b[ethDst:]) }

// Src returns the source MAC address.
func (b Ethernet) Src() [6]byte { return [6]byte(b[ethSrc:]) }

// Type returns the EtherType (or TPID) field.
func (b Ethernet) Type() EtherType { return EtherType(binary.BigEndian.Uint16(b[ethType:])) }

// SetDst sets the destination MAC address.
func (b Ethernet) SetDst(mac [6]byte) { copy(b[ethDst:], mac[:]) }

// SetSrc sets the source MAC address.
func (b Ethernet) SetSrc(mac [6]byte) { copy(b[ethSrc:], mac[:]) }

// SetType sets the EtherType (or TPID) field.
func (b Ethernet) SetType(t EtherType) { binary.BigEndian.PutUint16(b[ethType:], uint16(t)) }

const (
	vlanTCI  = 0
	vlanType = 2

	vidMask  = 0x0FFF
	deiBit   = 0x1000
	pcpShift = 13
)

// VLANTagLen is the length of a VLAN tag after its TPID: TCI and the
// EtherType that follows.
const VLANTagLen = 4

// VLANTag is a view of the four bytes that follow a VLAN TPID: the tag
// control information (PCP, DEI, VID) and the next EtherType. The first tag
// of a frame is frame[EthernetLen:].
type VLANTag []byte

// TCI returns the tag control information: PCP (3 bits), DEI (1 bit) and
// VID (12 bits).
func (b VLANTag) TCI() uint16 { return binary.BigEndian.Uint16(b[vlanTCI:]) }

// VID returns the 12-bit VLAN identifier. 0 marks a priority-only tag.
func (b VLANTag) VID() uint16 { return b.TCI() & vidMask }

// PCP returns the 3-bit priority code point.
func (b VLANTag) PCP() uint8 { return uint8(b.TCI() >> pcpShift) }

// DEI reports whether the drop eligible indicator is set.
func (b VLANTag) DEI() bool { return b.TCI()&deiBit != 0 }

// Type returns the EtherType (or next TPID) that follows the tag.
func (b VLANTag) Type() EtherType { return EtherType(binary.BigEndian.Uint16(b[vlanType:])) }

// SetTCI sets the whole tag control information.
func (b VLANTag) SetTCI(tci uint16) { binary.BigEndian.PutUint16(b[vlanTCI:], tci) }

// SetVID sets the VLAN identifier to the low 12 bits of vid.
func (b VLANTag) SetVID(vid uint16) { b.SetTCI(b.TCI()&^vidMask | vid&vidMask) }

// SetPCP sets the priority code point to the low 3 bits of pcp.
func (b VLANTag) SetPCP(pcp uint8) {
	b.SetTCI(b.TCI()&(vidMask|deiBit) | uint16(pcp&7)<<pcpShift)
}

// SetDEI sets or clears the drop eligible indicator.
func (b VLANTag) SetDEI(dei bool) {
	tci := b.TCI() &^ deiBit
	if dei {
		tci |= deiBit
	}
	b.SetTCI(tci)
}

// SetType sets the EtherType (or next TPID) that follows the tag.
func (b VLANTag) SetType(t EtherType) { binary.BigEndian.PutUint16(b[vlanType:], uint16(t)) }
