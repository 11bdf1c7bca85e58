// Package dataplane is the per-queue worker: it receives batches of frames
// from the trunk and the pods' ports, demultiplexes them by VLAN, rewrites
// them in place and transmits their descriptors on the right port. It knows
// ports only through package port; package xdp provides the real ones.
package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trunkline/trunkline/dataplane/port"
	"github.com/trunkline/trunkline/internal/packet"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
	"github.com/trunkline/trunkline/vlan"
)

// DefaultBatch is how many descriptors a worker moves per ring operation.
const DefaultBatch = 64

// trunkIndex is the trunk's port index; pod attachment ID i has index i+1.
const trunkIndex = 0

// PortCounters count one port's frames. The worker adds to them once per
// batch; anyone may read them.
type PortCounters struct {
	RxPackets, RxBytes, TxPackets, TxBytes atomic.Uint64
	// Drops counts the frames received on the port that the dataplane
	// dropped (every reason; Counters.Drops has them by reason).
	Drops atomic.Uint64
}

// Counters are a worker's own counters. The worker adds once per batch.
type Counters struct {
	Drops [NumDropReasons]atomic.Uint64
	// Batches counts receive batches; Frames the frames in them.
	Batches, Frames atomic.Uint64
	// Polls counts blocking waits.
	Polls atomic.Uint64
	// Pauses counts the sleeps MaxBusy forced.
	Pauses atomic.Uint64
	// AtBound counts inserts that found the connection table at its
	// bound (one early-dropped an entry, or none could be): the mark of a
	// flood the agent shuts the trunk program's SYN gate on.
	AtBound atomic.Uint64
	// Rejects counts packets to a Service without a usable backend,
	// answered with a TCP RST or an ICMP port unreachable.
	Rejects atomic.Uint64
	// PortRemaps counts new flows whose client port was translated because
	// their reply tuple was another live flow's.
	PortRemaps atomic.Uint64
	// BatchSizes counts receive batches by size: bucket i holds batches of
	// at most BatchSizeBuckets[i] frames (and more than the bucket before).
	BatchSizes [len(BatchSizeBuckets) + 1]atomic.Uint64
	// BatchTimes counts receive batches by processing time (receive to
	// transmit), bucketed by BatchTimeBuckets; BatchNanos is their sum.
	BatchTimes [len(BatchTimeBuckets) + 1]atomic.Uint64
	BatchNanos atomic.Uint64
}

// BatchSizeBuckets are the upper bounds of Counters.BatchSizes (frames).
var BatchSizeBuckets = [...]float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}

// BatchTimeBuckets are the upper bounds of Counters.BatchTimes (seconds).
var BatchTimeBuckets = [...]float64{1e-6, 2e-6, 5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 5e-3}

// bucket returns the index of the first bound v fits under, or len(bounds).
func bucket(bounds []float64, v float64) int {
	for i, b := range bounds {
		if v <= b {
			return i
		}
	}
	return len(bounds)
}

// Config wires a worker.
type Config struct {
	// Memory is the frame memory all the worker's ports share.
	Memory port.Memory
	// Poller blocks the worker while its ports are idle.
	Poller port.Poller
	// Trunk is the trunk queue's port; TrunkCounters counts its frames.
	Trunk         port.Port
	TrunkCounters *PortCounters
	// VLAN is the attachment table, shared by all workers and replaced by
	// the control plane with an atomic swap.
	VLAN *atomic.Pointer[vlan.Table]
	// GatewayMAC is the VPC gateway's MAC: the destination of every frame
	// the worker sends out on the trunk.
	GatewayMAC [6]byte
	// Batch is the descriptors per ring operation; default DefaultBatch.
	Batch int
	// Services is the Service table, shared by all workers and replaced
	// by the control plane with an atomic swap; nil: no Services.
	Services *atomic.Pointer[lb.Table]
	// Conntrack is the connection table of translated flows, shared by
	// all workers. Required with Services.
	Conntrack *conntrack.Table
	// Affinity remembers ClientIP session affinity, shared by all workers;
	// nil: affinity by hashing the client's address only (no timeout).
	Affinity *lb.Affinity
	// Epoch is the zero of the conntrack clock, the same for every worker
	// and for whoever expires the table.
	Epoch time.Time
	// NodeIP and NodeMAC are the node's address on the trunk: the source
	// of SNAT and of the frames the node itself sends.
	NodeIP  [4]byte
	NodeMAC [6]byte
	// SNATPorts are the node ports SNAT uses.
	SNATPorts PortRange
	// Masquerade SNATs pods' TCP and UDP flows to destinations outside
	// NonMasquerade (the VPC's prefixes) to the node's address; they leave
	// untagged, as the node's own traffic.
	Masquerade    bool
	NonMasquerade []netip.Prefix
	// MaxBusy bounds how long the worker runs without blocking; then it
	// sleeps BusyPause, so that a worker with real-time priority never
	// starves the threads that share its core (among them the NAPI thread
	// that feeds it). Defaults 2 ms and 100 µs.
	MaxBusy, BusyPause time.Duration
}

