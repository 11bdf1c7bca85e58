package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Saved is a connection as a snapshot keeps it, so that another process
// (an agent restarted for an upgrade, or after a crash) can take it back:
// its tuples, the caller's fields and its state, with times relative to the
// moment it was saved rather than to a clock the next process does not
// share.
type Saved struct {
	Orig, Reply Key
	ServiceID   uint32
	Backend     uint32
	Flags       uint16
	State       TCPState // TCP only
	Replied     bool
	Assured     bool // requires Replied
	// Closer is the side that sent the first FIN (meaningful in
	// FIN_WAIT, CLOSE_WAIT and LAST_ACK).
	Closer Dir
	// Age is the whole seconds since the connection was created.
	Age uint32
	// TTL is the whole seconds left before it expires unless a packet
	// refreshes it; 0 means it expires within the second.
	TTL uint32
}

// SavedSize is the length of a Saved record's encoding.
//
// Layout (multi-byte integers little-endian, addresses in network order):
//
//	 0  Orig.SrcIP [4]   4  Orig.DstIP [4]   8  Orig.SrcPort    10 Orig.DstPort
//	12  Reply.SrcIP [4] 16  Reply.DstIP [4] 20  Reply.SrcPort   22 Reply.DstPort
//	24  Proto (both tuples')
//	25  bits 0-3 State, bit 4 Replied, bit 5 Assured, bit 6 Closer, bit 7 zero
//	26  Flags           28  ServiceID       32  Backend
//	36  Age             40  TTL             44  zero [4]
const SavedSize = 48

const (
	savedReplied = 1 << 4
	savedAssured = 1 << 5
	savedCloser  = 1 << 6
	savedUnused  = 1 << 7
)

// ErrSaved is wrapped by the errors of Saved.UnmarshalBinary.
var ErrSaved = errors.New("conntrack: invalid saved connection")

// AppendBinary appends the record's SavedSize-byte encoding to b.
func (s *Saved) AppendBinary(b []byte) ([]byte, error) {
	var r [SavedSize]byte
	putKey := func(o int, k Key) {
		copy(r[o:], k.SrcIP[:])
		copy(r[o+4:], k.DstIP[:])
		binary.LittleEndian.PutUint16(r[o+8:], k.SrcPort)
		binary.LittleEndian.PutUint16(r[o+10:], k.DstPort)
	}
	putKey(0, s.Orig)
	putKey(12, s.Reply)
	r[24] = s.Orig.Proto
	r[25] = uint8(s.State) & tcpStateMask
	if s.Replied {
		r[25] |= savedReplied
	}
	if s.Assured {
		r[25] |= savedAssured
	}
	if s.Closer == DirReply {
		r[25] |= savedCloser
	}
	binary.LittleEndian.PutUint16(r[26:], s.Flags)
	binary.LittleEndian.PutUint32(r[28:], s.ServiceID)
	binary.LittleEndian.PutUint32(r[32:], s.Backend)
	binary.LittleEndian.PutUint32(r[36:], s.Age)
	binary.LittleEndian.PutUint32(r[40:], s.TTL)
	return append(b, r[:]...), nil
}

// UnmarshalBinary decodes a record of exactly SavedSize bytes and checks
// that it is a connection the table could hold. It never panics.
func (s *Saved) UnmarshalBinary(b []byte) error {
	if len(b) != SavedSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrSaved, len(b), SavedSize)
	}
	key := func(o int) Key {
		k := Key{SrcPort: binary.LittleEndian.Uint16(b[o+8:]), DstPort: binary.LittleEndian.Uint16(b[o+10:]), Proto: b[24]}
		copy(k.SrcIP[:], b[o:])
		copy(k.DstIP[:], b[o+4:])
		return k
	}
	*s = Saved{
		Orig: key(0), Reply: key(12),
		State:     TCPState(b[25] & tcpStateMask),
		Replied:   b[25]&savedReplied != 0,
		Assured:   b[25]&savedAssured != 0,
		Flags:     binary.LittleEndian.Uint16(b[26:]),
		ServiceID: binary.LittleEndian.Uint32(b[28:]),
		Backend:   binary.LittleEndian.Uint32(b[32:]),
		Age:       binary.LittleEndian.Uint32(b[36:]),
		TTL:       binary.LittleEndian.Uint32(b[40:]),
	}
	if b[25]&savedCloser != 0 {
		s.Closer = DirReply
	}
	if b[25]&savedUnused != 0 || binary.LittleEndian.Uint32(b[44:]) != 0 {
		return fmt.Errorf("%w: reserved bits set", ErrSaved)
	}
	return s.check()
}

