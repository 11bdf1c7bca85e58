package agent

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
)

// The state file keeps what the dataplane knows about live flows across an
// agent restart: the connection table (with each flow's NAT, so the SNAT
// ports too), the session affinities, and the Service names their IDs
// stood for. It is written at SIGTERM once the workers have stopped, and
// every stateInterval while they run (Table.Save walks the table without
// stopping them), always to a temporary file that is synced and renamed
// over the old one. At start it is read before the workers take traffic.
// Times in it are relative: seconds a connection has left and has lived,
// nanoseconds an affinity has left, taken back less the wall-clock time
// the file spent on disk.
//
// Layout, version 1 (integers little-endian):
//
//	header, 40 bytes:
//	   0  magic "TLSNAP\r\n"
//	   8  version u16          10  flags u16 (bit 0: written at a clean shutdown)
//	  12  zero u32             16  written at, Unix ns, i64
//	  24  node IP [4]          28  Services u32
//	  32  affinities u32       36  zero u32
//	Services: ID u32, name length u16, name
//	affinities, 24 bytes each: Service ID u32, client [4], backend [4],
//	  backend port u16, zero u16, ns left i64
//	connections, conntrack.SavedSize bytes each, up to the trailer
//	trailer, 12 bytes: connections u64, CRC-32C of everything before the CRC
const (
	stateMagic        = "TLSNAP\r\n"
	stateVersion      = 1
	stateHeaderLen    = 40
	stateTrailerLen   = 12
	affinityRecordLen = 24
	stateFlagFinal    = 1
)

// pendingWindow is how long saved flows of Services the agent does not
// serve at start wait for them (the Kubernetes watch delivers the
// cluster's Services shortly after start).
const pendingWindow = time.Minute

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrStateFile is wrapped by the errors of a state file the agent refuses.
var ErrStateFile = errors.New("unusable state file")

// StateStats say what the agent took back from its state file at start and
// how its snapshots go.
type StateStats struct {
	File string `json:"file"`
	// Refused is why the file found at start was not used (moved aside
	// to File.refused); the agent started empty.
	Refused string `json:"refused,omitempty"`
	// SnapshotAgeSeconds is how old the file was at start; Final whether
	// it was written at a clean shutdown (else by a periodic snapshot).
	SnapshotAgeSeconds float64 `json:"snapshotAgeSeconds"`
	Final              bool    `json:"final"`
	// Restored connections and affinities; Dropped connections by reason
	// (expired, service, frontend, backend, snatPort, masquerade, exists,
	// full); AffinityDropped affinities.
	Restored         int            `json:"restored"`
	RestoredAffinity int            `json:"restoredAffinity"`
	Dropped          map[string]int `json:"dropped"`
	AffinityDropped  int            `json:"affinityDropped"`
	// Pending are saved connections waiting for their Service to be served
	// again (from the Kubernetes watch), for a minute after start.
	Pending int `json:"pending"`
	// Snapshots written while running and at shutdown; errors; the last
	// one's connections, size and duration.
	Snapshots       uint64  `json:"snapshots"`
	SnapshotErrors  uint64  `json:"snapshotErrors"`
	LastConnections int     `json:"lastConnections"`
	LastBytes       int64   `json:"lastBytes"`
	LastSeconds     float64 `json:"lastSeconds"`
}

// savedAffinity is one affinity record.
type savedAffinity struct {
	service uint32
	client  [4]byte
	backend [4]byte
	port    uint16
	left    time.Duration
}

// savedState is a decoded state file.
type savedState struct {
	final    bool
	savedAt  time.Time
	nodeIP   [4]byte
	services map[uint32]string
	affinity []savedAffinity
	conns    []byte // valid conntrack.Saved records
}

// pendingState holds saved flows whose Service is not served yet; times
// are relative to at (on the agent's clock). Once published in
// Agent.pending it is not changed, only replaced.
type pendingState struct {
	conns    []pendingConn
	affinity []pendingAffinity
	at       time.Duration
	until    time.Duration
}

type pendingConn struct {
	s       conntrack.Saved
	service string
}

type pendingAffinity struct {
	r       savedAffinity
	service string
}