// Worker runs the pipeline for one trunk queue. Its ports, its batch buffers
// and the frames it holds belong to the goroutine in Run; other goroutines
// change its ports only through AttachPod and DetachPod.
type Worker struct {
	mem       []byte
	memory    port.Memory
	slotMask  uint64
	poller    port.Poller
	vlanTable *atomic.Pointer[vlan.Table]
	gateway   [6]byte
	batch     int
	maxBusy   time.Duration
	busyPause time.Duration

	services   *atomic.Pointer[lb.Table]
	ct         *conntrack.Table
	affinity   *lb.Affinity
	epoch      time.Time
	now        conntrack.Time // once per batch
	nodeIP     [4]byte
	nodeMAC    [6]byte
	snatPorts  PortRange
	masquerade bool
	nonMasq    []prefix4
	scratch    [128]byte

	ports   []*out // by port index; nil where none
	touched []int  // ports to flush after this round
	rx      []port.Desc
	drop    []port.Desc
	ready   []int
	round   uint64 // rounds so far: rotates the service order
	// floodTokens are the new flows from the trunk the worker may still
	// start while flooded (a token bucket filled at FloodNewFlowRate since
	// floodTokensAt); ctBound is the last round an insert found the
	// connection table at its bound.
	floodTokens   float64
	floodTokensAt conntrack.Time
	ctBound       uint64
	drops         [NumDropReasons]uint64 // this batch
	pkt           packet.Parsed

	counters    Counters
	svcCounters atomic.Pointer[[]ServiceCounters] // by Service ID; grown by the worker

	mu      sync.Mutex // guards running and serialises control calls
	running bool
	ctl     chan func()
}

// out is one port with the frames queued for it in the current batch.
type out struct {
	p       port.Port
	c       *PortCounters
	q       []port.Desc
	qBytes  uint64
	touched bool
	// heavy: the port's last batch was full (it is flooding or busy);
	// served is the round that last received from it.
	heavy  bool
	served uint64
}

// ErrConfig is wrapped by New's errors.
var ErrConfig = errors.New("dataplane: invalid worker config")

