package packet

import "encoding/binary"

// Checksum adds the bytes of b, as big-endian 16-bit words, to the partial
// one's complement sum initial and returns the new partial sum (RFC 1071).
// An odd final byte is padded with zero, so only the last of several chained
// calls may pass an odd-length b. [Fold] turns the result into a checksum.
func Checksum(b []byte, initial uint32) uint32 {
	// Sums of 32-bit words are congruent to sums of 16-bit words modulo
	// 0xFFFF, because 1<<16 ≡ 1.
	s := uint64(initial)
	for len(b) >= 8 {
		s += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	if len(b) >= 4 {
		s += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	for s>>32 != 0 {
		s = s&0xFFFFFFFF + s>>32
	}
	return uint32(s)
}

// Fold folds a partial sum to 16 bits and returns its one's complement: the
// value to store in a checksum field. Over data that includes a correct
// checksum field, Fold returns 0.
func Fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xFFFF + sum>>16
	}
	return ^uint16(sum)
}

// PseudoHeaderSum returns the partial sum of the IPv4 pseudo-header that TCP
// and UDP checksums cover; length is the L4 header plus payload in bytes.
func PseudoHeaderSum(src, dst [4]byte, proto uint8, length uint16) uint32 {
	return uint32(binary.BigEndian.Uint16(src[0:])) + uint32(binary.BigEndian.Uint16(src[2:])) +
		uint32(binary.BigEndian.Uint16(dst[0:])) + uint32(binary.BigEndian.Uint16(dst[2:])) +
		uint32(proto) + uint32(length)
}

// UpdateChecksum16 returns checksum check updated for one 16-bit word of the
// covered data changing from old to new: HC' = ~(~HC + ~m + m') (RFC 1624,
// equation 3).
func UpdateChecksum16(check, old, new uint16) uint16 {
	return fold16(uint32(^check) + uint32(^old) + uint32(new))
}

// UpdateChecksum32 is [UpdateChecksum16] for a 4-byte field, such as an IPv4
// address, changing from old to new.
func UpdateChecksum32(check uint16, old, new [4]byte) uint16 {
	return fold16(uint32(^check) +
		uint32(^binary.BigEndian.Uint16(old[0:])) + uint32(^binary.BigEndian.Uint16(old[2:])) +
		uint32(binary.BigEndian.Uint16(new[0:])) + uint32(binary.BigEndian.Uint16(new[2:])))
}

// fold16 is Fold for sums of at most five 16-bit words.
func fold16(s uint32) uint16 {
	s = s&0xFFFF + s>>16
	s = s&0xFFFF + s>>16
	return ^uint16(s)
}
