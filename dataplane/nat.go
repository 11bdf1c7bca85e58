package dataplane

import (
	"encoding/binary"

	"github.com/trunkline/trunkline/dataplane/port"
	"github.com/trunkline/trunkline/internal/packet"
	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
	"github.com/trunkline/trunkline/vlan"
)

// PortRange is an inclusive range of ports.
type PortRange struct{ Lo, Hi uint16 }

// Contains reports whether p is in the range.
func (r PortRange) Contains(p uint16) bool { return r.Lo != 0 && p >= r.Lo && p <= r.Hi }

// Size is the number of ports in the range.
func (r PortRange) Size() int {
	if r.Lo == 0 || r.Hi < r.Lo {
		return 0
	}
	return int(r.Hi) - int(r.Lo) + 1
}

// Flags a worker keeps in a connection's conntrack entry.
const (
	// flowFromTrunk: the client's packets came untagged on the trunk, so
	// the replies leave that way.
	flowFromTrunk uint16 = 1 << iota
	// flowSNAT: the client's source was translated to the node's address.
	flowSNAT
	// flowMasquerade: a pod's flow to outside the VPC.
	flowMasquerade
)

// prefix4 is an IPv4 prefix as a masked address and its mask.
type prefix4 struct{ addr, mask uint32 }

// maxSNATTries bounds the ports tried for one new flow.
const maxSNATTries = 1024

// natFromTrunk handles an untagged IPv4 frame the trunk program steered to
// the socket: traffic to a Service frontend, or a reply to a translated
// flow.
func (w *Worker) natFromTrunk(d port.Desc, b []byte) {
	if w.pkt.EtherType == packet.EtherTypeIPv4 && w.pkt.Status == packet.StatusOK && martian(w.pkt.Src) {
		w.dropFrame(d, DropMartianSource)
		return
	}
	if w.pkt.EtherType == packet.EtherTypeIPv4 && w.pkt.Status == packet.StatusOK && w.isICMPError() && w.natICMPError(d, b) {
		return
	}
	if !w.nat(d, b, nil) {
		w.dropFrame(d, DropNoService)
	}
}

// wantsNAT reports whether a pod's IPv4 packet may belong to a translated
// flow: to a Service frontend, from a Service backend (a reply), to the
// node's SNAT ports (a reply to a flow the node translated), or to outside
// the VPC (masquerade).
func (w *Worker) wantsNAT(svcs *lb.Table) bool {
	p := &w.pkt
	if p.IPProto != lb.TCP && p.IPProto != lb.UDP {
		return false
	}
	if p.Fragment && !p.FirstFragment && svcs.IsVIP(p.Dst) {
		return true // no ports to find its flow by: nat drops it
	}
	if p.Dst == w.nodeIP && w.snatPorts.Contains(p.DstPort) {
		return true
	}
	if w.masquerades(p.Dst) {
		return true
	}
	if _, ok := svcs.Lookup(lb.Frontend{IP: p.Dst, Port: p.DstPort, Proto: p.IPProto}); ok {
		return true
	}
	return svcs.IsEndpoint(lb.Frontend{IP: p.Src, Port: p.SrcPort, Proto: p.IPProto})
}

// nat translates a frame of a Service flow and forwards it. b is the
// untagged frame at d and w.pkt its decoding; from is the pod that sent
// it, or nil for the trunk. It reports false, leaving the frame to the
// caller, when the frame belongs to no translated flow and is not for a
// Service frontend (a backend pod's port answering a direct client).
func (w *Worker) nat(d port.Desc, b []byte, from *vlan.Attachment) bool {
	p := &w.pkt
	if p.EtherType != packet.EtherTypeIPv4 || p.Status != packet.StatusOK {
		w.dropFrame(d, DropMalformed)
		return true
	}
	if p.IPProto != lb.TCP && p.IPProto != lb.UDP {
		return false
	}
	if p.Fragment {
		w.dropFrame(d, DropNATFragment)
		return true
	}
	key := conntrack.Key{SrcIP: p.Src, DstIP: p.Dst, SrcPort: p.SrcPort, DstPort: p.DstPort, Proto: p.IPProto}
	c, dir, ok := w.ct.Lookup(key, p.TCPFlags, w.now)
	if !ok {
		svcs := w.services.Load()
		e, isFrontend := svcs.Lookup(lb.Frontend{IP: key.DstIP, Port: key.DstPort, Proto: key.Proto})
		switch {
		case isFrontend && from == nil && w.flooded() && !w.floodAdmit():
			w.dropFrame(d, DropNewFlowLimit)
			return true
		case isFrontend:
			c, ok = w.newFlow(d, b, key, e, from)
		case from != nil && w.masquerades(key.DstIP):
			c, ok = w.newMasquerade(d, key)
		default:
			return false
		}
		if !ok {
			return true
		}
		dir = conntrack.DirOriginal
		if c.ServiceID != 0 {
			w.serviceCounters(c.ServiceID).NewConns.Add(1)
		}
	}
	if c.ServiceID != 0 {
		w.serviceCounters(c.ServiceID).Packets.Add(1)
	}
	// The packet leaves as the inverse of the other direction's tuple.
	out := c.Reply
	if dir == conntrack.DirReply {
		out = c.Orig
	}
	w.rewrite(b, out.DstIP, out.DstPort, out.SrcIP, out.SrcPort)
	w.route(d, b, out.DstIP, out.SrcIP)
	return true
}

