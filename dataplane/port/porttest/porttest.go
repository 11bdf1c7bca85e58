// Package porttest provides in-memory ports for testing the dataplane
// without sockets: a Memory with the same frame-slot rules as a UMEM, Ports
// that tests inject frames into and read transmitted frames from, and a
// Poller over them.
package porttest

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/trunkline/trunkline/dataplane/port"
)

// Headroom is where injected frames start in their slot, as in AF_XDP copy
// mode.
const Headroom = 256

// Memory is an in-memory frame area with a free list. Safe for concurrent
// use (tests inject from their own goroutine).
type Memory struct {
	mu        sync.Mutex
	area      []byte
	frameSize uint64
	free      []uint64
	frames    int
}

// NewMemory makes a memory of frames slots of frameSize bytes.
func NewMemory(frames int, frameSize uint64) *Memory {
	m := &Memory{area: make([]byte, uint64(frames)*frameSize), frameSize: frameSize, frames: frames}
	for i := frames - 1; i >= 0; i-- {
		m.free = append(m.free, uint64(i)*frameSize)
	}
	return m
}

// Bytes implements port.Memory.
func (m *Memory) Bytes() []byte { return m.area }

// FrameSize implements port.Memory.
func (m *Memory) FrameSize() uint64 { return m.frameSize }

// Release implements port.Memory.
func (m *Memory) Release(descs []port.Desc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, d := range descs {
		m.free = append(m.free, d.Addr&^(m.frameSize-1))
	}
}

// Free is the number of free slots.
func (m *Memory) Free() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.free)
}

// Frames is the number of slots.
func (m *Memory) Frames() int { return m.frames }

func (m *Memory) alloc() (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.free) == 0 {
		return 0, false
	}
	a := m.free[len(m.free)-1]
	m.free = m.free[:len(m.free)-1]
	return a, true
}

// Port is an in-memory port: Inject queues frames for Receive; Transmit
// keeps what it takes until the next Flush "sends" it to Sent.
type Port struct {
	mem *Memory
	// TxRoom bounds how many frames one Transmit takes (the TX ring's free
	// room); 0 means no bound.
	TxRoom int
	// TxRing bounds how many frames Transmit holds until the next Flush
	// sends them, as a TX ring of that size would; 0 means no bound.
	TxRing int

	mu      sync.Mutex
	rx      []port.Desc
	txq     []port.Desc
	sent    [][]byte
	flushes int
}

// NewPort makes a port on mem.
func NewPort(mem *Memory) *Port { return &Port{mem: mem} }

// Inject copies frame into a free slot at Headroom and queues it for Receive.
func (p *Port) Inject(frame []byte) error {
	if len(frame)+Headroom > int(p.mem.frameSize) {
		return fmt.Errorf("porttest: frame of %d bytes does not fit a %d-byte slot", len(frame), p.mem.frameSize)
	}
	a, ok := p.mem.alloc()
	if !ok {
		return fmt.Errorf("porttest: no free frames")
	}
	a += Headroom
	copy(p.mem.area[a:], frame)
	p.mu.Lock()
	p.rx = append(p.rx, port.Desc{Addr: a, Len: uint32(len(frame))})
	p.mu.Unlock()
	return nil
}

// Pending is how many injected frames wait for Receive.
func (p *Port) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.rx)
}

// Receive implements port.Port.
func (p *Port) Receive(descs []port.Desc) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := copy(descs, p.rx)
	p.rx = p.rx[:copy(p.rx, p.rx[n:])]
	return n
}

// Transmit implements port.Port.
func (p *Port) Transmit(descs []port.Desc) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(descs)
	if p.TxRoom > 0 {
		n = min(n, p.TxRoom)
	}
	if p.TxRing > 0 {
		n = max(0, min(n, p.TxRing-len(p.txq)))
	}
	p.txq = append(p.txq, descs[:n]...)
	return n
}

// Flush implements port.Port: queued frames are copied out to Sent and
// their slots freed, as a completion would.
func (p *Port) Flush() {
	p.mu.Lock()
	q := p.txq
	p.txq = nil
	for _, d := range q {
		p.sent = append(p.sent, append([]byte(nil), p.mem.area[d.Addr:d.Addr+uint64(d.Len)]...))
	}
	p.flushes++
	p.mu.Unlock()
	p.mem.Release(q)
}

// Sent returns and forgets the frames transmitted so far.
func (p *Port) Sent() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.sent
	p.sent = nil
	return s
}

// Poller reports ports with injected frames, in ascending index order (as
// a poll(2) set lists its sockets in a fixed order). Index i is the port
// given to Set(i, ...).
type Poller struct {
	mu    sync.Mutex
	ports map[int]*Port
	order []int // the keys of ports, ascending
	wake  chan struct{}
}

// NewPoller makes an empty poller.
func NewPoller() *Poller { return &Poller{ports: map[int]*Port{}, wake: make(chan struct{}, 1)} }

// Set makes the poller watch p as index idx; nil stops watching idx.
func (pl *Poller) Set(idx int, p *Port) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if p == nil {
		delete(pl.ports, idx)
	} else {
		pl.ports[idx] = p
	}
	pl.order = pl.order[:0]
	for i := range pl.ports {
		pl.order = append(pl.order, i)
	}
	slices.Sort(pl.order)
}

// Wait implements port.Poller. It polls every millisecond, since injected
// frames do not wake it; a test that injects can call Wake.
func (pl *Poller) Wait(ready []int, timeoutMs int) (int, error) {
	n := pl.scan(ready)
	if n > 0 || timeoutMs == 0 {
		return n, nil
	}
	select {
	case <-pl.wake:
	case <-timeAfter(timeoutMs):
	}
	return pl.scan(ready), nil
}

func (pl *Poller) scan(ready []int) int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	n := 0
	for _, idx := range pl.order {
		if p := pl.ports[idx]; p.Pending() > 0 && n < len(ready) {
			ready[n] = idx
			n++
		}
	}
	return n
}

// Wake implements port.Poller.
func (pl *Poller) Wake() {
	select {
	case pl.wake <- struct{}{}:
	default:
	}
}

// timeAfter caps a poll wait at 5 ms so injected frames are noticed soon.
func timeAfter(ms int) <-chan time.Time {
	d := time.Duration(ms) * time.Millisecond
	if ms < 0 || d > 5*time.Millisecond {
		d = 5 * time.Millisecond
	}
	return time.After(d)
}
