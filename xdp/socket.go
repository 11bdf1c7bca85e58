package xdp

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/trunkline/trunkline/dataplane/port"
	"golang.org/x/sys/unix"
)

// BindMode chooses between the kernel's copy and zero-copy AF_XDP modes.
type BindMode int

const (
	// BindAuto lets the kernel use zero-copy where the driver has it and
	// copy mode otherwise (veth has only copy mode).
	BindAuto BindMode = iota
	// BindCopy forces copy mode.
	BindCopy
	// BindZeroCopy requires zero-copy; bind fails where the driver lacks it.
	BindZeroCopy
)

// SocketOptions configures one AF_XDP socket.
type SocketOptions struct {
	Ifindex int
	Queue   int
	// Ring sizes, powers of two. Defaults: RX and TX 2048, fill and
	// completion 2048.
	RxSize, TxSize, FillSize, CompSize int
	// FillTarget is the most free frames the socket keeps posted in its
	// fill ring; default FillSize.
	FillTarget int
	// FillMin is how many it keeps posted while idle; when a receive
	// finds every posted frame used, or a whole batch, the socket doubles
	// what it posts, up to FillTarget, and halves it again when idle. Default FillTarget. Pod
	// sockets start small, so an idle pod costs rings, not frames.
	FillMin int
	// Reserve is how many free frames refilling this socket leaves for the
	// others (the trunk's fill ring must not starve because pods are busy).
	Reserve int
	// Mode applies to the socket that registers the UMEM; sockets sharing
	// it inherit its mode.
	Mode BindMode
	// SendBuffer is forced with SO_SNDBUFFORCE: copy-mode TX skbs count
	// against it. Default 4 MiB.
	SendBuffer int
	// TxBudget raises how many descriptors one sendto() kick may send
	// (XDP_MAX_TX_SKB_BUDGET, Linux 6.17+); default the TX ring size.
	// Ignored where the kernel lacks the option.
	TxBudget int
	// BusyPoll, in microseconds, turns on preferred busy polling
	// (SO_BUSY_POLL, SO_PREFER_BUSY_POLL): a poll(2) on the socket runs the
	// queue's NAPI in the caller's thread, BusyPollBudget frames at a time
	// (SO_BUSY_POLL_BUDGET, default 64), so the worker drives the receive
	// itself instead of waking the NAPI thread and waiting for it. 0: off.
	BusyPoll, BusyPollBudget int
}

func (o *SocketOptions) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.RxSize, 2048)
	def(&o.TxSize, 2048)
	def(&o.FillSize, 2048)
	def(&o.CompSize, 2048)
	def(&o.FillTarget, o.FillSize)
	def(&o.FillMin, o.FillTarget)
	def(&o.SendBuffer, 4<<20)
	def(&o.TxBudget, o.TxSize)
	if o.BusyPoll > 0 {
		def(&o.BusyPollBudget, 64)
	}
}

func (o SocketOptions) validate() error {
	var errs []error
	for _, r := range []struct {
		name string
		v    int
	}{{"rx", o.RxSize}, {"tx", o.TxSize}, {"fill", o.FillSize}, {"completion", o.CompSize}} {
		if r.v < 8 || r.v > 1<<16 || r.v&(r.v-1) != 0 {
			errs = append(errs, fmt.Errorf("%s ring size %d: want a power of two in 8..65536", r.name, r.v))
		}
	}
	if o.FillTarget < 0 || o.FillTarget > o.FillSize {
		errs = append(errs, fmt.Errorf("fill target %d: want 0..fill ring size %d", o.FillTarget, o.FillSize))
	}
	if o.FillMin < 0 || o.FillMin > o.FillTarget {
		errs = append(errs, fmt.Errorf("fill min %d: want 0..fill target %d", o.FillMin, o.FillTarget))
	}
	if o.Reserve < 0 {
		errs = append(errs, fmt.Errorf("reserve %d: want >= 0", o.Reserve))
	}
	if o.Ifindex <= 0 {
		errs = append(errs, fmt.Errorf("ifindex %d: want a positive interface index", o.Ifindex))
	}
	if o.Queue < 0 {
		errs = append(errs, fmt.Errorf("queue %d: want >= 0", o.Queue))
	}
	if o.BusyPoll < 0 || o.BusyPoll > 10000 || o.BusyPollBudget < 0 || o.BusyPollBudget > 1024 {
		errs = append(errs, fmt.Errorf("busy poll %d µs, budget %d: want 0..10000 µs and 0..1024 frames", o.BusyPoll, o.BusyPollBudget))
	}
	return errors.Join(errs...)
}

