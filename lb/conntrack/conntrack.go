// Package conntrack is the connection tracking table that the dataplane's
// workers share: one entry per translated flow (Service DNAT, SNAT), found by
// either of its two tuples, with TCP state tracking, per-protocol timeouts, a
// hard bound on the number of entries and no allocation per packet.
//
// # Use
//
// A worker calls [Table.Lookup] for every packet of a tracked protocol. On a
// hit it gets a copy of the connection (which NAT to apply) and the direction
// that matched; the same call has already advanced the TCP state and
// refreshed the timeout. On a miss for a packet that starts a flow it picks a
// backend and calls [Table.Insert]; [Full] means drop and count
// conntrack_full, [Exists] means another worker won the race (use the
// connection returned). A background goroutine calls [Table.Expire] with a
// budget a few times a second; the control plane calls [Table.DeleteIf] when
// a backend goes away and [Table.Range] for the CLI.
//
// # Time
//
// [Time] is nanoseconds on the caller's monotonic clock (for example
// nanoseconds since the agent started, read once per RX batch); it must not
// go backwards by more than a second or two between callers and must be
// non-negative. The table never reads the clock itself. Internally deadlines
// are whole seconds: a connection last seen at t with timeout d is considered
// expired from the first whole second after t+d, so it lives at least d and
// less than d+1s.
//
// # Concurrency
//
// All methods are safe for concurrent use. The design:
//
//   - Connections live in one preallocated, pointer-free slot array. A
//     slot's immutable fields (both tuples, ServiceID, Backend, Flags,
//     creation time) are written only while the slot is free; its state word
//     (TCP state, replied/assured bits, deadline, in-use bit, generation) is
//     changed only with compare-and-swap. Freeing a slot bumps its
//     generation, so a reader that copied a slot validates the copy by
//     seeing the same in-use generation before and after.
//   - Each key hashes to one of Options.Shards shards. A shard holds an
//     open-addressing index (linear probing, backward-shift deletion, one
//     atomic 64-bit word per cell: tag, direction, slot number) for the keys
//     that hash to it, and the free list of the slots homed in it (a
//     connection's slot is homed in the shard of its original tuple).
//   - shard.mu serializes every writer of that shard: index changes, its
//     free list, and unlinking a connection whose either key is in the shard.
//     Insert, Delete, Expire, DeleteIf and early drop of a connection lock
//     the shards of both its keys, lower shard number first, so a
//     connection appears and disappears atomically for writers.
//   - Lookup takes no lock and writes nothing unless the connection's state
//     or deadline second changes. It reads index cells and slot words
//     atomically; a hit is validated by the slot generation, a miss by the
//     shard's sequence counter (odd while a writer changes the index), and it
//     retries when either moved. The state update is a CAS on the slot's
//     state word, so two workers handling the two directions of a flow
//     never lose each other's transitions. (The generation has 24 bits: a
//     reader would have to stall across 16M reuses of one slot to be
//     fooled.)
//   - A global atomic counter enforces MaxEntries exactly; each shard's slot
//     pool has some slack above MaxEntries/Shards so an uneven spread of
//     flows over shards does not make the table full early.
//
// # Hash
//
// Keys are hashed with a keyed 128-bit multiply-xor mix (wyhash-style) under
// 256 bits of per-table key from crypto/rand. It is not a cryptographic PRF,
// but tuples chosen without knowledge of the key land uniformly, so an
// attacker cannot aim flows at one shard or one probe chain. It is the same
// class of defence the Go runtime's map hash uses where AES is missing.
//
// # Bound and early drop
//
// When MaxEntries connections exist (or the new connection's shard has no
// free slot), Insert scans a bounded window of the home shard's slots and
// reclaims one: an expired connection if it sees one, else the embryonic one
// closest to expiry. Embryonic means not assured: TCP whose handshake has not
// completed (SYN_SENT, SYN_RECV, or picked up mid-stream and not yet
// answered), UDP never answered or answered but not yet a stream (no packet
// 2 s or more after it began: a DNS query and its answer), and ICMP and
// other protocols, answered or not; finished TCP (TIME_WAIT, CLOSE) is also
// fair game. Assured connections (TCP established with both directions
// seen, UDP streams) are never evicted for a new one, so a SYN flood, or a
// flood of answered datagrams, churns through embryonic entries while
// established flows survive. If the window holds nothing to reclaim,
// Insert returns [Full].
package conntrack

import (
	"errors"
	"fmt"
	"time"
)

// Time is a point on the caller's monotonic clock in nanoseconds. See the
// package comment.
type Time int64

// Key is one direction's tuple of a connection, as packets in that
// direction carry it. For ICMP echo SrcPort and DstPort are both the echo
// identifier. IP addresses are in network byte order.
//
// The blank field pads Key to 16 bytes so that the compiler copies it with
// one 16-byte move: at 13 bytes it is copied with two overlapping 8-byte
// moves, and the table's 4-byte loads of the copy then miss store-to-load
// forwarding, which cost ~10ns per Lookup. Use keyed literals.
type Key struct {
	SrcIP, DstIP     [4]byte
	SrcPort, DstPort uint16
	Proto            uint8
	_                [3]byte
}