// newFlow starts a connection for a packet to a Service frontend: it picks
// a backend, decides on SNAT and inserts the connection. It reports false
// when the frame was dropped or answered.
func (w *Worker) newFlow(d port.Desc, b []byte, key conntrack.Key, e lb.FrontendEntry, from *vlan.Attachment) (conntrack.Conn, bool) {
	h := flowHash(key)
	var (
		idx int
		be  lb.Backend
	)
	switch {
	case e.Only:
		idx, be = int(e.OnlyIndex), e.OnlyBackend
	case e.Affinity && w.affinity != nil:
		// sessionAffinity: ClientIP: the client's last backend while it
		// still takes new flows, else Maglev on the client's address.
		svc := e.Service
		idx = -1
		if last, ok := w.affinity.Backend(svc.ID, key.SrcIP, int64(w.now)); ok {
			idx = svc.Usable(last, e.External())
		}
		if idx < 0 {
			idx = svc.Pick(mix64(uint64(binary.BigEndian.Uint32(key.SrcIP[:]))), e.External())
		}
		if idx < 0 {
			w.reject(d, b)
			return conntrack.Conn{}, false
		}
		be = svc.Backends[idx]
		w.affinity.Remember(svc.ID, key.SrcIP, be, int64(w.now), svc.Affinity)
	default:
		svc := e.Service
		if idx = svc.Pick(h, e.External()); idx < 0 {
			w.reject(d, b)
			return conntrack.Conn{}, false
		}
		be = svc.Backends[idx]
	}
	c := conntrack.Conn{
		Orig:      key,
		Reply:     conntrack.Key{SrcIP: be.IP, SrcPort: be.Port, DstIP: key.SrcIP, DstPort: key.SrcPort, Proto: key.Proto},
		ServiceID: e.ServiceID,
		Backend:   uint32(idx),
	}
	if from == nil {
		c.Flags |= flowFromTrunk
	}
	// SNAT to the node when the backend's reply would not come back
	// through here: external traffic under policy Cluster, a client from
	// the trunk to a backend elsewhere, and a pod reaching itself
	// (hairpin: it would answer itself directly).
	snat := (e.External() && !e.Service.ExternalLocal) || (from == nil && !be.Local) || key.SrcIP == be.IP
	if !snat {
		return w.insert(d, c, h)
	}
	c.Reply.DstIP = w.nodeIP
	return w.insertSNAT(d, c, h)
}

// masquerades reports whether a pod's packet to dst leaves the node with
// the node's address: dst is outside every non-masquerade prefix (the
// VPC's).
func (w *Worker) masquerades(dst [4]byte) bool {
	if !w.masquerade {
		return false
	}
	a := binary.BigEndian.Uint32(dst[:])
	for _, p := range w.nonMasq {
		if a&p.mask == p.addr {
			return false
		}
	}
	return true
}

// newMasquerade starts a pod's flow to outside the VPC, SNATed to the node.
func (w *Worker) newMasquerade(d port.Desc, key conntrack.Key) (conntrack.Conn, bool) {
	c := conntrack.Conn{
		Orig:  key,
		Reply: conntrack.Key{SrcIP: key.DstIP, SrcPort: key.DstPort, DstIP: key.SrcIP, DstPort: key.SrcPort, Proto: key.Proto},
		Flags: flowMasquerade,
	}
	c.Reply.DstIP = w.nodeIP
	return w.insertSNAT(d, c, flowHash(key))
}

