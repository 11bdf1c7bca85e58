package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/gen"
)

// The scale scenario's connection-table points: before measuring, the
// generator offers n distinct UDP flows to the discard Service from
// addresses in the VPC (so nothing is masqueraded), each several times.
const (
	maxPrefill     = 17 * 60000
	prefillPerHost = 60000
	prefillFor     = 4 * time.Second
	// conntrackMaxFile is the host's (init namespace's) connection table
	// bound: other namespaces cannot raise their own.
	conntrackMaxFile   = "/proc/sys/net/netfilter/nf_conntrack_max"
	conntrackCountFile = "/proc/sys/net/netfilter/nf_conntrack_count"
)

var prefillBase = netip.MustParseAddr("10.100.128.0")

// prefillGen is the generator of n distinct flows to the discard VIP.
func (s *session) prefillGen(n int) (*gen.Generator, error) {
	k := genKey{direction: "prefill", flows: n}
	if g := s.gens[k]; g != nil {
		return g, nil
	}
	hosts := (n + prefillPerHost - 1) / prefillPerHost
	b := s.b
	g, err := gen.NewGenerator(gen.FrameSpec{
		SrcMAC: b.Wire.MAC, DstMAC: b.Node.TrunkMAC, SrcIP: prefillBase, DstIP: b.Service("default/discard").VIP,
		DstPort: bed.DiscardPort, Flows: (n + hosts - 1) / hosts, Hosts: hosts,
	})
	if err != nil {
		return nil, err
	}
	s.gens[k] = g
	return g, nil
}

// prefill offers n flows to d for prefillFor and returns how many entries
// its connection table holds then (-1: unknown).
func (s *session) prefill(ctx context.Context, d dataplane, n int) (int, error) {
	g, err := s.prefillGen(n)
	if err != nil {
		return 0, err
	}
	if _, err := g.Run(ctx, gen.RunOptions{Netns: s.b.Wire.Netns, Ifname: s.b.Wire.Ifname, CPU: genCPU, Until: time.Now().Add(prefillFor)}); err != nil {
		return 0, err
	}
	switch d := d.(type) {
	case *trunklinePeer:
		st, err := d.agent.Client.Stats(ctx)
		if err != nil {
			return 0, err
		}
		return st.Conntrack.Entries, nil
	case *kernelPeer:
		out, err := runIn(ctx, s.b.Node.Netns, "cat", conntrackCountFile)
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(strings.TrimSpace(out))
	case *xdpKernelPeer:
		fl, err := d.p.Flows()
		return len(fl), err
	}
	return -1, nil
}

// raiseConntrackMax raises the host's connection table bound to at least
// want, returning a function that puts the old bound back.
func raiseConntrackMax(want int) (restore func(), err error) {
	b, err := os.ReadFile(conntrackMaxFile)
	if err != nil {
		return nil, fmt.Errorf("connection table bound: %w (is nf_conntrack loaded?)", err)
	}
	old, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || old >= want {
		return func() {}, err
	}
	if err := os.WriteFile(conntrackMaxFile, []byte(strconv.Itoa(want)), 0); err != nil {
		return nil, fmt.Errorf("raise %s to %d: %w", conntrackMaxFile, want, err)
	}
	return func() { os.WriteFile(conntrackMaxFile, []byte(strconv.Itoa(old)), 0) }, nil
}
