package kproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"os"
	"strconv"
	"strings"
)

// kube-proxy's iptables chains.
const (
	kubeServices         = "KUBE-SERVICES"
	kubeExternalServices = "KUBE-EXTERNAL-SERVICES"
	kubeNodePorts        = "KUBE-NODEPORTS"
	kubePostrouting      = "KUBE-POSTROUTING"
	kubeMarkMasq         = "KUBE-MARK-MASQ"
	kubeForward          = "KUBE-FORWARD"
	kubeProxyFirewall    = "KUBE-PROXY-FIREWALL"
	kubeChainPrefix      = "KUBE-"
)

// jump is a rule in a built-in chain that enters one of kube-proxy's.
type jump struct {
	table, from, to, comment, match string
}

// jumps are kube-proxy's jumps from the built-in chains, in the order it
// ensures them; each is inserted at the top of its chain, so the last one
// listed for a chain ends up first, as with kube-proxy.
var jumps = []jump{
	{"filter", "INPUT", kubeExternalServices, "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"},
	{"filter", "FORWARD", kubeExternalServices, "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"},
	{"filter", "INPUT", kubeNodePorts, "kubernetes health check service ports", ""},
	{"filter", "FORWARD", kubeServices, "kubernetes service portals", "-m conntrack --ctstate NEW"},
	{"filter", "OUTPUT", kubeServices, "kubernetes service portals", "-m conntrack --ctstate NEW"},
	{"filter", "FORWARD", kubeForward, "kubernetes forwarding rules", ""},
	{"filter", "INPUT", kubeProxyFirewall, "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"},
	{"filter", "OUTPUT", kubeProxyFirewall, "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"},
	{"filter", "FORWARD", kubeProxyFirewall, "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"},
	{"nat", "OUTPUT", kubeServices, "kubernetes service portals", ""},
	{"nat", "PREROUTING", kubeServices, "kubernetes service portals", ""},
	{"nat", "POSTROUTING", kubePostrouting, "kubernetes postrouting rules", ""},
}

