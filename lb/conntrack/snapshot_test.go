package conntrack

import (
	"bytes"
	"errors"
	"testing"
)

// saveAll saves every connection of tb at now through the encoding.
func saveAll(t testing.TB, tb *Table, now Time) []byte {
	t.Helper()
	var out []byte
	tb.Save(now, func(s *Saved) bool {
		var err error
		if out, err = s.AppendBinary(out); err != nil {
			t.Fatal(err)
		}
		return true
	})
	return out
}

// restoreAll decodes records and restores them into tb at now.
func restoreAll(t testing.TB, tb *Table, recs []byte, now Time) {
	t.Helper()
	for len(recs) > 0 {
		var s Saved
		if err := s.UnmarshalBinary(recs[:SavedSize]); err != nil {
			t.Fatal(err)
		}
		if res := tb.Restore(&s, now); res != Inserted {
			t.Fatalf("restore %+v: %v", s, res)
		}
		recs = recs[SavedSize:]
	}
}

func TestSaveRestoreRoundTrip(t *testing.T) {
	node := [4]byte{10, 100, 0, 2}
	old := newSmall(t, 1024)
	established, closing, opening := tcpConn(), tcpConn(), tcpConn()
	closing.Orig.SrcPort, closing.Reply.DstPort = 40001, 40001
	opening.Orig.SrcPort, opening.Reply.DstPort = 40002, 40002
	// A client from the trunk SNATed to the node's port 61000.
	snat := tcpConn()
	snat.Orig.SrcPort, snat.Reply.DstIP, snat.Reply.DstPort, snat.Flags = 40003, node, 61000, 0x3
	udpReplied, udpOne := flow(1, ProtoUDP), flow(2, ProtoUDP)
	// A pod's masqueraded flow to outside the VPC.
	masq := Conn{
		Orig:  Key{SrcIP: [4]byte{10, 100, 1, 1}, DstIP: [4]byte{198, 18, 0, 1}, SrcPort: 5555, DstPort: 53, Proto: ProtoUDP},
		Reply: Key{SrcIP: [4]byte{198, 18, 0, 1}, DstIP: node, SrcPort: 53, DstPort: 62000, Proto: ProtoUDP},
		Flags: 0x6,
	}
	at := func(s int64, c Conn, d Dir, flags uint8) {
		t.Helper()
		if _, _, ok := old.Lookup(key(c, d), flags, sec(s)); !ok {
			t.Fatalf("lookup at %ds", s)
		}
	}
	for _, c := range []Conn{established, closing, opening, snat} {
		if res, _ := old.Insert(c, syn, sec(10)); res != Inserted {
			t.Fatal(res)
		}
	}
	for _, c := range []Conn{established, closing, snat} {
		at(11, c, R, synack)
		at(12, c, O, ack)
	}
	at(50, closing, R, fin) // the server closes first: closer is the reply side
	for _, c := range []Conn{udpReplied, udpOne, masq} {
		if res, _ := old.Insert(c, 0, sec(90)); res != Inserted {
			t.Fatal(res)
		}
	}
	at(95, udpReplied, R, 0)
	at(95, masq, R, 0)
	expiredOne := flow(3, ProtoUDP)
	old.Insert(expiredOne, 0, sec(0)) // unreplied: gone after 30s

	const then, now = 100, 5000 // the next process's clock is its own
	recs := saveAll(t, old, sec(then))
	if len(recs) != 7*SavedSize {
		t.Fatalf("saved %d records, want 7 (the expired one left out)", len(recs)/SavedSize)
	}
	fresh := newSmall(t, 1024)
	restoreAll(t, fresh, recs, sec(now))
	if fresh.Len() != 7 {
		t.Fatalf("Len %d after restore", fresh.Len())
	}
	// Range shows the connections as stored, without a packet's effects.
	stored := func(tb *Table) map[Key]Conn {
		m := map[Key]Conn{}
		tb.Range(func(c Conn) bool { m[c.Orig] = c; return true })
		return m
	}
	before, after := stored(old), stored(fresh)
	for _, c := range []Conn{established, closing, opening, snat, udpReplied, udpOne, masq} {
		was, got := before[c.Orig], after[c.Orig]
		if got.Orig != was.Orig || got.Reply != was.Reply || got.ServiceID != was.ServiceID || got.Backend != was.Backend ||
			got.Flags != was.Flags || got.State != was.State || got.Replied != was.Replied || got.Assured != was.Assured {
			t.Errorf("restored %+v, was %+v", got, was)
		}
		if got.Expires-sec(now) != was.Expires-sec(then) {
			t.Errorf("%v: expires %v after restore, was %v after save", c.Orig, got.Expires-sec(now), was.Expires-sec(then))
		}
		if got.Created-sec(now) != was.Created-sec(then) {
			t.Errorf("%v: created %v before restore, was %v before save", c.Orig, got.Created-sec(now), was.Created-sec(then))
		}
		for _, d := range []Dir{O, R} {
			if c.Orig.Proto != ProtoTCP {
				break // a UDP lookup is a packet: it would refresh the flow
			}
			if _, gd, ok := fresh.Lookup(key(c, d), 0, sec(now)); !ok || gd != d {
				t.Errorf("%v: %v tuple not found after restore", c.Orig, d)
			}
		}
	}
	// The closing connection remembers who closed first: the client's FIN
	// makes it LAST_ACK, and only the server's final ACK ends it.
	for _, p := range []pkt{{O, fin, TCPLastAck}, {O, ack, TCPLastAck}, {R, ack, TCPTimeWait}} {
		got, _, _ := fresh.Lookup(key(closing, p.d), p.flags, sec(now+1))
		if got.State != p.want {
			t.Fatalf("closing after restore: %v %#x gives %v, want %v", p.d, p.flags, got.State, p.want)
		}
	}
	// The handshake in progress completes.
	for _, p := range []pkt{{R, synack, TCPSynRecv}, {O, ack, TCPEstablished}} {
		got, _, _ := fresh.Lookup(key(opening, p.d), p.flags, sec(now+1))
		if got.State != p.want {
			t.Fatalf("opening after restore: %v %#x gives %v, want %v", p.d, p.flags, got.State, p.want)
		}
	}
	// And it expires on time: the unreplied UDP flow had 20s left.
	if _, _, ok := fresh.Lookup(udpOne.Orig, 0, sec(now+21)); ok {
		t.Error("the unreplied UDP flow outlived its timeout")
	}
	if _, _, ok := fresh.Lookup(udpReplied.Orig, 0, sec(now+21)); !ok {
		t.Error("the replied UDP flow expired early")
	}
}