// Socket is one AF_XDP socket bound to an interface queue, on a shared
// Umem. It implements port.Port. Like its Umem it is used by one goroutine
// at a time.
type Socket struct {
	fd   int
	umem *Umem
	opts SocketOptions

	rx, tx     descRing
	fill, comp addrRing

	fillPending int // frames posted to fill, not yet seen on RX
	txPending   int // frames put on TX, not yet seen on completion
	fillWant    int // frames to keep posted now, FillMin..FillTarget
	rxSince     int // frames received since the last Flush
	idleFlushes int // Flushes in a row with nothing received

	// Kick statistics, read by the owner.
	Kicks, KickErrors uint64
}

// ErrNoFrames is returned when a socket cannot be given any frames.
var ErrNoFrames = errors.New("xdp: umem has no free frames")

// NewSocket opens an AF_XDP socket on u and binds it to o.Ifindex/o.Queue.
// The first socket of a Umem registers the area; later ones share it.
func NewSocket(u *Umem, o SocketOptions) (s *Socket, err error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	if u.closed {
		return nil, errors.New("xdp: umem is closed")
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open AF_XDP socket: %w", err)
	}
	s = &Socket{fd: fd, umem: u, opts: o, fillWant: o.FillMin}
	made := s // s is nil when an error is returned
	defer func() {
		if err != nil {
			made.unmapRings()
			unix.Close(fd)
		}
	}()
	owner := u.owner == nil
	if owner {
		reg := unix.XDPUmemReg{
			Addr: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(u.area)))),
			Len:  uint64(len(u.area)),
			Size: uint32(u.frameSize),
		}
		if err := setsockopt(fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
			return nil, fmt.Errorf("register umem: %w", err)
		}
	}
	for _, r := range []struct {
		opt  int
		size int
	}{{unix.XDP_UMEM_FILL_RING, o.FillSize}, {unix.XDP_UMEM_COMPLETION_RING, o.CompSize},
		{unix.XDP_RX_RING, o.RxSize}, {unix.XDP_TX_RING, o.TxSize}} {
		v := int32(r.size)
		if err := setsockopt(fd, r.opt, unsafe.Pointer(&v), 4); err != nil {
			return nil, fmt.Errorf("size ring (option %d) to %d: %w", r.opt, r.size, err)
		}
	}
	var off unix.XDPMmapOffsets
	offLen := uint32(unsafe.Sizeof(off))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&offLen)), 0); e != 0 {
		return nil, fmt.Errorf("read ring offsets: %w", e)
	}
	descSize := uint64(unsafe.Sizeof(port.Desc{}))
	mapRing := func(pgoff int64, o unix.XDPRingOffset, n int, entry uint64) ([]byte, error) {
		return unix.Mmap(fd, pgoff, int(o.Desc+uint64(n)*entry), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_SHARED|unix.MAP_POPULATE)
	}
	m, err := mapRing(unix.XDP_PGOFF_RX_RING, off.Rx, o.RxSize, descSize)
	if err != nil {
		return nil, fmt.Errorf("map rx ring: %w", err)
	}
	s.rx.init(m, off.Rx, uint32(o.RxSize))
	if m, err = mapRing(unix.XDP_PGOFF_TX_RING, off.Tx, o.TxSize, descSize); err != nil {
		return nil, fmt.Errorf("map tx ring: %w", err)
	}
	s.tx.init(m, off.Tx, uint32(o.TxSize))
	if m, err = mapRing(unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, o.FillSize, 8); err != nil {
		return nil, fmt.Errorf("map fill ring: %w", err)
	}
	s.fill.init(m, off.Fr, uint32(o.FillSize))
	if m, err = mapRing(unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, o.CompSize, 8); err != nil {
		return nil, fmt.Errorf("map completion ring: %w", err)
	}
	s.comp.init(m, off.Cr, uint32(o.CompSize))

	sndbuf := int32(o.SendBuffer)
	if err := setsockoptLevel(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, unsafe.Pointer(&sndbuf), 4); err != nil {
		return nil, fmt.Errorf("force send buffer to %d: %w", o.SendBuffer, err)
	}
	budget := int32(o.TxBudget)
	_ = setsockopt(fd, unix.XDP_MAX_TX_SKB_BUDGET, unsafe.Pointer(&budget), 4) // Linux 6.17+; older kernels keep 32
	if o.BusyPoll > 0 {
		for _, so := range []struct {
			name string
			opt  int
			v    int32
		}{{"SO_PREFER_BUSY_POLL", unix.SO_PREFER_BUSY_POLL, 1}, {"SO_BUSY_POLL", unix.SO_BUSY_POLL, int32(o.BusyPoll)},
			{"SO_BUSY_POLL_BUDGET", unix.SO_BUSY_POLL_BUDGET, int32(o.BusyPollBudget)}} {
			v := so.v
			if err := setsockoptLevel(fd, unix.SOL_SOCKET, so.opt, unsafe.Pointer(&v), 4); err != nil {
				return nil, fmt.Errorf("busy polling: %s: %w (needs CAP_NET_ADMIN and a kernel with CONFIG_NET_RX_BUSY_POLL)", so.name, err)
			}
		}
	}

	sa := &unix.SockaddrXDP{Ifindex: uint32(o.Ifindex), QueueID: uint32(o.Queue)}
	if owner {
		sa.Flags = unix.XDP_USE_NEED_WAKEUP
		switch o.Mode {
		case BindCopy:
			sa.Flags |= unix.XDP_COPY
		case BindZeroCopy:
			sa.Flags |= unix.XDP_ZEROCOPY
		}
	} else {
		sa.Flags = unix.XDP_SHARED_UMEM
		sa.SharedUmemFD = uint32(u.owner.fd)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("bind AF_XDP socket to ifindex %d queue %d: %w", o.Ifindex, o.Queue, err)
	}
	if owner {
		u.owner = s
	}
	u.sockets = append(u.sockets, s)
	s.refill()
	return s, nil
}

