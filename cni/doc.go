// Package cni holds the node-local half of trunkline's CNI plugin: it parses
// the plugin's network configuration, wires a pod's branch attachment into
// the pod's network namespace, undoes it, checks it, and builds the CNI
// result. It knows nothing of the agent, the dataplane or XDP: the caller
// hands it an [Attachment] (today supplied by the caller, later by the
// agent over AgentSocket).
//
// # Pod wiring
//
// Each pod interface is one veth pair. The host end is named
// [HostVethName](containerID, ifname) and carries no address; the pod end is
// renamed to ifname and gets the attachment's MAC and its IPv4 address as a
// /32. The pod routes everything through a gateway reached on-link:
//
//	<gateway>/32 dev eth0 scope link
//	default via <gateway> dev eth0
//
// and the gateway is answered by a PERMANENT neighbour entry that maps it to
// the host veth's MAC, so the pod never ARPs for its gateway and the agent
// never has to answer ARP for it: every frame the pod sends leaves with the
// host veth's MAC as destination, which is what the agent's forwarder on the
// host veth expects. The host namespace gets a <pod IP>/32 route via the
// host veth so that kubelet probes from the node reach the pod through the
// kernel. TX checksum offload is turned off on the pod end: frames a pod
// socket sends through a veth otherwise carry a partial L4 checksum that
// AF_XDP copies as is and the receiver drops.
//
// # Namespaces
//
// Netlink work in the pod namespace goes through a netlink handle opened in
// that namespace; the few operations that need the calling thread in the
// pod namespace (opening the socket for the ethtool ioctl) run in a
// goroutine that locks its OS thread and never unlocks it, so the thread is
// discarded when the goroutine ends.
//
// Only IPv4 attachments are supported for now.
package cni