// decodeState checks a whole state file and decodes it. It never panics;
// every error wraps ErrStateFile and says what is wrong.
func decodeState(b []byte) (*savedState, error) {
	bad := func(format string, a ...any) (*savedState, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrStateFile}, a...)...)
	}
	le := binary.LittleEndian
	if len(b) < len(stateMagic) || string(b[:len(stateMagic)]) != stateMagic {
		return bad("not a trunkline state file")
	}
	if len(b) < stateHeaderLen+stateTrailerLen {
		return bad("truncated at %d bytes", len(b))
	}
	if v := le.Uint16(b[8:]); v != stateVersion {
		return bad("version %d; this agent reads version %d", v, stateVersion)
	}
	if sum := crc32.Checksum(b[:len(b)-4], castagnoli); sum != le.Uint32(b[len(b)-4:]) {
		return bad("checksum mismatch: damaged or truncated")
	}
	flags := le.Uint16(b[10:])
	if flags&^stateFlagFinal != 0 || le.Uint32(b[12:]) != 0 || le.Uint32(b[36:]) != 0 {
		return bad("reserved header fields are set")
	}
	st := &savedState{final: flags&stateFlagFinal != 0, savedAt: time.Unix(0, int64(le.Uint64(b[16:]))), services: map[uint32]string{}}
	copy(st.nodeIP[:], b[24:28])
	nsvc, naff := le.Uint32(b[28:]), le.Uint32(b[32:])
	p := b[stateHeaderLen : len(b)-stateTrailerLen]
	for i := range nsvc {
		if len(p) < 6 || len(p) < 6+int(le.Uint16(p[4:])) {
			return bad("Service table cut at entry %d of %d", i, nsvc)
		}
		id, n := le.Uint32(p), int(le.Uint16(p[4:]))
		if id == 0 {
			return bad("Service ID 0")
		}
		if _, dup := st.services[id]; dup {
			return bad("Service ID %d twice", id)
		}
		st.services[id] = string(p[6 : 6+n])
		p = p[6+n:]
	}
	if uint64(naff) > uint64(len(p))/affinityRecordLen {
		return bad("affinity table of %d entries cut", naff)
	}
	st.affinity = make([]savedAffinity, naff)
	for i := range st.affinity {
		r := p[:affinityRecordLen]
		if le.Uint16(r[14:]) != 0 {
			return bad("affinity %d: reserved field set", i)
		}
		sa := savedAffinity{service: le.Uint32(r), port: le.Uint16(r[12:]), left: time.Duration(le.Uint64(r[16:]))}
		copy(sa.client[:], r[4:8])
		copy(sa.backend[:], r[8:12])
		if sa.left <= 0 {
			return bad("affinity %d: %v left", i, sa.left)
		}
		st.affinity[i] = sa
		p = p[affinityRecordLen:]
	}
	count := le.Uint64(b[len(b)-stateTrailerLen:])
	if count > uint64(len(p))/conntrack.SavedSize || count*conntrack.SavedSize != uint64(len(p)) {
		return bad("%d bytes of connections, the trailer says %d connections of %d bytes", len(p), count, conntrack.SavedSize)
	}
	var s conntrack.Saved
	for i := 0; i < len(p); i += conntrack.SavedSize {
		if err := s.UnmarshalBinary(p[i : i+conntrack.SavedSize]); err != nil {
			return bad("connection %d: %v", i/conntrack.SavedSize, err)
		}
	}
	st.conns = p
	return st, nil
}

// stateWriter streams a state file through a buffer, summing it.
type stateWriter struct {
	w   *bufio.Writer
	crc uint32
	n   int64
	err error
}

func (sw *stateWriter) write(b []byte) {
	if sw.err != nil {
		return
	}
	sw.crc = crc32.Update(sw.crc, castagnoli, b)
	_, sw.err = sw.w.Write(b)
	sw.n += int64(len(b))
}

// pendingIDBase numbers, in a state file, the Services that pending flows
// wait for, apart from the IDs of the Services served.
const pendingIDBase = 1 << 31

