package conntrack

import (
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// flow returns connection i of a synthetic population: client
// 10.(i>>16).(i>>8).i:(1024+i%50000) to a VIP, DNATed to one of 16 backends.
func flow(i int, proto uint8) Conn {
	client := [4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}
	port := uint16(1024 + i%50000)
	return Conn{
		Orig:      Key{SrcIP: client, DstIP: [4]byte{10, 96, 0, 1}, SrcPort: port, DstPort: 53, Proto: proto},
		Reply:     Key{SrcIP: [4]byte{10, 1, 0, byte(i % 16)}, DstIP: client, SrcPort: 5353, DstPort: port, Proto: proto},
		ServiceID: uint32(i), Backend: uint32(i % 16),
	}
}

func TestBothDirections(t *testing.T) {
	tb := newSmall(t, 1024)
	for i := range 100 {
		if res, _ := tb.Insert(flow(i, ProtoUDP), 0, 0); res != Inserted {
			t.Fatalf("insert %d: %v", i, res)
		}
	}
	for i := range 100 {
		c := flow(i, ProtoUDP)
		for _, d := range []Dir{O, R} {
			got, gd, ok := tb.Lookup(key(c, d), 0, sec(1))
			if !ok || gd != d || got.Orig != c.Orig || got.Reply != c.Reply || got.ServiceID != uint32(i) || got.Backend != uint32(i%16) {
				t.Fatalf("flow %d %v: %+v %v %v", i, d, got, gd, ok)
			}
		}
	}
	miss := flow(1000, ProtoUDP)
	if _, _, ok := tb.Lookup(miss.Orig, 0, sec(1)); ok {
		t.Fatal("hit for a flow never inserted")
	}
	// A racing second insert gets the first one's connection.
	dup := flow(5, ProtoUDP)
	dup.Backend = 99
	if res, got := tb.Insert(dup, 0, sec(2)); res != Exists || got.Backend != 5 {
		t.Fatalf("duplicate insert: %v %+v", res, got)
	}
	// So does a new flow whose reply tuple is taken (an SNAT port clash).
	clash := flow(2000, ProtoUDP)
	clash.Reply = flow(6, ProtoUDP).Reply
	if res, got := tb.Insert(clash, 0, sec(2)); res != Exists || got.Orig != flow(6, ProtoUDP).Orig {
		t.Fatalf("reply clash: %v %+v", res, got)
	}
	if !tb.Delete(flow(7, ProtoUDP).Reply) || tb.Delete(flow(7, ProtoUDP).Orig) {
		t.Fatal("Delete by reply tuple")
	}
	if _, _, ok := tb.Lookup(flow(7, ProtoUDP).Orig, 0, sec(2)); ok {
		t.Fatal("deleted flow still found")
	}
	if tb.Len() != 99 {
		t.Fatalf("Len %d", tb.Len())
	}
}

func TestUDPTimeouts(t *testing.T) {
	tb := newSmall(t, 64)
	c := flow(1, ProtoUDP)
	tb.Insert(c, 0, 0)
	got, _, _ := tb.Lookup(c.Orig, 0, sec(20)) // unreplied: 30s from each packet
	if got.Replied || got.Expires != sec(51) {
		t.Fatalf("unreplied: %+v", got)
	}
	if tb.Expire(sec(50), 100) != 0 {
		t.Fatal("expired early")
	}
	got, _, _ = tb.Lookup(c.Reply, 0, sec(50))
	if !got.Replied || !got.Assured || got.Expires != sec(171) {
		t.Fatalf("replied: %+v", got)
	}
	got, _, _ = tb.Lookup(c.Orig, 0, sec(60)) // stays on the replied timeout
	if got.Expires != sec(181) {
		t.Fatalf("replied, original packet: %+v", got)
	}
	if tb.Expire(sec(180), 100) != 0 || tb.Expire(sec(181), 100) != 1 {
		t.Fatal("replied timeout")
	}
	// Unanswered: gone 30s after the last packet.
	tb.Insert(c, 0, sec(200))
	if tb.Expire(sec(230), 100) != 0 || tb.Expire(sec(231), 100) != 1 {
		t.Fatal("unreplied timeout")
	}
	// A single exchange (a DNS query and its answer) is not a stream: it
	// keeps the unreplied timeout and may be evicted, until a packet comes
	// 2 s or more after the first.
	tb.Insert(c, 0, sec(300))
	got, _, _ = tb.Lookup(c.Reply, 0, sec(300))
	if !got.Replied || got.Assured || got.Expires != sec(331) {
		t.Fatalf("answered at once: %+v", got)
	}
	got, _, _ = tb.Lookup(c.Orig, 0, sec(301))
	if got.Assured || got.Expires != sec(332) {
		t.Fatalf("1 s on: %+v", got)
	}
	got, _, _ = tb.Lookup(c.Orig, 0, sec(302))
	if !got.Assured || got.Expires != sec(423) {
		t.Fatalf("2 s on, a stream: %+v", got)
	}
}

// A flood of answered datagrams from spoofed sources (each a query and its
// answer) fills the table with connections that are evicted for new ones,
// TCP or UDP, as nf_conntrack evicts them.
func TestAnsweredDatagramsAreEvictable(t *testing.T) {
	const max = 64
	tb := newSmall(t, max)
	for i := range max {
		c := flow(i, ProtoUDP)
		tb.Insert(c, 0, sec(1))
		tb.Lookup(c.Reply, 0, sec(1))
	}
	if s := tb.Stats(); s.Entries != max || s.Assured != 0 {
		t.Fatalf("stats after the flood: %+v", s)
	}
	syn := flow(1000, ProtoTCP)
	if res, _ := tb.Insert(syn, TCPFlagSYN, sec(2)); res != InsertedEarlyDrop {
		t.Fatalf("a SYN into a table full of answered datagrams: %v, want %v", res, InsertedEarlyDrop)
	}
}

func TestICMPEchoAndOther(t *testing.T) {
	tb := newSmall(t, 64)
	echo := Conn{
		Orig:  Key{SrcIP: [4]byte{10, 0, 0, 1}, DstIP: [4]byte{10, 96, 0, 1}, SrcPort: 77, DstPort: 77, Proto: ProtoICMP},
		Reply: Key{SrcIP: [4]byte{10, 1, 0, 1}, DstIP: [4]byte{10, 0, 0, 1}, SrcPort: 77, DstPort: 77, Proto: ProtoICMP},
	}
	tb.Insert(echo, 0, 0)
	got, d, ok := tb.Lookup(echo.Reply, 0, sec(10))
	if !ok || d != R || !got.Replied || got.Assured || got.Expires != sec(41) || got.State != TCPNone {
		t.Fatalf("echo reply: %+v %v %v", got, d, ok)
	}
	gre := Conn{
		Orig:  Key{SrcIP: [4]byte{10, 0, 0, 1}, DstIP: [4]byte{10, 96, 0, 1}, Proto: 47},
		Reply: Key{SrcIP: [4]byte{10, 1, 0, 1}, DstIP: [4]byte{10, 0, 0, 1}, Proto: 47},
	}
	tb.Insert(gre, 0, 0)
	if tb.Expire(sec(41), 100) != 1 || tb.Expire(sec(600), 100) != 0 || tb.Expire(sec(601), 100) != 1 {
		t.Fatal("ICMP 30s, other 600s")
	}
}

func TestConfiguredTimeouts(t *testing.T) {
	tb, err := New(Options{MaxEntries: 16, Timeouts: Timeouts{UDPUnreplied: 1500 * time.Millisecond, TCPSynSent: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	tb.Insert(flow(1, ProtoUDP), 0, 0)
	tb.Insert(flow(2, ProtoTCP), syn, 0)
	if tb.Expire(sec(2), 100) != 0 || tb.Expire(sec(3), 100) != 1 { // 1.5s rounds up to 2s
		t.Fatal("UDPUnreplied")
	}
	if tb.Expire(sec(6), 100) != 1 {
		t.Fatal("TCPSynSent")
	}
}

func TestOptions(t *testing.T) {
	_, err := New(Options{MaxEntries: -1, Shards: 3, Timeouts: Timeouts{ICMP: -time.Second}})
	if !errors.Is(err, ErrOptions) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"MaxEntries", "Shards", "ICMP"} {
		if !contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	tb, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	s := tb.Stats()
	if s.MaxEntries != DefaultMaxEntries || len(tb.shards) != DefaultShards {
		t.Fatalf("defaults: %+v", s)
	}
	t.Logf("1M table: %d slots, %d MB, %d bytes per connection", s.Slots, s.TotalBytes>>20, s.BytesPerEntry)
	if s.BytesPerEntry > 200 {
		t.Errorf("%d bytes per connection", s.BytesPerEntry)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestFull(t *testing.T) {
	const max = 200
	tb := newSmall(t, max)
	// Assured connections (UDP streams: answered, and a packet 2 s on)
	// fill the table.
	for i := range max {
		c := flow(i, ProtoUDP)
		if res, _ := tb.Insert(c, 0, 0); res != Inserted {
			t.Fatalf("insert %d: %v", i, res)
		}
		tb.Lookup(c.Reply, 0, sec(2))
	}
	for i := range 50 {
		if res, _ := tb.Insert(flow(max+i, ProtoUDP), 0, sec(2)); res != Full {
			t.Fatalf("insert into a full table: %v", res)
		}
	}
	s := tb.Stats()
	if s.InsertFull != 50 || s.Entries != max || s.EarlyDrops != 0 || s.Assured != max {
		t.Fatalf("stats: %+v", s)
	}
	for i := range max {
		if _, _, ok := tb.Lookup(flow(i, ProtoUDP).Orig, 0, sec(2)); !ok {
			t.Fatalf("established flow %d lost", i)
		}
	}
	// Once one expires, Insert reclaims it without waiting for Expire.
	tb2 := newSmall(t, 1)
	tb2.Insert(flow(1, ProtoUDP), 0, 0)
	if res, _ := tb2.Insert(flow(2, ProtoUDP), 0, sec(31)); res != InsertedEarlyDrop {
		t.Fatalf("insert over an expired entry: %v", res)
	}
	if s := tb2.Stats(); s.Expirations != 1 || s.EarlyDrops != 0 || s.Entries != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestEarlyDrop: a SYN flood into a table holding established connections
// evicts only embryonic ones, oldest deadline first.
func TestEarlyDrop(t *testing.T) {
	const max = 256
	tb, err := New(Options{MaxEntries: max, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	established := map[Key]bool{}
	for i := range max {
		c := flow(i, ProtoTCP)
		if i%2 == 0 { // half established
			tb.Insert(c, syn, 0)
			tb.Lookup(c.Reply, synack, 0)
			tb.Lookup(c.Orig, ack, 0)
			established[c.Orig] = true
		} else { // half embryonic, the older ones with the earlier deadlines
			tb.Insert(c, syn, sec(int64(i)))
		}
	}
	if tb.Len() != max {
		t.Fatalf("Len %d", tb.Len())
	}
	for i := range 1000 {
		res, _ := tb.Insert(flow(max+i, ProtoTCP), syn, sec(300))
		if res != InsertedEarlyDrop && res != Full {
			t.Fatalf("flood insert %d: %v", i, res)
		}
	}
	s := tb.Stats()
	if s.EarlyDrops == 0 || s.Entries != max || s.TCP[TCPEstablished] != max/2 {
		t.Fatalf("stats: %+v", s)
	}
	for k := range established {
		if _, _, ok := tb.Lookup(k, ack, sec(301)); !ok {
			t.Fatalf("established %v evicted", k)
		}
	}
	t.Logf("flood of 1000: %d early drops, %d full", s.EarlyDrops, s.InsertFull)
	// The first drop takes the embryonic flow with the earliest deadline
	// within its window.
	tb3, _ := New(Options{MaxEntries: 8, Shards: 1})
	for i := range 8 {
		tb3.Insert(flow(i, ProtoTCP), syn, sec(int64(10-i)))
	}
	if res, _ := tb3.Insert(flow(100, ProtoTCP), syn, sec(20)); res != InsertedEarlyDrop {
		t.Fatal(res)
	}
	if _, _, ok := tb3.Lookup(flow(7, ProtoTCP).Orig, 0, sec(20)); ok {
		t.Fatal("the embryonic flow closest to expiry survived")
	}
}

func TestExpireIncremental(t *testing.T) {
	tb := newSmall(t, 1000)
	for i := range 1000 {
		c := flow(i, ProtoUDP)
		tb.Insert(c, 0, sec(int64(i%2)*100)) // odd ones inserted later
	}
	slots := len(tb.slots)
	total := 0
	for range (slots + 99) / 100 {
		n := tb.Expire(sec(31), 100)
		if n > 100 {
			t.Fatalf("removed %d with budget 100", n)
		}
		total += n
	}
	if total != 500 || tb.Len() != 500 {
		t.Fatalf("one sweep removed %d, Len %d; want 500", total, tb.Len())
	}
	tb.Range(func(c Conn) bool {
		if c.ServiceID%2 != 1 {
			t.Fatalf("wrong one survived: %+v", c)
		}
		return true
	})
	if tb.Expire(sec(31), slots*3) != 0 {
		t.Fatal("second sweep removed more")
	}
	if s := tb.Stats(); s.Expirations != 500 || s.UDP != 500 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDeleteIfAndRange(t *testing.T) {
	tb := newSmall(t, 1000)
	for i := range 300 {
		tb.Insert(flow(i, ProtoUDP), 0, 0)
		tb.Insert(flow(1000+i, ProtoTCP), syn, 0)
	}
	n := tb.DeleteIf(func(c *Conn) bool { return c.Orig.Proto == ProtoUDP && c.Backend == 3 })
	if n != 300/16+1 {
		t.Fatalf("DeleteIf removed %d", n)
	}
	seen := 0
	tb.Range(func(c Conn) bool {
		if c.Orig.Proto == ProtoUDP && c.Backend == 3 {
			t.Fatalf("left behind: %+v", c)
		}
		seen++
		return true
	})
	if seen != 600-n || tb.Len() != seen {
		t.Fatalf("Range saw %d, Len %d", seen, tb.Len())
	}
	stopped := 0
	tb.Range(func(Conn) bool { stopped++; return stopped < 5 })
	if stopped != 5 {
		t.Fatalf("Range did not stop: %d", stopped)
	}
	if s := tb.Stats(); s.Deletes != uint64(n) || s.TCP[TCPSynSent] != 300 {
		t.Fatalf("stats %+v", s)
	}
}

func TestZeroAllocs(t *testing.T) {
	tb := newSmall(t, 1024)
	c := flow(1, ProtoTCP)
	tb.Insert(c, syn, 0)
	now := Time(0)
	if n := testing.AllocsPerRun(1000, func() {
		now += 1e6
		tb.Lookup(c.Orig, syn, now)
		tb.Lookup(c.Reply, synack, now)
	}); n != 0 {
		t.Errorf("Lookup hit: %v allocs", n)
	}
	miss := flow(2, ProtoTCP)
	if n := testing.AllocsPerRun(1000, func() { tb.Lookup(miss.Orig, syn, now) }); n != 0 {
		t.Errorf("Lookup miss: %v allocs", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		tb.Insert(miss, syn, now)
		tb.Delete(miss.Reply)
	}); n != 0 {
		t.Errorf("Insert+Delete: %v allocs", n)
	}
	if n := testing.AllocsPerRun(100, func() { tb.Expire(now, 100) }); n != 0 {
		t.Errorf("Expire: %v allocs", n)
	}
}

// model is the obvious map-based conntrack for UDP, which the table must
// match operation for operation.
type model struct {
	conns map[Key]*modelConn // by Orig
	owner map[Key]Key        // each tuple → its connection's Orig
}

type modelConn struct {
	c        Conn
	replied  bool
	stream   bool  // replied, and a packet 2 s or more after created
	created  int64 // seconds
	deadline int64 // seconds
}

func (m *model) live(k Key, now int64) (*modelConn, bool) {
	o, ok := m.owner[k]
	if !ok {
		return nil, false
	}
	mc := m.conns[o]
	return mc, now <= mc.deadline
}

func (m *model) remove(mc *modelConn) {
	delete(m.owner, mc.c.Orig)
	delete(m.owner, mc.c.Reply)
	delete(m.conns, mc.c.Orig)
}

// checkModel runs the ops encoded in ops against a table and the model.
func checkModel(t *testing.T, ops []byte) {
	tb, err := New(Options{MaxEntries: 256, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	m := &model{conns: map[Key]*modelConn{}, owner: map[Key]Key{}}
	now := int64(0)
	// 64 flows; flow i >= 48 has flow i-16's reply tuple,
	// so inserts clash.
	mk := func(i int) Conn {
		c := flow(i, ProtoUDP)
		if i >= 48 {
			c.Reply = flow(i-16, ProtoUDP).Reply
		}
		return c
	}
	for len(ops) >= 2 {
		op, arg := ops[0]%6, int(ops[1]%64)
		ops = ops[2:]
		c := mk(arg)
		switch op {
		case 0: // insert
			res, got := tb.Insert(c, 0, sec(now))
			mo, liveO := m.live(c.Orig, now)
			mr, liveR := m.live(c.Reply, now)
			switch {
			case liveO || liveR:
				want := mo
				if !liveO {
					want = mr
				}
				if res != Exists || got.Orig != want.c.Orig {
					t.Fatalf("insert %d: %v %+v, want Exists %+v", arg, res, got, want.c)
				}
			default:
				if res != Inserted {
					t.Fatalf("insert %d: %v, want Inserted", arg, res)
				}
				if mo != nil {
					m.remove(mo)
				}
				if mr != nil && mr != mo {
					m.remove(mr)
				}
				m.conns[c.Orig] = &modelConn{c: c, created: now, deadline: now + 30}
				m.owner[c.Orig] = c.Orig
				m.owner[c.Reply] = c.Orig
			}
		case 1, 2: // lookup original / reply
			k := c.Orig
			if op == 2 {
				k = c.Reply
			}
			got, d, ok := tb.Lookup(k, 0, sec(now))
			mc, live := m.live(k, now)
			if ok != live {
				t.Fatalf("lookup %v: ok %v, model %v", k, ok, live)
			}
			if !ok {
				break
			}
			wantDir := O
			if k == mc.c.Reply {
				wantDir = R
				mc.replied = true
			}
			mc.stream = mc.stream || mc.replied && now-mc.created >= 2
			to := int64(30)
			if mc.stream {
				to = 120
			}
			mc.deadline = now + to
			if d != wantDir || got.Orig != mc.c.Orig || got.Replied != mc.replied || got.Assured != mc.stream || got.Expires != sec(mc.deadline+1) {
				t.Fatalf("lookup %v: %+v %v, model %+v", k, got, d, mc)
			}
		case 3: // delete
			got := tb.Delete(c.Reply)
			_, inModel := m.owner[c.Reply]
			if got != inModel {
				t.Fatalf("delete %v: %v, model %v", c.Reply, got, inModel)
			}
			if inModel {
				m.remove(m.conns[m.owner[c.Reply]])
			}
		case 4: // time passes
			now += int64(arg)
		case 5: // expire everything expired
			n := tb.Expire(sec(now), len(tb.slots))
			want := 0
			for _, mc := range m.conns {
				if now > mc.deadline {
					m.remove(mc)
					want++
				}
			}
			if n != want {
				t.Fatalf("expire: %d, model %d", n, want)
			}
		}
		if tb.Len() != len(m.conns) {
			t.Fatalf("Len %d, model %d", tb.Len(), len(m.conns))
		}
	}
}

func TestModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		ops := make([]byte, 2000)
		for i := range ops {
			ops[i] = byte(r.Uint32())
		}
		checkModel(t, ops)
	}
}

func FuzzModel(f *testing.F) {
	f.Add([]byte{0, 1, 1, 1, 2, 1, 4, 40, 1, 1, 5, 0, 0, 49, 0, 33, 3, 33, 0, 49})
	f.Fuzz(func(t *testing.T, ops []byte) { checkModel(t, ops) })
}

// TestConcurrent runs workers inserting and looking up both directions,
// an expirer and a control plane deleting, and checks every hit is a
// consistent connection. Run it with -race.
func TestConcurrent(t *testing.T) {
	const (
		workers = 8
		flows   = 2000
	)
	iters := 60000
	if testing.Short() {
		iters = 3000
	}
	tb, err := New(Options{MaxEntries: 1500, Shards: 16, Timeouts: Timeouts{UDPUnreplied: time.Second, UDPReplied: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64 // nanoseconds
	var stop atomic.Bool
	var wg, bg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range iters {
				i := r.IntN(flows)
				proto := ProtoUDP
				if i%2 == 0 {
					proto = ProtoTCP
				}
				c := flow(i, proto)
				d := Dir(r.IntN(2))
				now := Time(clock.Load())
				got, gd, ok := tb.Lookup(key(c, d), ack, now)
				if ok {
					if gd != d || got.Orig != c.Orig || got.Reply != c.Reply || got.ServiceID != uint32(i) || got.Backend != uint32(i%16) {
						t.Errorf("inconsistent hit: %+v %v for flow %d %v", got, gd, i, d)
						return
					}
					continue
				}
				res, got := tb.Insert(c, syn, now)
				switch res {
				case Inserted, InsertedEarlyDrop:
				case Exists:
					if got.Orig != c.Orig || got.ServiceID != uint32(i) {
						t.Errorf("Exists returned %+v for %d", got, i)
						return
					}
				case Full:
				default:
					t.Errorf("insert: %v", res)
					return
				}
			}
		}()
	}
	bg.Add(2)
	go func() { // clock and expirer
		defer bg.Done()
		for !stop.Load() {
			clock.Add(int64(50 * time.Millisecond))
			tb.Expire(Time(clock.Load()), 500)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	go func() { // control plane
		defer bg.Done()
		for b := 0; !stop.Load(); b++ {
			tb.DeleteIf(func(c *Conn) bool { return c.Backend == uint32(b%16) && c.Orig.Proto == ProtoUDP })
			for i := range 50 {
				tb.Delete(flow(b*50+i, ProtoTCP).Reply)
			}
			tb.Stats()
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	stop.Store(true)
	bg.Wait()

	// Quiescent: every connection is reachable by both tuples and counted.
	n := 0
	now := Time(clock.Load())
	tb.Range(func(c Conn) bool {
		n++
		if c.Expires <= now {
			return true
		}
		for _, d := range []Dir{O, R} {
			if got, gd, ok := tb.Lookup(key(c, d), 0, now); !ok || gd != d || got.Orig != c.Orig {
				t.Errorf("connection %+v not found by %v", c, d)
			}
		}
		return true
	})
	s := tb.Stats()
	if n != tb.Len() || n > 1500 {
		t.Fatalf("Range %d, Len %d", n, tb.Len())
	}
	used := 0
	for i := range tb.shards {
		used += tb.shards[i].used
		if f := tb.shards[i].nfree; f+countHomed(tb, i) != int(tb.poolSize) {
			t.Errorf("shard %d: %d free + %d live != %d", i, f, countHomed(tb, i), tb.poolSize)
		}
	}
	if used != 2*n {
		t.Errorf("%d index cells for %d connections", used, n)
	}
	t.Logf("%+v", s)
}

func countHomed(tb *Table, sh int) int {
	n := 0
	for si := sh * int(tb.poolSize); si < (sh+1)*int(tb.poolSize); si++ {
		if tb.slots[si].st.Load()&stLive != 0 {
			n++
		}
	}
	return n
}

// TestHashSpread: a sweep of source ports from one client (what a flood
// looks like) spreads evenly over shards and cells, differently per table.
func TestHashSpread(t *testing.T) {
	t1, t2 := newSmall(t, 1<<16), newSmall(t, 1<<16)
	shards := len(t1.shards)
	count := make([]int, shards)
	same := 0
	for p := range 1 << 16 {
		k := Key{SrcIP: [4]byte{203, 0, 113, 9}, DstIP: [4]byte{10, 96, 0, 1}, SrcPort: uint16(p), DstPort: 443, Proto: ProtoTCP}
		w0, w1 := pack(k)
		h1, h2 := t1.hash(w0, w1), t2.hash(w0, w1)
		count[h1&t1.shardMask]++
		if h1&t1.shardMask == h2&t2.shardMask {
			same++
		}
	}
	mean := (1 << 16) / shards
	for i, n := range count {
		if n > mean+mean*2/5 || n < mean-mean*2/5 { // 6 sigma
			t.Errorf("shard %d got %d of %d keys (mean %d)", i, n, 1<<16, mean)
		}
	}
	if same > 2*(1<<16)/shards {
		t.Errorf("two tables put %d of %d keys in the same shard: seed not used", same, 1<<16)
	}
}

// A client reuses a source port toward another frontend while its last
// connection on it lingers in TIME_WAIT; DNAT to the same backend gives
// the new flow the old one's reply tuple. A SYN takes it over; anything
// else does not.
func TestSYNReopensAFinishedTuple(t *testing.T) {
	tb := newSmall(t, 64)
	old := flow(1, ProtoTCP)
	if res, _ := tb.Insert(old, TCPFlagSYN, 0); res != Inserted {
		t.Fatal(res)
	}
	steps := []struct {
		d     Dir
		flags uint8
	}{{R, TCPFlagSYN | TCPFlagACK}, {O, TCPFlagACK}, {O, TCPFlagFIN | TCPFlagACK}, {R, TCPFlagACK}, {R, TCPFlagFIN | TCPFlagACK}, {O, TCPFlagACK}}
	for _, s := range steps {
		tb.Lookup(key(old, s.d), s.flags, sec(1))
	}
	if c, _, _ := tb.Lookup(key(old, O), 0, sec(1)); c.State != TCPTimeWait {
		t.Fatalf("old flow in %v, want TIME_WAIT", c.State)
	}
	reuse := old
	reuse.Orig.DstIP, reuse.Orig.DstPort = [4]byte{10, 100, 0, 2}, 30081 // another frontend, same backend
	if res, got := tb.Insert(reuse, TCPFlagACK, sec(2)); res != Exists || got.Orig != old.Orig {
		t.Fatalf("a bare ACK took a finished tuple: %v", res)
	}
	if res, _ := tb.Insert(reuse, TCPFlagSYN, sec(2)); res != Inserted {
		t.Fatalf("a SYN did not reopen a TIME_WAIT tuple: %v", res)
	}
	if _, _, ok := tb.Lookup(old.Orig, 0, sec(2)); ok {
		t.Error("the finished flow is still found")
	}
}
