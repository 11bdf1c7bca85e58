package conntrack

import (
	"testing"
	"time"
)

const (
	syn    = TCPFlagSYN
	synack = TCPFlagSYN | TCPFlagACK
	ack    = TCPFlagACK
	data   = TCPFlagACK | TCPFlagPSH
	fin    = TCPFlagFIN | TCPFlagACK
	rst    = TCPFlagRST
	rstack = TCPFlagRST | TCPFlagACK
)

const (
	O = DirOriginal
	R = DirReply
)

func sec(n int64) Time { return Time(n) * 1e9 }

// tcpConn is a Service flow: client 10.0.0.1:40000 → VIP 10.96.0.10:80,
// DNATed to backend 10.1.0.5:8080.
func tcpConn() Conn {
	return Conn{
		Orig:      Key{SrcIP: [4]byte{10, 0, 0, 1}, DstIP: [4]byte{10, 96, 0, 10}, SrcPort: 40000, DstPort: 80, Proto: ProtoTCP},
		Reply:     Key{SrcIP: [4]byte{10, 1, 0, 5}, DstIP: [4]byte{10, 0, 0, 1}, SrcPort: 8080, DstPort: 40000, Proto: ProtoTCP},
		ServiceID: 7, Backend: 3, Flags: 0x11,
	}
}

type pkt struct {
	d     Dir
	flags uint8
	want  TCPState
}

func key(c Conn, d Dir) Key {
	if d == DirReply {
		return c.Reply
	}
	return c.Orig
}