// FD is the socket's file descriptor, for XSKMAP entries and poll.
func (s *Socket) FD() int { return s.fd }

// Receive moves up to len(descs) received descriptors into descs (port.Port).
func (s *Socket) Receive(descs []port.Desc) int {
	n := s.rx.available(uint32(len(descs)))
	if n == 0 {
		return 0
	}
	idx := s.rx.cachedCons
	for i := uint32(0); i < n; i++ {
		descs[i] = s.rx.descs[(idx+i)&s.rx.mask]
	}
	s.rx.release(n)
	s.fillPending -= int(n)
	s.rxSince += int(n)
	// The kernel used every frame we posted (or a whole batch came in): a
	// burst, and the next frames may find the fill ring empty. Post more.
	if (s.fillPending == 0 || int(n) == len(descs)) && s.fillWant < s.opts.FillTarget {
		s.fillWant = min(2*s.fillWant, s.opts.FillTarget)
	}
	return int(n)
}

// Transmit puts descs on the TX ring (port.Port); the kick is in Flush.
func (s *Socket) Transmit(descs []port.Desc) int {
	n := s.tx.space(uint32(len(descs)))
	idx := s.tx.cachedProd
	for i := uint32(0); i < n; i++ {
		s.tx.descs[(idx+i)&s.tx.mask] = descs[i]
	}
	if n > 0 {
		s.tx.submit(n)
		s.txPending += int(n)
	}
	return int(n)
}

// idleFlushes is how many flushes in a row without receiving halve what a
// socket keeps posted (a worker flushes idle ports about every 1–1000 ms).
const idleFlushes = 64

// maxKicks bounds the sendto() calls one Flush makes when the kernel keeps
// descriptors queued (EBUSY: the device dropped one; the rest stay).
const maxKicks = 8

// Flush kicks the kernel to send what Transmit queued, returns completed
// frames to the free stack and tops the fill ring up (port.Port).
func (s *Socket) Flush() {
	for i := 0; i < maxKicks && s.txPending > 0 && s.tx.pendingForKernel() > 0 && s.tx.needWakeup(); i++ {
		if !s.kick() {
			break
		}
	}
	s.complete()
	if s.rxSince == 0 {
		// Idle since the last flush: after idleFlushes in a row, post
		// half as much (until FillMin).
		if s.idleFlushes++; s.idleFlushes >= idleFlushes && s.fillWant > s.opts.FillMin {
			s.fillWant = max(s.fillWant/2, s.opts.FillMin)
			s.idleFlushes = 0
		}
	} else {
		s.idleFlushes = 0
	}
	s.rxSince = 0
	s.refill()
}

// kick asks the kernel to send the TX ring (copy mode sends up to its TX
// budget per call). It reports whether kicking again may help: EAGAIN and
// EBUSY (the device dropped a frame; the rest stay queued) may; a down
// link does not until the next Flush.
func (s *Socket) kick() bool {
	s.Kicks++
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0, unix.EAGAIN:
		return true
	case unix.EBUSY, unix.ENOBUFS:
		s.KickErrors++
		return true
	}
	s.KickErrors++
	return false
}

