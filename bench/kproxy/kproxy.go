// Package kproxy installs the bench's kube-proxy-like Service rules: the
// DNAT/SNAT half of the `kernel` peer (the other half, tc VLAN pop/push and
// kernel routing, is bed.EnableKernelPath). It lays a ruleset out in a
// network namespace the way kube-proxy lays it out on a node, in either of
// kube-proxy's two kernel modes:
//
//   - ModeIPTables: kube-proxy's iptables mode. In the nat table,
//     PREROUTING and OUTPUT jump to KUBE-SERVICES, which holds one rule per
//     Service port (`-d VIP/32 -p tcp --dport P -j KUBE-SVC-<hash>`) and
//     ends with a jump to KUBE-NODEPORTS for local destinations. A
//     KUBE-SVC-<hash> chain marks off-cluster clients for masquerade and
//     picks a KUBE-SEP-<hash> chain with `-m statistic --mode random`; a
//     KUBE-SEP chain DNATs to its backend. NodePorts go through
//     KUBE-EXT-<hash> (mark, then KUBE-SVC). KUBE-POSTROUTING, from
//     POSTROUTING, masquerades (`--random-fully`) what KUBE-MARK-MASQ
//     marked with 0x4000. The filter table gets kube-proxy's KUBE-FORWARD
//     rules and its (here empty) KUBE-SERVICES, KUBE-EXTERNAL-SERVICES,
//     KUBE-NODEPORTS and KUBE-PROXY-FIREWALL chains. Chain hashes are
//     kube-proxy's: the first 16 characters of the base32 of the sha256 of
//     the Service port name, protocol (and endpoint).
//     Everything, the jumps from the built-in chains included, is loaded by
//     one iptables-restore. With --noflush, as kube-proxy does, whenever
//     the tables hold anything already: then their other chains and rules
//     stay as they were, which is also what makes removal clean (Remove
//     deletes exactly the KUBE-* chains and the rules that jump to them,
//     again in one iptables-restore). Into tables that hold nothing, a
//     plain restore gives the same result, and is what keeps iptables-nft
//     fast at scale (see Options.NoFlush).
//   - ModeNFTables: kube-proxy's nftables mode. Table `ip kube-proxy` with
//     base chains nat-prerouting/nat-output (jump services), nat-postrouting
//     (jump masquerading) and filter-* (endpoints and firewall checks);
//     `services` looks `ip daddr . meta l4proto . th dport` up in the
//     verdict map service-ips (`goto service-<hash>-ns/name/proto/port`)
//     and, for local destinations, `meta l4proto . th dport` in
//     service-nodeports (`goto external-…`); a service chain marks
//     off-cluster clients and picks an endpoint chain with
//     `numgen random mod N vmap`; an endpoint chain does `dnat to`. Loaded
//     by one `nft -f -` transaction (or in batches, Options.NFTBatch);
//     removed by deleting the table.
//
// Install refuses a namespace that already holds kube-proxy objects
// (ErrExists); Cleanup removes such leftovers whoever made them, and
// Leftovers lists them. Synthetic makes the many Services of scale runs.
package kproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
)

// Mode is how the ruleset is expressed: kube-proxy's --proxy-mode.
type Mode string

// The modes.
const (
	// ModeIPTables is kube-proxy's iptables mode (the default).
	ModeIPTables Mode = "iptables"
	// ModeNFTables is kube-proxy's nftables mode.
	ModeNFTables Mode = "nftables"
)

// The iptables variants Options.IPTables names.
const (
	// IPTablesDefault is whatever `iptables` is on this host (here the
	// nf_tables backend), as kube-proxy's image picks it.
	IPTablesDefault = "iptables"
	// IPTablesLegacy is the x_tables backend (`iptables-legacy`).
	IPTablesLegacy = "iptables-legacy"
)

// Protocols a Service may have.
const (
	TCP = "TCP"
	UDP = "UDP"
)

// masqueradeMark is kube-proxy's default --iptables-masquerade-bit (14).
const masqueradeMark = 0x4000

// largeClusterEndpoints is kube-proxy's threshold for "large cluster mode":
// above this many endpoints in total, its iptables rules carry fewer
// comments (the restore input gets shorter).
const largeClusterEndpoints = 1000