// iptHash is kube-proxy's chain-name hash: the first 16 characters of the
// base32 of the sha256 of the parts, concatenated.
func iptHash(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// servicePortName is kube-proxy's ServicePortName.String():
// "namespace/name" or "namespace/name:port".
func servicePortName(s *Service) string {
	if s.PortName == "" {
		return s.Name
	}
	return s.Name + ":" + s.PortName
}

// endpointString is kube-proxy's "ip:port" endpoint string.
func endpointString(ip string, port uint16) string {
	return ip + ":" + strconv.Itoa(int(port))
}

// The chain names of a Service port and of one of its endpoints.
func svcChain(spn, proto string) string { return "KUBE-SVC-" + iptHash(spn, proto) }
func extChain(spn, proto string) string { return "KUBE-EXT-" + iptHash(spn, proto) }
func sepChain(spn, proto, ep string) string {
	return "KUBE-SEP-" + iptHash(spn, proto, ep)
}

// lineWriter builds restore input a line at a time from words.
type lineWriter struct{ bytes.Buffer }

func (w *lineWriter) line(words ...string) {
	first := true
	for _, s := range words {
		if s == "" {
			continue
		}
		if !first {
			w.WriteByte(' ')
		}
		w.WriteString(s)
		first = false
	}
	w.WriteByte('\n')
}

// builtinChains are the built-in chains of the tables the ruleset uses.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// renderIPTables writes the iptables-restore input of kube-proxy's
// iptables mode for validated options: for `--noflush`, or, with
// declareBuiltins, for a plain restore that replaces the tables (their
// built-in chains declared with policy ACCEPT).
func renderIPTables(o Options, declareBuiltins bool) []byte {
	total := 0
	for _, s := range o.Services {
		total += len(s.Backends)
	}
	large := total > largeClusterEndpoints
	mark := "0x" + strconv.FormatUint(masqueradeMark, 16)
	masqMark := mark + "/" + mark
	notLocal := ""
	if o.ClusterCIDR.IsValid() {
		notLocal = "! -s " + o.ClusterCIDR.String()
	}

	var chains, rules lineWriter
	chains.Grow(300 * (len(o.Services) + total))
	rules.Grow(600 * (len(o.Services) + total))

	// The filter table: the jumps, kube-proxy's chains, and the forwarding
	// rules. With every Service having endpoints and no firewalls or
	// health checks, the other chains stay empty.
	builtins := func(table string) {
		if declareBuiltins {
			for _, c := range builtinChains[table] {
				chains.line(":" + c + " ACCEPT [0:0]")
			}
		}
	}
	chains.line("*filter")
	builtins("filter")
	for _, c := range []string{kubeServices, kubeExternalServices, kubeForward, kubeNodePorts, kubeProxyFirewall} {
		chains.line(":" + c + " - [0:0]")
	}
	for _, j := range jumps {
		if j.table == "filter" {
			chains.line("-I", j.from, j.match, "-m comment --comment", quote(j.comment), "-j", j.to)
		}
	}
	chains.line("-A", kubeForward, "-m conntrack --ctstate INVALID -j DROP")
	chains.line("-A", kubeForward, "-m comment --comment", quote("kubernetes forwarding rules"), "-m mark --mark", masqMark, "-j ACCEPT")
	chains.line("-A", kubeForward, "-m comment --comment", quote("kubernetes forwarding conntrack rule"), "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
	chains.line("COMMIT")

	chains.line("*nat")
	builtins("nat")
	for _, c := range []string{kubeServices, kubeNodePorts, kubePostrouting, kubeMarkMasq} {
		chains.line(":" + c + " - [0:0]")
	}
	for _, j := range jumps {
		if j.table == "nat" {
			rules.line("-I", j.from, j.match, "-m comment --comment", quote(j.comment), "-j", j.to)
		}
	}
	rules.line("-A", kubePostrouting, "-m mark ! --mark", masqMark, "-j RETURN")
	rules.line("-A", kubePostrouting, "-j MARK --xor-mark", mark)
	rules.line("-A", kubePostrouting, "-m comment --comment", quote("kubernetes service traffic requiring SNAT"), "-j MASQUERADE --random-fully")
	rules.line("-A", kubeMarkMasq, "-j MARK --or-mark", mark)

	comment := func(c string) string {
		if large {
			return ""
		}
		return "-m comment --comment " + quote(c)
	}
	for i := range o.Services {
		s := &o.Services[i]
		spn := servicePortName(s)
		proto := strings.ToLower(s.Protocol)
		vip := s.VIP.String()
		port := strconv.Itoa(int(s.Port))
		svc := svcChain(spn, proto)
		chains.line(":" + svc + " - [0:0]")

		// Capture the ClusterIP.
		rules.line("-A", kubeServices, "-m comment --comment", quote(spn+" cluster IP"),
			"-m", proto, "-p", proto, "-d", vip+"/32", "--dport", port, "-j", svc)
		// Capture the NodePort: mark for masquerade, then the Service.
		if s.NodePort != 0 {
			ext := extChain(spn, proto)
			chains.line(":" + ext + " - [0:0]")
			rules.line("-A", kubeNodePorts, comment(spn), "-m", proto, "-p", proto,
				"--dport", strconv.Itoa(int(s.NodePort)), "-j", ext)
			rules.line("-A", ext, "-m comment --comment", quote("masquerade traffic for "+spn+" external destinations"), "-j", kubeMarkMasq)
			rules.line("-A", ext, "-j", svc)
		}
		// Off-cluster clients of the ClusterIP are masqueraded.
		if notLocal != "" {
			rules.line("-A", svc, comment(spn+" cluster IP"), "-m", proto, "-p", proto,
				"-d", vip+"/32", "--dport", port, notLocal, "-j", kubeMarkMasq)
		}
		// Pick an endpoint: rule i matches with probability 1/(n-i), the
		// last one always.
		n := len(s.Backends)
		for j, b := range s.Backends {
			ip := b.String()
			ep := endpointString(ip, s.TargetPort)
			sep := sepChain(spn, proto, ep)
			chains.line(":" + sep + " - [0:0]")
			stat := ""
			if j < n-1 {
				stat = "-m statistic --mode random --probability " + strconv.FormatFloat(1/float64(n-j), 'f', 10, 64)
			}
			rules.line("-A", svc, comment(spn+" -> "+ep), stat, "-j", sep)
			// Hairpin: a backend reaching itself through the VIP.
			rules.line("-A", sep, comment(spn), "-s", ip+"/32", "-j", kubeMarkMasq)
			rules.line("-A", sep, comment(spn), "-m", proto, "-p", proto, "-j DNAT --to-destination", ep)
		}
	}
	// Local destinations fall through to the NodePorts: last in the chain.
	rules.line("-A", kubeServices, "-m comment --comment",
		quote("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
		"-m addrtype --dst-type LOCAL -j", kubeNodePorts)
	rules.line("COMMIT")
	out := chains.Bytes()
	return append(out, rules.Bytes()...)
}

// quote quotes a comment for iptables-restore when it has spaces, as
// iptables-save prints it.
func quote(s string) string {
	if strings.ContainsAny(s, " \t\"") {
		return `"` + s + `"`
	}
	return s
}

// savedTable is one table of iptables-save output, as far as kube-proxy's
// objects in it matter.
type savedTable struct {
	name string
	// builtins are the built-in chains' declarations (":INPUT ACCEPT
	// [0:0]").
	builtins []string
	// kubeChains are the names of the KUBE-* chains.
	kubeChains []string
	// jumps are "-A CHAIN …" lines, in non-KUBE chains, whose target is a
	// KUBE-* chain.
	jumps []string
	// foreign is true when the table holds anything else: another user
	// chain, another rule in a built-in chain, a policy other than ACCEPT.
	foreign bool
}

// parseSave reads iptables-save output, table by table.
func parseSave(save []byte) []savedTable {
	var tables []savedTable
	var t *savedTable
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "*"):
			tables = append(tables, savedTable{name: l[1:]})
			t = &tables[len(tables)-1]
		case t == nil:
		case strings.HasPrefix(l, ":"):
			f := strings.Fields(l[1:])
			switch {
			case len(f) < 2:
			case f[1] != "-": // a built-in chain, with its policy
				t.builtins = append(t.builtins, ":"+f[0]+" "+f[1]+" [0:0]")
				t.foreign = t.foreign || f[1] != "ACCEPT"
			case strings.HasPrefix(f[0], kubeChainPrefix):
				t.kubeChains = append(t.kubeChains, f[0])
			default:
				t.foreign = true
			}
		case strings.HasPrefix(l, "-A "):
			f := strings.Fields(l)
			if len(f) < 2 || strings.HasPrefix(f[1], kubeChainPrefix) {
				continue
			}
			kube := false
			for i := 2; i+1 < len(f); i++ {
				if (f[i] == "-j" || f[i] == "-g") && strings.HasPrefix(f[i+1], kubeChainPrefix) {
					kube = true
					break
				}
			}
			if kube {
				t.jumps = append(t.jumps, l)
			} else {
				t.foreign = true
			}
		}
	}
	return tables
}