// saveState writes the state file; saveMu serialises it. After the final
// (shutdown) snapshot it writes no more.
func (a *Agent) saveState(final bool) (err error) {
	a.saveMu.Lock()
	defer a.saveMu.Unlock()
	if a.stateClosed {
		return nil
	}
	a.stateClosed = final
	start := time.Now()
	defer func() {
		if err != nil {
			a.stateMu.Lock()
			a.stateStats.SnapshotErrors++
			a.stateMu.Unlock()
		}
	}()
	a.stateMu.Lock()
	p := a.pending // replaced, never changed, by adoptPending
	a.stateMu.Unlock()
	now := time.Since(a.epoch)
	le := binary.LittleEndian

	ids := map[string]uint32{}
	var svcs []byte
	addService := func(id uint32, name string) {
		ids[name] = id
		n := min(len(name), 1<<16-1)
		svcs = le.AppendUint32(svcs, id)
		svcs = le.AppendUint16(svcs, uint16(n))
		svcs = append(svcs, name[:n]...)
	}
	served := map[uint32]bool{}
	for _, svc := range a.services.Load().Services() {
		addService(svc.ID, svc.Name)
		served[svc.ID] = true
	}
	var gone time.Duration // since the pending flows' times
	if p != nil {
		gone = now - p.at
		for _, pc := range p.conns {
			if _, ok := ids[pc.service]; !ok {
				addService(pendingIDBase+uint32(len(ids)), pc.service)
			}
		}
		for _, pa := range p.affinity {
			if _, ok := ids[pa.service]; !ok {
				addService(pendingIDBase+uint32(len(ids)), pa.service)
			}
		}
	}
	var aff []byte
	record := func(id uint32, client, backend [4]byte, port uint16, left time.Duration) {
		aff = le.AppendUint32(aff, id)
		aff = append(aff, client[:]...)
		aff = append(aff, backend[:]...)
		aff = le.AppendUint16(aff, port)
		aff = le.AppendUint16(aff, 0)
		aff = le.AppendUint64(aff, uint64(left))
	}
	a.affinity.Range(func(service uint32, client [4]byte, b lb.Backend, expires int64) bool {
		if left := time.Duration(expires) - now; left > 0 && served[service] {
			record(service, client, b.IP, b.Port, left)
		}
		return true
	})
	if p != nil {
		for _, pa := range p.affinity {
			if left := pa.r.left - gone; left > 0 {
				record(ids[pa.service], pa.r.client, pa.r.backend, pa.r.port, left)
			}
		}
	}

	path := a.s.cfg.StateFile
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("state file dir: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".trunkline.state-*")
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	defer os.Remove(f.Name()) // after the rename, there is nothing to remove
	sw := &stateWriter{w: bufio.NewWriterSize(f, 1<<16)}
	var hdr [stateHeaderLen]byte
	copy(hdr[:], stateMagic)
	le.PutUint16(hdr[8:], stateVersion)
	if final {
		le.PutUint16(hdr[10:], stateFlagFinal)
	}
	le.PutUint64(hdr[16:], uint64(time.Now().UnixNano()))
	node := a.s.nodeIP.As4()
	copy(hdr[24:], node[:])
	le.PutUint32(hdr[28:], uint32(len(ids)))
	le.PutUint32(hdr[32:], uint32(len(aff)/affinityRecordLen))
	sw.write(hdr[:])
	sw.write(svcs)
	sw.write(aff)
	var count uint64
	var buf [conntrack.SavedSize]byte
	a.ct.Save(conntrack.Time(now), func(s *conntrack.Saved) bool {
		if s.ServiceID != 0 && !served[s.ServiceID] {
			return true // its Service went away; the name is not known
		}
		rec, _ := s.AppendBinary(buf[:0])
		sw.write(rec)
		count++
		return sw.err == nil
	})
	if p != nil {
		goneSec := uint32(gone / time.Second)
		for _, pc := range p.conns {
			s := pc.s
			if s.TTL < goneSec {
				continue
			}
			s.TTL -= goneSec
			s.Age += goneSec
			s.ServiceID = ids[pc.service]
			rec, _ := s.AppendBinary(buf[:0])
			sw.write(rec)
			count++
		}
	}
	var tr [8]byte
	le.PutUint64(tr[:], count)
	sw.write(tr[:])
	le.PutUint32(tr[:], sw.crc)
	sw.write(tr[:4])
	if sw.err == nil {
		sw.err = sw.w.Flush()
	}
	if sw.err == nil {
		sw.err = f.Sync()
	}
	if cerr := f.Close(); sw.err == nil {
		sw.err = cerr
	}
	if sw.err == nil {
		sw.err = os.Rename(f.Name(), path)
	}
	if sw.err != nil {
		return fmt.Errorf("write state file %s: %w", path, sw.err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync() // the rename itself
		d.Close()
	}
	a.stateMu.Lock()
	a.stateStats.Snapshots++
	a.stateStats.LastConnections = int(count)
	a.stateStats.LastBytes = sw.n
	a.stateStats.LastSeconds = time.Since(start).Seconds()
	a.stateMu.Unlock()
	return nil
}

// restoreState takes back the state file's connections and affinities into
// the agent's empty tables, mapped onto the Services in t, before the
// workers start. A file it cannot use is logged and moved aside, and the
// agent starts empty: it never fails the start.
func (a *Agent) restoreState(t *lb.Table) {
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	path := a.s.cfg.StateFile
	a.stateStats.File = path
	a.stateStats.Dropped = map[string]int{}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		a.log.Info("no state file: starting with an empty connection table", "file", path)
		return
	}
	var st *savedState
	if err == nil {
		st, err = decodeState(b)
	}
	if err != nil {
		a.stateStats.Refused = err.Error()
		a.log.Error("state file not used: starting with an empty connection table; established flows through Services and SNAT are picked up again only where the client sends first",
			"file", path, "movedTo", path+".refused", "err", err)
		os.Rename(path, path+".refused")
		return
	}
	age := max(time.Since(st.savedAt), 0)
	ageSec := uint32(min(age/time.Second, 1<<32-1))
	a.stateStats.SnapshotAgeSeconds, a.stateStats.Final = age.Seconds(), st.final
	now := time.Since(a.epoch)
	byName := servicesByName(t)
	p := &pendingState{at: now, until: now + pendingWindow}
	var s conntrack.Saved
	for i := 0; i < len(st.conns); i += conntrack.SavedSize {
		s.UnmarshalBinary(st.conns[i : i+conntrack.SavedSize]) // checked by decodeState
		if s.TTL < ageSec {
			a.stateStats.Dropped["expired"]++
			continue
		}
		s.TTL -= ageSec
		s.Age = uint32(min(uint64(s.Age)+uint64(ageSec), 1<<32-1))
		name := ""
		if s.ServiceID != 0 {
			var ok bool
			if name, ok = st.services[s.ServiceID]; !ok {
				a.stateStats.Dropped["service"]++
				continue
			}
		}
		a.adoptConn(s, name, byName, t, now, p)
	}
	for _, r := range st.affinity {
		if r.left -= age; r.left <= 0 {
			a.stateStats.AffinityDropped++
			continue
		}
		name, ok := st.services[r.service]
		if !ok {
			a.stateStats.AffinityDropped++
			continue
		}
		a.adoptAffinity(r, name, byName, now, p)
	}
	if len(p.conns)+len(p.affinity) > 0 {
		a.pending = p
	}
	a.stateStats.Pending = len(p.conns)
	a.log.Info("state restored", "file", path, "age", age.Round(time.Millisecond), "cleanShutdown", st.final,
		"connections", a.stateStats.Restored, "affinities", a.stateStats.RestoredAffinity,
		"dropped", a.stateStats.Dropped, "pending", len(p.conns))
}

// adoptConn restores one saved connection if it still fits the Services in
// t, else holds it in p (when its Service is not served yet and p is not
// nil) or drops and counts it. The caller holds stateMu.
func (a *Agent) adoptConn(s conntrack.Saved, service string, byName map[string]*lb.Service, t *lb.Table, now time.Duration, p *pendingState) {
	why := a.mapConn(&s, service, byName, t)
	if why == "service" && p != nil {
		p.conns = append(p.conns, pendingConn{s, service})
		return
	}
	if why == "" {
		switch a.ct.Restore(&s, conntrack.Time(now)) {
		case conntrack.Inserted:
			a.stateStats.Restored++
			return
		case conntrack.Exists:
			why = "exists"
		case conntrack.Full:
			why = "full"
		default:
			why = "invalid"
		}
	}
	a.stateStats.Dropped[why]++
}

// adoptAffinity is adoptConn for an affinity.
func (a *Agent) adoptAffinity(r savedAffinity, service string, byName map[string]*lb.Service, now time.Duration, p *pendingState) {
	svc := byName[service]
	if svc == nil && p != nil {
		p.affinity = append(p.affinity, pendingAffinity{r, service})
		return
	}
	i := -1
	if svc != nil {
		i = slices.IndexFunc(svc.Backends, func(b lb.Backend) bool { return b.IP == r.backend && b.Port == r.port })
	}
	if i < 0 {
		a.stateStats.AffinityDropped++
		return
	}
	a.affinity.Remember(svc.ID, r.client, svc.Backends[i], int64(now), r.left)
	a.stateStats.RestoredAffinity++
}

// mapConn points a saved connection at the Service served now under its
// name (the saving agent's Service IDs and backend order may differ) and
// checks that the flow is one the dataplane would still carry: its
// frontend is still the Service's, its backend still one of the Service's
// (terminating ones included), and a translated source holds one of the
// node's SNAT ports. It returns why not, or "".
func (a *Agent) mapConn(s *conntrack.Saved, service string, byName map[string]*lb.Service, t *lb.Table) string {
	translated := s.Reply.DstIP != s.Orig.SrcIP || s.Reply.DstPort != s.Orig.SrcPort
	if translated && ((s.Reply.DstIP != a.s.nodeIP.As4() && s.Reply.DstIP != s.Orig.SrcIP) ||
		s.Reply.DstPort < a.s.snatLo || s.Reply.DstPort > a.s.snatHi) {
		return "snatPort"
	}
	if service == "" { // a pod's masqueraded flow
		if len(a.s.nonMasq) == 0 || !translated {
			return "masquerade"
		}
		return ""
	}
	svc := byName[service]
	if svc == nil {
		return "service"
	}
	if e, ok := t.Lookup(lb.Frontend{IP: s.Orig.DstIP, Port: s.Orig.DstPort, Proto: s.Orig.Proto}); !ok || e.ServiceID != svc.ID {
		return "frontend"
	}
	i := slices.IndexFunc(svc.Backends, func(b lb.Backend) bool { return b.IP == s.Reply.SrcIP && b.Port == s.Reply.SrcPort })
	if i < 0 {
		return "backend"
	}
	s.ServiceID, s.Backend = svc.ID, uint32(i)
	return ""
}

func servicesByName(t *lb.Table) map[string]*lb.Service {
	m := make(map[string]*lb.Service, len(t.Services()))
	for _, svc := range t.Services() {
		m[svc.Name] = svc
	}
	return m
}

// adoptPending retries the pending flows against a new Service table (the
// caller holds svcMu); past the pending window, or with t nil, what does
// not fit is dropped.
func (a *Agent) adoptPending(t *lb.Table) {
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	p := a.pending
	if p == nil {
		return
	}
	a.pending = nil
	now := time.Since(a.epoch)
	gone := now - p.at
	goneSec := uint32(gone / time.Second)
	var keep *pendingState
	if now < p.until && t != nil {
		keep = &pendingState{at: now, until: p.until}
	}
	var byName map[string]*lb.Service
	if t != nil {
		byName = servicesByName(t)
	}
	for _, pc := range p.conns {
		s := pc.s
		if s.TTL < goneSec {
			a.stateStats.Dropped["expired"]++
			continue
		}
		s.TTL -= goneSec
		s.Age += goneSec
		if t == nil {
			a.stateStats.Dropped["service"]++
			continue
		}
		a.adoptConn(s, pc.service, byName, t, now, keep)
	}
	for _, pa := range p.affinity {
		r := pa.r
		if r.left -= gone; r.left <= 0 || t == nil {
			a.stateStats.AffinityDropped++
			continue
		}
		a.adoptAffinity(r, pa.service, byName, now, keep)
	}
	a.stateStats.Pending = 0
	if keep != nil && len(keep.conns)+len(keep.affinity) > 0 {
		a.pending = keep
		a.stateStats.Pending = len(keep.conns)
	}
}

// snapshotState writes the state file every stateInterval until ctx ends,
// and gives up on pending flows once their window has passed.
func (a *Agent) snapshotState(ctx context.Context) {
	every := a.s.stateInterval
	if every == 0 {
		every = pendingWindow // only to end the pending window
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a.stateMu.Lock()
		expire := a.pending != nil && time.Since(a.epoch) >= a.pending.until
		a.stateMu.Unlock()
		if expire {
			a.adoptPending(nil)
		}
		if a.s.stateInterval == 0 {
			continue
		}
		err := a.saveState(false)
		if err != nil && !failing {
			a.log.Error("periodic snapshot failed; a crash now loses the flows since the last one", "err", err)
		} else if err == nil && failing {
			a.log.Info("periodic snapshots work again", "file", a.s.cfg.StateFile)
		}
		failing = err != nil
	}
}

// stateSnapshot returns a copy of the state statistics.
func (a *Agent) stateSnapshot() StateStats {
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	st := a.stateStats
	st.Dropped = make(map[string]int, len(a.stateStats.Dropped))
	for k, v := range a.stateStats.Dropped {
		st.Dropped[k] = v
	}
	return st
}
