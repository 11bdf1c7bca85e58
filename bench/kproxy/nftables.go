package kproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"strconv"
	"strings"
)

// kube-proxy's nftables table and its fixed chains, sets and maps.
const (
	nftTable            = "kube-proxy"
	nftServices         = "services"
	nftServiceIPs       = "service-ips"
	nftServiceNodePorts = "service-nodeports"
	nftEndpointsCheck   = "endpoints-check"
	nftNoEndpointSvcs   = "no-endpoint-services"
	nftNoEndpointNPs    = "no-endpoint-nodeports"
	nftRejectChain      = "reject-chain"
	nftFirewallIPs      = "firewall-ips"
	nftFirewallCheck    = "firewall-check"
	nftMarkMasq         = "mark-for-masquerade"
	nftMasquerading     = "masquerading"
)

// nftBaseChains are kube-proxy's base chains, "<type>-<hook>": the filter
// ones run just before DNAT so they see Service addresses. Priorities are
// numbers (dstnat -100, srcnat 100): this nft (1.0.6) takes the name
// dstnat only on the prerouting hook.
var nftBaseChains = []struct{ name, typ, hook, priority string }{
	{"filter-prerouting", "filter", "prerouting", "-110"},
	{"filter-input", "filter", "input", "-110"},
	{"filter-forward", "filter", "forward", "-110"},
	{"filter-output", "filter", "output", "-110"},
	{"nat-prerouting", "nat", "prerouting", "-100"},
	{"nat-output", "nat", "output", "-100"},
	{"nat-postrouting", "nat", "postrouting", "100"},
}

// nftJumps are kube-proxy's jumps from its base chains to its top-level
// regular chains.
var nftJumps = []struct{ to, from, match string }{
	{nftEndpointsCheck, "filter-input", "ct state new"},
	{nftEndpointsCheck, "filter-forward", "ct state new"},
	{nftEndpointsCheck, "filter-output", "ct state new"},
	{nftFirewallCheck, "filter-prerouting", "ct state new"},
	{nftFirewallCheck, "filter-output", "ct state new"},
	{nftServices, "nat-output", ""},
	{nftServices, "nat-prerouting", ""},
	{nftMasquerading, "nat-postrouting", ""},
}

// nftName is kube-proxy's hashAndTruncate: the first 8 characters of the
// base32 of the sha256 of name, a '-', then name. Validated names keep it
// far below nftables' 256-byte limit.
func nftName(name string) string {
	sum := sha256.Sum256([]byte(name))
	return base32.StdEncoding.EncodeToString(sum[:])[:8] + "-" + name
}

// nftServiceBase is "namespace/name/proto/portname", the base of a Service
// port's chain names.
func nftServiceBase(s *Service, proto string) string {
	return s.Name + "/" + proto + "/" + s.PortName
}