// complete moves completed TX frames to the free stack.
func (s *Socket) complete() {
	n := s.comp.available(s.comp.size)
	if n == 0 {
		return
	}
	idx := s.comp.cachedCons
	for i := uint32(0); i < n; i++ {
		s.umem.releaseAddr(s.comp.addrs[(idx+i)&s.comp.mask])
	}
	s.comp.release(n)
	s.txPending -= int(n)
}

// refill posts free frames to the fill ring up to the fill target.
func (s *Socket) refill() {
	want := s.fillWant - s.fillPending
	if want <= 0 {
		return
	}
	want = min(want, len(s.umem.free)-s.opts.Reserve)
	if want <= 0 {
		return
	}
	n := s.fill.space(uint32(want))
	if n == 0 {
		return
	}
	idx := s.fill.cachedProd
	free := s.umem.free
	for i := uint32(0); i < n; i++ {
		s.fill.addrs[(idx+i)&s.fill.mask] = free[len(free)-1-int(i)]
	}
	s.umem.free = free[:len(free)-int(n)]
	s.fill.submit(n)
	s.fillPending += int(n)
	if s.fill.needWakeup() {
		unix.Syscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	}
}

// Stats are the kernel's counters for the socket.
type Stats = unix.XDPStatistics

// Stats reads the kernel's counters (XDP_STATISTICS).
func (s *Socket) Stats() (Stats, error) {
	var st Stats
	l := uint32(unsafe.Sizeof(st))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return st, fmt.Errorf("read xdp statistics: %w", e)
	}
	return st, nil
}

// Close waits (up to 100 ms) for queued transmissions to complete, closes
// the socket and returns every frame it still had — in its RX, TX, fill and
// completion rings — to the free stack. Remove the socket from any XSKMAP
// first. The socket that registered the Umem must be closed last.
func (s *Socket) Close() error {
	if s.fd < 0 {
		return nil
	}
	if s.umem.owner == s && len(s.umem.sockets) > 1 {
		return fmt.Errorf("close xdp socket: %d sockets still share its umem", len(s.umem.sockets)-1)
	}
	for deadline := time.Now().Add(100 * time.Millisecond); s.txPending > 0 && time.Now().Before(deadline); {
		s.Flush()
		if s.txPending > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	err := unix.Close(s.fd)
	s.fd = -1
	// The kernel no longer touches the rings: take back what is left.
	for n := s.rx.available(s.rx.size); n > 0; n = s.rx.available(s.rx.size) {
		for i := uint32(0); i < n; i++ {
			s.umem.releaseAddr(s.rx.descs[(s.rx.cachedCons+i)&s.rx.mask].Addr)
		}
		s.rx.release(n)
		s.fillPending -= int(n)
	}
	s.complete()
	for c := s.fill.pendingForKernel(); c > 0; c-- {
		s.umem.releaseAddr(s.fill.addrs[(s.fill.cachedProd-c)&s.fill.mask])
		s.fillPending--
	}
	for c := s.tx.pendingForKernel(); c > 0; c-- {
		s.umem.releaseAddr(s.tx.descs[(s.tx.cachedProd-c)&s.tx.mask].Addr)
		s.txPending--
	}
	s.unmapRings()
	for i, o := range s.umem.sockets {
		if o == s {
			s.umem.sockets = append(s.umem.sockets[:i], s.umem.sockets[i+1:]...)
			break
		}
	}
	if s.umem.owner == s {
		s.umem.owner = nil
	}
	if s.fillPending != 0 || s.txPending != 0 {
		return errors.Join(err, fmt.Errorf("close xdp socket: %d fill and %d tx frames unaccounted", s.fillPending, s.txPending))
	}
	return err
}

func (s *Socket) unmapRings() {
	for _, m := range [][]byte{s.rx.mem, s.tx.mem, s.fill.mem, s.comp.mem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	s.rx.mem, s.tx.mem, s.fill.mem, s.comp.mem = nil, nil, nil, nil
}

func setsockopt(fd, opt int, p unsafe.Pointer, l uintptr) error {
	return setsockoptLevel(fd, unix.SOL_XDP, opt, p, l)
}

func setsockoptLevel(fd, level, opt int, p unsafe.Pointer, l uintptr) error {
	if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), l, 0); e != 0 {
		return e
	}
	return nil
}
