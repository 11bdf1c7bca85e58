package conntrack

// TCP state tracking from flags and direction only (no sequence-number
// window checks): the dataplane needs to know when a connection is
// established and when it is finished, to pick timeouts and to protect
// established flows from early drop. A packet that does not fit the state
// is "ignored": it is still forwarded (Lookup returns the connection) but
// neither changes the state nor refreshes the timeout, so stray or forged
// packets cannot keep a connection alive.
//
// Differences from nf_conntrack worth knowing: RST is honoured in any
// direction and state without a window check (a forged RST with the exact
// 4-tuple closes the entry to a 10s CLOSE timeout; the backend's own TCP
// still validates it); simultaneous open goes straight to SYN_RECV; the
// closing states remember which side closed first, so only the final ACK
// from that side ends LAST_ACK.

// tcpClass is what a packet's flags mean to the state machine.
type tcpClass uint8

const (
	tcpInvalid tcpClass = iota // no ACK, or SYN with FIN
	tcpSYN
	tcpSYNACK
	tcpFIN
	tcpACK
	tcpRST
)

func classify(flags uint8) tcpClass {
	switch {
	case flags&TCPFlagRST != 0:
		return tcpRST
	case flags&TCPFlagSYN != 0:
		if flags&TCPFlagFIN != 0 {
			return tcpInvalid
		}
		if flags&TCPFlagACK != 0 {
			return tcpSYNACK
		}
		return tcpSYN
	case flags&TCPFlagFIN != 0:
		return tcpFIN
	case flags&TCPFlagACK != 0:
		return tcpACK
	}
	return tcpInvalid
}

// tcpStart is the state a connection starts in when its first packet (in
// the original direction) has these flags: SYN opens, a bare ACK picks up a
// connection already established (for example after the agent restarted).
func tcpStart(flags uint8) (TCPState, bool) {
	switch classify(flags) {
	case tcpSYN:
		return TCPSynSent, true
	case tcpACK:
		return TCPEstablished, true
	}
	return TCPNone, false
}

// tcpNext returns the state after a packet of class c in direction d, given
// the current state s and closer, the direction of the first FIN (meaningful
// in FIN_WAIT, CLOSE_WAIT and LAST_ACK). ok is false when the packet is
// ignored. newCloser is the closer to store.
func tcpNext(s TCPState, closer Dir, d Dir, c tcpClass) (next TCPState, newCloser Dir, ok bool) {
	if c == tcpInvalid || c > tcpRST {
		return s, closer, false
	}
	if c == tcpRST {
		if s == TCPClose {
			return s, closer, false // a repeated RST does not extend CLOSE
		}
		return TCPClose, closer, true
	}
	orig := d == DirOriginal
	switch s {
	case TCPSynSent:
		switch {
		case c == tcpSYN && orig: // retransmitted SYN
			return TCPSynSent, closer, true
		case (c == tcpSYNACK || c == tcpSYN) && !orig: // SYN-ACK, or simultaneous open
			return TCPSynRecv, closer, true
		}
	case TCPSynRecv:
		switch {
		case c == tcpACK && orig: // the handshake's third packet, maybe with data
			return TCPEstablished, closer, true
		case c == tcpSYN && orig, c == tcpSYNACK, c == tcpACK: // retransmits, early server data
			return TCPSynRecv, closer, true
		case c == tcpFIN:
			return TCPFinWait, d, true
		}
	case TCPEstablished:
		switch c {
		case tcpACK:
			return TCPEstablished, closer, true
		case tcpFIN:
			return TCPFinWait, d, true
		}
	case TCPFinWait, TCPCloseWait:
		switch {
		case c == tcpFIN && d != closer: // the other side closes too
			return TCPLastAck, closer, true
		case c == tcpACK && d != closer: // the first FIN acknowledged
			return TCPCloseWait, closer, true
		case c == tcpACK || c == tcpFIN: // the closer's ACKs, retransmitted FIN
			return s, closer, true
		}
	case TCPLastAck:
		switch {
		case c == tcpACK && d == closer: // the first closer acknowledges the second FIN
			return TCPTimeWait, closer, true
		case c == tcpACK || c == tcpFIN:
			return TCPLastAck, closer, true
		}
	case TCPTimeWait:
		switch {
		case c == tcpSYN && orig: // the client reuses the tuple
			return TCPSynSent, DirOriginal, true
		case c == tcpACK || c == tcpFIN:
			return TCPTimeWait, closer, true
		}
	case TCPClose:
		if c == tcpSYN && orig {
			return TCPSynSent, DirOriginal, true
		}
	}
	return s, closer, false
}

// tcpTable is tcpNext precomputed, indexed by tcpIndex: the hot path does
// one load instead of the switch.
type tcpTable [int(numTCPStates) * 2 * 2 * numTCPClasses]uint8

const (
	numTCPClasses  = 8 // tcpClass values, rounded up
	tcpStateMask   = 0x0f
	tcpCloserShift = 4
	tcpOK          = 0x80
)

func tcpIndex(s TCPState, closer, d Dir, c tcpClass) int {
	return ((int(s)*2+int(closer&1))*2+int(d&1))*numTCPClasses + int(c)
}

func newTCPTable() tcpTable {
	var tt tcpTable
	for s := range numTCPStates {
		for closer := range Dir(2) {
			for d := range Dir(2) {
				for c := range tcpClass(numTCPClasses) {
					next, nc, ok := tcpNext(s, closer, d, c)
					if ok {
						tt[tcpIndex(s, closer, d, c)] = tcpOK | uint8(nc)<<tcpCloserShift | uint8(next)
					}
				}
			}
		}
	}
	return tt
}
