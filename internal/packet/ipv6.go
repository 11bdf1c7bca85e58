package packet

import "encoding/binary"

const (
	ipv6VersionTC  = 0
	ipv6PayloadLen = 4
	ipv6NextHeader = 6
	ipv6HopLimit   = 7
	ipv6Src        = 8
	ipv6Dst        = 24
)

// IPv6Len is the length of the IPv6 fixed header.
const IPv6Len = 40

// IPv6 is a view of an IPv6 fixed header. Trunkline recognises IPv6 but does
// not track its flows, so the view has no setters.
type IPv6 []byte

// Version returns the IP version field; 6 for IPv6.
func (b IPv6) Version() uint8 { return b[ipv6VersionTC] >> 4 }

// PayloadLen returns the length of what follows the fixed header,
// extension headers included.
func (b IPv6) PayloadLen() uint16 { return binary.BigEndian.Uint16(b[ipv6PayloadLen:]) }

// NextHeader returns the type of the header after the fixed header.
func (b IPv6) NextHeader() uint8 { return b[ipv6NextHeader] }

// HopLimit returns the hop limit.
func (b IPv6) HopLimit() uint8 { return b[ipv6HopLimit] }

// Src returns the source address.
func (b IPv6) Src() [16]byte { return [16]byte(b[ipv6Src:]) }

// Dst returns the destination address.
func (b IPv6) Dst() [16]byte { return [16]byte(b[ipv6Dst:]) }