func newSmall(t testing.TB, max int) *Table {
	t.Helper()
	tb, err := New(Options{MaxEntries: max})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// run inserts tcpConn with the first packet's flags at time 0 and applies
// the rest one second apart, checking the state after each.
func run(t *testing.T, pkts []pkt) *Table {
	t.Helper()
	tb := newSmall(t, 64)
	c := tcpConn()
	res, got := tb.Insert(c, pkts[0].flags, 0)
	if !res.OK() {
		t.Fatalf("Insert: %v", res)
	}
	if got.State != pkts[0].want {
		t.Fatalf("after insert: state %v, want %v", got.State, pkts[0].want)
	}
	for i, p := range pkts[1:] {
		got, d, ok := tb.Lookup(key(c, p.d), p.flags, sec(int64(i+1)))
		if !ok || d != p.d {
			t.Fatalf("packet %d: Lookup = %v, %v", i+1, d, ok)
		}
		if got.State != p.want {
			t.Fatalf("packet %d (%v %#x): state %v, want %v", i+1, p.d, p.flags, got.State, p.want)
		}
	}
	return tb
}

func TestTCPStateMachine(t *testing.T) {
	tests := []struct {
		name string
		pkts []pkt
	}{
		{"client closes first", []pkt{
			{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}, {O, ack, TCPEstablished},
			{O, data, TCPEstablished}, {R, data, TCPEstablished},
			{O, fin, TCPFinWait}, {R, ack, TCPCloseWait}, {R, data, TCPCloseWait}, {O, ack, TCPCloseWait},
			{R, fin, TCPLastAck}, {O, ack, TCPTimeWait}, {R, ack, TCPTimeWait},
		}},
		{"server closes first", []pkt{
			{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}, {O, ack, TCPEstablished},
			{R, fin, TCPFinWait}, {R, fin, TCPFinWait}, {O, ack, TCPCloseWait},
			{O, fin, TCPLastAck}, {R, ack, TCPTimeWait},
		}},
		{"FIN answered by FIN", []pkt{
			{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}, {O, ack, TCPEstablished},
			{O, fin, TCPFinWait}, {R, fin, TCPLastAck}, {O, ack, TCPTimeWait},
		}},
		{"simultaneous close", []pkt{
			{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}, {O, ack, TCPEstablished},
			{O, fin, TCPFinWait}, {R, fin, TCPLastAck},
			{R, ack, TCPLastAck}, // acks the client's FIN; the server's FIN is still unacked
			{O, ack, TCPTimeWait},
		}},
		{"SYN retransmit", []pkt{
			{O, syn, TCPSynSent}, {O, syn, TCPSynSent}, {O, syn, TCPSynSent}, {R, synack, TCPSynRecv},
			{O, syn, TCPSynRecv}, {R, synack, TCPSynRecv}, {O, ack, TCPEstablished},
		}},
		{"data before the handshake completes", []pkt{
			{O, syn, TCPSynSent},
			{O, data, TCPSynSent}, // ignored
			{O, fin, TCPSynSent},  // ignored
			{R, synack, TCPSynRecv},
			{R, data, TCPSynRecv},       // server data before the client's ACK
			{O, data, TCPEstablished},   // third packet carries data
			{O, syn, TCPEstablished},    // ignored
			{R, synack, TCPEstablished}, // ignored
		}},
		{"FIN in SYN_RECV", []pkt{
			{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}, {O, fin, TCPFinWait}, {R, fin, TCPLastAck}, {O, ack, TCPTimeWait},
		}},
		{"simultaneous open", []pkt{
			{O, syn, TCPSynSent}, {R, syn, TCPSynRecv}, {O, synack, TCPSynRecv}, {O, ack, TCPEstablished},
		}},
		{"tuple reused from TIME_WAIT and CLOSE", []pkt{
			{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}, {O, ack, TCPEstablished},
			{O, fin, TCPFinWait}, {R, fin, TCPLastAck}, {O, ack, TCPTimeWait},
			{R, syn, TCPTimeWait}, {O, syn, TCPSynSent}, {R, rst, TCPClose},
			{O, ack, TCPClose}, {R, rst, TCPClose}, {O, syn, TCPSynSent},
		}},
		{"pick-up mid-stream", []pkt{{O, data, TCPEstablished}, {R, ack, TCPEstablished}, {O, fin, TCPFinWait}}},
		{"no flags ignored", []pkt{{O, syn, TCPSynSent}, {R, 0, TCPSynSent}, {R, syn | TCPFlagFIN, TCPSynSent}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { run(t, tt.pkts) })
	}
}

// TestTCPRSTInEachState: RST from either side closes from any state.
func TestTCPRSTInEachState(t *testing.T) {
	handshake := []pkt{{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}, {O, ack, TCPEstablished}}
	prefixes := map[TCPState][]pkt{
		TCPSynSent:     handshake[:1],
		TCPSynRecv:     handshake[:2],
		TCPEstablished: handshake,
		TCPFinWait:     append(handshake[:3:3], pkt{O, fin, TCPFinWait}),
		TCPCloseWait:   append(handshake[:3:3], pkt{O, fin, TCPFinWait}, pkt{R, ack, TCPCloseWait}),
		TCPLastAck:     append(handshake[:3:3], pkt{O, fin, TCPFinWait}, pkt{R, fin, TCPLastAck}),
		TCPTimeWait:    append(handshake[:3:3], pkt{O, fin, TCPFinWait}, pkt{R, fin, TCPLastAck}, pkt{O, ack, TCPTimeWait}),
	}
	for s, prefix := range prefixes {
		for _, d := range []Dir{O, R} {
			for _, f := range []uint8{rst, rstack} {
				t.Run(s.String()+"/"+d.String(), func(t *testing.T) {
					tb := run(t, append(prefix[:len(prefix):len(prefix)], pkt{d, f, TCPClose}))
					// CLOSE lasts 10s from the RST: the RST came at len(prefix).
					rstAt := int64(len(prefix))
					if n := tb.Expire(sec(rstAt+10), 1<<20); n != 0 {
						t.Fatalf("expired %d at RST+10s", n)
					}
					if n := tb.Expire(sec(rstAt+11), 1<<20); n != 1 {
						t.Fatalf("expired %d at RST+11s, want 1", n)
					}
				})
			}
		}
	}
}

// TestTCPTimeouts: each state lives its own timeout after the last packet
// and no longer; packets the state machine ignores do not extend it.
func TestTCPTimeouts(t *testing.T) {
	d := DefaultTimeouts
	cases := []struct {
		pkts []pkt
		to   time.Duration
	}{
		{[]pkt{{O, syn, TCPSynSent}}, d.TCPSynSent},
		{[]pkt{{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}}, d.TCPSynRecv},
		{[]pkt{{O, syn, TCPSynSent}, {R, synack, TCPSynRecv}, {O, ack, TCPEstablished}}, d.TCPEstablished},
		{[]pkt{{O, data, TCPEstablished}, {O, fin, TCPFinWait}}, d.TCPFinWait},
		{[]pkt{{O, data, TCPEstablished}, {O, fin, TCPFinWait}, {R, ack, TCPCloseWait}}, d.TCPCloseWait},
		{[]pkt{{O, data, TCPEstablished}, {O, fin, TCPFinWait}, {R, fin, TCPLastAck}}, d.TCPLastAck},
		{[]pkt{{O, data, TCPEstablished}, {O, fin, TCPFinWait}, {R, fin, TCPLastAck}, {O, ack, TCPTimeWait}}, d.TCPTimeWait},
		{[]pkt{{O, syn, TCPSynSent}, {R, rst, TCPClose}}, d.TCPClose},
	}
	for _, tc := range cases {
		final := tc.pkts[len(tc.pkts)-1].want
		t.Run(final.String(), func(t *testing.T) {
			tb := run(t, tc.pkts)
			last := int64(len(tc.pkts) - 1)
			c := tcpConn()
			to := int64(tc.to / time.Second)
			// An ignored packet (no flags) at the deadline: still there, not refreshed.
			got, _, ok := tb.Lookup(c.Orig, 0, sec(last+to))
			if !ok || got.State != final || got.LastSeen != sec(last) || got.Expires != sec(last+to+1) {
				t.Fatalf("at last+timeout: %+v %v", got, ok)
			}
			if _, _, ok := tb.Lookup(c.Reply, 0, sec(last+to+1)); ok {
				t.Fatal("alive after its timeout")
			}
			if n := tb.Expire(sec(last+to), 1<<20); n != 0 {
				t.Fatalf("Expire at deadline removed %d", n)
			}
			if n := tb.Expire(sec(last+to+1), 1<<20); n != 1 || tb.Len() != 0 {
				t.Fatalf("Expire after deadline removed %d, Len %d", n, tb.Len())
			}
		})
	}
}

func TestTCPRefreshAndAssured(t *testing.T) {
	tb := newSmall(t, 64)
	c := tcpConn()
	_, got := tb.Insert(c, syn, sec(100))
	if got.Assured || got.Replied || got.Created != sec(100) || got.ServiceID != 7 || got.Backend != 3 || got.Flags != 0x11 {
		t.Fatalf("after insert: %+v", got)
	}
	got, _, _ = tb.Lookup(c.Orig, syn, sec(150)) // retransmit refreshes
	if got.LastSeen != sec(150) || got.Expires != sec(150+120+1) {
		t.Fatalf("SYN retransmit did not refresh: %+v", got)
	}
	got, _, _ = tb.Lookup(c.Orig, data, sec(160)) // ignored: no refresh
	if got.LastSeen != sec(150) {
		t.Fatalf("ignored packet refreshed: %+v", got)
	}
	got, _, _ = tb.Lookup(c.Reply, synack, sec(161))
	if !got.Replied || got.Assured {
		t.Fatalf("SYN_RECV: %+v", got)
	}
	got, _, _ = tb.Lookup(c.Orig, ack, sec(162))
	if !got.Assured || got.State != TCPEstablished || got.Expires != sec(162+5*86400+1) {
		t.Fatalf("ESTABLISHED: %+v", got)
	}
	// Pick-up: established but not assured until the other side answers.
	tb2 := newSmall(t, 64)
	_, got = tb2.Insert(c, ack, 0)
	if got.State != TCPEstablished || got.Assured {
		t.Fatalf("pick-up: %+v", got)
	}
	got, _, _ = tb2.Lookup(c.Reply, ack, sec(1))
	if !got.Assured {
		t.Fatalf("pick-up answered: %+v", got)
	}
}

func TestInsertInvalid(t *testing.T) {
	c := tcpConn()
	for _, f := range []uint8{synack, fin, rst, rstack, 0, syn | TCPFlagFIN} {
		tb := newSmall(t, 64)
		if res, _ := tb.Insert(c, f, 0); res != Invalid {
			t.Errorf("Insert with flags %#x: %v, want Invalid", f, res)
		}
	}
	tb := newSmall(t, 64)
	same := c
	same.Reply = same.Orig
	if res, _ := tb.Insert(same, syn, 0); res != Invalid {
		t.Errorf("Orig == Reply: %v", res)
	}
	mixed := c
	mixed.Reply.Proto = ProtoUDP
	if res, _ := tb.Insert(mixed, syn, 0); res != Invalid {
		t.Errorf("protocols differ: %v", res)
	}
	if s := tb.Stats(); s.InsertInvalid != 2 || s.Entries != 0 {
		t.Errorf("stats %+v", s)
	}
}
