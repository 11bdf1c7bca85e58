// Package vlan knows the 802.1Q tags on the trunk: which pod attachment a VID
// belongs to, and how to pop a tag off a frame or push one on.
package vlan

import (
	"errors"
	"fmt"
	"net/netip"
)

// TagLen is the length of an 802.1Q tag (TPID + TCI).
const TagLen = 4

// Valid VIDs: 0 is priority-tagged (untagged by 802.1Q), 4095 is reserved.
const (
	MinVID = 1
	MaxVID = 4094
)

// MaxAttachments bounds attachment IDs; IDs index per-worker port tables.
const MaxAttachments = 4096

// Attachment is one pod's branch interface on the trunk: frames tagged VID
// on the trunk are the pod's, and the pod's frames leave tagged VID.
type Attachment struct {
	// ID is the attachment's slot, stable while it exists, < MaxAttachments.
	ID  uint16
	VID uint16
	IP  [4]byte
	MAC [6]byte
	// HostMAC is the MAC of the pod's host veth: the pod's gateway, and the
	// source of every frame the dataplane hands to the pod.
	HostMAC [6]byte
	// Name is for people (the pod, or the container ID); never used per packet.
	Name string
}

// Table maps VIDs, pod IPs and IDs to attachments. It is immutable once
// built: the control plane builds a new one and publishes it with an atomic
// pointer swap, so workers read it without locks.
type Table struct {
	byVID [MaxVID + 1]uint16 // ID+1; 0 = none
	byIP  map[[4]byte]uint16 // ID+1
	byID  []Attachment       // index ID; VID 0 = unused
	n     int
}

// ErrConflict is wrapped by NewTable's errors about duplicate keys.
var ErrConflict = errors.New("vlan: conflicting attachments")

// NewTable builds a table, reporting every invalid or conflicting
// attachment together.
func NewTable(atts []Attachment) (*Table, error) {
	t := &Table{byIP: make(map[[4]byte]uint16, len(atts))}
	var errs []error
	maxID := -1
	for _, a := range atts {
		maxID = max(maxID, int(a.ID))
	}
	if maxID >= MaxAttachments {
		return nil, fmt.Errorf("vlan: attachment ID %d: want < %d", maxID, MaxAttachments)
	}
	t.byID = make([]Attachment, maxID+1)
	for _, a := range atts {
		ip := netip.AddrFrom4(a.IP)
		switch {
		case a.VID < MinVID || a.VID > MaxVID:
			errs = append(errs, fmt.Errorf("attachment %q: VID %d: want %d..%d", a.Name, a.VID, MinVID, MaxVID))
			continue
		case t.byVID[a.VID] != 0:
			errs = append(errs, fmt.Errorf("%w: %q and %q both use VID %d", ErrConflict, t.byID[t.byVID[a.VID]-1].Name, a.Name, a.VID))
			continue
		case t.byIP[a.IP] != 0:
			errs = append(errs, fmt.Errorf("%w: %q and %q both use IP %s", ErrConflict, t.byID[t.byIP[a.IP]-1].Name, a.Name, ip))
			continue
		case t.byID[a.ID].VID != 0:
			errs = append(errs, fmt.Errorf("%w: %q and %q both use ID %d", ErrConflict, t.byID[a.ID].Name, a.Name, a.ID))
			continue
		case a.MAC[0]&1 != 0 || a.MAC == [6]byte{}:
			errs = append(errs, fmt.Errorf("attachment %q: MAC %x is not a unicast address", a.Name, a.MAC))
			continue
		}
		t.byID[a.ID] = a
		t.byVID[a.VID] = a.ID + 1
		t.byIP[a.IP] = a.ID + 1
		t.n++
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, nil
}

// Len is the number of attachments.
func (t *Table) Len() int { return t.n }

// Attachment returns the attachment that owns vid, or nil.
func (t *Table) Attachment(vid uint16) *Attachment {
	if vid > MaxVID {
		return nil
	}
	if i := t.byVID[vid]; i != 0 {
		return &t.byID[i-1]
	}
	return nil
}

// ByID returns the attachment with the ID, or nil.
func (t *Table) ByID(id uint16) *Attachment {
	if int(id) < len(t.byID) && t.byID[id].VID != 0 {
		return &t.byID[id]
	}
	return nil
}

// ByIP returns the attachment whose pod has ip, or nil.
func (t *Table) ByIP(ip [4]byte) *Attachment {
	if i := t.byIP[ip]; i != 0 {
		return &t.byID[i-1]
	}
	return nil
}

// All returns the attachments in ID order.
func (t *Table) All() []Attachment {
	out := make([]Attachment, 0, t.n)
	for _, a := range t.byID {
		if a.VID != 0 {
			out = append(out, a)
		}
	}
	return out
}

// Pop removes the outer tag of an Ethernet frame by moving the MAC addresses
// over it, and returns the untagged frame, which starts TagLen bytes later in
// the same memory. The caller has checked that frame is tagged and at least
// 12+TagLen bytes long.
func Pop(frame []byte) []byte {
	copy(frame[TagLen:TagLen+12], frame[:12])
	return frame[TagLen:]
}

// Push inserts an 802.1Q tag (TPID 0x8100) with tci after the MAC addresses.
// buf holds TagLen bytes of headroom followed by the untagged frame; the
// tagged frame is all of buf.
func Push(buf []byte, tci uint16) {
	copy(buf[:12], buf[TagLen:TagLen+12])
	buf[12], buf[13] = 0x81, 0x00
	buf[14], buf[15] = byte(tci>>8), byte(tci)
}
