// Package gen is the bench's traffic generator and sink: XDP programs that
// make and count 64–1500-byte UDP/IPv4 frames at millions per second without
// any userspace per-frame work.
//
// The generator runs with BPF_PROG_TEST_RUN in live-frames mode on the
// sending interface: the kernel hands the program a page holding the frame,
// the program rewrites its headers and returns XDP_TX, and the kernel
// transmits it out of that interface (into the veth peer). Live frames
// bypass tc, so a VLAN tag must already be in the frame's bytes.
package gen

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Frame sizes and defaults.
const (
	// MinFrameBytes is the smallest frame FrameSpec accepts (64, the
	// Ethernet minimum counting the 4-byte FCS the kernel never sees; the
	// frame is 64 bytes here because the tag takes 4 of them when present).
	MinFrameBytes = 64
	// MaxFrameBytes is the largest: a 1500-byte IP packet plus Ethernet and
	// 802.1Q headers (the veths' MTU is 1500).
	MaxFrameBytes = 1500 + 14 + 4
	// DefaultDstPort is the UDP port the frames are sent to and the sink
	// counts.
	DefaultDstPort = 9
	// DefaultSrcPortBase is the first UDP source port.
	DefaultSrcPortBase = 1024
)

// ErrInvalidFrame reports a FrameSpec that cannot be built.
var ErrInvalidFrame = errors.New("invalid frame spec")

// FrameSpec describes the frames the generator sends: UDP over IPv4 over
// Ethernet, with an 802.1Q tag when VLAN is not 0.
type FrameSpec struct {
	// Bytes is the frame's length as handed to the interface, Ethernet
	// (and 802.1Q) header included, FCS excluded: MinFrameBytes..
	// MaxFrameBytes. 0 means 64.
	Bytes  int
	SrcMAC net.HardwareAddr
	DstMAC net.HardwareAddr
	// VLAN is the 802.1Q VID in the frame, 0 for an untagged frame.
	VLAN  uint16
	SrcIP netip.Addr
	DstIP netip.Addr
	// DstPort is the UDP destination port; 0 means DefaultDstPort.
	DstPort uint16
	// SrcPortBase and Flows: frame n has source port SrcPortBase + n%Flows.
	// 0 means DefaultSrcPortBase and 1 flow.
	SrcPortBase uint16
	Flows       int
	// Hosts varies the source address too: frame n comes from SrcIP plus
	// (n/Flows)%Hosts, so Flows×Hosts frames are distinct flows. 0 means
	// 1; the addresses must differ only in their low 16 bits.
	Hosts int
	// TCPSYN makes the frames TCP SYNs (a 20-byte header, no payload: the
	// IPv4 packet is 40 bytes and the frame is padded to Bytes) instead of
	// UDP; their TCP checksum is kept valid as the source port and address
	// vary. DstPort and the source ports are then TCP ports.
	TCPSYN bool
}

func (s FrameSpec) withDefaults() (FrameSpec, error) {
	if s.Bytes == 0 {
		s.Bytes = MinFrameBytes
	}
	if s.DstPort == 0 {
		s.DstPort = DefaultDstPort
	}
	if s.SrcPortBase == 0 {
		s.SrcPortBase = DefaultSrcPortBase
	}
	if s.Flows == 0 {
		s.Flows = 1
	}
	if s.Hosts == 0 {
		s.Hosts = 1
	}
	var errs []error
	if s.Bytes < MinFrameBytes || s.Bytes > MaxFrameBytes {
		errs = append(errs, fmt.Errorf("frame bytes %d: want %d..%d", s.Bytes, MinFrameBytes, MaxFrameBytes))
	}
	if len(s.SrcMAC) != 6 || len(s.DstMAC) != 6 {
		errs = append(errs, fmt.Errorf("MACs %v → %v: want two 6-byte MACs", s.SrcMAC, s.DstMAC))
	}
	if s.VLAN > 4094 {
		errs = append(errs, fmt.Errorf("VLAN %d: want 0 (untagged) or 1..4094", s.VLAN))
	}
	if !s.SrcIP.Is4() || !s.DstIP.Is4() {
		errs = append(errs, fmt.Errorf("addresses %v → %v: want IPv4", s.SrcIP, s.DstIP))
	}
	if s.Flows < 1 || s.Flows > 65535 || int(s.SrcPortBase)+s.Flows-1 > 65535 {
		errs = append(errs, fmt.Errorf("flows %d from source port %d: want 1..65535 ports that fit under 65536", s.Flows, s.SrcPortBase))
	}
	if a := s.SrcIP.As16(); s.Hosts < 1 || int(a[14])<<8|int(a[15])+s.Hosts > 65536 {
		errs = append(errs, fmt.Errorf("hosts %d from %v: want 1.. addresses that differ only in their low 16 bits", s.Hosts, s.SrcIP))
	}
	if len(errs) > 0 {
		return s, fmt.Errorf("%w: %w", ErrInvalidFrame, errors.Join(errs...))
	}
	return s, nil
}