func TestRestoreEarlyInTheClock(t *testing.T) {
	// A connection older than the new process's clock is created at 0.
	tb := newSmall(t, 64)
	s := Saved{Orig: tcpConn().Orig, Reply: tcpConn().Reply, State: TCPEstablished, Replied: true, Assured: true, Age: 3600, TTL: 100}
	if res := tb.Restore(&s, sec(2)); res != Inserted {
		t.Fatal(res)
	}
	got, _, _ := tb.Lookup(s.Orig, 0, sec(2))
	if got.Created != 0 || got.Expires != sec(103) || !got.Assured {
		t.Fatalf("%+v", got)
	}
}

func TestRestoreCapsTTLAtTheTimeout(t *testing.T) {
	tb, err := New(Options{MaxEntries: 64, Timeouts: Timeouts{UDPReplied: 10 * 1e9}})
	if err != nil {
		t.Fatal(err)
	}
	c := flow(1, ProtoUDP)
	s := Saved{Orig: c.Orig, Reply: c.Reply, Replied: true, Assured: true, TTL: 1 << 31}
	tb.Restore(&s, sec(1))
	if got, _, _ := tb.Lookup(c.Orig, 0, sec(1)); got.Expires != sec(12) {
		t.Fatalf("restored with TTL 2^31 under a 10s timeout: expires %v", got.Expires)
	}
}

func TestRestoreRefuses(t *testing.T) {
	tb := newSmall(t, 4)
	c := flow(1, ProtoUDP)
	s := Saved{Orig: c.Orig, Reply: c.Reply, TTL: 10}
	if res := tb.Restore(&s, 0); res != Inserted {
		t.Fatal(res)
	}
	if res := tb.Restore(&s, 0); res != Exists {
		t.Fatalf("the same connection twice: %v", res)
	}
	clash := flow(2, ProtoUDP)
	clash.Reply = c.Reply
	if res := tb.Restore(&Saved{Orig: clash.Orig, Reply: clash.Reply, TTL: 10}, 0); res != Exists {
		t.Fatalf("a taken reply tuple: %v", res)
	}
	bad := s
	bad.State = TCPEstablished // on UDP
	if res := tb.Restore(&bad, 0); res != Invalid {
		t.Fatalf("TCP state on UDP: %v", res)
	}
	for i := 3; tb.Len() < 4; i++ {
		c := flow(i, ProtoUDP)
		tb.Restore(&Saved{Orig: c.Orig, Reply: c.Reply, TTL: 10}, 0)
	}
	more := flow(100, ProtoUDP)
	if res := tb.Restore(&Saved{Orig: more.Orig, Reply: more.Reply, TTL: 10}, 0); res != Full {
		t.Fatalf("a full table: %v", res)
	}
	if tb.Len() != 4 {
		t.Fatalf("Len %d", tb.Len())
	}
}

