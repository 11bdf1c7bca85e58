package xdp

import (
	"errors"
	"fmt"

	"github.com/trunkline/trunkline/dataplane/port"
	"golang.org/x/sys/unix"
)

// UmemOptions sizes a UMEM.
type UmemOptions struct {
	// Frames is the number of frame slots; default 8192.
	Frames int
	// FrameSize is the size of one slot, 2048 or 4096 (the default). A
	// frame's data starts after the kernel's XDP headroom (256 bytes), so
	// the largest frame is FrameSize-256 bytes.
	FrameSize int
}

func (o *UmemOptions) setDefaults() {
	if o.Frames == 0 {
		o.Frames = 8192
	}
	if o.FrameSize == 0 {
		o.FrameSize = 4096
	}
}

func (o UmemOptions) validate() error {
	var errs []error
	if o.Frames < 64 || o.Frames > 1<<20 {
		errs = append(errs, fmt.Errorf("umem frames %d: want 64..1048576", o.Frames))
	}
	if o.FrameSize != 2048 && o.FrameSize != 4096 {
		errs = append(errs, fmt.Errorf("umem frame size %d: want 2048 or 4096", o.FrameSize))
	}
	return errors.Join(errs...)
}

// Umem is the frame memory that one worker's sockets share: the trunk socket
// registers it, every pod socket binds to it with XDP_SHARED_UMEM, so a frame
// received on one socket is transmitted on another by moving its descriptor.
//
// Frame ownership. Every frame slot is, at any time, in exactly one of:
//   - the free stack (owned by the Umem);
//   - a socket's fill ring, or inside the kernel on its way to that socket's
//     RX ring (counted in Socket.fillPending);
//   - the worker, between Receive and Transmit or Release (held);
//   - a socket's TX ring, or inside the kernel until it appears on that
//     socket's completion ring (counted in Socket.txPending).
//
// Completion returns the frame to the free stack; Release returns dropped
// frames. Accounting() checks that the four add up to Frames.
//
// A Umem and its sockets are used by one goroutine at a time (the worker's).
type Umem struct {
	area      []byte
	frameSize uint64
	frames    int
	free      []uint64 // frame start addresses, a stack

	owner   *Socket // the socket that registered the area; nil until then
	sockets []*Socket
	closed  bool
}

// NewUmem maps the frame area. The area is registered with the kernel by the
// first socket created on it.
func NewUmem(o UmemOptions) (*Umem, error) {
	o.setDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	size := o.Frames * o.FrameSize
	area, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap umem of %d bytes: %w", size, err)
	}
	u := &Umem{area: area, frameSize: uint64(o.FrameSize), frames: o.Frames, free: make([]uint64, 0, o.Frames)}
	for i := o.Frames - 1; i >= 0; i-- {
		u.free = append(u.free, uint64(i)*u.frameSize)
	}
	return u, nil
}

// Bytes is the whole frame area (port.Memory).
func (u *Umem) Bytes() []byte { return u.area }

// FrameSize is the size of one frame slot (port.Memory).
func (u *Umem) FrameSize() uint64 { return u.frameSize }

// Frames is the number of frame slots.
func (u *Umem) Frames() int { return u.frames }

// Release returns frames the worker dropped to the free stack (port.Memory).
func (u *Umem) Release(descs []port.Desc) {
	for i := range descs {
		u.free = append(u.free, descs[i].Addr&^(u.frameSize-1))
	}
}

func (u *Umem) releaseAddr(addr uint64) {
	u.free = append(u.free, addr&^(u.frameSize-1))
}

// Accounting tells where every frame is. Held is what the worker holds:
// frames it received and has neither transmitted nor released. After the
// worker has finished a batch, Held is zero; anything else is a leak.
type Accounting struct {
	Total, Free, Fill, TX, Held int
}

// Accounting counts the frames by owner. Call it from the owning goroutine.
func (u *Umem) Accounting() Accounting {
	a := Accounting{Total: u.frames, Free: len(u.free)}
	for _, s := range u.sockets {
		a.Fill += s.fillPending
		a.TX += s.txPending
	}
	a.Held = a.Total - a.Free - a.Fill - a.TX
	return a
}

// Close unmaps the area. Every socket on it must be closed first.
func (u *Umem) Close() error {
	if u.closed {
		return nil
	}
	if len(u.sockets) > 0 {
		return fmt.Errorf("close umem: %d sockets still open", len(u.sockets))
	}
	u.closed = true
	return unix.Munmap(u.area)
}