// headerLen is the length of the Ethernet, 802.1Q (when tagged), IPv4 and
// UDP (or TCP) headers: the part of the frame the generator rewrites on
// every run.
func (s FrameSpec) headerLen() int {
	n := s.l3Off() + 20 + 8
	if s.TCPSYN {
		n += 12
	}
	return n
}

// l3Off is the offset of the IPv4 header.
func (s FrameSpec) l3Off() int {
	if s.VLAN != 0 {
		return 14 + 4
	}
	return 14
}

// Frame builds the frame (source port SrcPortBase) with gopacket: valid IPv4
// header checksum, UDP checksum 0 (none, allowed over IPv4, so changing the
// source port needs no checksum update), zero payload.
func (s FrameSpec) Frame() ([]byte, error) {
	s, err := s.withDefaults()
	if err != nil {
		return nil, err
	}
	if s.TCPSYN {
		return s.synFrame()
	}
	payload := make([]byte, s.Bytes-s.headerLen())
	eth := &layers.Ethernet{SrcMAC: s.SrcMAC, DstMAC: s.DstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{
		Version:  4,
		IHL:      5,
		TTL:      64,
		Protocol: layers.IPProtocolUDP,
		Flags:    layers.IPv4DontFragment,
		SrcIP:    s.SrcIP.AsSlice(),
		DstIP:    s.DstIP.AsSlice(),
	}
	udp := &layers.UDP{SrcPort: layers.UDPPort(s.SrcPortBase), DstPort: layers.UDPPort(s.DstPort)}
	ls := []gopacket.SerializableLayer{eth}
	if s.VLAN != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: s.VLAN, Type: layers.EthernetTypeIPv4})
	}
	ls = append(ls, ip, udp, gopacket.Payload(payload))
	buf := gopacket.NewSerializeBuffer()
	// No ComputeChecksums for UDP: its checksum stays 0. The IPv4 checksum
	// is computed by hand below after FixLengths.
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ls...); err != nil {
		return nil, fmt.Errorf("build frame: %w", err)
	}
	f := buf.Bytes()
	if len(f) != s.Bytes {
		return nil, fmt.Errorf("build frame: %d bytes, want %d", len(f), s.Bytes)
	}
	l3 := s.headerLen() - 28
	putIPv4Checksum(f[l3 : l3+20])
	return f, nil
}

// synFrame builds the TCP SYN frame (source port SrcPortBase) with
// gopacket, checksums computed, padded with zeros to s.Bytes.
func (s FrameSpec) synFrame() ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: s.SrcMAC, DstMAC: s.DstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{
		Version:  4,
		IHL:      5,
		TTL:      64,
		Protocol: layers.IPProtocolTCP,
		Flags:    layers.IPv4DontFragment,
		SrcIP:    s.SrcIP.AsSlice(),
		DstIP:    s.DstIP.AsSlice(),
	}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.SrcPortBase), DstPort: layers.TCPPort(s.DstPort), SYN: true, Seq: 1, Window: 64240}
	tcp.SetNetworkLayerForChecksum(ip)
	ls := []gopacket.SerializableLayer{eth}
	if s.VLAN != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: s.VLAN, Type: layers.EthernetTypeIPv4})
	}
	ls = append(ls, ip, tcp)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return nil, fmt.Errorf("build frame: %w", err)
	}
	f := append([]byte(nil), buf.Bytes()...) // padded to 60 bytes by gopacket
	if len(f) > s.Bytes {
		return nil, fmt.Errorf("build frame: %d bytes, want at most %d", len(f), s.Bytes)
	}
	return append(f, make([]byte, s.Bytes-len(f))...), nil
}

// putIPv4Checksum fills in the checksum of a 20-byte IPv4 header.
func putIPv4Checksum(h []byte) {
	h[10], h[11] = 0, 0
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	h[10], h[11] = byte(c>>8), byte(c)
}