// hasKube reports whether the table holds any of kube-proxy's objects.
func (t *savedTable) hasKube() bool { return len(t.kubeChains) > 0 || len(t.jumps) > 0 }

// removalInput is the iptables-restore input that removes what parseSave
// found, and whether it must run with --noflush. When no table with
// kube-proxy objects holds anything else, it simply restores those tables
// with their built-in chains and nothing more (fast at any size). Otherwise
// it removes the jumps, then flushes (by declaring) and deletes every
// KUBE-* chain, leaving the rest as it was. nil when there is nothing to
// remove.
func removalInput(tables []savedTable) (in []byte, noflush bool) {
	for _, t := range tables {
		noflush = noflush || (t.hasKube() && t.foreign)
	}
	var w lineWriter
	for _, t := range tables {
		if !t.hasKube() {
			continue
		}
		w.line("*" + t.name)
		if !noflush {
			for _, b := range t.builtins {
				w.line(b)
			}
			w.line("COMMIT")
			continue
		}
		for _, c := range t.kubeChains {
			w.line(":" + c + " - [0:0]")
		}
		for _, j := range t.jumps {
			w.line("-D" + strings.TrimPrefix(j, "-A"))
		}
		for _, c := range t.kubeChains {
			w.line("-X", c)
		}
		w.line("COMMIT")
	}
	if w.Len() == 0 {
		return nil, false
	}
	return w.Bytes(), noflush
}

