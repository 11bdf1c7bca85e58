package conntrack

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

// The state word of a slot. Changed only by CAS (Lookup) or, for the in-use
// bit and generation, by a writer holding the locks of both of the
// connection's shards.
const (
	stDeadlineMask = 1<<32 - 1 // bits 0-31: deadline, whole seconds
	stStateShift   = 32        // bits 32-35: TCPState
	stStateMask    = 0xf << stStateShift
	stReplied      = 1 << 36 // a packet matched the reply tuple
	stAssured      = 1 << 37 // see Conn.Assured
	stCloserShift  = 38      // bit 38: Dir of the first FIN
	stLive         = 1 << 39 // the slot holds a connection
	stGenShift     = 40      // bits 40-63: generation, bumped on every free
	stGenOne       = 1 << stGenShift
	stGenMask      = 1<<64 - stGenOne
	stIdentity     = stLive | stGenMask
)

// An index cell: 0 when empty, else slot number+1 (bits 0-31), Dir (bit 32)
// and the key's 31-bit tag (bits 33-63), whose low bits are the cell the key
// hashes to.
const (
	cellDirShift = 32
	cellTagShift = 33
	tagMask      = 1<<31 - 1
)

// earlyDropScan is how many slots of the home shard one early-drop attempt
// looks at.
const earlyDropScan = 32

// slot is one connection: exactly one cache line, no pointers. Every word is
// atomic so that lock-free readers and writers never race; see the package
// comment for who writes what.
type slot struct {
	st    atomic.Uint64
	orig  [2]atomic.Uint64 // packed Orig
	reply [2]atomic.Uint64 // packed Reply
	svc   atomic.Uint64    // ServiceID<<32 | Backend
	misc  atomic.Uint64    // Flags<<32 | creation second
	_     uint64
}

// words is a copy of a slot's immutable words.
type words struct {
	orig0, orig1, reply0, reply1, svc, misc uint64
}

func (s *slot) load() words {
	return words{
		s.orig[0].Load(), s.orig[1].Load(), s.reply[0].Load(), s.reply[1].Load(),
		s.svc.Load(), s.misc.Load(),
	}
}

type shardFields struct {
	// mu serializes the writers of this shard: every change to idx, used
	// and free, and the unlinking of any connection with a key here.
	mu sync.Mutex
	// seq is odd while idx is being changed; readers that miss retry when
	// it moved.
	seq     atomic.Uint64
	idx     []atomic.Uint64 // open addressing, linear probing
	mask    uint64          // len(idx)-1
	used    int             // occupied cells; guarded by mu
	maxUsed int
	free    []uint32 // free[:nfree] are the free slots homed here (a stack)
	nfree   int      // guarded by mu, as are the contents of free
	// dropCursor is where the next early-drop scan of this shard's slots
	// starts.
	dropCursor atomic.Uint32

	inserts, full, invalid, earlyDrops, expirations, deletes atomic.Uint64
}

type shard struct {
	shardFields
	_ [(64 - unsafe.Sizeof(shardFields{})%64) % 64]byte
}

// Table is the connection tracking table. Build it with New.
type Table struct {
	_     [64]byte
	count atomic.Int64 // connections in slots; never above max
	_     [56]byte

	slots     []slot
	shards    []shard
	shardMask uint64
	shardBits uint
	poolSize  uint32 // slots homed in each shard
	max       int64
	key       [4]uint64 // hash key
	timeouts  [numTimeouts]uint32
	tcp       tcpTable

	arena *arena // where the arrays are, or nil: on the heap

	expireMu     sync.Mutex
	expireCursor int // next slot Expire looks at; guarded by expireMu
}