// insertSNAT gives c's reply tuple a free SNAT port toward the remote
// (trying from a port derived from h; its address, c.Reply.DstIP, is the
// caller's) and inserts it. Ports are collision-free per (protocol, remote
// address and port): the table refuses a reply tuple another flow holds.
func (w *Worker) insertSNAT(d port.Desc, c conntrack.Conn, h uint64) (conntrack.Conn, bool) {
	c.Flags |= flowSNAT
	n := w.snatPorts.Size()
	if n == 0 {
		w.dropFrame(d, DropSNATExhausted)
		return conntrack.Conn{}, false
	}
	start := int(h>>32) % n
	for i := 0; i < min(n, maxSNATTries); i++ {
		c.Reply.DstPort = w.snatPorts.Lo + uint16((start+i)%n)
		res, got := w.ct.Insert(c, w.pkt.TCPFlags, w.now)
		w.noteInsert(res)
		switch {
		case res.OK():
			return got, true
		case res == conntrack.Exists && got.Orig == c.Orig:
			return got, true // another worker started this flow first
		case res == conntrack.Exists:
			continue // the port is taken toward this remote
		}
		return w.insertFailed(d, res)
	}
	w.dropFrame(d, DropSNATExhausted)
	return conntrack.Conn{}, false
}

// insert inserts a DNAT-only flow. When its reply tuple is another live
// flow's (the client reused its source port toward another frontend of
// the same backend), the client's port is translated too, to a free SNAT
// port, keeping its address — as nf_nat makes a tuple unique.
func (w *Worker) insert(d port.Desc, c conntrack.Conn, h uint64) (conntrack.Conn, bool) {
	res, got := w.ct.Insert(c, w.pkt.TCPFlags, w.now)
	w.noteInsert(res)
	switch {
	case res.OK():
		return got, true
	case res == conntrack.Exists && got.Orig == c.Orig:
		return got, true
	case res == conntrack.Exists:
		w.counters.PortRemaps.Add(1)
		return w.insertSNAT(d, c, h)
	}
	return w.insertFailed(d, res)
}

// noteInsert remembers the round when an insert found the table at its
// bound (it early-dropped an entry, or could not).
func (w *Worker) noteInsert(res conntrack.InsertResult) {
	if res == conntrack.InsertedEarlyDrop || res == conntrack.Full {
		w.ctBound = w.round
		w.counters.AtBound.Add(1)
	}
}

func (w *Worker) insertFailed(d port.Desc, res conntrack.InsertResult) (conntrack.Conn, bool) {
	if res == conntrack.Full {
		w.dropFrame(d, DropConntrackFull)
	} else {
		w.dropFrame(d, DropConntrackInvalid)
	}
	return conntrack.Conn{}, false
}

// rewrite sets the packet's addresses and ports, updating checksums
// incrementally.
func (w *Worker) rewrite(b []byte, src [4]byte, sport uint16, dst [4]byte, dport uint16) {
	p := &w.pkt
	ip := packet.IPv4(b[p.L3Off:])
	l4 := b[p.L4Off:]
	if src != p.Src {
		packet.RewriteIPv4Src(ip, l4, src)
	}
	if dst != p.Dst {
		packet.RewriteIPv4Dst(ip, l4, dst)
	}
	if sport != p.SrcPort {
		packet.RewriteSrcPort(ip, l4, sport)
	}
	if dport != p.DstPort {
		packet.RewriteDstPort(ip, l4, dport)
	}
}

// route sends an untagged, translated frame toward dst: to a local pod
// straight across; elsewhere out of the trunk, tagged with the pod's VLAN
// when src is a local pod's address, untagged (the node's own traffic)
// otherwise.
func (w *Worker) route(d port.Desc, b []byte, src, dst [4]byte) {
	tbl := w.vlanTable.Load()
	if to := tbl.ByIP(dst); to != nil {
		copy(b[0:6], to.MAC[:])
		copy(b[6:12], to.HostMAC[:])
		w.enqueue(PodIndex(to.ID), d)
		return
	}
	if from := tbl.ByIP(src); from != nil {
		copy(b[6:12], from.MAC[:])
		w.toTrunkTagged(d, from.VID)
		return
	}
	copy(b[0:6], w.gateway[:])
	copy(b[6:12], w.nodeMAC[:])
	w.enqueue(trunkIndex, d)
}

// toTrunkTagged pushes the tag vid on the untagged frame at d, addresses it
// to the VPC gateway and queues it on the trunk.
func (w *Worker) toTrunkTagged(d port.Desc, vid uint16) {
	if d.Addr&w.slotMask < vlan.TagLen {
		w.dropFrame(d, DropNoHeadroom)
		return
	}
	d.Addr -= vlan.TagLen
	d.Len += vlan.TagLen
	b := w.mem[d.Addr : d.Addr+uint64(d.Len)]
	vlan.Push(b, vid)
	copy(b[0:6], w.gateway[:])
	w.enqueue(trunkIndex, d)
}