// restoreArgs are the iptables-restore arguments for an input.
func restoreArgs(noflush bool) []string {
	if noflush {
		return []string{"--wait", "5", "--noflush"}
	}
	return []string{"--wait", "5"}
}

// removeIPTables removes every KUBE-* chain and every jump to one from the
// given iptables variant's tables in netns, in one iptables-restore.
func removeIPTables(ctx context.Context, netns, variant string) error {
	save, err := runIn(ctx, netns, nil, variant+"-save")
	if err != nil {
		return err
	}
	in, noflush := removalInput(parseSave(save))
	if in == nil {
		return nil
	}
	_, err = runIn(ctx, netns, in, variant+"-restore", restoreArgs(noflush)...)
	return explainLine(err, in)
}

// tablesOnlyBuiltin reports whether the nat and filter tables of variant in
// netns are absent or hold nothing but built-in chains with policy ACCEPT:
// then a restore without --noflush gives the same result as with it.
func tablesOnlyBuiltin(ctx context.Context, netns, variant string) (bool, error) {
	save, err := runIn(ctx, netns, nil, variant+"-save")
	if err != nil {
		return false, err
	}
	for _, t := range parseSave(save) {
		if (t.name == "nat" || t.name == "filter") && (t.foreign || t.hasKube()) {
			return false, nil
		}
	}
	return true, nil
}

// managedTables are the tables a ruleset of ModeIPTables uses.
var managedTables = []string{"filter", "nat"}

// missingXTablesTables lists which of managedTables do not exist yet in
// netns when variant is backed by nf_tables (there, iptables-restore
// creates them and Remove can delete them again). With the legacy backend
// tables are never deleted, and it returns nil.
func missingXTablesTables(ctx context.Context, netns, variant string) ([]string, error) {
	if variant == IPTablesLegacy {
		return nil, nil
	}
	out, err := runIn(ctx, netns, nil, variant+"-save", "--version")
	if err != nil {
		return nil, err
	}
	if !strings.Contains(string(out), "nf_tables") {
		return nil, nil
	}
	out, err = runIn(ctx, netns, nil, "nft", "list", "tables", "ip")
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "table" {
			have[f[2]] = true
		}
	}
	var missing []string
	for _, t := range managedTables {
		if !have[t] {
			missing = append(missing, t)
		}
	}
	return missing, nil
}

// deleteEmptyTables deletes the nf_tables-backed iptables tables in names
// that hold nothing but empty built-in chains with policy ACCEPT, so a
// namespace the ruleset came into without them is left without them (and
// without their netfilter hooks).
func deleteEmptyTables(ctx context.Context, netns, variant string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	save, err := runIn(ctx, netns, nil, variant+"-save")
	if err != nil {
		return err
	}
	var script lineWriter
	for _, t := range parseSave(save) {
		if want[t.name] && !t.foreign && !t.hasKube() {
			script.line("delete table ip", t.name)
		}
	}
	if script.Len() == 0 {
		return nil
	}
	_, err = runIn(ctx, netns, script.Bytes(), "nft", "-f", "-")
	return err
}

// legacyLoaded reports whether the x_tables IPv4 module is loaded; only
// then can a namespace hold iptables-legacy rules (and asking
// iptables-legacy-save would load it).
func legacyLoaded() bool {
	_, err := os.Stat("/proc/net/ip_tables_names")
	return !errors.Is(err, os.ErrNotExist)
}