// renderNFTables writes the nft script of kube-proxy's nftables mode for
// validated options, as kube-proxy's transaction spells it: one command a
// line, every chain declared before a rule or map element names it. With
// batch 0 it is one script (one transaction); with batch n > 0 the first
// script makes the table and its fixed chains and maps, and each next one
// adds up to n Services.
func renderNFTables(o Options, batch int) [][]byte {
	total := 0
	for _, s := range o.Services {
		total += len(s.Backends)
	}
	var w lineWriter
	var scripts [][]byte
	if batch == 0 {
		w.Grow(400*len(o.Services) + 300*total)
	}
	// cut ends the current script.
	cut := func() {
		scripts = append(scripts, bytes.Clone(w.Bytes()))
		w.Reset()
	}
	pre := "ip " + nftTable + " "
	add := func(what, name string, rest ...string) {
		w.line(append([]string{"add", what, pre + name}, rest...)...)
	}
	rule := func(chain string, words ...string) { add("rule", chain, words...) }
	mark := "0x" + strconv.FormatUint(masqueradeMark, 16)

	w.line("add table ip", nftTable, `{ comment "rules for kube-proxy" ; }`)
	for _, c := range nftBaseChains {
		add("chain", c.name, "{ type", c.typ, "hook", c.hook, "priority", c.priority, "; }")
	}
	declared := map[string]bool{}
	for _, j := range nftJumps {
		if !declared[j.to] {
			add("chain", j.to)
			declared[j.to] = true
		}
		rule(j.from, j.match, "jump", j.to)
	}
	add("chain", nftMarkMasq)
	rule(nftMarkMasq, "mark set mark or", mark)
	rule(nftMasquerading, "mark and", mark, "== 0 return")
	rule(nftMasquerading, "mark set mark xor", mark)
	rule(nftMasquerading, "masquerade fully-random")

	// Services without endpoints and LoadBalancer firewalls: none here,
	// but the maps and the lookups in them are on every new flow's path.
	tuple := "ipv4_addr . inet_proto . inet_service : verdict"
	add("map", nftNoEndpointSvcs, "{ type", tuple, `; comment "vmap to drop or reject packets to services with no endpoints" ; }`)
	add("map", nftNoEndpointNPs, `{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }`)
	add("chain", nftRejectChain, `{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }`)
	rule(nftRejectChain, "reject")
	rule(nftEndpointsCheck, "ip daddr . meta l4proto . th dport vmap @"+nftNoEndpointSvcs)
	rule(nftEndpointsCheck, "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @"+nftNoEndpointNPs)
	add("map", nftFirewallIPs, "{ type", tuple, `; comment "destinations that are subject to LoadBalancerSourceRanges" ; }`)
	rule(nftFirewallCheck, "ip daddr . meta l4proto . th dport vmap @"+nftFirewallIPs)

	// Service dispatch.
	add("map", nftServiceIPs, "{ type", tuple, `; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }`)
	add("map", nftServiceNodePorts, `{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }`)
	rule(nftServices, "ip daddr . meta l4proto . th dport vmap @"+nftServiceIPs)
	rule(nftServices, "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @"+nftServiceNodePorts)

	notLocal := ""
	if o.ClusterCIDR.IsValid() {
		notLocal = "ip saddr != " + o.ClusterCIDR.String()
	}
	var vmap strings.Builder
	for i := range o.Services {
		if batch > 0 && i%batch == 0 {
			cut()
		}
		s := &o.Services[i]
		proto := strings.ToLower(s.Protocol)
		base := nftServiceBase(s, proto)
		svc := "service-" + nftName(base)
		ext := "external-" + nftName(base)
		vip := s.VIP.String()
		port := strconv.Itoa(int(s.Port))

		eps := make([]string, len(s.Backends))
		for j, b := range s.Backends {
			eps[j] = "endpoint-" + nftName(base+"__"+b.String()+"/"+strconv.Itoa(int(s.TargetPort)))
			add("chain", eps[j])
		}
		add("chain", svc)
		if s.NodePort != 0 {
			add("chain", ext)
		}
		add("element", nftServiceIPs, "{", vip, ".", proto, ".", port, ": goto", svc, "}")
		if s.NodePort != 0 {
			add("element", nftServiceNodePorts, "{", proto, ".", strconv.Itoa(int(s.NodePort)), ": goto", ext, "}")
		}
		if notLocal != "" {
			rule(svc, "ip daddr", vip, proto, "dport", port, notLocal, "jump", nftMarkMasq)
		}
		if s.NodePort != 0 {
			rule(ext, "jump", nftMarkMasq)
			rule(ext, "goto", svc)
		}
		vmap.Reset()
		for j, ep := range eps {
			if j > 0 {
				vmap.WriteString(" , ")
			}
			vmap.WriteString(strconv.Itoa(j))
			vmap.WriteString(" : goto ")
			vmap.WriteString(ep)
		}
		rule(svc, "numgen random mod", strconv.Itoa(len(eps)), "vmap {", vmap.String(), "}")
		for j, b := range s.Backends {
			ip := b.String()
			rule(eps[j], "ip saddr", ip, "jump", nftMarkMasq)
			rule(eps[j], "meta l4proto", proto, "dnat to", endpointString(ip, s.TargetPort))
		}
	}
	cut()
	return scripts
}

// removeNFTables deletes the table ip kube-proxy from netns; adding it
// first in the same transaction makes a missing table no error.
func removeNFTables(ctx context.Context, netns string) error {
	script := "add table ip " + nftTable + "\ndelete table ip " + nftTable + "\n"
	_, err := runIn(ctx, netns, []byte(script), "nft", "-f", "-")
	return err
}