var (
	// ErrInvalidOptions reports Options that Install cannot build a
	// ruleset from.
	ErrInvalidOptions = errors.New("invalid kube-proxy ruleset options")
	// ErrExists reports kube-proxy objects already in the namespace.
	ErrExists = errors.New("kube-proxy rules already present")
	// ErrLoad reports that iptables-restore or nft rejected the ruleset or
	// could not run.
	ErrLoad = errors.New("loading the kube-proxy ruleset failed")
)

// Service is one Service port, with its endpoints.
type Service struct {
	// Name is the Service's "namespace/name"; each part a DNS label
	// (lower-case letters, digits, '-', at most 63).
	Name string
	// PortName is the port's name in the Service ("" for a single-port
	// Service); it enters the chain names as in kube-proxy.
	PortName string
	// VIP is the ClusterIP (IPv4).
	VIP netip.Addr
	// Port is the Service port on the VIP.
	Port uint16
	// Protocol is TCP or UDP.
	Protocol string
	// NodePort, when not 0, also exposes the Service on that port of the
	// node's local addresses.
	NodePort uint16
	// TargetPort is the backends' port; 0 means Port.
	TargetPort uint16
	// Backends are the endpoints' IPv4 addresses, at least one, no
	// repeats. Order matters as in kube-proxy: it is the order of the
	// statistic rules and of the numgen map.
	Backends []netip.Addr
}

// Options says what ruleset to install where.
type Options struct {
	// Netns is the network namespace to install in: a name under
	// /run/netns or a path. Required (the host's own namespace is never
	// assumed).
	Netns string
	// Mode is ModeIPTables (default) or ModeNFTables.
	Mode Mode
	// IPTables is the iptables variant for ModeIPTables: IPTablesDefault
	// (default) or IPTablesLegacy.
	IPTables string
	// ClusterCIDR is kube-proxy's --cluster-cidr: clients outside it are
	// masqueraded. The zero Prefix means none, as kube-proxy without
	// --cluster-cidr: only hairpin traffic and NodePorts are masqueraded.
	ClusterCIDR netip.Prefix
	// Services are the Service ports to proxy.
	Services []Service
	// NoFlush makes ModeIPTables always load with `iptables-restore
	// --noflush`, as kube-proxy does. By default Install uses --noflush
	// only when the nat or filter table already holds something; into
	// tables that hold nothing but empty built-in chains a plain restore
	// gives the same result, and with iptables-nft (1.8.9) --noflush costs
	// time quadratic in the number of chains (minutes at 10,000 Services).
	NoFlush bool
	// NFTBatch, when > 0, makes ModeNFTables load in several transactions:
	// the table with its fixed chains and maps, then NFTBatch Services at
	// a time. 0 (default) loads everything in one transaction, as
	// kube-proxy's cold start does; on this kernel (6.18) that costs time
	// quadratic in the number of Services, since binding each Service's
	// anonymous vmap walks the whole transaction: 23 s at 10,000. Batches
	// of 1000 avoid that part (13 s at 10,000), but every new set still
	// walks the table's list of sets, so loading stays superlinear (75,000
	// Services took 16 minutes). See README.md.
	NFTBatch int
	// Logger receives a line per load and removal (debug). Default:
	// discard.
	Logger *slog.Logger
}

