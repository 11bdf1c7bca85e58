package xdp

import (
	"sync/atomic"
	"unsafe"

	"github.com/trunkline/trunkline/dataplane/port"
	"golang.org/x/sys/unix"
)

// ring is the part every AF_XDP ring shares: the kernel-shared producer,
// consumer and flags words, and this side's cached copies of them so that a
// batch costs one atomic load and one atomic store.
type ring struct {
	producer *uint32
	consumer *uint32
	flags    *uint32
	mask     uint32
	size     uint32
	mem      []byte // the mmapped region, for munmap

	cachedProd uint32
	cachedCons uint32
}

func (r *ring) init(mem []byte, off unix.XDPRingOffset, size uint32) {
	base := unsafe.Pointer(unsafe.SliceData(mem))
	r.mem = mem
	r.producer = (*uint32)(unsafe.Add(base, off.Producer))
	r.consumer = (*uint32)(unsafe.Add(base, off.Consumer))
	r.flags = (*uint32)(unsafe.Add(base, off.Flags))
	r.size = size
	r.mask = size - 1
	r.cachedProd = atomic.LoadUint32(r.producer)
	r.cachedCons = atomic.LoadUint32(r.consumer)
}

func (r *ring) needWakeup() bool { return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0 }

// Consumer side (RX, completion): the kernel produces.

// available returns how many entries the kernel has produced that this side
// has not consumed, reading the producer only when the cache shows none.
func (r *ring) available(want uint32) uint32 {
	n := r.cachedProd - r.cachedCons
	if n < want {
		r.cachedProd = atomic.LoadUint32(r.producer)
		n = r.cachedProd - r.cachedCons
	}
	return min(n, want)
}

// release hands n consumed entries back to the kernel.
func (r *ring) release(n uint32) {
	r.cachedCons += n
	atomic.StoreUint32(r.consumer, r.cachedCons)
}

// Producer side (TX, fill): this side produces.

// space returns how many entries this side may produce now, up to want.
func (r *ring) space(want uint32) uint32 {
	n := r.size - (r.cachedProd - r.cachedCons)
	if n < want {
		r.cachedCons = atomic.LoadUint32(r.consumer)
		n = r.size - (r.cachedProd - r.cachedCons)
	}
	return min(n, want)
}

// submit publishes n produced entries to the kernel.
func (r *ring) submit(n uint32) {
	r.cachedProd += n
	atomic.StoreUint32(r.producer, r.cachedProd)
}

// pendingForKernel is how many produced entries the kernel has not consumed.
func (r *ring) pendingForKernel() uint32 {
	r.cachedCons = atomic.LoadUint32(r.consumer)
	return r.cachedProd - r.cachedCons
}

// descRing is an RX or TX ring of frame descriptors.
type descRing struct {
	ring
	descs []port.Desc
}

// addrRing is a fill or completion ring of frame addresses.
type addrRing struct {
	ring
	addrs []uint64
}

func (r *descRing) init(mem []byte, off unix.XDPRingOffset, size uint32) {
	r.ring.init(mem, off, size)
	r.descs = unsafe.Slice((*port.Desc)(unsafe.Pointer(unsafe.SliceData(mem[off.Desc:]))), size)
}

func (r *addrRing) init(mem []byte, off unix.XDPRingOffset, size uint32) {
	r.ring.init(mem, off, size)
	r.addrs = unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(mem[off.Desc:]))), size)
}
