// Command trunkline-cni is trunkline's CNI plugin. A container runtime runs
// it on the node; it gets each pod interface's branch attachment from the
// trunkline agent and wires the pod's network namespace (see package cni).
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/trunkline/trunkline/cni"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cni.Add,
		Del:    cni.Del,
		Check:  cni.Check,
		Status: cni.Status,
		GC:     cni.GC,
	}, version.PluginSupports(cni.SupportedVersions...), "trunkline CNI plugin")
}