var (
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	portName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$`)
)

// maxReported bounds how many problems an error lists; scale runs can have
// a hundred thousand of the same mistake.
const maxReported = 10

// withDefaults fills in defaults and reports every problem together (the
// first maxReported of them, and how many more).
func (o Options) withDefaults() (Options, error) {
	if o.Mode == "" {
		o.Mode = ModeIPTables
	}
	if o.IPTables == "" {
		o.IPTables = IPTablesDefault
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	more := 0
	add := func(err error) {
		if len(errs) < maxReported {
			errs = append(errs, err)
		} else {
			more++
		}
	}
	if o.Netns == "" {
		add(errors.New("netns: empty; name the namespace to install in (e.g. the bed's b.Node.Netns)"))
	}
	if o.Mode != ModeIPTables && o.Mode != ModeNFTables {
		add(fmt.Errorf("mode %q: want %q or %q", o.Mode, ModeIPTables, ModeNFTables))
	}
	if o.IPTables != IPTablesDefault && o.IPTables != IPTablesLegacy {
		add(fmt.Errorf("iptables %q: want %q or %q", o.IPTables, IPTablesDefault, IPTablesLegacy))
	}
	if o.ClusterCIDR.IsValid() {
		if !o.ClusterCIDR.Addr().Is4() {
			add(fmt.Errorf("cluster CIDR %s: want IPv4", o.ClusterCIDR))
		} else if o.ClusterCIDR != o.ClusterCIDR.Masked() {
			add(fmt.Errorf("cluster CIDR %s: host bits set; did you mean %s?", o.ClusterCIDR, o.ClusterCIDR.Masked()))
		}
	}
	if len(o.Services) == 0 {
		add(errors.New("services: none; give at least one (Synthetic makes many)"))
	}
	if o.NFTBatch < 0 {
		add(fmt.Errorf("nft batch %d: want 0 (one transaction) or more", o.NFTBatch))
	}
	type frontend struct {
		addr  netip.Addr
		proto string
		port  uint16
	}
	frontends := make(map[frontend]string, len(o.Services))
	nodePorts := map[frontend]string{}
	names := make(map[string]bool, len(o.Services))
	svcs := make([]Service, len(o.Services))
	for i, s := range o.Services {
		if s.TargetPort == 0 {
			s.TargetPort = s.Port
		}
		svcs[i] = s
		where := fmt.Sprintf("service %d (%q)", i, s.Name)
		ns, name, ok := strings.Cut(s.Name, "/")
		if !ok || !dnsLabel.MatchString(ns) || !dnsLabel.MatchString(name) {
			add(fmt.Errorf("%s: name: want namespace/name, each a DNS label", where))
		}
		if s.PortName != "" && !portName.MatchString(s.PortName) {
			add(fmt.Errorf("%s: port name %q: want up to 15 of [a-z0-9-], not starting or ending with '-'", where, s.PortName))
		}
		if s.Protocol != TCP && s.Protocol != UDP {
			add(fmt.Errorf("%s: protocol %q: want %q or %q", where, s.Protocol, TCP, UDP))
		}
		id := s.Name + ":" + s.PortName + "/" + s.Protocol
		if names[id] {
			add(fmt.Errorf("%s: port %q/%s appears twice; give the ports distinct PortNames", where, s.PortName, s.Protocol))
		}
		names[id] = true
		if !s.VIP.Is4() {
			add(fmt.Errorf("%s: VIP %v: want an IPv4 address", where, s.VIP))
		}
		if s.Port == 0 {
			add(fmt.Errorf("%s: port 0", where))
		}
		fe := frontend{s.VIP, s.Protocol, s.Port}
		if other, dup := frontends[fe]; dup {
			add(fmt.Errorf("%s: %s:%d/%s is also %s", where, s.VIP, s.Port, s.Protocol, other))
		} else {
			frontends[fe] = s.Name
		}
		if s.NodePort != 0 {
			np := frontend{proto: s.Protocol, port: s.NodePort}
			if other, dup := nodePorts[np]; dup {
				add(fmt.Errorf("%s: node port %d/%s is also %s's", where, s.NodePort, s.Protocol, other))
			} else {
				nodePorts[np] = s.Name
			}
		}
		if len(s.Backends) == 0 {
			add(fmt.Errorf("%s: no backends; kube-proxy would reject, this bench needs at least one", where))
		}
		seen := make(map[netip.Addr]bool, len(s.Backends))
		for _, b := range s.Backends {
			switch {
			case !b.Is4():
				add(fmt.Errorf("%s: backend %v: want an IPv4 address", where, b))
			case seen[b]:
				add(fmt.Errorf("%s: backend %s twice", where, b))
			}
			seen[b] = true
		}
	}
	o.Services = svcs
	if len(errs) > 0 {
		if more > 0 {
			errs = append(errs, fmt.Errorf("… and %d more problems", more))
		}
		return o, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return o, nil
}

// Ruleset is a loaded ruleset. Its exported fields describe it; treat them
// as read-only.
type Ruleset struct {
	// Netns and Mode are where and how it was installed.
	Netns string
	Mode  Mode
	// IPTables is the iptables variant (ModeIPTables only).
	IPTables string
	// Services is how many Service ports it proxies; Endpoints how many
	// backends in all.
	Services  int
	Endpoints int
	// NoFlush says whether iptables-restore ran with --noflush
	// (ModeIPTables only; see Options.NoFlush).
	NoFlush bool
	// Bytes is the size of the iptables-restore input or nft script(s).
	Bytes int
	// Loads is how many iptables-restore or nft calls loaded it: 1, or
	// more with Options.NFTBatch.
	Loads int
	// LoadTime is how long those calls took, in all.
	LoadTime time.Duration

	// createdTables are the tables (iptables on nf_tables: "nat",
	// "filter") Install brought into being, which Remove deletes again
	// once they are empty.
	createdTables []string
	log           *slog.Logger
}

// Render returns what Install loads for o: the iptables-restore --noflush
// input (ModeIPTables; into empty tables Install adds the built-in chains
// and drops --noflush), or the nft script (ModeNFTables; with NFTBatch,
// the batches one after the other).
func Render(o Options) ([]byte, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("kube-proxy ruleset: %w", err)
	}
	if o.Mode == ModeNFTables {
		return bytes.Join(renderNFTables(o, o.NFTBatch), nil), nil
	}
	return renderIPTables(o, false), nil
}

// Install validates o, checks that o.Netns holds no kube-proxy objects
// yet, and loads the ruleset with one iptables-restore or nft call. On
// failure nothing of it stays behind.
func Install(ctx context.Context, o Options) (_ *Ruleset, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("kube-proxy ruleset: %w", err)
	}
	fail := func(err error) error {
		return fmt.Errorf("kube-proxy ruleset in %s (%s): %w", o.Netns, o.Mode, err)
	}
	left, err := Leftovers(ctx, o.Netns)
	if err != nil {
		return nil, fail(err)
	}
	if len(left) > 0 {
		return nil, fail(fmt.Errorf("%w: %s (Remove the earlier ruleset, or kproxy.Cleanup the namespace)", ErrExists, summarize(left)))
	}
	r := &Ruleset{Netns: o.Netns, Mode: o.Mode, Services: len(o.Services), log: o.Logger}
	for _, s := range o.Services {
		r.Endpoints += len(s.Backends)
	}
	var inputs [][]byte
	var loader string
	var args []string
	if o.Mode == ModeNFTables {
		inputs = renderNFTables(o, o.NFTBatch)
		loader, args = "nft", []string{"-f", "-"}
	} else {
		r.IPTables = o.IPTables
		if r.createdTables, err = missingXTablesTables(ctx, o.Netns, o.IPTables); err != nil {
			return nil, fail(err)
		}
		empty, err := tablesOnlyBuiltin(ctx, o.Netns, o.IPTables)
		if err != nil {
			return nil, fail(err)
		}
		r.NoFlush = o.NoFlush || !empty
		inputs = [][]byte{renderIPTables(o, !r.NoFlush)}
		loader, args = o.IPTables+"-restore", restoreArgs(r.NoFlush)
	}
	defer func() {
		if err != nil {
			if rerr := r.Remove(context.WithoutCancel(ctx)); rerr != nil {
				err = errors.Join(err, fmt.Errorf("and removing what was loaded: %w", rerr))
			}
		}
	}()
	for _, in := range inputs {
		r.Bytes += len(in)
		start := time.Now()
		_, err = runIn(ctx, o.Netns, in, loader, args...)
		r.LoadTime += time.Since(start)
		r.Loads++
		if err != nil {
			return nil, fail(fmt.Errorf("%w: %w", ErrLoad, explainLine(err, in)))
		}
	}
	r.log.Debug("kproxy: ruleset loaded", "netns", r.Netns, "mode", r.Mode, "services", r.Services,
		"endpoints", r.Endpoints, "bytes", r.Bytes, "loads", r.Loads, "noflush", r.NoFlush, "took", r.LoadTime)
	return r, nil
}

// Remove deletes the ruleset: in ModeIPTables every KUBE-* chain of the
// nat and filter tables and every rule that jumps to one (the jumps from
// PREROUTING, OUTPUT, POSTROUTING, INPUT and FORWARD included), then the
// tables themselves if Install created them and they are empty; in
// ModeNFTables the table ip kube-proxy. Repeating it is fine.
func (r *Ruleset) Remove(ctx context.Context) error {
	start := time.Now()
	var err error
	if r.Mode == ModeNFTables {
		err = removeNFTables(ctx, r.Netns)
	} else {
		err = removeIPTables(ctx, r.Netns, r.IPTables)
		if err == nil {
			err = deleteEmptyTables(ctx, r.Netns, r.IPTables, r.createdTables)
		}
	}
	if err != nil {
		return fmt.Errorf("remove kube-proxy ruleset from %s (%s): %w", r.Netns, r.Mode, err)
	}
	r.log.Debug("kproxy: ruleset removed", "netns", r.Netns, "mode", r.Mode, "took", time.Since(start))
	return nil
}

// Cleanup removes every kube-proxy object from netns, whoever made it: the
// table ip kube-proxy, and the KUBE-* chains (and the rules jumping to
// them) of both iptables variants. For what a crashed run left; a missing
// namespace is an error, a clean one is fine.
func Cleanup(ctx context.Context, netns string) error {
	errs := []error{removeNFTables(ctx, netns), removeIPTables(ctx, netns, IPTablesDefault)}
	if legacyLoaded() {
		errs = append(errs, removeIPTables(ctx, netns, IPTablesLegacy))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up kube-proxy rules in %s: %w", netns, err)
	}
	return nil
}

// Leftovers lists the kube-proxy objects in netns, one line each: "nft
// table ip kube-proxy", "iptables nat chain KUBE-SERVICES", "iptables nat
// rule -A PREROUTING … -j KUBE-SERVICES", the same with iptables-legacy. An
// empty list means the namespace is clean.
func Leftovers(ctx context.Context, netns string) ([]string, error) {
	var left []string
	out, err := runIn(ctx, netns, nil, "nft", "list", "tables")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) == "table ip "+nftTable {
			left = append(left, "nft table ip "+nftTable)
		}
	}
	variants := []string{IPTablesDefault}
	if legacyLoaded() {
		variants = append(variants, IPTablesLegacy)
	}
	for _, v := range variants {
		save, err := runIn(ctx, netns, nil, v+"-save")
		if err != nil {
			return nil, err
		}
		for _, t := range parseSave(save) {
			for _, c := range t.kubeChains {
				left = append(left, fmt.Sprintf("%s %s chain %s", v, t.name, c))
			}
			for _, j := range t.jumps {
				left = append(left, fmt.Sprintf("%s %s rule %s", v, t.name, j))
			}
		}
	}
	return left, nil
}

// summarize shortens a leftover list for an error message.
func summarize(left []string) string {
	if len(left) <= 3 {
		return strings.Join(left, "; ")
	}
	return fmt.Sprintf("%s; … (%d objects)", strings.Join(left[:3], "; "), len(left))
}

// runIn runs a command inside netns (the process is started from a thread
// that joined it), feeding it stdin when not nil, and returns its stdout.
// A failure names the command and carries its stderr.
func runIn(ctx context.Context, netns string, stdin []byte, name string, args ...string) ([]byte, error) {
	var out []byte
	err := bed.InNetns(netns, func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			if errors.Is(err, exec.ErrNotFound) {
				return fmt.Errorf("%s not found: install it (Debian: apt-get install iptables nftables)", name)
			}
			msg := strings.TrimSpace(stderr.String())
			if len(msg) > 2000 {
				msg = msg[:2000] + " …"
			}
			return &cmdError{cmd: name + " " + strings.Join(args, " "), err: err, stderr: msg}
		}
		out = stdout.Bytes()
		return nil
	})
	return out, err
}

// cmdError is a failed command: what ran, how it ended and what it said.
type cmdError struct {
	cmd    string
	err    error
	stderr string
}

func (e *cmdError) Error() string { return fmt.Sprintf("%s: %v: %s", e.cmd, e.err, e.stderr) }
func (e *cmdError) Unwrap() error { return e.err }

// failedLine finds the input line number iptables-restore ("line 12
// failed") or nft ("/dev/stdin:12:3-9: Error") blames.
var failedLine = regexp.MustCompile(`(?:line (\d+) failed|stdin:(\d+):)`)

// explainLine appends the input line a loader blamed to its error.
func explainLine(err error, text []byte) error {
	var ce *cmdError
	if !errors.As(err, &ce) {
		return err
	}
	m := failedLine.FindStringSubmatch(ce.stderr)
	if m == nil {
		return err
	}
	n, _ := strconv.Atoi(m[1] + m[2])
	lines := bytes.Split(text, []byte("\n"))
	if n < 1 || n > len(lines) {
		return err
	}
	return fmt.Errorf("%w (input line %d: %s)", err, n, lines[n-1])
}
