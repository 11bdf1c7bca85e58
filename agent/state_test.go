package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
)

// stateAgent is an agent with its tables set up as Run sets them, without
// attaching anything; its state file is in dir.
func stateAgent(t testing.TB, dir string, edit func(c *Config)) *Agent {
	t.Helper()
	c, err := LoadConfig("../examples/trunkline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c.RegistryFile = filepath.Join(dir, "registry.json")
	c.APISocket = filepath.Join(dir, "trunkline.sock")
	c.StateFile = filepath.Join(dir, "trunkline.state")
	c.Services = []ServiceConfig{
		{Name: "default/web", Port: 80, TargetPort: 8080, ClusterIP: "10.96.0.10", NodePort: 30080, Backends: []string{"pod1", "pod2"}},
		{Name: "default/iperf", Port: 5201, TargetPort: 5201, ClusterIP: "10.96.0.14", SessionAffinity: "ClientIP", Backends: []string{"pod1", "pod2"}},
	}
	if edit != nil {
		edit(&c)
	}
	a, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a.epoch = time.Now()
	if a.ct, err = conntrack.New(conntrack.Options{MaxEntries: 1024}); err != nil {
		t.Fatal(err)
	}
	a.affinity = lb.NewAffinity()
	a.assignServiceIDs(a.s.services)
	svcs, err := lb.Build(a.s.nodeIP, a.s.services, 0)
	if err != nil {
		t.Fatal(err)
	}
	a.services.Store(svcs)
	return a
}

func (a *Agent) service(t testing.TB, name string) *lb.Service {
	t.Helper()
	for _, s := range a.services.Load().Services() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no Service %s", name)
	return nil
}

func (a *Agent) now() conntrack.Time { return conntrack.Time(time.Since(a.epoch)) }

var (
	nodeIP   = [4]byte{10, 100, 0, 2}
	pod1     = [4]byte{10, 100, 1, 1}
	pod2     = [4]byte{10, 100, 1, 2}
	client   = [4]byte{10, 100, 0, 1}
	outside  = [4]byte{198, 18, 0, 1}
	webVIP   = [4]byte{10, 96, 0, 10}
	iperfVIP = [4]byte{10, 96, 0, 14}
)

// flows puts into a's table: a DNAT'd TCP flow to web's ClusterIP,
// established; an SNAT'd NodePort flow; a pod's masqueraded UDP flow; a
// TCP flow to iperf with the client's affinity.
func flows(t testing.TB, a *Agent) (dnat, snat, masq, iperf conntrack.Conn) {
	t.Helper()
	web, ip := a.service(t, "default/web"), a.service(t, "default/iperf")
	idx := func(s *lb.Service, ip [4]byte) uint32 {
		for i, b := range s.Backends {
			if b.IP == ip {
				return uint32(i)
			}
		}
		t.Fatalf("%s has no backend %v", s.Name, ip)
		return 0
	}
	dnat = conntrack.Conn{
		Orig:      conntrack.Key{SrcIP: client, DstIP: webVIP, SrcPort: 40000, DstPort: 80, Proto: conntrack.ProtoTCP},
		Reply:     conntrack.Key{SrcIP: pod2, DstIP: client, SrcPort: 8080, DstPort: 40000, Proto: conntrack.ProtoTCP},
		ServiceID: web.ID, Backend: idx(web, pod2), Flags: 1,
	}
	snat = conntrack.Conn{
		Orig:      conntrack.Key{SrcIP: client, DstIP: nodeIP, SrcPort: 40001, DstPort: 30080, Proto: conntrack.ProtoTCP},
		Reply:     conntrack.Key{SrcIP: pod1, DstIP: nodeIP, SrcPort: 8080, DstPort: 61005, Proto: conntrack.ProtoTCP},
		ServiceID: web.ID, Backend: idx(web, pod1), Flags: 3,
	}
	masq = conntrack.Conn{
		Orig:  conntrack.Key{SrcIP: pod1, DstIP: outside, SrcPort: 5555, DstPort: 53, Proto: conntrack.ProtoUDP},
		Reply: conntrack.Key{SrcIP: outside, DstIP: nodeIP, SrcPort: 53, DstPort: 62000, Proto: conntrack.ProtoUDP},
		Flags: 6,
	}
	iperf = conntrack.Conn{
		Orig:      conntrack.Key{SrcIP: client, DstIP: iperfVIP, SrcPort: 40002, DstPort: 5201, Proto: conntrack.ProtoTCP},
		Reply:     conntrack.Key{SrcIP: pod1, DstIP: client, SrcPort: 5201, DstPort: 40002, Proto: conntrack.ProtoTCP},
		ServiceID: ip.ID, Backend: idx(ip, pod1), Flags: 1,
	}
	now := a.now()
	for _, c := range []conntrack.Conn{dnat, snat, iperf} {
		if res, _ := a.ct.Insert(c, conntrack.TCPFlagSYN, now); res != conntrack.Inserted {
			t.Fatal(res)
		}
		a.ct.Lookup(c.Reply, conntrack.TCPFlagSYN|conntrack.TCPFlagACK, now)
		a.ct.Lookup(c.Orig, conntrack.TCPFlagACK, now)
	}
	if res, _ := a.ct.Insert(masq, 0, now); res != conntrack.Inserted {
		t.Fatal(res)
	}
	a.ct.Lookup(masq.Reply, 0, now)
	a.affinity.Remember(ip.ID, client, ip.Backends[iperf.Backend], int64(now), time.Hour)
	return dnat, snat, masq, iperf
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	old := stateAgent(t, dir, nil)
	dnat, snat, masq, iperf := flows(t, old)
	if err := old.saveState(true); err != nil {
		t.Fatal(err)
	}
	if err := old.saveState(false); err != nil || old.stateSnapshot().Snapshots != 1 {
		t.Fatalf("a periodic snapshot after the final one: %v, %d written", err, old.stateSnapshot().Snapshots)
	}
	if st := old.stateSnapshot(); st.LastConnections != 4 || st.LastBytes != int64(fileSize(t, old.s.cfg.StateFile)) {
		t.Fatalf("snapshot stats %+v", st)
	}

	// The new agent serves the same Services in another order, so their
	// IDs differ, and the backends in another order too.
	fresh := stateAgent(t, dir, func(c *Config) {
		c.Services[0], c.Services[1] = c.Services[1], c.Services[0]
		c.Services[1].Backends = []string{"pod2", "pod1"}
	})
	if fresh.service(t, "default/web").ID == old.service(t, "default/web").ID {
		t.Fatal("the test wants the Service IDs to differ")
	}
	fresh.restoreState(fresh.services.Load())
	st := fresh.stateSnapshot()
	if st.Restored != 4 || st.RestoredAffinity != 1 || len(st.Dropped) != 0 || st.Refused != "" || !st.Final || st.SnapshotAgeSeconds > 5 {
		t.Fatalf("restore stats %+v", st)
	}
	for _, c := range []conntrack.Conn{dnat, snat, masq, iperf} {
		for _, k := range []conntrack.Key{c.Orig, c.Reply} {
			got, _, ok := fresh.ct.Lookup(k, conntrack.TCPFlagACK, fresh.now())
			if !ok {
				t.Fatalf("%+v not restored", k)
			}
			// The TCP flows are established; the UDP one, answered at once,
			// is not a stream yet.
			if got.Orig != c.Orig || got.Reply != c.Reply || got.Flags != c.Flags || !got.Replied ||
				got.Assured != (c.Orig.Proto == conntrack.ProtoTCP) {
				t.Errorf("restored %+v, was %+v", got, c)
			}
			if c.ServiceID == 0 {
				if got.ServiceID != 0 {
					t.Errorf("masqueraded flow restored with Service %d", got.ServiceID)
				}
				continue
			}
			name := "default/web"
			if c == iperf {
				name = "default/iperf"
			}
			svc := fresh.service(t, name)
			if got.ServiceID != svc.ID || svc.Backends[got.Backend].IP != c.Reply.SrcIP {
				t.Errorf("%s flow restored as Service %d backend %d (%v); want Service %d, backend %v",
					name, got.ServiceID, got.Backend, svc.Backends[got.Backend].IP, svc.ID, c.Reply.SrcIP)
			}
		}
	}
	be, ok := fresh.affinity.Backend(fresh.service(t, "default/iperf").ID, client, int64(fresh.now()))
	if !ok || be.IP != pod1 {
		t.Errorf("affinity after restore: %+v %v, want pod1", be, ok)
	}
	if _, ok := fresh.affinity.Backend(fresh.service(t, "default/iperf").ID, client, int64(fresh.now()+conntrack.Time(time.Hour))); ok {
		t.Error("the affinity outlives its hour")
	}
}

func fileSize(t *testing.T, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// rewrite changes a state file with edit and fixes its checksum.
func rewrite(t *testing.T, path string, edit func(b []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b = edit(b)
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestStateTimeOnDiskCounts(t *testing.T) {
	dir := t.TempDir()
	old := stateAgent(t, dir, nil)
	_, _, masq, iperf := flows(t, old)
	old.saveState(true)
	// Written 200 s ago: the replied UDP flow (120 s) is gone, the TCP
	// flows have 200 s less, the affinity (an hour) too.
	rewrite(t, old.s.cfg.StateFile, func(b []byte) []byte {
		at := int64(binary.LittleEndian.Uint64(b[16:]))
		binary.LittleEndian.PutUint64(b[16:], uint64(at-int64(200*time.Second)))
		return b
	})
	fresh := stateAgent(t, dir, nil)
	fresh.restoreState(fresh.services.Load())
	st := fresh.stateSnapshot()
	if st.Restored != 3 || st.Dropped["expired"] != 1 || st.SnapshotAgeSeconds < 200 {
		t.Fatalf("restore stats %+v", st)
	}
	if _, _, ok := fresh.ct.Lookup(masq.Orig, 0, fresh.now()); ok {
		t.Error("the UDP flow outlived its timeout on disk")
	}
	var got conntrack.Conn
	fresh.ct.Range(func(c conntrack.Conn) bool {
		if c.Orig == iperf.Orig {
			got = c
		}
		return true
	})
	want := conntrack.Time(5*24*time.Hour - 200*time.Second)
	if left := got.Expires - fresh.now(); left > want+2e9 || left < want-2e9 {
		t.Errorf("established flow expires in %v, want %v", time.Duration(left), time.Duration(want))
	}
	if got.Created > 0 {
		t.Errorf("created at %v on the new clock, want before its start", got.Created)
	}
	id := fresh.service(t, "default/iperf").ID
	if _, ok := fresh.affinity.Backend(id, client, int64(fresh.now()+conntrack.Time(time.Hour-201*time.Second))); !ok {
		t.Error("affinity lost too early")
	}
	if _, ok := fresh.affinity.Backend(id, client, int64(fresh.now()+conntrack.Time(time.Hour-199*time.Second))); ok {
		t.Error("affinity kept the time it spent on disk")
	}
}

func TestStateDropsWhatNoLongerFits(t *testing.T) {
	dir := t.TempDir()
	old := stateAgent(t, dir, nil)
	flows(t, old)
	old.saveState(true)
	// pod2 is no longer web's backend (the DNAT flow goes), the SNAT range
	// moved (the NodePort flow and the masquerade go), iperf is not served
	// yet (its flow waits).
	fresh := stateAgent(t, dir, func(c *Config) {
		c.Services = c.Services[:1]
		c.Services[0].Backends = []string{"pod1"}
		c.SNATPorts = "63000-63999"
	})
	fresh.restoreState(fresh.services.Load())
	st := fresh.stateSnapshot()
	if st.Restored != 0 || st.Dropped["backend"] != 1 || st.Dropped["snatPort"] != 2 || st.Pending != 1 || st.RestoredAffinity != 0 {
		t.Fatalf("restore stats %+v", st)
	}
	// A snapshot while the flow waits keeps it.
	if err := fresh.saveState(false); err != nil {
		t.Fatal(err)
	}
	if st := fresh.stateSnapshot(); st.LastConnections != 1 {
		t.Fatalf("snapshot with a pending flow: %+v", st)
	}
	// iperf arrives (as from the Kubernetes watch): the flow and the
	// affinity are taken back.
	specs, err := fresh.s.serviceSpecs([]ServiceConfig{
		{Name: "default/web", Port: 80, TargetPort: 8080, ClusterIP: "10.96.0.10", Backends: []string{"pod1"}},
		{Name: "default/iperf", Port: 5201, TargetPort: 5201, ClusterIP: "10.96.0.14", SessionAffinity: "ClientIP", Backends: []string{"pod1", "pod2"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	fresh.assignServiceIDs(specs)
	tbl, err := lb.Build(fresh.s.nodeIP, specs, 0)
	if err != nil {
		t.Fatal(err)
	}
	fresh.services.Store(tbl)
	fresh.adoptPending(tbl)
	st = fresh.stateSnapshot()
	if st.Restored != 1 || st.RestoredAffinity != 1 || st.Pending != 0 {
		t.Fatalf("after the Services update: %+v", st)
	}
	// A file saved by a pending-aware agent round-trips.
	again := stateAgent(t, dir, func(c *Config) { c.Services = c.Services[:1]; c.SNATPorts = "63000-63999" })
	again.restoreState(again.services.Load())
	if st := again.stateSnapshot(); st.Pending != 1 || st.Refused != "" {
		t.Fatalf("restore of a snapshot holding a pending flow: %+v", st)
	}
	// Past the window, what waits is dropped.
	again.stateMu.Lock()
	again.pending.until = 0
	again.stateMu.Unlock()
	again.adoptPending(nil)
	if st := again.stateSnapshot(); st.Pending != 0 || st.Dropped["service"] != 1 || st.AffinityDropped != 1 {
		t.Fatalf("after the window: %+v", st)
	}
}

func TestStateFileRefused(t *testing.T) {
	dir := t.TempDir()
	old := stateAgent(t, dir, nil)
	flows(t, old)
	old.saveState(true)
	good, err := os.ReadFile(old.s.cfg.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	withCRC := func(b []byte) []byte {
		binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
		return b
	}
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"empty", nil, "not a trunkline state file"},
		{"registry JSON", []byte(`[{"containerID": "x"}]`), "not a trunkline state file"},
		{"header only", good[:stateHeaderLen], "truncated"},
		{"cut in a connection", good[:len(good)-30], "checksum"},
		{"last byte lost", good[:len(good)-1], "checksum"},
		{"one bit flipped", func() []byte { b := bytes.Clone(good); b[stateHeaderLen+20] ^= 4; return b }(), "checksum"},
		{"version 2", withCRC(func() []byte { b := bytes.Clone(good); b[8] = 2; return b }()), "version 2; this agent reads version 1"},
		{"a connection too many", withCRC(func() []byte {
			b := bytes.Clone(good)
			binary.LittleEndian.PutUint64(b[len(b)-12:], 5)
			return b
		}()), "the trailer says 5 connections"},
		{"a bad connection", withCRC(func() []byte {
			b := bytes.Clone(good)
			b[len(b)-stateTrailerLen-conntrack.SavedSize+25] = 0x0f // TCP state 15
			return b
		}()), "connection 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := old.s.cfg.StateFile
			os.WriteFile(path, c.file, 0o600)
			a := stateAgent(t, dir, nil)
			a.restoreState(a.services.Load())
			st := a.stateSnapshot()
			if !strings.Contains(st.Refused, c.want) || st.Restored != 0 || a.ct.Len() != 0 {
				t.Errorf("refused %q (want %q), restored %d, table %d", st.Refused, c.want, st.Restored, a.ct.Len())
			}
			if _, err := os.Stat(path + ".refused"); err != nil {
				t.Errorf("the refused file was not moved aside: %v", err)
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused file is still in place: %v", err)
			}
		})
	}
	// No file: an empty start, nothing refused.
	a := stateAgent(t, t.TempDir(), nil)
	a.restoreState(a.services.Load())
	if st := a.stateSnapshot(); st.Refused != "" || st.Restored != 0 {
		t.Errorf("no file: %+v", st)
	}
}

func TestStateConfig(t *testing.T) {
	c, err := LoadConfig("../examples/trunkline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.validate()
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.StateFile != "/run/trunkline/trunkline.state" || s.stateInterval != 5*time.Second {
		t.Errorf("defaults: stateFile %q, interval %v", s.cfg.StateFile, s.stateInterval)
	}
	c.StateInterval = "off"
	if s, err := c.validate(); err != nil || s.stateInterval != 0 {
		t.Errorf("stateInterval off: %v %v", s.stateInterval, err)
	}
	c.StateInterval = "5ms"
	if _, err := c.validate(); err == nil || !strings.Contains(err.Error(), "stateInterval") {
		t.Errorf("stateInterval 5ms: %v", err)
	}
}

func FuzzDecodeState(f *testing.F) {
	a := stateAgent(f, f.TempDir(), nil)
	flows(f, a)
	a.saveState(true)
	if b, err := os.ReadFile(a.s.cfg.StateFile); err == nil {
		f.Add(b)
	}
	f.Add([]byte(stateMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		// As found, and with the checksum made right so the fuzzer gets
		// past it to the structure.
		for _, fix := range []bool{false, true} {
			if fix && len(b) >= 4 {
				b = bytes.Clone(b)
				binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
			}
			st, err := decodeState(b)
			if err != nil {
				if !errors.Is(err, ErrStateFile) || st != nil {
					t.Fatalf("%v, %v", st, err)
				}
				continue
			}
			if len(st.conns)%conntrack.SavedSize != 0 {
				t.Fatalf("%d bytes of connections", len(st.conns))
			}
		}
	})
}

// fillFlows puts n established TCP flows to web's ClusterIP into a table
// of a's of n entries.
func fillFlows(b *testing.B, a *Agent, n int) {
	b.Helper()
	var err error
	if a.ct, err = conntrack.New(conntrack.Options{MaxEntries: n}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.ct.Close() })
	web := a.service(b, "default/web")
	now := a.now()
	for i := range n {
		c := [4]byte{10, 100, byte(i >> 16), byte(i >> 8)}
		port := uint16(1024 + i&0xff)
		conn := conntrack.Conn{
			Orig:      conntrack.Key{SrcIP: c, DstIP: webVIP, SrcPort: port, DstPort: 80, Proto: conntrack.ProtoTCP},
			Reply:     conntrack.Key{SrcIP: web.Backends[0].IP, DstIP: c, SrcPort: 8080, DstPort: port, Proto: conntrack.ProtoTCP},
			ServiceID: web.ID,
		}
		if res, _ := a.ct.Insert(conn, conntrack.TCPFlagACK, now); !res.OK() {
			b.Fatalf("insert %d: %v", i, res)
		}
	}
}

// BenchmarkStateSave writes the state file of a table of 1M connections
// (workers would keep running).
func BenchmarkStateSave(b *testing.B) {
	a := stateAgent(b, b.TempDir(), nil)
	fillFlows(b, a, 1<<20)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		a.stateClosed = false
		if err := a.saveState(false); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(a.stateSnapshot().LastBytes), "bytes/file")
}

// BenchmarkStateRestore reads it back into an empty table.
func BenchmarkStateRestore(b *testing.B) {
	dir := b.TempDir()
	a := stateAgent(b, dir, nil)
	fillFlows(b, a, 1<<20)
	if err := a.saveState(true); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		fresh := stateAgent(b, dir, nil)
		fresh.ct, _ = conntrack.New(conntrack.Options{MaxEntries: 1 << 20})
		b.StartTimer()
		fresh.restoreState(fresh.services.Load())
		if st := fresh.stateSnapshot(); st.Restored != 1<<20 {
			b.Fatalf("restored %+v", st)
		}
		b.StopTimer()
		fresh.ct.Close()
		b.StartTimer()
	}
}

func TestStateMetrics(t *testing.T) {
	dir := t.TempDir()
	old := stateAgent(t, dir, nil)
	flows(t, old)
	old.saveState(true)
	fresh := stateAgent(t, dir, func(c *Config) { c.Services[0].Backends = []string{"pod1"} })
	fresh.restoreState(fresh.services.Load())
	reg := prometheus.NewPedanticRegistry() // also: every collected metric is described
	reg.MustRegister(collector{fresh})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"trunkline_state_restored_total,kind=connection":       3,
		"trunkline_state_restored_total,kind=affinity":         1,
		"trunkline_state_restore_dropped_total,reason=backend": 1,
		"trunkline_state_file_refused":                         0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (%v), want %v", name, v, ok, want)
		}
	}
	if st := fresh.Stats().State; st.Restored != 3 || st.Dropped["backend"] != 1 {
		t.Errorf("/v1/stats state: %+v", st)
	}
}

// Backends removed from every Service drain while a connection uses them,
// and are forgotten once none does.
func TestDrainingBackendsArePruned(t *testing.T) {
	a := stateAgent(t, t.TempDir(), nil)
	dnat, _, _, iperf := flows(t, a) // to pod2 through web, to pod1 through iperf
	old := a.services.Load()
	empty, err := lb.Build(a.s.nodeIP, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	removed := old.Removed(empty)
	if len(removed) != 4 { // pod1 and pod2 on 8080 and 5201
		t.Fatalf("removed %+v, want 4 backends", removed)
	}
	a.services.Store(empty.WithDraining(removed))
	a.pruneDraining()
	if got := a.Status().DrainingBackends; got != 3 {
		t.Fatalf("%d draining, want the 3 with flows (pod2:5201 has none)", got)
	}
	a.ct.Delete(iperf.Orig)
	a.pruneDraining()
	// The NodePort flow still holds pod1:8080, the ClusterIP flow pod2:8080.
	if got := a.services.Load().Draining(); len(got) != 2 || got[0].IP != pod1 || got[1].IP != pod2 {
		t.Fatalf("draining %+v, want pod1:8080 and pod2:8080", got)
	}
	a.ct.DeleteIf(func(c *conntrack.Conn) bool { return c.Orig != dnat.Orig })
	a.pruneDraining()
	if got := a.services.Load().Draining(); len(got) != 1 || got[0].IP != pod2 {
		t.Fatalf("draining %+v, want pod2:8080", got)
	}
	if !a.services.Load().IsEndpoint(lb.Frontend{IP: pod2, Port: 8080, Proto: lb.TCP}) {
		t.Error("a draining backend is not an endpoint: its replies would pass untranslated")
	}
	a.ct.Delete(dnat.Orig)
	a.pruneDraining()
	if got := a.Status().DrainingBackends; got != 0 {
		t.Errorf("%d draining with no flow left, want 0", got)
	}
}
