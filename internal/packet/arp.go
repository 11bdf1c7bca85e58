package packet

import "encoding/binary"

const (
	arpHType    = 0
	arpPType    = 2
	arpHLen     = 4
	arpPLen     = 5
	arpOp       = 6
	arpSenderHW = 8
	arpSenderIP = 14
	arpTargetHW = 18
	arpTargetIP = 24
)

// ARPLen is the length of an ARP message for Ethernet and IPv4.
const ARPLen = 28

// ARPHTypeEthernet is the ARP hardware type of Ethernet.
const ARPHTypeEthernet = 1

// ARP operations.
const (
	ARPRequest uint16 = 1
	ARPReply   uint16 = 2
)

// ARP is a view of an ARP message. The address accessors assume Ethernet
// hardware and IPv4 protocol addresses; check [ARP.Valid] first.
type ARP []byte

// HType returns the hardware type.
func (b ARP) HType() uint16 { return binary.BigEndian.Uint16(b[arpHType:]) }

// PType returns the protocol type.
func (b ARP) PType() EtherType { return EtherType(binary.BigEndian.Uint16(b[arpPType:])) }

// HLen returns the hardware address length.
func (b ARP) HLen() uint8 { return b[arpHLen] }

// PLen returns the protocol address length.
func (b ARP) PLen() uint8 { return b[arpPLen] }

// Op returns the operation, such as [ARPRequest] or [ARPReply].
func (b ARP) Op() uint16 { return binary.BigEndian.Uint16(b[arpOp:]) }

// SenderHW returns the sender's MAC address.
func (b ARP) SenderHW() [6]byte { return [6]byte(b[arpSenderHW:]) }

// SenderIP returns the sender's IPv4 address.
func (b ARP) SenderIP() [4]byte { return [4]byte(b[arpSenderIP:]) }

// TargetHW returns the target's MAC address.
func (b ARP) TargetHW() [6]byte { return [6]byte(b[arpTargetHW:]) }

// TargetIP returns the target's IPv4 address.
func (b ARP) TargetIP() [4]byte { return [4]byte(b[arpTargetIP:]) }

// Valid reports whether b is long enough and describes Ethernet hardware
// addresses and IPv4 protocol addresses.
func (b ARP) Valid() bool {
	return len(b) >= ARPLen &&
		b.HType() == ARPHTypeEthernet && b.PType() == EtherTypeIPv4 &&
		b.HLen() == 6 && b.PLen() == 4
}

// SetHType sets the hardware type.
func (b ARP) SetHType(t uint16) { binary.BigEndian.PutUint16(b[arpHType:], t) }

// SetPType sets the protocol type.
func (b ARP) SetPType(t EtherType) { binary.BigEndian.PutUint16(b[arpPType:], uint16(t)) }

// SetHLen sets the hardware address length.
func (b ARP) SetHLen(n uint8) { b[arpHLen] = n }

// SetPLen sets the protocol address length.
func (b ARP) SetPLen(n uint8) { b[arpPLen] = n }

// SetOp sets the operation.
func (b ARP) SetOp(op uint16) { binary.BigEndian.PutUint16(b[arpOp:], op) }

// SetSenderHW sets the sender's MAC address.
func (b ARP) SetSenderHW(mac [6]byte) { copy(b[arpSenderHW:], mac[:]) }

// SetSenderIP sets the sender's IPv4 address.
func (b ARP) SetSenderIP(ip [4]byte) { copy(b[arpSenderIP:], ip[:]) }

// SetTargetHW sets the target's MAC address.
func (b ARP) SetTargetHW(mac [6]byte) { copy(b[arpTargetHW:], mac[:]) }

// SetTargetIP sets the target's IPv4 address.
func (b ARP) SetTargetIP(ip [4]byte) { copy(b[arpTargetIP:], ip[:]) }