func newTable(max, nshards int, timeouts [numTimeouts]uint32) (*Table, error) {
	per := (max + nshards - 1) / nshards
	pool := per + per/8 + 16
	idx := 1
	for idx < 3*per+32 {
		idx <<= 1
	}
	size := arenaSize(pool*nshards, unsafe.Sizeof(slot{}), unsafe.Alignof(slot{})) +
		uintptr(nshards)*(arenaSize(idx, 8, 8)+arenaSize(pool, 4, 4))
	var a *arena
	if size >= offHeapMin {
		var err error
		if a, err = newArena(size); err != nil {
			return nil, err
		}
	}
	t := &Table{
		slots:     carve[slot](a, pool*nshards),
		shards:    make([]shard, nshards),
		shardMask: uint64(nshards - 1),
		shardBits: uint(bits.TrailingZeros(uint(nshards))),
		poolSize:  uint32(pool),
		max:       int64(max),
		timeouts:  timeouts,
		tcp:       newTCPTable(),
		arena:     a,
	}
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	for i := range t.key {
		t.key[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	t.key[3] |= 1
	for i := range t.shards {
		sh := &t.shards[i]
		sh.idx = carve[atomic.Uint64](a, idx)
		if a != nil {
			touch(sh.idx)
		}
		sh.mask = uint64(idx - 1)
		sh.maxUsed = idx - idx/8
		sh.free = carve[uint32](a, pool)
		for j := range sh.free {
			// popped from the end: lowest slot first
			sh.free[j] = uint32(i*pool + pool - 1 - j)
		}
		sh.nfree = pool
	}
	return t, nil
}

// pack and unpack turn a Key into two words in the machine's easiest order
// (the words are only ever compared and hashed).
func pack(k Key) (uint64, uint64) {
	w0 := uint64(binary.LittleEndian.Uint32(k.SrcIP[:])) | uint64(binary.LittleEndian.Uint32(k.DstIP[:]))<<32
	w1 := uint64(k.SrcPort) | uint64(k.DstPort)<<16 | uint64(k.Proto)<<32
	return w0, w1
}

func unpack(k *Key, w0, w1 uint64) {
	binary.LittleEndian.PutUint32(k.SrcIP[:], uint32(w0))
	binary.LittleEndian.PutUint32(k.DstIP[:], uint32(w0>>32))
	k.SrcPort = uint16(w1)
	k.DstPort = uint16(w1 >> 16)
	k.Proto = uint8(w1 >> 32)
}

func protoOf(w1 uint64) uint8 { return uint8(w1 >> 32) }

// hash is a keyed wyhash-style mix of a packed key.
func (t *Table) hash(w0, w1 uint64) uint64 {
	hi, lo := bits.Mul64(w0^t.key[0], w1^t.key[1])
	hi, lo = bits.Mul64(hi^lo^t.key[2], t.key[3])
	return hi ^ lo
}

// where returns the shard number and tag of a hash.
func (t *Table) where(h uint64) (int, uint64) {
	return int(h & t.shardMask), (h >> t.shardBits) & tagMask
}

func seconds(now Time) uint32 {
	if now <= 0 {
		return 0
	}
	s := now / 1e9
	if s > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(s)
}

func expired(st uint64, nowSec uint32) bool { return nowSec > uint32(st&stDeadlineMask) }

// reopens reports whether a new TCP connection's SYN may take the tuple of
// a finished one (TIME_WAIT or CLOSE), as nf_conntrack lets it: a client
// reuses a port once its last connection on it is over.
func reopens(st uint64, proto uint8, tcpFlags uint8) bool {
	s := TCPState(st & stStateMask >> stStateShift)
	return proto == ProtoTCP && tcpFlags&(TCPFlagSYN|TCPFlagACK) == TCPFlagSYN && (s == TCPTimeWait || s == TCPClose)
}

// evictable: may be dropped to make room for a new connection.
func evictable(st uint64) bool {
	s := TCPState(st & stStateMask >> stStateShift)
	return st&stAssured == 0 || s == TCPTimeWait || s == TCPClose
}

// timeout is how long a connection lives after a packet. For UDP, stream
// says the flow is a stream (see udpStreamAfter): only those get the
// replied timeout.
func (t *Table) timeout(proto uint8, s TCPState, stream bool) uint32 {
	switch proto {
	case ProtoTCP:
		return t.timeouts[s]
	case ProtoUDP:
		if stream {
			return t.timeouts[toUDPReplied]
		}
		return t.timeouts[toUDPUnreplied]
	case ProtoICMP:
		return t.timeouts[toICMP]
	}
	return t.timeouts[toOther]
}

func addSat(a, b uint32) uint32 {
	if s := a + b; s >= a {
		return s
	}
	return 1<<32 - 1
}

// udpStreamAfter is how long, in seconds, a replied UDP flow must stay
// active before it counts as a stream: as nf_conntrack does, a UDP flow
// that has seen a reply is assured, and gets the replied timeout, only
// when a packet comes 2 s or more after it began. A single exchange (a DNS
// query and its answer) keeps the unreplied timeout and stays evictable,
// so a flood of answered datagrams from spoofed sources cannot fill the
// table with connections nothing may evict for two minutes.
const udpStreamAfter = 2

// advance returns the state word after a packet; st itself when the packet
// is ignored or changes nothing (same state, same deadline second). created
// is the connection's creation second.
func (t *Table) advance(st uint64, proto uint8, d Dir, flags uint8, nowSec, created uint32) uint64 {
	s := TCPState(st & stStateMask >> stStateShift)
	closer := st >> stCloserShift & 1
	if proto == ProtoTCP {
		e := t.tcp[tcpIndex(s, Dir(closer), d, classify(flags))]
		if e&tcpOK == 0 {
			return st
		}
		s, closer = TCPState(e&tcpStateMask), uint64(e>>tcpCloserShift&1)
	}
	nst := st &^ (stDeadlineMask | stStateMask | 1<<stCloserShift)
	if d == DirReply {
		nst |= stReplied
	}
	replied := nst&stReplied != 0
	switch {
	case !replied:
	case proto == ProtoTCP:
		if s == TCPEstablished {
			nst |= stAssured
		}
	case proto == ProtoUDP && nowSec-created >= udpStreamAfter:
		nst |= stAssured
	} // ICMP and other protocols are never assured, as in nf_conntrack
	deadline := addSat(nowSec, t.timeout(proto, s, nst&stAssured != 0))
	return nst | uint64(s)<<stStateShift | closer<<stCloserShift | uint64(deadline)
}

// fill sets c to the connection in w and st.
func (t *Table) fill(c *Conn, w *words, st uint64) {
	unpack(&c.Orig, w.orig0, w.orig1)
	unpack(&c.Reply, w.reply0, w.reply1)
	c.ServiceID = uint32(w.svc >> 32)
	c.Backend = uint32(w.svc)
	c.Flags = uint16(w.misc >> 32)
	c.State = TCPState(st & stStateMask >> stStateShift)
	c.Replied = st&stReplied != 0
	c.Assured = st&stAssured != 0
	c.Created = Time(uint32(w.misc)) * 1e9
	deadline := uint32(st & stDeadlineMask)
	to := t.timeout(protoOf(w.orig1), c.State, c.Assured)
	c.LastSeen = Time(deadline-min(to, deadline)) * 1e9
	c.Expires = Time(int64(deadline)+1) * 1e9
}

// probe finds the slot a packed key is indexed to, without locks. It
// returns the slot's state word as read before the key was compared; the
// caller validates its copy against that word's generation. ok is false on
// a miss validated by the shard's seq.
func (t *Table) probe(w0, w1 uint64) (si uint32, st uint64, d Dir, ok bool) {
	sh, tag := t.where(t.hash(w0, w1))
	s := &t.shards[sh]
	for spins := 0; ; spins++ {
		seq := s.seq.Load()
		for i := tag & s.mask; ; i = (i + 1) & s.mask {
			e := s.idx[i].Load()
			if e == 0 {
				break
			}
			if e>>cellTagShift != tag {
				continue
			}
			si = uint32(e) - 1
			d = Dir(e >> cellDirShift & 1)
			sl := &t.slots[si]
			st = sl.st.Load()
			if st&stLive == 0 {
				continue
			}
			var k0, k1 uint64
			if d == DirOriginal {
				k0, k1 = sl.orig[0].Load(), sl.orig[1].Load()
			} else {
				k0, k1 = sl.reply[0].Load(), sl.reply[1].Load()
			}
			if k0 == w0 && k1 == w1 {
				return si, st, d, true
			}
		}
		if seq&1 == 0 && s.seq.Load() == seq {
			return 0, 0, 0, false
		}
		if spins > 8 {
			runtime.Gosched()
		}
	}
}

// Lookup finds the connection k belongs to, applies the packet to it (TCP
// state from tcpFlags, the TCP header's flags byte, ignored for other
// protocols; replied/assured; timeout refresh) and returns a copy of the
// connection as updated and the direction k matched. An expired connection
// is absent. Lookup takes no lock and does not allocate.
func (t *Table) Lookup(k Key, tcpFlags uint8, now Time) (c Conn, d Dir, ok bool) {
	w0, w1 := pack(k)
	nowSec := seconds(now)
	for {
		var si uint32
		var st0 uint64
		si, st0, d, ok = t.probe(w0, w1)
		if !ok {
			return c, 0, false
		}
		sl := &t.slots[si]
		w := sl.load()
		proto := protoOf(w.orig1)
		for {
			st := sl.st.Load()
			if st&stIdentity != st0&stIdentity {
				break // freed or reused while we read it: look again
			}
			if expired(st, nowSec) {
				return c, 0, false
			}
			nst := t.advance(st, proto, d, tcpFlags, nowSec, uint32(w.misc))
			if nst == st || sl.st.CompareAndSwap(st, nst) {
				t.fill(&c, &w, nst)
				return c, d, true
			}
		}
	}
}

// Insert adds a connection whose first packet, in the original direction,
// has tcpFlags (TCP: a SYN, or a bare ACK to pick up a connection already
// established). Only c's Orig, Reply, ServiceID, Backend and Flags are used.
// It returns the connection as stored; for Exists, the live connection that
// already holds c.Orig or c.Reply, untouched by this packet (its Orig may
// differ from c.Orig when c.Orig is another connection's reply tuple). An
// expired connection holding either tuple is replaced. Insert does not
// allocate.
func (t *Table) Insert(c Conn, tcpFlags uint8, now Time) (res InsertResult, stored Conn) {
	nowSec := seconds(now)
	o0, o1 := pack(c.Orig)
	r0, r1 := pack(c.Reply)
	ia, tagO := t.where(t.hash(o0, o1))
	ib, tagR := t.where(t.hash(r0, r1))
	a, b := &t.shards[ia], &t.shards[ib]

	state := TCPNone
	valid := c.Orig != c.Reply && c.Orig.Proto == c.Reply.Proto
	if c.Orig.Proto == ProtoTCP {
		var ok bool
		state, ok = tcpStart(tcpFlags)
		valid = valid && ok
	}
	if !valid {
		a.invalid.Add(1)
		return Invalid, Conn{}
	}
	need := 1 // index cells this insert needs in each of a and b
	if ia == ib {
		need = 2
	}

	drops := 0
	for attempt := 0; attempt < 8; attempt++ {
		t.lock2(ia, ib)
		// A live holder of either tuple wins; an expired one is reclaimed.
		si, found := a.find(t, tagO, o0, o1)
		if !found {
			si, found = b.find(t, tagR, r0, r1)
		}
		if found {
			sl := &t.slots[si]
			st := sl.st.Load()
			if !expired(st, nowSec) && !reopens(st, c.Orig.Proto, tcpFlags) {
				w := sl.load()
				t.unlock2(ia, ib)
				t.fill(&stored, &w, st)
				return Exists, stored
			}
			t.unlock2(ia, ib)
			why := whyExpired
			if !expired(st, nowSec) {
				why = whyEvict // a finished TCP connection a SYN reopens
			}
			if t.unlink(si, st&stGenMask, why, nowSec) {
				t.shards[t.home(si)].expirations.Add(1)
			}
			continue
		}
		room := a.used+need <= a.maxUsed && b.used+need <= b.maxUsed && a.nfree > 0
		if room {
			if t.count.Add(1) > t.max {
				t.count.Add(-1)
				room = false
			}
		}
		if !room {
			t.unlock2(ia, ib)
			if drops < 2 && t.earlyDrop(ia, nowSec) {
				drops++
				continue
			}
			a.full.Add(1)
			return Full, Conn{}
		}
		a.nfree--
		si = a.free[a.nfree]
		sl := &t.slots[si]
		w := words{o0, o1, r0, r1, uint64(c.ServiceID)<<32 | uint64(c.Backend), uint64(c.Flags)<<32 | uint64(nowSec)}
		sl.orig[0].Store(w.orig0)
		sl.orig[1].Store(w.orig1)
		sl.reply[0].Store(w.reply0)
		sl.reply[1].Store(w.reply1)
		sl.svc.Store(w.svc)
		sl.misc.Store(w.misc)
		st := sl.st.Load()&stGenMask | stLive | uint64(state)<<stStateShift |
			uint64(addSat(nowSec, t.timeout(c.Orig.Proto, state, false)))
		sl.st.Store(st)
		a.insertCell(tagO, DirOriginal, si)
		b.insertCell(tagR, DirReply, si)
		a.inserts.Add(1)
		t.unlock2(ia, ib)
		t.fill(&stored, &w, st)
		if drops > 0 {
			return InsertedEarlyDrop, stored
		}
		return Inserted, stored
	}
	a.full.Add(1)
	return Full, Conn{}
}

func (t *Table) home(si uint32) int { return int(si / t.poolSize) }

func (t *Table) lock2(i, j int) {
	if i > j {
		i, j = j, i
	}
	t.shards[i].mu.Lock()
	if i != j {
		t.shards[j].mu.Lock()
	}
}

func (t *Table) unlock2(i, j int) {
	t.shards[i].mu.Unlock()
	if i != j {
		t.shards[j].mu.Unlock()
	}
}

// find returns the slot a packed key is indexed to. s.mu must be held, so
// every cell points to a live slot with stable keys.
func (s *shard) find(t *Table, tag, w0, w1 uint64) (uint32, bool) {
	for i := tag & s.mask; ; i = (i + 1) & s.mask {
		e := s.idx[i].Load()
		if e == 0 {
			return 0, false
		}
		if e>>cellTagShift != tag {
			continue
		}
		si := uint32(e) - 1
		sl := &t.slots[si]
		if Dir(e>>cellDirShift&1) == DirOriginal {
			if sl.orig[0].Load() == w0 && sl.orig[1].Load() == w1 {
				return si, true
			}
		} else if sl.reply[0].Load() == w0 && sl.reply[1].Load() == w1 {
			return si, true
		}
	}
}

// insertCell indexes slot si under tag. s.mu must be held and a cell free.
func (s *shard) insertCell(tag uint64, d Dir, si uint32) {
	i := tag & s.mask
	for s.idx[i].Load() != 0 {
		i = (i + 1) & s.mask
	}
	s.seq.Add(1)
	s.idx[i].Store(tag<<cellTagShift | uint64(d)<<cellDirShift | uint64(si+1))
	s.seq.Add(1)
	s.used++
}

// removeCell removes the cell for slot si, direction d, under tag, shifting
// later cells of the probe run back so no tombstones are needed. s.mu must
// be held.
func (s *shard) removeCell(tag uint64, d Dir, si uint32) {
	want := uint64(d)<<cellDirShift | uint64(si+1)
	i := tag & s.mask
	for {
		e := s.idx[i].Load()
		if e == 0 {
			return // not indexed: cannot happen while the slot is live
		}
		if e&(1<<cellTagShift-1) == want {
			break
		}
		i = (i + 1) & s.mask
	}
	s.seq.Add(1)
	for j := i; ; {
		j = (j + 1) & s.mask
		e := s.idx[j].Load()
		if e == 0 {
			break
		}
		// e may fill the hole at i unless its home cell lies cyclically
		// in (i, j].
		h := (e >> cellTagShift) & s.mask
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			s.idx[i].Store(e)
			i = j
		}
	}
	s.idx[i].Store(0)
	s.seq.Add(1)
	s.used--
}

// why says under which condition unlink removes a connection.
type why uint8

const (
	whyAny     why = iota
	whyExpired     // only if expired
	whyEvict       // only if expired or evictable
)

// unlink removes the connection in slot si if it is still generation gen
// and meets w, locking the shards of both its keys. It reports whether it
// removed it.
func (t *Table) unlink(si uint32, gen uint64, w why, nowSec uint32) bool {
	sl := &t.slots[si]
	if sl.st.Load()&stIdentity != stLive|gen {
		return false
	}
	o0, o1, r0, r1 := sl.orig[0].Load(), sl.orig[1].Load(), sl.reply[0].Load(), sl.reply[1].Load()
	if sl.st.Load()&stIdentity != stLive|gen {
		return false
	}
	ia, tagO := t.where(t.hash(o0, o1))
	ib, tagR := t.where(t.hash(r0, r1))
	t.lock2(ia, ib)
	for {
		st := sl.st.Load()
		ok := st&stIdentity == stLive|gen
		switch w {
		case whyExpired:
			ok = ok && expired(st, nowSec)
		case whyEvict:
			ok = ok && (expired(st, nowSec) || evictable(st))
		}
		if !ok {
			t.unlock2(ia, ib)
			return false
		}
		if sl.st.CompareAndSwap(st, st&^stIdentity|(gen+stGenOne)&stGenMask) {
			break
		}
	}
	a, b := &t.shards[ia], &t.shards[ib]
	a.removeCell(tagO, DirOriginal, si)
	b.removeCell(tagR, DirReply, si)
	h := &t.shards[t.home(si)] // == a
	h.free[h.nfree] = si
	h.nfree++
	t.count.Add(-1)
	t.unlock2(ia, ib)
	return true
}

// earlyDrop reclaims one slot homed in shard home: the first expired one in
// a window of earlyDropScan slots, else the evictable one closest to its
// deadline. It reports whether it freed one.
func (t *Table) earlyDrop(home int, nowSec uint32) bool {
	sh := &t.shards[home]
	n := min(uint32(earlyDropScan), t.poolSize)
	start := sh.dropCursor.Add(n) - n
	base := uint32(home) * t.poolSize
	var best uint32
	var bestSt uint64
	found := false
	for i := uint32(0); i < n; i++ {
		si := base + (start+i)%t.poolSize
		st := t.slots[si].st.Load()
		if st&stLive == 0 {
			continue
		}
		if expired(st, nowSec) {
			if t.unlink(si, st&stGenMask, whyExpired, nowSec) {
				sh.expirations.Add(1)
				return true
			}
			continue
		}
		if evictable(st) && (!found || st&stDeadlineMask < bestSt&stDeadlineMask) {
			best, bestSt, found = si, st, true
		}
	}
	if found && t.unlink(best, bestSt&stGenMask, whyEvict, nowSec) {
		sh.earlyDrops.Add(1)
		return true
	}
	return false
}

// Delete removes the connection k belongs to (either direction) and
// reports whether there was one.
func (t *Table) Delete(k Key) bool {
	w0, w1 := pack(k)
	for range 8 {
		si, st, _, ok := t.probe(w0, w1)
		if !ok {
			return false
		}
		if t.unlink(si, st&stGenMask, whyAny, 0) {
			t.shards[t.home(si)].deletes.Add(1)
			return true
		}
	}
	return false
}

// Expire reclaims expired connections among the next budget slots of a
// cursor that cycles through the table (at most one full cycle per call),
// and returns how many it removed. Calling it every 100ms with budget
// Stats().Slots/20 sweeps the table every two seconds. It is meant for one
// background goroutine but is safe to call from several.
func (t *Table) Expire(now Time, budget int) (removed int) {
	nowSec := seconds(now)
	t.expireMu.Lock()
	defer t.expireMu.Unlock()
	budget = min(budget, len(t.slots))
	for range budget {
		si := uint32(t.expireCursor)
		if t.expireCursor++; t.expireCursor == len(t.slots) {
			t.expireCursor = 0
		}
		st := t.slots[si].st.Load()
		if st&stLive != 0 && expired(st, nowSec) && t.unlink(si, st&stGenMask, whyExpired, nowSec) {
			t.shards[t.home(si)].expirations.Add(1)
			removed++
		}
	}
	return removed
}

// each calls fn with a consistent copy of every connection in the table,
// expired or not, with no lock held, until fn returns false. The copy is
// overwritten after fn returns.
func (t *Table) each(fn func(si uint32, st uint64, c *Conn) bool) {
	var c Conn // reused: fn must not keep the pointer
	for i := range t.slots {
		sl := &t.slots[i]
		st := sl.st.Load()
		if st&stLive == 0 {
			continue
		}
		w := sl.load()
		if st2 := sl.st.Load(); st2&stIdentity != st&stIdentity {
			continue // freed meanwhile
		} else {
			st = st2
		}
		t.fill(&c, &w, st)
		if !fn(uint32(i), st, &c) {
			return
		}
	}
}

// DeleteIf removes every connection for which fn returns true and returns
// how many it removed. fn gets a copy; it runs with no lock held, so it may
// be slow, and workers keep running. A connection inserted during the walk
// may or may not be seen. It walks the whole table: for the control plane,
// not the hot path.
func (t *Table) DeleteIf(fn func(c *Conn) bool) int {
	n := 0
	t.each(func(si uint32, st uint64, c *Conn) bool {
		if fn(c) && t.unlink(si, st&stGenMask, whyAny, 0) {
			t.shards[t.home(si)].deletes.Add(1)
			n++
		}
		return true
	})
	return n
}

// Range calls fn with a copy of each connection (consistent per
// connection, not across the table), including expired ones not yet
// reclaimed (compare Conn.Expires with the clock), until fn returns false.
func (t *Table) Range(fn func(c Conn) bool) {
	t.each(func(_ uint32, _ uint64, c *Conn) bool { return fn(*c) })
}

// Len returns the number of connections in the table, including expired
// ones not yet reclaimed.
func (t *Table) Len() int { return int(t.count.Load()) }

// Stats returns the counters and walks the table for the census (a few
// milliseconds per million slots).
func (t *Table) Stats() Stats {
	s := Stats{
		Entries:    t.Len(),
		MaxEntries: int(t.max),
		Slots:      len(t.slots),
		TotalBytes: t.bytes(),
	}
	s.BytesPerEntry = s.TotalBytes / int(t.max)
	for i := range t.shards {
		sh := &t.shards[i]
		s.Inserts += sh.inserts.Load()
		s.InsertFull += sh.full.Load()
		s.InsertInvalid += sh.invalid.Load()
		s.EarlyDrops += sh.earlyDrops.Load()
		s.Expirations += sh.expirations.Load()
		s.Deletes += sh.deletes.Load()
	}
	t.each(func(_ uint32, st uint64, c *Conn) bool {
		switch c.Orig.Proto {
		case ProtoTCP:
			s.TCP[c.State]++
		case ProtoUDP:
			s.UDP++
		case ProtoICMP:
			s.ICMP++
		default:
			s.Other++
		}
		if c.Assured {
			s.Assured++
		}
		return true
	})
	return s
}

func (t *Table) bytes() int {
	n := len(t.slots) * int(unsafe.Sizeof(slot{}))
	n += len(t.shards) * int(unsafe.Sizeof(shard{}))
	for i := range t.shards {
		n += len(t.shards[i].idx)*8 + len(t.shards[i].free)*4
	}
	return n
}