// check reports why the table could not hold s.
func (s *Saved) check() error {
	switch {
	case s.Orig.Proto != s.Reply.Proto:
		return fmt.Errorf("%w: protocols %d and %d differ", ErrSaved, s.Orig.Proto, s.Reply.Proto)
	case s.Orig == s.Reply:
		return fmt.Errorf("%w: original and reply tuples are equal", ErrSaved)
	case s.State >= numTCPStates:
		return fmt.Errorf("%w: TCP state %d", ErrSaved, s.State)
	case s.Orig.Proto != ProtoTCP && s.State != TCPNone:
		return fmt.Errorf("%w: TCP state %v on protocol %d", ErrSaved, s.State, s.Orig.Proto)
	case s.Orig.Proto == ProtoTCP && s.State == TCPNone:
		return fmt.Errorf("%w: TCP connection without a state", ErrSaved)
	case s.Assured && !s.Replied:
		return fmt.Errorf("%w: assured but never replied", ErrSaved)
	case s.Closer > DirReply:
		return fmt.Errorf("%w: closer %d", ErrSaved, s.Closer)
	}
	return nil
}

// Save calls fn with every live connection as of now, until fn returns
// false. Like Range it takes no lock and workers keep running: each
// connection is consistent, the set is not a point-in-time copy (a
// connection inserted or removed during the walk may or may not be seen).
// fn's argument is reused between calls.
func (t *Table) Save(now Time, fn func(s *Saved) bool) {
	nowSec := seconds(now)
	var s Saved
	t.each(func(si uint32, st uint64, c *Conn) bool {
		deadline := uint32(st & stDeadlineMask)
		if expired(st, nowSec) {
			return true
		}
		created := uint32(c.Created / 1e9)
		s = Saved{
			Orig: c.Orig, Reply: c.Reply, ServiceID: c.ServiceID, Backend: c.Backend, Flags: c.Flags,
			State: c.State, Replied: c.Replied, Assured: c.Assured, Closer: Dir(st >> stCloserShift & 1),
			Age: nowSec - min(created, nowSec), TTL: deadline - nowSec,
		}
		return fn(&s)
	})
}

// Restore puts a saved connection back as of now: created Age seconds
// ago, in its saved state, expiring after TTL seconds (at most the
// table's timeout for that state, so a file cannot keep a connection
// longer than the configuration allows) unless packets refresh it. It
// returns Inserted, Exists (a connection holds either tuple; the table is
// unchanged), Full (no room: restoring never evicts) or Invalid (s is not a
// connection the table could hold). Restoring is for a table that does not
// take traffic yet, but it is safe at any time.
func (t *Table) Restore(s *Saved, now Time) InsertResult {
	if s.check() != nil {
		return Invalid
	}
	nowSec := seconds(now)
	o0, o1 := pack(s.Orig)
	r0, r1 := pack(s.Reply)
	ia, tagO := t.where(t.hash(o0, o1))
	ib, tagR := t.where(t.hash(r0, r1))
	a, b := &t.shards[ia], &t.shards[ib]
	need := 1
	if ia == ib {
		need = 2
	}
	t.lock2(ia, ib)
	defer t.unlock2(ia, ib)
	if _, found := a.find(t, tagO, o0, o1); found {
		return Exists
	}
	if _, found := b.find(t, tagR, r0, r1); found {
		return Exists
	}
	if a.used+need > a.maxUsed || b.used+need > b.maxUsed || a.nfree == 0 {
		return Full
	}
	if t.count.Add(1) > t.max {
		t.count.Add(-1)
		return Full
	}
	a.nfree--
	si := a.free[a.nfree]
	sl := &t.slots[si]
	created := nowSec - min(s.Age, nowSec)
	sl.orig[0].Store(o0)
	sl.orig[1].Store(o1)
	sl.reply[0].Store(r0)
	sl.reply[1].Store(r1)
	sl.svc.Store(uint64(s.ServiceID)<<32 | uint64(s.Backend))
	sl.misc.Store(uint64(s.Flags)<<32 | uint64(created))
	ttl := min(s.TTL, t.timeout(s.Orig.Proto, s.State, s.Assured))
	st := sl.st.Load()&stGenMask | stLive | uint64(s.State)<<stStateShift | uint64(s.Closer&1)<<stCloserShift |
		uint64(addSat(nowSec, ttl))
	if s.Replied {
		st |= stReplied
	}
	if s.Assured {
		st |= stAssured
	}
	sl.st.Store(st)
	a.insertCell(tagO, DirOriginal, si)
	b.insertCell(tagR, DirReply, si)
	return Inserted
}