func validRecord(t testing.TB) []byte {
	t.Helper()
	c := tcpConn()
	s := Saved{Orig: c.Orig, Reply: c.Reply, ServiceID: 7, Backend: 3, Flags: 1, State: TCPFinWait, Replied: true, Assured: true,
		Closer: DirReply, Age: 5, TTL: 60}
	b, err := s.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSavedEncoding(t *testing.T) {
	b := validRecord(t)
	// One line per field; see SavedSize.
	want := []byte{
		10, 0, 0, 1, 10, 96, 0, 10, 0x40, 0x9c, 80, 0, // Orig 10.0.0.1:40000 → 10.96.0.10:80
		10, 1, 0, 5, 10, 0, 0, 1, 0x90, 0x1f, 0x40, 0x9c, // Reply 10.1.0.5:8080 → 10.0.0.1:40000
		6,    // TCP
		0x74, // FIN_WAIT (4), replied, assured, closer = reply
		1, 0, // Flags
		7, 0, 0, 0, // ServiceID
		3, 0, 0, 0, // Backend
		5, 0, 0, 0, // Age
		60, 0, 0, 0, // TTL
		0, 0, 0, 0, // reserved
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoding\n% x\nwant\n% x", b, want)
	}
	var s Saved
	if err := s.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.AppendBinary(nil); !bytes.Equal(again, b) {
		t.Fatalf("round trip\n% x\n% x", again, b)
	}
}

func TestSavedRejects(t *testing.T) {
	cases := []struct {
		name string
		edit func(b []byte) []byte
	}{
		{"short", func(b []byte) []byte { return b[:SavedSize-1] }},
		{"long", func(b []byte) []byte { return append(b, 0) }},
		{"empty", func(b []byte) []byte { return nil }},
		{"reserved bit", func(b []byte) []byte { b[25] |= 0x80; return b }},
		{"reserved word", func(b []byte) []byte { b[47] = 1; return b }},
		{"TCP state 15", func(b []byte) []byte { b[25] |= 0x0f; return b }},
		{"TCP without state", func(b []byte) []byte { b[25] &^= 0x0f; return b }},
		{"UDP with a TCP state", func(b []byte) []byte { b[24] = ProtoUDP; return b }},
		{"assured, not replied", func(b []byte) []byte { b[25] &^= savedReplied; return b }},
		{"tuples equal", func(b []byte) []byte { copy(b[12:24], b[0:12]); return b }},
	}
	for _, c := range cases {
		var s Saved
		err := s.UnmarshalBinary(c.edit(validRecord(t)))
		if !errors.Is(err, ErrSaved) {
			t.Errorf("%s: %v, want ErrSaved", c.name, err)
		}
	}
}

func FuzzSavedUnmarshal(f *testing.F) {
	f.Add(validRecord(f))
	f.Add(make([]byte, SavedSize))
	f.Add([]byte{1, 2, 3})
	tb := newSmall(f, 1<<12)
	f.Fuzz(func(t *testing.T, b []byte) {
		var s Saved
		if err := s.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrSaved) {
				t.Fatalf("error %v does not wrap ErrSaved", err)
			}
			return
		}
		again, _ := s.AppendBinary(nil)
		if !bytes.Equal(again, b) {
			t.Fatalf("decoded %+v re-encodes as\n% x\nnot\n% x", s, again, b)
		}
		switch res := tb.Restore(&s, sec(1)); res {
		case Inserted:
			got, _, ok := tb.Lookup(s.Orig, 0, sec(1))
			if !ok || got.Reply != s.Reply || got.State != s.State {
				t.Fatalf("restored %+v, found %+v %v", s, got, ok)
			}
			tb.Delete(s.Orig)
		case Exists, Full:
		default:
			t.Fatalf("a valid record restores as %v", res)
		}
	})
}