// reject answers a packet to a Service without a usable backend the way
// kube-proxy's REJECT rule does: a TCP RST, or an ICMP port unreachable,
// from the frontend, sent back the way the packet came.
func (w *Worker) reject(d port.Desc, b []byte) {
	p := &w.pkt
	w.counters.Rejects.Add(1)
	l3 := int(p.L3Off)
	client, frontend := p.Src, p.Dst
	// The answer may be longer than the packet: it may use the whole slot.
	room := w.slotMask + 1 - d.Addr&w.slotMask
	slot := w.mem[d.Addr : d.Addr+room]
	var n int
	if p.IPProto == lb.TCP {
		n = w.buildRST(slot[l3:len(b)])
	} else {
		n = w.buildPortUnreachable(slot[l3:])
	}
	if n == 0 {
		w.dropFrame(d, DropNoService)
		return
	}
	d.Len = uint32(l3 + n)
	w.route(d, w.mem[d.Addr:d.Addr+uint64(d.Len)], frontend, client)
}

// buildRST turns the TCP packet at l3 into the RST that answers it and
// returns its length.
func (w *Worker) buildRST(l3 []byte) int {
	p := &w.pkt
	tcp := packet.TCP(l3[p.IPHeaderLen:])
	payload := int(p.IPTotalLen) - int(p.IPHeaderLen) - tcp.HeaderLen()
	seq, ack, flags := tcp.Seq(), tcp.Ack(), tcp.Flags()
	sport, dport := p.SrcPort, p.DstPort
	if len(l3) < 40 {
		return 0
	}
	var rseq, rack uint32
	rflags := packet.TCPFlagRST
	if flags&packet.TCPFlagACK != 0 {
		rseq = ack
	} else {
		rack = seq + uint32(payload)
		if flags&packet.TCPFlagSYN != 0 {
			rack++
		}
		if flags&packet.TCPFlagFIN != 0 {
			rack++
		}
		rflags |= packet.TCPFlagACK
	}
	writeIPv4(l3, p.Dst, p.Src, lb.TCP, 40)
	t := l3[20:40]
	binary.BigEndian.PutUint16(t[0:], dport)
	binary.BigEndian.PutUint16(t[2:], sport)
	binary.BigEndian.PutUint32(t[4:], rseq)
	binary.BigEndian.PutUint32(t[8:], rack)
	t[12], t[13] = 5<<4, rflags
	clear(t[14:20])
	sum := packet.Checksum(t, packet.PseudoHeaderSum(p.Dst, p.Src, lb.TCP, 20))
	binary.BigEndian.PutUint16(t[16:], packet.Fold(sum))
	return 40
}

// buildPortUnreachable turns the packet at l3 into the ICMP port
// unreachable that answers it (quoting its IP header and 8 bytes) and
// returns its length.
func (w *Worker) buildPortUnreachable(l3 []byte) int {
	p := &w.pkt
	quote := int(p.IPHeaderLen) + 8
	n := 20 + 8 + quote
	if int(p.IPTotalLen) < quote || len(l3) < n || quote > len(w.scratch) {
		return 0
	}
	l3 = l3[:n]
	copy(w.scratch[:quote], l3[:quote])
	src, dst := p.Dst, p.Src
	copy(l3[28:], w.scratch[:quote])
	writeIPv4(l3, src, dst, 1, uint16(n))
	icmp := l3[20:n]
	icmp[0], icmp[1] = packet.ICMPv4DestUnreachable, packet.ICMPv4PortUnreachable
	clear(icmp[2:8])
	binary.BigEndian.PutUint16(icmp[2:], packet.Fold(packet.Checksum(icmp, 0)))
	return n
}

// writeIPv4 writes a 20-byte IPv4 header (DF, TTL 64) with its checksum.
func writeIPv4(b []byte, src, dst [4]byte, proto uint8, total uint16) {
	b[0], b[1] = 0x45, 0
	binary.BigEndian.PutUint16(b[2:], total)
	binary.BigEndian.PutUint32(b[4:], 0x4000) // ID 0, DF
	b[8], b[9] = 64, proto
	b[10], b[11] = 0, 0
	copy(b[12:16], src[:])
	copy(b[16:20], dst[:])
	binary.BigEndian.PutUint16(b[10:], packet.Fold(packet.Checksum(b[:20], 0)))
}

// flowHash hashes a flow's 5-tuple for Maglev.
func flowHash(k conntrack.Key) uint64 {
	a := uint64(binary.BigEndian.Uint32(k.SrcIP[:]))<<32 | uint64(binary.BigEndian.Uint32(k.DstIP[:]))
	b := uint64(k.SrcPort)<<24 | uint64(k.DstPort)<<8 | uint64(k.Proto)
	return mix64(a ^ mix64(b))
}

// mix64 is the splitmix64 finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
