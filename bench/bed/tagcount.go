package bed

import (
	"fmt"
	"net"

	"github.com/cilium/ebpf/link"
)

// Kinds of frames a tagCounter tells apart (bpf/trunk_count.c).
const (
	frameARP = iota
	frameIPv4
	frameOther
	frameQinQ
	frameKinds
)

// untagged is the VID slot of frames without a tag.
const untagged = 4096

// tagCounter is a native XDP program on one interface that counts arriving
// frames by the 802.1Q tag in their bytes — what an AF_XDP socket would be
// handed — and passes them on. The bed's tests use it; it must not run while
// the agent owns the interface. It is attached through a BPF link, so it goes
// away with its process.
type tagCounter struct {
	objs trunkCountObjects
	link link.Link
}

// tagCounts is a snapshot: frames by VID (untagged = 4096) and kind.
type tagCounts map[uint16][frameKinds]uint64

// attachTagCounter attaches the counter to ifname in netns (native mode).
func attachTagCounter(netns, ifname string) (*tagCounter, error) {
	c := &tagCounter{}
	if err := loadTrunkCountObjects(&c.objs, nil); err != nil {
		return nil, fmt.Errorf("load tag counter: %w", err)
	}
	// The ifindex is resolved in the namespace of the thread that attaches.
	err := InNetns(netns, func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c.link, err = link.AttachXDP(link.XDPOptions{Program: c.objs.CountTags, Interface: ifc.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		c.objs.Close()
		return nil, fmt.Errorf("attach tag counter to %s/%s: %w", netns, ifname, err)
	}
	return c, nil
}

// counts reads the counters.
func (c *tagCounter) counts() (tagCounts, error) {
	out := tagCounts{}
	var (
		key uint32
		val uint64
	)
	it := c.objs.FramesByVid.Iterate()
	for it.Next(&key, &val) {
		if val == 0 {
			continue
		}
		vid, kind := uint16(key/frameKinds), key%frameKinds
		a := out[vid]
		a[kind] = val
		out[vid] = a
	}
	return out, it.Err()
}

// Close detaches the program and frees it.
func (c *tagCounter) Close() error {
	err := c.link.Close()
	if cerr := c.objs.Close(); err == nil {
		err = cerr
	}
	return err
}
