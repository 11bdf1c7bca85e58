package cni

import (
	"crypto/sha256"
	"encoding/hex"
)

// HostVethName returns the name of the host end of the veth pair for a
// container's interface: "tl" followed by the first 11 hex digits of
// sha256(containerID + "/" + ifname), 13 characters in all (the kernel
// allows 15). It is deterministic so that DEL and CHECK find the interface
// that ADD made without any state, and it must never change between plugin
// versions (an upgrade would orphan every existing pod's veth): a golden
// test pins it.
func HostVethName(containerID, ifname string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifname))
	return "tl" + hex.EncodeToString(sum[:])[:11]
}