// New builds a worker.
func New(c Config) (*Worker, error) {
	var errs []error
	if c.Memory == nil {
		errs = append(errs, errors.New("no frame memory"))
	}
	if c.Poller == nil {
		errs = append(errs, errors.New("no poller"))
	}
	if c.Trunk == nil {
		errs = append(errs, errors.New("no trunk port"))
	}
	if c.VLAN == nil {
		errs = append(errs, errors.New("no VLAN table pointer"))
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.Services != nil && c.Conntrack == nil {
		errs = append(errs, errors.New("services without a conntrack table"))
	}
	if c.Epoch.IsZero() {
		c.Epoch = time.Now()
	}
	if c.MaxBusy == 0 {
		c.MaxBusy = 2 * time.Millisecond
	}
	if c.BusyPause == 0 {
		c.BusyPause = 100 * time.Microsecond
	}
	if c.Batch < 1 || c.Batch > 1024 {
		errs = append(errs, fmt.Errorf("batch %d: want 1..1024", c.Batch))
	}
	if c.Memory != nil {
		if fs := c.Memory.FrameSize(); fs == 0 || fs&(fs-1) != 0 {
			errs = append(errs, fmt.Errorf("frame size %d: want a power of two", fs))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	if c.TrunkCounters == nil {
		c.TrunkCounters = new(PortCounters)
	}
	w := &Worker{
		mem:        c.Memory.Bytes(),
		memory:     c.Memory,
		slotMask:   c.Memory.FrameSize() - 1,
		poller:     c.Poller,
		vlanTable:  c.VLAN,
		gateway:    c.GatewayMAC,
		batch:      c.Batch,
		maxBusy:    c.MaxBusy,
		busyPause:  c.BusyPause,
		services:   c.Services,
		ct:         c.Conntrack,
		affinity:   c.Affinity,
		epoch:      c.Epoch,
		nodeIP:     c.NodeIP,
		nodeMAC:    c.NodeMAC,
		snatPorts:  c.SNATPorts,
		masquerade: c.Masquerade && c.Services != nil,
		ports:      make([]*out, 1+vlan.MaxAttachments),
		rx:         make([]port.Desc, c.Batch),
		drop:       make([]port.Desc, 0, c.Batch),
		ready:      make([]int, 1+vlan.MaxAttachments),
		touched:    make([]int, 0, 1+vlan.MaxAttachments),
		ctl:        make(chan func(), 16),
	}
	for _, p := range c.NonMasquerade {
		if !p.Addr().Is4() {
			continue
		}
		mask := ^uint32(0) << (32 - p.Bits())
		if p.Bits() == 0 {
			mask = 0
		}
		w.nonMasq = append(w.nonMasq, prefix4{addr: binary.BigEndian.Uint32(p.Masked().Addr().AsSlice()), mask: mask})
	}
	w.svcCounters.Store(new([]ServiceCounters))
	w.ports[trunkIndex] = w.newOut(c.Trunk, c.TrunkCounters)
	return w, nil
}

func (w *Worker) newOut(p port.Port, c *PortCounters) *out {
	if c == nil {
		c = new(PortCounters)
	}
	return &out{p: p, c: c, q: make([]port.Desc, 0, w.batch)}
}

// Counters are the worker's counters, safe to read at any time.
func (w *Worker) Counters() *Counters { return &w.counters }

// PodIndex is the port index (as given to the Poller) of attachment id.
func PodIndex(id uint16) int { return int(id) + 1 }

// TrunkIndex is the trunk's port index (as given to the Poller).
const TrunkIndex = trunkIndex

// AttachPod gives the worker the port of attachment id. inWorker, if not
// nil, runs on the worker's goroutine right after (to register the port
// with the poller). It returns once the worker uses the port.
func (w *Worker) AttachPod(id uint16, p port.Port, c *PortCounters, inWorker func()) error {
	if int(id) >= vlan.MaxAttachments {
		return fmt.Errorf("attach pod port: ID %d: want < %d", id, vlan.MaxAttachments)
	}
	w.do(func() {
		w.ports[PodIndex(id)] = w.newOut(p, c)
		if inWorker != nil {
			inWorker()
		}
	})
	return nil
}

// DetachPod removes attachment id's port after flushing what is queued on
// it; inWorker, if not nil, runs on the worker's goroutine after that (to
// unregister and close the port: the worker no longer touches it).
func (w *Worker) DetachPod(id uint16, inWorker func()) {
	if int(id) >= vlan.MaxAttachments {
		return
	}
	w.do(func() {
		if o := w.ports[PodIndex(id)]; o != nil {
			o.p.Flush()
			w.ports[PodIndex(id)] = nil
		}
		if inWorker != nil {
			inWorker()
		}
	})
}

// Do runs fn on the worker's goroutine between batches (or at once when the
// worker is not running) and returns when fn has returned.
func (w *Worker) Do(fn func()) { w.do(fn) }

func (w *Worker) do(fn func()) {
	w.mu.Lock()
	if !w.running {
		defer w.mu.Unlock()
		fn()
		return
	}
	done := make(chan struct{})
	w.ctl <- func() { fn(); close(done) }
	w.mu.Unlock()
	w.poller.Wake()
	<-done
}

// idleWaits are the poll timeouts, in ms, after 1, 2, 3… idle rounds: a
// short wait first to reap completions, then block (with a timeout only to
// take back completed frames a port still had in flight).
var idleWaits = [...]int{1, 10, 1000}

// blockedWait is how long a Wait must take to count as having blocked (a
// wait that finds a readable port returns in a few microseconds).
const blockedWait = 20 * time.Microsecond

// Run processes frames until ctx ends, blocking in the poller while every
// port is idle. It returns nil when ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.running {
		w.mu.Unlock()
		return errors.New("dataplane: worker already running")
	}
	w.running = true
	w.mu.Unlock()
	stop := context.AfterFunc(ctx, w.poller.Wake)
	defer func() {
		stop()
		w.mu.Lock()
		w.running = false
		for len(w.ctl) > 0 {
			(<-w.ctl)()
		}
		w.mu.Unlock()
		w.flushAll()
	}()

	idle := 0
	busySince := time.Now() // when the worker last blocked
	for ctx.Err() == nil {
		for len(w.ctl) > 0 {
			(<-w.ctl)()
		}
		timeout := 0
		if idle > 0 {
			timeout = idleWaits[min(idle, len(idleWaits))-1]
			w.counters.Polls.Add(1)
		}
		before := time.Now()
		n, err := w.poller.Wait(w.ready, timeout)
		if err != nil {
			return err
		}
		after := time.Now()
		if after.Sub(before) > blockedWait {
			busySince = after // it blocked: others had the core
		}
		if n == 0 {
			if idle > 0 {
				w.flushAll()
			}
			idle++
			continue
		}
		_, full := w.serve(w.ready[:n])
		w.flushTouched()
		if full {
			idle = 0
		} else {
			idle = 1
		}
		if time.Since(busySince) > w.maxBusy {
			w.counters.Pauses.Add(1)
			time.Sleep(w.busyPause)
			busySince = time.Now()
		}
	}
	return nil
}

// Poll runs one round without blocking: it receives a batch from every
// readable port, forwards and flushes. It returns how many frames it
// received. For tests and benchmarks that drive a worker step by step; not
// while Run runs.
func (w *Worker) Poll() int {
	for len(w.ctl) > 0 {
		(<-w.ctl)()
	}
	n, _ := w.poller.Wait(w.ready, 0)
	total, _ := w.serve(w.ready[:n])
	w.flushTouched()
	return total
}

// FloodNewFlowRate is how many flows from the VPC a worker starts per
// second, in bursts of at most FloodNewFlowBurst, while it is flooded: the
// connection table was at its bound (an insert had to drop an embryonic
// flow early, or could not) within the last floodRounds rounds. That is a
// SYN flood's mark: a table sized for the node's flows is never full of
// live ones otherwise. Each new flow costs an insert, the backend
// pod's work (run inside the worker's transmit on veths) and its answer;
// under a SYN flood those would take the worker from established flows.
const (
	FloodNewFlowRate  = 10_000
	FloodNewFlowBurst = 64
)

// floodRounds is how long, in rounds, a connection table at its bound keeps
// new flows from the trunk limited.
const floodRounds = 64

// flooded reports whether new flows from the trunk are limited this round.
func (w *Worker) flooded() bool {
	return w.ctBound != 0 && w.round-w.ctBound < floodRounds
}

// floodAdmit reports whether a new flow from the trunk may start while the
// worker is flooded, taking a token if so.
func (w *Worker) floodAdmit() bool {
	if elapsed := w.now - w.floodTokensAt; elapsed > 0 {
		w.floodTokens = min(w.floodTokens+float64(elapsed)*FloodNewFlowRate/1e9, FloodNewFlowBurst)
		w.floodTokensAt = w.now
	}
	if w.floodTokens < 1 {
		return false
	}
	w.floodTokens--
	return true
}

// serve receives one batch from each ready port, fairly: ports whose last
// batch was not full go first, then the heavy ones, each group in an order
// that rotates every round. Each batch is transmitted before the next port
// is served, so when an output's TX ring is short of room the light
// senders' frames get it first: a pod flooding the trunk (or another pod)
// takes what the others leave and cannot starve them, and heavy senders
// share what is left by turns. It returns the frames received and whether
// any batch was full.
func (w *Worker) serve(ready []int) (total int, full bool) {
	n := len(ready)
	if n == 0 {
		return 0, false
	}
	w.round++
	start := int(w.round % uint64(n))
	for pass := range 2 {
		heavy := pass == 1
		for i := range n {
			idx := ready[(start+i)%n]
			o := w.ports[idx]
			if o == nil || o.heavy != heavy || o.served == w.round {
				continue
			}
			o.served = w.round
			got := w.receive(idx)
			o.heavy = got == w.batch
			total += got
			full = full || o.heavy
		}
	}
	return total, full
}

func (w *Worker) flushAll() {
	for _, o := range w.ports {
		if o != nil {
			o.p.Flush()
		}
	}
}

func (w *Worker) flushTouched() {
	for _, idx := range w.touched {
		if o := w.ports[idx]; o != nil {
			o.touched = false
			o.p.Flush()
		}
	}
	w.touched = w.touched[:0]
}

func (w *Worker) touch(idx int, o *out) {
	if !o.touched {
		o.touched = true
		w.touched = append(w.touched, idx)
	}
}

// receive processes one batch from port idx and returns its size.
func (w *Worker) receive(idx int) int {
	in := w.ports[idx]
	if in == nil {
		return 0
	}
	n := in.p.Receive(w.rx)
	if n == 0 {
		return 0
	}
	w.touch(idx, in) // its fill ring wants refilling
	start := time.Now()
	if w.ct != nil {
		w.now = conntrack.Time(start.Sub(w.epoch))
	}
	var bytes uint64
	tbl := w.vlanTable.Load()
	if idx == trunkIndex {
		for i := range w.rx[:n] {
			bytes += uint64(w.rx[i].Len)
			w.fromTrunk(tbl, w.rx[i])
		}
	} else {
		var a *vlan.Attachment
		if tbl != nil {
			a = tbl.ByID(uint16(idx - 1))
		}
		for i := range w.rx[:n] {
			bytes += uint64(w.rx[i].Len)
			w.fromPod(tbl, a, w.rx[i])
		}
	}
	in.c.RxPackets.Add(uint64(n))
	in.c.RxBytes.Add(bytes)
	w.counters.Batches.Add(1)
	w.counters.Frames.Add(uint64(n))
	if d := w.transmit(); d > 0 { // this port's frames, dropped
		in.c.Drops.Add(uint64(d))
	}
	took := time.Since(start)
	w.counters.BatchSizes[bucket(BatchSizeBuckets[:], float64(n))].Add(1)
	w.counters.BatchTimes[bucket(BatchTimeBuckets[:], took.Seconds())].Add(1)
	w.counters.BatchNanos.Add(uint64(took))
	return n
}

// transmit hands every queued frame of this batch to its port and releases
// the batch's dropped frames; it returns how many were dropped (while
// processing, or for want of TX room).
func (w *Worker) transmit() int {
	for _, idx := range w.touched {
		o := w.ports[idx]
		if len(o.q) == 0 {
			continue
		}
		sent := o.p.Transmit(o.q)
		if sent < len(o.q) {
			w.drops[DropNoTxRoom] += uint64(len(o.q) - sent)
			w.drop = append(w.drop, o.q[sent:]...)
			for _, d := range o.q[sent:] {
				o.qBytes -= uint64(d.Len)
			}
		}
		o.c.TxPackets.Add(uint64(sent))
		o.c.TxBytes.Add(o.qBytes)
		o.q, o.qBytes = o.q[:0], 0
	}
	dropped := len(w.drop)
	if dropped > 0 {
		w.memory.Release(w.drop)
		w.drop = w.drop[:0]
	}
	for r, n := range w.drops {
		if n != 0 {
			w.counters.Drops[r].Add(n)
			w.drops[r] = 0
		}
	}
	return dropped
}

func (w *Worker) dropFrame(d port.Desc, r DropReason) {
	w.drops[r]++
	w.drop = append(w.drop, d)
}

func (w *Worker) enqueue(idx int, d port.Desc) {
	o := w.ports[idx]
	if o == nil {
		w.dropFrame(d, DropNoPort)
		return
	}
	w.touch(idx, o)
	o.q = append(o.q, d)
	o.qBytes += uint64(d.Len)
}

// fromTrunk: the tag's VID selects the pod; the tag goes, the MACs become
// pod's gateway → pod, and the frame leaves on the pod's port.
func (w *Worker) fromTrunk(tbl *vlan.Table, d port.Desc) {
	b := w.mem[d.Addr : d.Addr+uint64(d.Len)]
	p := &w.pkt
	p.Decode(b)
	switch {
	case p.Tags == 0:
		if w.services != nil && w.services.Load() != nil {
			w.natFromTrunk(d, b)
			return
		}
		w.dropFrame(d, DropUntagged)
		return
	case p.Tags > 1:
		w.dropFrame(d, DropQinQ)
		return
	case p.VID == 0:
		w.dropFrame(d, DropPriorityTagged)
		return
	}
	var a *vlan.Attachment
	if tbl != nil {
		a = tbl.Attachment(p.VID)
	}
	if a == nil {
		w.dropFrame(d, DropUnknownVID)
		return
	}
	if r, ok := w.checkL3(); !ok {
		w.dropFrame(d, r)
		return
	}
	if p.EtherType == packet.EtherTypeIPv4 && martian(p.Src) {
		w.dropFrame(d, DropMartianSource)
		return
	}
	b = vlan.Pop(b)
	d.Addr += vlan.TagLen
	d.Len -= vlan.TagLen
	if p.EtherType == packet.EtherTypeIPv4 && w.services != nil {
		// A reply from a backend elsewhere to a pod's Service flow.
		if svcs := w.services.Load(); svcs != nil && svcs.IsRemoteBackend(p.Src) {
			p.Decode(b)
			if w.isICMPError() && w.natICMPError(d, b) {
				return
			}
			if w.nat(d, b, a) {
				return
			}
		}
	}
	copy(b[0:6], a.MAC[:])
	copy(b[6:12], a.HostMAC[:])
	w.enqueue(PodIndex(a.ID), d)
}

// checkL3 accepts well-formed IPv4 and ARP; anything else is a drop reason.
func (w *Worker) checkL3() (DropReason, bool) {
	p := &w.pkt
	switch p.EtherType {
	case packet.EtherTypeIPv4, packet.EtherTypeARP:
		if p.Status != packet.StatusOK {
			return DropMalformed, false
		}
		return 0, true
	case packet.EtherTypeIPv6:
		return DropIPv6, false
	}
	if p.Status == packet.StatusTruncated {
		return DropMalformed, false
	}
	return DropUnsupported, false
}

// martian reports whether src is an address no host may send from:
// 0.0.0.0/8 (this network), 127.0.0.0/8 (loopback), 224.0.0.0/4
// (multicast), 240.0.0.0/4 (reserved) and 255.255.255.255 (broadcast).
func martian(src [4]byte) bool { return src[0] == 0 || src[0] == 127 || src[0] >= 224 }

// fromPod: the source must be the pod's own; a frame to another local pod
// goes straight across, anything else leaves on the trunk with the pod's tag.
func (w *Worker) fromPod(tbl *vlan.Table, a *vlan.Attachment, d port.Desc) {
	if a == nil {
		w.dropFrame(d, DropUnknownPod)
		return
	}
	b := w.mem[d.Addr : d.Addr+uint64(d.Len)]
	p := &w.pkt
	p.Decode(b)
	if p.Tags != 0 {
		w.dropFrame(d, DropTaggedFromPod)
		return
	}
	if len(b) < 12 || [6]byte(b[6:12]) != a.MAC {
		w.dropFrame(d, DropSpoofedSource)
		return
	}
	if r, ok := w.checkL3(); !ok {
		w.dropFrame(d, r)
		return
	}
	var dst [4]byte
	if p.EtherType == packet.EtherTypeIPv4 {
		if p.Src != a.IP {
			w.dropFrame(d, DropSpoofedSource)
			return
		}
		if w.ct != nil && w.isICMPError() && w.natICMPError(d, b) {
			return
		}
		if w.services != nil {
			if svcs := w.services.Load(); svcs != nil && w.wantsNAT(svcs) {
				if w.nat(d, b, a) {
					return
				}
				if p.Dst == w.nodeIP {
					w.dropFrame(d, DropNoService) // to an SNAT port, but no such flow
					return
				}
			}
		}
		dst = p.Dst
	} else { // ARP
		if p.ARPSenderIP != a.IP || p.ARPSenderMAC != a.MAC {
			w.dropFrame(d, DropSpoofedSource)
			return
		}
		dst = p.ARPTargetIP
	}
	if to := tbl.ByIP(dst); to != nil {
		copy(b[0:6], to.MAC[:])
		copy(b[6:12], to.HostMAC[:])
		w.enqueue(PodIndex(to.ID), d)
		return
	}
	w.toTrunkTagged(d, a.VID) // the source MAC is the pod's already
}
