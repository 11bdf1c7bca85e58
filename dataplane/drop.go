package dataplane

// DropReason says why the worker dropped a frame. Every drop has one, and
// each reason has a counter.
type DropReason uint8

// Drop reasons. Their String forms are metric label values: keep them stable.
const (
	// DropUntagged: an untagged frame reached the trunk socket though the
	// agent serves no Service (the trunk program passes the node's own
	// traffic to the kernel).
	DropUntagged DropReason = iota
	// DropPriorityTagged: a VID 0 frame reached the trunk socket; 802.1Q
	// treats it as untagged, so it belongs to the node's kernel.
	DropPriorityTagged
	// DropQinQ: two or more tags on a trunk frame.
	DropQinQ
	// DropUnknownVID: no pod attachment owns the frame's VID.
	DropUnknownVID
	// DropMalformed: truncated or inconsistent headers.
	DropMalformed
	// DropSpoofedSource: a pod sent with a MAC or IP that is not its own.
	DropSpoofedSource
	// DropTaggedFromPod: a pod sent an 802.1Q-tagged frame.
	DropTaggedFromPod
	// DropIPv6: IPv6 is recognised but not forwarded yet.
	DropIPv6
	// DropUnsupported: an EtherType the dataplane does not forward.
	DropUnsupported
	// DropNoTxRoom: the output socket's TX ring was full.
	DropNoTxRoom
	// DropNoPort: the pod is known but has no socket on this worker.
	DropNoPort
	// DropUnknownPod: a frame arrived on a pod socket whose attachment is
	// gone.
	DropUnknownPod
	// DropNoHeadroom: no room in the frame's slot to push a tag.
	DropNoHeadroom
	// DropNoService: a packet steered to a Service frontend that has no
	// such port or protocol.
	DropNoService
	// DropNATFragment: an IP fragment of a translated flow, or a non-first
	// fragment to a Service frontend (it carries no ports to find its
	// flow by); fragments are not reassembled.
	DropNATFragment
	// DropSNATExhausted: no free SNAT port toward this remote address and
	// port; only the new flow is dropped.
	DropSNATExhausted
	// DropConntrackFull: the connection table is full of live flows.
	DropConntrackFull
	// DropConntrackInvalid: a packet that cannot start a flow (a TCP
	// segment other than SYN or ACK) for a flow the table does not know.
	DropConntrackInvalid
	// DropMartianSource: a frame from the VPC whose IPv4 source no host
	// may have: 0.0.0.0/8, 127.0.0.0/8, multicast, 240.0.0.0/4 or the
	// broadcast address.
	DropMartianSource
	// DropNewFlowLimit: a packet from the VPC that would start a flow while
	// the connection table is at its bound (a SYN flood): past
	// FloodNewFlowRate new flows a second per worker, the
	// rest are dropped before they cost a conntrack insert, a pod's work
	// and its reply, so established flows keep the worker.
	DropNewFlowLimit

	NumDropReasons
)

var dropNames = [NumDropReasons]string{
	DropUntagged:         "untagged",
	DropPriorityTagged:   "priority_tagged",
	DropQinQ:             "qinq",
	DropUnknownVID:       "unknown_vid",
	DropMalformed:        "malformed",
	DropSpoofedSource:    "spoofed_source",
	DropTaggedFromPod:    "tagged_from_pod",
	DropIPv6:             "ipv6",
	DropUnsupported:      "unsupported_ethertype",
	DropNoTxRoom:         "no_tx_room",
	DropNoPort:           "no_port",
	DropUnknownPod:       "unknown_pod",
	DropNoHeadroom:       "no_headroom",
	DropNoService:        "no_service",
	DropNATFragment:      "nat_fragment",
	DropSNATExhausted:    "snat_exhausted",
	DropConntrackFull:    "conntrack_full",
	DropConntrackInvalid: "conntrack_invalid",
	DropMartianSource:    "martian_source",
	DropNewFlowLimit:     "new_flow_limit",
}

func (r DropReason) String() string {
	if r < NumDropReasons {
		return dropNames[r]
	}
	return "unknown"
}