// IP protocol numbers the table gives their own timeouts. Other protocols
// are tracked with Timeouts.Other.
const (
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
)

// TCP header flag bits, as in byte 13 of the TCP header; pass that byte to
// Lookup and Insert.
const (
	TCPFlagFIN uint8 = 0x01
	TCPFlagSYN uint8 = 0x02
	TCPFlagRST uint8 = 0x04
	TCPFlagPSH uint8 = 0x08
	TCPFlagACK uint8 = 0x10
)

// Dir says which of a connection's tuples a packet matched.
type Dir uint8

const (
	// DirOriginal: the packet matched Conn.Orig (client to service).
	DirOriginal Dir = 0
	// DirReply: the packet matched Conn.Reply (backend to client).
	DirReply Dir = 1
)

// String returns "original" or "reply".
func (d Dir) String() string {
	if d == DirReply {
		return "reply"
	}
	return "original"
}

// TCPState is the tracked state of a TCP connection. Non-TCP connections
// have TCPNone.
type TCPState uint8

// TCP states, modelled on nf_conntrack's.
const (
	TCPNone        TCPState = iota
	TCPSynSent              // SYN seen from the client
	TCPSynRecv              // SYN-ACK seen from the server
	TCPEstablished          // handshake completed
	TCPFinWait              // one side sent FIN
	TCPCloseWait            // that FIN was acknowledged; the other side may still send
	TCPLastAck              // both sides sent FIN; waiting for the last ACK
	TCPTimeWait             // last ACK seen
	TCPClose                // RST seen
	numTCPStates
)

var tcpStateNames = [numTCPStates]string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE"}

// String returns the state's conntrack name, such as "ESTABLISHED".
func (s TCPState) String() string {
	if s < numTCPStates {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("TCPState(%d)", uint8(s))
}

// Conn is one tracked connection. Insert takes Orig, Reply, ServiceID,
// Backend and Flags from the caller and ignores the rest; the table manages
// the rest and reports it in the copies Lookup, Insert and Range return.
type Conn struct {
	Orig  Key // the tuple of the first packet, as the worker saw it
	Reply Key // the tuple replies will carry (after DNAT/SNAT)

	ServiceID uint32 // caller's; opaque to the table
	Backend   uint32 // caller's; opaque to the table
	Flags     uint16 // caller's; opaque to the table

	State    TCPState // TCP only
	Replied  bool     // a packet matched Reply
	Assured  bool     // established both ways (UDP: a stream); never early-dropped
	Created  Time     // whole seconds
	LastSeen Time     // last packet that refreshed the timeout; whole seconds
	Expires  Time     // first instant the connection counts as expired
}

// Timeouts are how long a connection lives after the last packet that
// refreshed it, per protocol and TCP state. Zero means the default (in
// brackets, nf_conntrack's). Values are rounded up to whole seconds.
type Timeouts struct {
	TCPSynSent     time.Duration // [120s]
	TCPSynRecv     time.Duration // [60s]
	TCPEstablished time.Duration // [5 days]
	TCPFinWait     time.Duration // [120s]
	TCPCloseWait   time.Duration // [60s]
	TCPLastAck     time.Duration // [30s]
	TCPTimeWait    time.Duration // [120s]
	TCPClose       time.Duration // [10s]
	UDPUnreplied   time.Duration // [30s] no reply seen yet, or not yet a stream
	UDPReplied     time.Duration // [120s] a stream: replied, and a packet 2 s or more after the first
	ICMP           time.Duration // [30s]
	Other          time.Duration // [600s] any other protocol
}

// DefaultTimeouts are nf_conntrack's defaults.
var DefaultTimeouts = Timeouts{
	TCPSynSent:     120 * time.Second,
	TCPSynRecv:     60 * time.Second,
	TCPEstablished: 5 * 24 * time.Hour,
	TCPFinWait:     120 * time.Second,
	TCPCloseWait:   60 * time.Second,
	TCPLastAck:     30 * time.Second,
	TCPTimeWait:    120 * time.Second,
	TCPClose:       10 * time.Second,
	UDPUnreplied:   30 * time.Second,
	UDPReplied:     120 * time.Second,
	ICMP:           30 * time.Second,
	Other:          600 * time.Second,
}

// Options configure a Table. Zero values mean the defaults.
type Options struct {
	// MaxEntries bounds the number of connections [1,048,576].
	MaxEntries int
	// Shards is the number of shards, a power of two [256, fewer for
	// small tables].
	Shards int
	// Timeouts per protocol and state [DefaultTimeouts].
	Timeouts Timeouts
}

// Limits on Options.
const (
	DefaultMaxEntries = 1 << 20
	DefaultShards     = 256
	maxMaxEntries     = 1 << 28
	maxShards         = 1 << 16
	maxTimeout        = 1<<31 - 1 // seconds
)

// ErrOptions is wrapped by every error New returns.
var ErrOptions = errors.New("conntrack: invalid options")

// InsertResult is the outcome of Insert.
type InsertResult uint8

const (
	// Inserted: the connection is now tracked.
	Inserted InsertResult = iota
	// InsertedEarlyDrop: the table was full; an expired, embryonic or
	// finished connection was reclaimed to make room (Stats tells
	// Expirations from EarlyDrops) and the connection is now tracked.
	InsertedEarlyDrop
	// Exists: a live connection already holds Orig or Reply; it is
	// returned (typically another worker inserted the same flow first).
	Exists
	// Full: no room and nothing evictable. Drop the packet and count
	// conntrack_full.
	Full
	// Invalid: the packet cannot start a connection (a TCP packet other
	// than SYN or a bare ACK; Orig equal to Reply; protocols differ).
	Invalid
)

var insertResultNames = [...]string{"inserted", "inserted-early-drop", "exists", "full", "invalid"}

// String returns the result's name, such as "full".
func (r InsertResult) String() string {
	if int(r) < len(insertResultNames) {
		return insertResultNames[r]
	}
	return fmt.Sprintf("InsertResult(%d)", uint8(r))
}

// OK reports whether the connection was inserted.
func (r InsertResult) OK() bool { return r == Inserted || r == InsertedEarlyDrop }

// Stats are the table's counters and a census of its entries.
type Stats struct {
	Entries       int    // connections in the table, including expired ones not yet reclaimed
	MaxEntries    int    // the bound on Entries
	Slots         int    // preallocated slots (MaxEntries plus per-shard slack)
	Inserts       uint64 // successful inserts
	InsertFull    uint64 // inserts refused with Full
	InsertInvalid uint64 // inserts refused with Invalid
	EarlyDrops    uint64 // connections evicted to make room
	Expirations   uint64 // expired connections reclaimed (by Expire, Insert or early drop)
	Deletes       uint64 // removed by Delete or DeleteIf

	// The census, by a walk of the table.
	TCP     [numTCPStates]int // TCP connections per TCPState
	UDP     int
	ICMP    int
	Other   int
	Assured int

	TotalBytes    int // memory of slots, index and free lists, allocated by New
	BytesPerEntry int // TotalBytes / MaxEntries
}

// New builds a table with all its memory allocated up front (outside the
// Go heap; see mem.go).
func New(o Options) (*Table, error) {
	var errs []error
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxEntries < 0 || o.MaxEntries > maxMaxEntries {
		errs = append(errs, fmt.Errorf("MaxEntries %d is outside 1..%d", o.MaxEntries, maxMaxEntries))
	}
	if o.Shards == 0 {
		o.Shards = DefaultShards
		for o.Shards > 1 && o.Shards*64 > o.MaxEntries {
			o.Shards /= 2
		}
	}
	if o.Shards < 1 || o.Shards > maxShards || o.Shards&(o.Shards-1) != 0 {
		errs = append(errs, fmt.Errorf("Shards %d is not a power of two in 1..%d", o.Shards, maxShards))
	}
	to, err := o.Timeouts.seconds()
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrOptions, errors.Join(errs...))
	}
	return newTable(o.MaxEntries, o.Shards, to)
}

