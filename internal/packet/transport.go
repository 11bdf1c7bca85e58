package packet

import "encoding/binary"

const (
	tcpSrcPort    = 0
	tcpDstPort    = 2
	tcpSeq        = 4
	tcpAck        = 8
	tcpDataOffset = 12
	tcpFlags      = 13
	tcpWindow     = 14
	tcpChecksum   = 16
)

// TCPLen is the length of a TCP header without options.
const TCPLen = 20

// TCP flags as returned by [TCP.Flags].
const (
	TCPFlagFIN uint8 = 1 << iota
	TCPFlagSYN
	TCPFlagRST
	TCPFlagPSH
	TCPFlagACK
	TCPFlagURG
	TCPFlagECE
	TCPFlagCWR
)

// TCP is a view of a TCP header. Its setters write only their field; the NAT
// helpers such as [RewriteSrcPort] also update the checksum.
type TCP []byte

// SrcPort returns the source port.
func (b TCP) SrcPort() uint16 { return binary.BigEndian.Uint16(b[tcpSrcPort:]) }

// DstPort returns the destination port.
func (b TCP) DstPort() uint16 { return binary.BigEndian.Uint16(b[tcpDstPort:]) }

// Seq returns the sequence number.
func (b TCP) Seq() uint32 { return binary.BigEndian.Uint32(b[tcpSeq:]) }

// Ack returns the acknowledgment number.
func (b TCP) Ack() uint32 { return binary.BigEndian.Uint32(b[tcpAck:]) }

// DataOffset returns the header length in 32-bit words.
func (b TCP) DataOffset() uint8 { return b[tcpDataOffset] >> 4 }

// HeaderLen returns the header length in bytes, options included.
func (b TCP) HeaderLen() int { return int(b.DataOffset()) * 4 }

// Flags returns the flag byte: [TCPFlagFIN] through [TCPFlagCWR].
func (b TCP) Flags() uint8 { return b[tcpFlags] }

// Window returns the receive window, unscaled.
func (b TCP) Window() uint16 { return binary.BigEndian.Uint16(b[tcpWindow:]) }

// Checksum returns the checksum field.
func (b TCP) Checksum() uint16 { return binary.BigEndian.Uint16(b[tcpChecksum:]) }

// SetSrcPort sets the source port.
func (b TCP) SetSrcPort(p uint16) { binary.BigEndian.PutUint16(b[tcpSrcPort:], p) }

// SetDstPort sets the destination port.
func (b TCP) SetDstPort(p uint16) { binary.BigEndian.PutUint16(b[tcpDstPort:], p) }

// SetChecksum sets the checksum field.
func (b TCP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(b[tcpChecksum:], c) }

const (
	udpSrcPort  = 0
	udpDstPort  = 2
	udpLength   = 4
	udpChecksum = 6
)

// UDPLen is the length of a UDP header.
const UDPLen = 8

// UDP is a view of a UDP header. Its setters write only their field; the NAT
// helpers such as [RewriteSrcPort] also update the checksum.
type UDP []byte

// SrcPort returns the source port.
func (b UDP) SrcPort() uint16 { return binary.BigEndian.Uint16(b[udpSrcPort:]) }

// DstPort returns the destination port.
func (b UDP) DstPort() uint16 { return binary.BigEndian.Uint16(b[udpDstPort:]) }

// Length returns the length of header and payload in bytes.
func (b UDP) Length() uint16 { return binary.BigEndian.Uint16(b[udpLength:]) }

// Checksum returns the checksum field; 0 means the sender computed none.
func (b UDP) Checksum() uint16 { return binary.BigEndian.Uint16(b[udpChecksum:]) }

// SetSrcPort sets the source port.
func (b UDP) SetSrcPort(p uint16) { binary.BigEndian.PutUint16(b[udpSrcPort:], p) }

// SetDstPort sets the destination port.
func (b UDP) SetDstPort(p uint16) { binary.BigEndian.PutUint16(b[udpDstPort:], p) }

// SetLength sets the length field.
func (b UDP) SetLength(n uint16) { binary.BigEndian.PutUint16(b[udpLength:], n) }

// SetChecksum sets the checksum field. A computed checksum of 0 must be
// written as 0xFFFF (RFC 768).
func (b UDP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(b[udpChecksum:], c) }

const (
	icmpType     = 0
	icmpCode     = 1
	icmpChecksum = 2
	icmpID       = 4
	icmpSeq      = 6
)

// ICMPv4Len is the length of an ICMPv4 header: type, code, checksum and
// the four type-specific bytes.
const ICMPv4Len = 8

// ICMPv4 types.
const (
	ICMPv4EchoReply       uint8 = 0
	ICMPv4DestUnreachable uint8 = 3
	ICMPv4EchoRequest     uint8 = 8
	ICMPv4TimeExceeded    uint8 = 11
)

// ICMPv4 codes of [ICMPv4DestUnreachable].
const (
	ICMPv4PortUnreachable     uint8 = 3
	ICMPv4FragmentationNeeded uint8 = 4
)

// ICMPv4 is a view of an ICMPv4 header. ID and Seq are meaningful only for
// echo requests and replies. Its setters write only their field.
type ICMPv4 []byte

// Type returns the message type, such as [ICMPv4EchoRequest].
func (b ICMPv4) Type() uint8 { return b[icmpType] }

// Code returns the message code.
func (b ICMPv4) Code() uint8 { return b[icmpCode] }

// Checksum returns the checksum field.
func (b ICMPv4) Checksum() uint16 { return binary.BigEndian.Uint16(b[icmpChecksum:]) }

// ID returns the echo identifier.
func (b ICMPv4) ID() uint16 { return binary.BigEndian.Uint16(b[icmpID:]) }

// Seq returns the echo sequence number.
func (b ICMPv4) Seq() uint16 { return binary.BigEndian.Uint16(b[icmpSeq:]) }

// IsEcho reports whether b is an echo request or reply.
func (b ICMPv4) IsEcho() bool {
	return b.Type() == ICMPv4EchoRequest || b.Type() == ICMPv4EchoReply
}

// SetType sets the message type.
func (b ICMPv4) SetType(t uint8) { b[icmpType] = t }

// SetCode sets the message code.
func (b ICMPv4) SetCode(c uint8) { b[icmpCode] = c }

// SetChecksum sets the checksum field.
func (b ICMPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(b[icmpChecksum:], c) }

// SetID sets the echo identifier.
func (b ICMPv4) SetID(id uint16) { binary.BigEndian.PutUint16(b[icmpID:], id) }

// SetSeq sets the echo sequence number.
func (b ICMPv4) SetSeq(seq uint16) { binary.BigEndian.PutUint16(b[icmpSeq:], seq) }
