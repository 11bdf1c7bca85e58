package packet

import (
	"math/rand/v2"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func TestChecksumRFC1071Example(t *testing.T) {
	// RFC 1071 section 3: these bytes sum to 0xddf2.
	b := unhex(`
		00 01  f2 03  # words 0x0001 0xf203
		f4 f5  f6 f7  # words 0xf4f5 0xf6f7
	`)
	if got := Fold(Checksum(b, 0)); got != ^uint16(0xddf2) {
		t.Fatalf("checksum %#x, want %#x", got, ^uint16(0xddf2))
	}
}

func TestChecksumMatchesGopacket(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		initial := rng.Uint32() >> 8
		if n%5 == 0 {
			initial = 0
		}
		want := gopacket.FoldChecksum(gopacket.ComputeChecksum(b, initial))
		if got := Fold(Checksum(b, initial)); got != want {
			t.Fatalf("len %d initial %#x: %#x, gopacket %#x", n, initial, got, want)
		}
		split := rng.IntN(n+1) &^ 1
		if got := Fold(Checksum(b[split:], Checksum(b[:split], initial))); got != want {
			t.Fatalf("len %d split at %d: %#x, want %#x", n, split, got, want)
		}
	}
	if got := Fold(Checksum(make([]byte, 64), 0)); got != 0xFFFF {
		t.Fatalf("all-zero data: %#x", got)
	}
	ones := make([]byte, 1<<17) // sums past 32 bits
	for i := range ones {
		ones[i] = 0xFF
	}
	if got := Fold(Checksum(ones, 0xFFFFFFFF)); got != 0 {
		t.Fatalf("all-ones data: %#x", got)
	}
}

func TestUpdateChecksumRFC1624Example(t *testing.T) {
	// RFC 1624 section 4: equation 3 must give 0x0000, not 0xFFFF.
	if got := UpdateChecksum16(0xDD2F, 0x5555, 0x3285); got != 0x0000 {
		t.Fatalf("got %#x", got)
	}
}

func TestUpdateChecksumMatchesRecompute(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 40)
	for range 20000 {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if rng.IntN(4) == 0 { // mostly-zero data reaches the 0/0xFFFF edges
			clear(b[2:])
		}
		check := Fold(Checksum(b, 0))
		off := rng.IntN(len(b)/2-2) * 2
		if rng.IntN(2) == 0 {
			old := be16(b[off:])
			nv := uint16(rng.Uint32())
			b[off], b[off+1] = byte(nv>>8), byte(nv)
			if got, want := UpdateChecksum16(check, old, nv), Fold(Checksum(b, 0)); got != want {
				t.Fatalf("16-bit change at %d of % x: incremental %#x, full %#x", off, b, got, want)
			}
		} else {
			old := [4]byte(b[off:])
			nv := [4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}
			copy(b[off:], nv[:])
			if got, want := UpdateChecksum32(check, old, nv), Fold(Checksum(b, 0)); got != want {
				t.Fatalf("32-bit change at %d of % x: incremental %#x, full %#x", off, b, got, want)
			}
		}
	}
}

func TestPseudoHeaderSum(t *testing.T) {
	for _, frame := range [][]byte{
		serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolTCP), tcpSYN(1, 2), payload(11)),
		serialize(t, eth(layers.EthernetTypeIPv4), ip4(layers.IPProtocolUDP), udp(3, 4), payload(100)),
		fixtureTaggedUDP,
	} {
		var p Parsed
		p.Decode(frame)
		ip := IPv4(frame[p.L3Off:])
		l4 := ip.Payload()
		if Fold(Checksum(l4, PseudoHeaderSum(ip.Src(), ip.Dst(), ip.Protocol(), uint16(len(l4))))) != 0 {
			t.Errorf("checksum over pseudo-header and % x is not valid", l4)
		}
	}
}

func BenchmarkChecksum(b *testing.B) {
	buf := payload(1500)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		Fold(Checksum(buf, 0))
	}
}