// timeout classes: the TCP states, then the rest.
const (
	toUDPUnreplied = int(numTCPStates) + iota
	toUDPReplied
	toICMP
	toOther
	numTimeouts
)

func (t Timeouts) seconds() ([numTimeouts]uint32, error) {
	d := DefaultTimeouts
	in := [numTimeouts]struct {
		name    string
		v, dflt time.Duration
	}{
		TCPNone:        {"TCPClose", t.TCPClose, d.TCPClose},
		TCPSynSent:     {"TCPSynSent", t.TCPSynSent, d.TCPSynSent},
		TCPSynRecv:     {"TCPSynRecv", t.TCPSynRecv, d.TCPSynRecv},
		TCPEstablished: {"TCPEstablished", t.TCPEstablished, d.TCPEstablished},
		TCPFinWait:     {"TCPFinWait", t.TCPFinWait, d.TCPFinWait},
		TCPCloseWait:   {"TCPCloseWait", t.TCPCloseWait, d.TCPCloseWait},
		TCPLastAck:     {"TCPLastAck", t.TCPLastAck, d.TCPLastAck},
		TCPTimeWait:    {"TCPTimeWait", t.TCPTimeWait, d.TCPTimeWait},
		TCPClose:       {"TCPClose", t.TCPClose, d.TCPClose},
		toUDPUnreplied: {"UDPUnreplied", t.UDPUnreplied, d.UDPUnreplied},
		toUDPReplied:   {"UDPReplied", t.UDPReplied, d.UDPReplied},
		toICMP:         {"ICMP", t.ICMP, d.ICMP},
		toOther:        {"Other", t.Other, d.Other},
	}
	var out [numTimeouts]uint32
	var errs []error
	for i, x := range in {
		v := x.v
		if v == 0 {
			v = x.dflt
		}
		if v < 0 || v > maxTimeout*time.Second {
			errs = append(errs, fmt.Errorf("timeout %s %v is outside 0..%v", x.name, v, maxTimeout*time.Second))
			continue
		}
		out[i] = uint32((v + time.Second - 1) / time.Second)
	}
	return out, errors.Join(errs...)
}
