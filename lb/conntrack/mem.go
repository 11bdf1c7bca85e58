package conntrack

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The arrays of a large table (slots, index cells, free lists) hold no
// pointers and live outside the Go heap, in one anonymous mapping that
// Close unmaps. On the heap, a table of a million connections (~110 MB)
// would be most of the live heap, and the garbage collector lets the heap
// grow by as much again before it runs: the agent's RSS would climb by
// that much under a trickle of control-plane garbage. Off the heap the
// live heap is a few megabytes and the RSS is the table's pages plus that.
//
// Pages are faulted in as they are first written: slots in the order the
// free lists hand them out (lowest first, reused first), so RSS follows the
// number of connections; the index cells, written at random, are touched
// up front so that the RSS does not creep up with churn. Small tables stay
// on the heap (nothing to unmap).

// offHeapMin is the size from which a table's arrays are mapped.
const offHeapMin = 8 << 20

// arena carves pointer-free arrays out of one mapping; a nil arena makes
// them on the heap.
type arena struct {
	mem []byte
	off uintptr
}

func newArena(size uintptr) (*arena, error) {
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("conntrack: map %d bytes for the table: %w", size, err)
	}
	return &arena{mem: mem}, nil
}

// arenaSize is the room n elements of size and align take at any offset.
func arenaSize(n int, size, align uintptr) uintptr { return uintptr(n)*size + align }

// carve returns the next n elements of type T.
func carve[T any](a *arena, n int) []T {
	if a == nil {
		return make([]T, n)
	}
	var z T
	align := unsafe.Alignof(z)
	a.off = (a.off + align - 1) &^ (align - 1)
	size := uintptr(n) * unsafe.Sizeof(z)
	if a.off+size > uintptr(len(a.mem)) {
		panic("conntrack: arena too small") // a sizing bug, not input
	}
	s := unsafe.Slice((*T)(unsafe.Pointer(&a.mem[a.off])), n)
	a.off += size
	return s
}

// touch faults in every page of b's memory by writing it.
func touch[T any](s []T) {
	if len(s) == 0 {
		return
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), uintptr(len(s))*unsafe.Sizeof(s[0]))
	page := unix.Getpagesize()
	for i := 0; i < len(b); i += page {
		b[i] = 0
	}
}

// Close releases the memory of a large table (a small one is left to the
// garbage collector). No one may use the table after, or during, Close.
func (t *Table) Close() error {
	if t.arena == nil {
		return nil
	}
	mem := t.arena.mem
	t.arena, t.slots = nil, nil
	for i := range t.shards {
		t.shards[i].idx, t.shards[i].free = nil, nil
	}
	return unix.Munmap(mem)
}
