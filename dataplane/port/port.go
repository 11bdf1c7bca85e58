// Package port is the contract between the dataplane's workers and the
// sockets that move frames: a worker reads and writes descriptors of frames
// that live in one shared frame memory, and never copies frame bytes between
// ports. Package xdp implements it over AF_XDP; Mem implements it in memory
// for tests.
package port

// Desc names one frame in a worker's frame memory: its bytes are
// mem[Addr : Addr+Len]. Its layout is the kernel's struct xdp_desc, so an
// AF_XDP ring can be copied into a []Desc as it is. Options is zero unless a
// port documents otherwise.
type Desc struct {
	Addr    uint64
	Len     uint32
	Options uint32
}

// Port is one interface a worker receives frames from and transmits frames
// to. All methods are called from the owning worker's goroutine only.
//
// Ownership: Receive hands the frames it returns to the caller; Transmit takes
// the frames it accepts (descs[:n]) and the caller keeps descs[n:]; a frame
// the caller neither transmits nor keeps goes back through Memory.Release.
type Port interface {
	// Receive stores up to len(descs) received frames in descs and returns
	// how many it stored. It never blocks.
	Receive(descs []Desc) int
	// Transmit queues descs for transmission and returns how many it took.
	// It never blocks; the frames leave on the next Flush at the latest.
	Transmit(descs []Desc) int
	// Flush asks the kernel to send what Transmit queued, takes back the
	// frames whose transmission completed and refills the port's receive
	// buffers. It never blocks.
	Flush()
}

// Memory is the frame memory shared by all ports of one worker.
type Memory interface {
	// Bytes is the whole area; a Desc's frame is Bytes()[d.Addr:d.Addr+d.Len].
	Bytes() []byte
	// FrameSize is the size of one frame slot, a power of two; a frame's
	// headroom is d.Addr & (FrameSize()-1) bytes before its data.
	FrameSize() uint64
	// Release takes back frames the caller drops.
	Release(descs []Desc)
}

// Poller blocks a worker until one of its ports has frames to receive.
type Poller interface {
	// Wait blocks until a port is readable, the poller is woken, or
	// timeoutMs passes (-1: no timeout). It stores the indices of readable
	// ports in ready and returns how many it stored.
	Wait(ready []int, timeoutMs int) (int, error)
	// Wake makes a blocked or the next Wait return early. Safe from any
	// goroutine.
	Wake()
}
