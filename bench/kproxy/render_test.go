package kproxy

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var (
	ip    = netip.MustParseAddr
	pods  = []netip.Addr{ip("10.100.1.1"), ip("10.100.1.2")}
	cidr  = netip.MustParsePrefix("10.100.0.0/16")
	three = []netip.Addr{ip("10.180.0.1"), ip("10.180.0.2"), ip("10.180.0.3")}
)

// fixture is a NodePort Service with two backends and a named UDP port
// with one.
func fixture(m Mode) Options {
	return Options{Netns: "tlkp-x", Mode: m, ClusterCIDR: cidr, Services: []Service{
		{Name: "default/web", VIP: ip("10.96.0.10"), Port: 80, NodePort: 30080, Protocol: TCP, TargetPort: 8080, Backends: pods},
		{Name: "default/echo-udp", PortName: "dns", VIP: ip("10.96.0.12"), Port: 53, Protocol: UDP, TargetPort: 9000, Backends: pods[:1]},
	}}
}

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./bench/kproxy -run %s -update` to write it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what Render gives; diff it with:\n%s", path, got)
	}
}

func mustRender(t *testing.T, o Options) string {
	t.Helper()
	b, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// lines returns the lines of text that start with prefix.
func lines(text, prefix string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func TestRenderIPTablesGolden(t *testing.T) {
	golden(t, "iptables.golden", []byte(mustRender(t, fixture(ModeIPTables))))
}

func TestRenderNFTablesGolden(t *testing.T) {
	golden(t, "nftables.golden", []byte(mustRender(t, fixture(ModeNFTables))))
}

// kube-proxy's own test fixtures name these chains so: the hashes match.
func TestChainNamesAreKubeProxys(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{svcChain("ns1/svc1:p80", "tcp"), "KUBE-SVC-XPGD46QRK7WJZT7O"},
		{sepChain("ns1/svc1:p80", "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ"},
		{"service-" + nftName("ns1/svc1/tcp/p80"), "service-ULMVA6XW-ns1/svc1/tcp/p80"},
		{"endpoint-" + nftName("ns1/svc1/tcp/p80__10.180.0.1/80"), "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
	}
	o := Options{Netns: "x", Services: []Service{{Name: "ns1/svc1", PortName: "p80", VIP: ip("172.30.0.41"), Port: 80, Protocol: TCP, Backends: three[:1]}}}
	text := mustRender(t, o)
	for _, want := range []string{
		"-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41/32 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\n",
		"-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j KUBE-SEP-SXIVWICOYRO3J4NJ\n",
		"-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no %q in\n%s", want, text)
		}
	}
}

func TestRenderIPTablesLayout(t *testing.T) {
	o := fixture(ModeIPTables)
	o.Services = append(o.Services, Service{Name: "ns/three", VIP: ip("10.96.0.20"), Port: 443, Protocol: TCP, Backends: three})
	text := mustRender(t, o)

	// The jumps from the built-in chains.
	for _, want := range []string{
		`-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`-I OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
		`-I POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`,
		`-I FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`,
	} {
		if len(lines(text, want)) != 1 {
			t.Errorf("want one %q", want)
		}
	}
	// Masquerade: mark, then MASQUERADE --random-fully what is marked.
	for _, want := range []string{
		"-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
		"-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
		`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`,
	} {
		if len(lines(text, want)) != 1 {
			t.Errorf("want one %q", want)
		}
	}
	// KUBE-SERVICES: one rule per Service port, then the NodePorts last.
	svcs := lines(text, "-A KUBE-SERVICES ")
	if len(svcs) != 4 || !strings.HasSuffix(svcs[3], "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS") {
		t.Errorf("KUBE-SERVICES:\n%s", strings.Join(svcs, "\n"))
	}
	// n backends: probabilities 1/n, 1/(n-1), …, then an unconditional
	// jump.
	sc := svcChain("ns/three", "tcp")
	picks := lines(text, "-A "+sc+" ")
	if len(picks) != 4 || !strings.Contains(picks[0], "! -s 10.100.0.0/16 -j KUBE-MARK-MASQ") {
		t.Fatalf("%s:\n%s", sc, strings.Join(picks, "\n"))
	}
	for i, p := range []string{"--probability 0.3333333333 ", "--probability 0.5000000000 ", ""} {
		l := picks[i+1]
		if p != "" && !strings.Contains(l, "-m statistic --mode random "+p) || p == "" && strings.Contains(l, "statistic") {
			t.Errorf("pick %d: %s", i, l)
		}
		sep := sepChain("ns/three", "tcp", three[i].String()+":443")
		if !strings.HasSuffix(l, "-j "+sep) {
			t.Errorf("pick %d: %s, want -j %s", i, l, sep)
		}
		got := lines(text, "-A "+sep+" ")
		if len(got) != 2 || !strings.Contains(got[0], "-s "+three[i].String()+"/32 -j KUBE-MARK-MASQ") ||
			!strings.HasSuffix(got[1], "-m tcp -p tcp -j DNAT --to-destination "+three[i].String()+":443") {
			t.Errorf("%s:\n%s", sep, strings.Join(got, "\n"))
		}
	}
	// The NodePort marks and enters the Service chain.
	ext := extChain("default/web", "tcp")
	if got := lines(text, "-A KUBE-NODEPORTS "); len(got) != 1 || !strings.Contains(got[0], "--dport 30080 -j "+ext) {
		t.Errorf("KUBE-NODEPORTS: %q", got)
	}
	if got := lines(text, "-A "+ext+" "); len(got) != 2 || !strings.HasSuffix(got[1], "-j "+svcChain("default/web", "tcp")) {
		t.Errorf("%s: %q", ext, got)
	}
	// Every chain used is declared once.
	declared := map[string]int{}
	for _, l := range lines(text, ":KUBE-") {
		declared[strings.Fields(l)[0][1:]]++
	}
	for _, l := range lines(text, "-A KUBE-") {
		c := strings.Fields(l)[1]
		if declared[c] == 0 {
			t.Errorf("rule in undeclared chain %s", c)
		}
	}
	if declared["KUBE-SERVICES"] != 2 { // filter and nat
		t.Errorf("KUBE-SERVICES declared %d times", declared["KUBE-SERVICES"])
	}
	// Without a cluster CIDR, no masquerade of off-cluster clients.
	o.ClusterCIDR = netip.Prefix{}
	if text := mustRender(t, o); strings.Contains(text, "! -s ") {
		t.Error("masquerade rule without a cluster CIDR")
	}
	// A plain restore declares the built-in chains.
	o2, _ := o.withDefaults()
	plain := string(renderIPTables(o2, true))
	for _, want := range []string{":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]"} {
		if len(lines(plain, want)) != 1 {
			t.Errorf("plain restore: want one %q", want)
		}
	}
}

// Above 1000 endpoints kube-proxy leaves the comments out of the Service
// and endpoint chains.
func TestLargeClusterComments(t *testing.T) {
	for _, c := range []struct {
		n        int
		comments bool
	}{{500, true}, {501, false}} {
		svcs, err := Synthetic(c.n, SyntheticOptions{Backends: pods})
		if err != nil {
			t.Fatal(err)
		}
		text := mustRender(t, Options{Netns: "x", ClusterCIDR: cidr, Services: svcs})
		sep := sepChain("bench/svc-0", "tcp", "10.100.1.1:80")
		got := lines(text, "-A "+sep+" ")
		if len(got) != 2 || strings.Contains(got[1], "-m comment") != c.comments {
			t.Errorf("%d Services: %q", c.n, got)
		}
		if n := len(lines(text, "-A KUBE-SERVICES -m comment --comment \"bench/")); n != c.n {
			t.Errorf("%d Services: %d commented KUBE-SERVICES rules", c.n, n)
		}
	}
}

func TestRenderNFTablesLayout(t *testing.T) {
	o := fixture(ModeNFTables)
	text := mustRender(t, o)
	svc := "service-" + nftName("default/web/tcp/")
	ext := "external-" + nftName("default/web/tcp/")
	ep1 := "endpoint-" + nftName("default/web/tcp/__10.100.1.1/8080")
	ep2 := "endpoint-" + nftName("default/web/tcp/__10.100.1.2/8080")
	pre := "add rule ip kube-proxy "
	for _, want := range []string{
		"add table ip kube-proxy",
		"add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
		"add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
		pre + "nat-prerouting jump services",
		pre + "nat-output jump services",
		pre + "nat-postrouting jump masquerading",
		pre + "services ip daddr . meta l4proto . th dport vmap @service-ips",
		pre + "services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
		pre + "masquerading masquerade fully-random",
		"add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto " + svc + " }",
		"add element ip kube-proxy service-nodeports { tcp . 30080 : goto " + ext + " }",
		pre + svc + " ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.100.0.0/16 jump mark-for-masquerade",
		pre + svc + " numgen random mod 2 vmap { 0 : goto " + ep1 + " , 1 : goto " + ep2 + " }",
		pre + ext + " jump mark-for-masquerade",
		pre + ext + " goto " + svc,
		pre + ep2 + " ip saddr 10.100.1.2 jump mark-for-masquerade",
		pre + ep2 + " meta l4proto tcp dnat to 10.100.1.2:8080",
	} {
		if len(lines(text, want)) != 1 {
			t.Errorf("want one %q", want)
		}
	}
	// Every chain is declared before anything names it.
	declared := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[0] == "add" && f[1] == "chain" {
			declared[f[4]] = true
			continue
		}
		for i, w := range f {
			if (w == "goto" || w == "jump") && i+1 < len(f) && !declared[f[i+1]] {
				t.Errorf("%s named before it is declared: %s", f[i+1], l)
			}
		}
		if len(f) >= 5 && f[1] == "rule" && !declared[f[4]] {
			t.Errorf("rule in undeclared chain: %s", l)
		}
	}
	// Batches: the fixed part, then the Services n at a time; together
	// the same script.
	o.NFTBatch = 1
	o2, _ := o.withDefaults()
	parts := renderNFTables(o2, 1)
	if len(parts) != 3 || !bytes.Equal(bytes.Join(parts, nil), []byte(text)) {
		t.Errorf("%d batches; joined equal: %v", len(parts), bytes.Equal(bytes.Join(parts, nil), []byte(text)))
	}
	if bytes.Contains(parts[0], []byte("add chain ip kube-proxy endpoint-")) || !bytes.HasPrefix(parts[1], []byte("add chain ip kube-proxy endpoint-")) {
		t.Errorf("batch 0:\n%s\nbatch 1:\n%s", parts[0], parts[1])
	}
}

func TestValidation(t *testing.T) {
	good := fixture(ModeIPTables)
	if _, err := Render(good); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edit func(o *Options)
		want []string
	}{
		{"no netns", func(o *Options) { o.Netns = "" }, []string{"netns: empty"}},
		{"mode", func(o *Options) { o.Mode = "ipvs" }, []string{`mode "ipvs"`}},
		{"variant", func(o *Options) { o.IPTables = "ip6tables" }, []string{`iptables "ip6tables"`}},
		{"cidr", func(o *Options) { o.ClusterCIDR = netip.MustParsePrefix("10.100.1.0/16") }, []string{"did you mean 10.100.0.0/16"}},
		{"cidr v6", func(o *Options) { o.ClusterCIDR = netip.MustParsePrefix("fd00::/64") }, []string{"want IPv4"}},
		{"no services", func(o *Options) { o.Services = nil }, []string{"services: none"}},
		{"batch", func(o *Options) { o.NFTBatch = -1 }, []string{"nft batch -1"}},
		{"everything at once", func(o *Options) {
			o.Services = []Service{
				{Name: "web", VIP: ip("10.96.0.10"), Port: 80, Protocol: "SCTP", Backends: pods},
				{Name: "a/b", PortName: "-x", VIP: ip("::1"), Protocol: TCP},
				{Name: "a/c", VIP: ip("10.96.0.1"), Port: 1, NodePort: 30000, Protocol: TCP, Backends: []netip.Addr{pods[0], pods[0]}},
				{Name: "a/d", VIP: ip("10.96.0.1"), Port: 1, NodePort: 30000, Protocol: TCP, Backends: []netip.Addr{ip("fe80::1")}},
				{Name: "a/d", VIP: ip("10.96.0.2"), Port: 1, Protocol: TCP, Backends: pods},
			}
		}, []string{
			`service 0 ("web"): name: want namespace/name`,
			`service 0 ("web"): protocol "SCTP"`,
			`service 1 ("a/b"): port name "-x"`,
			`service 1 ("a/b"): VIP ::1`,
			`service 1 ("a/b"): port 0`,
			`service 1 ("a/b"): no backends`,
			`service 2 ("a/c"): backend 10.100.1.1 twice`,
			`service 3 ("a/d"): 10.96.0.1:1/TCP is also a/c`,
			`service 3 ("a/d"): node port 30000/TCP is also a/c's`,
			`service 3 ("a/d"): backend fe80::1`,
			`… and 1 more problems`,
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := fixture(ModeIPTables)
			c.edit(&o)
			_, err := Render(o)
			if !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("err %v, want ErrInvalidOptions", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestSynthetic(t *testing.T) {
	svcs, err := Synthetic(300, SyntheticOptions{Backends: pods, Protocol: UDP, Port: 53, TargetPort: 9000})
	if err != nil {
		t.Fatal(err)
	}
	last := svcs[299]
	if last.Name != "bench/svc-299" || last.VIP != ip("10.96.2.43") || last.Port != 53 || last.TargetPort != 9000 || last.Protocol != UDP || len(last.Backends) != 2 {
		t.Errorf("%+v", last)
	}
	if _, err := Render(Options{Netns: "x", Services: svcs}); err != nil {
		t.Error(err)
	}
	for _, c := range []struct {
		n    int
		o    SyntheticOptions
		want string
	}{
		{0, SyntheticOptions{Backends: pods}, "n 0"},
		{1, SyntheticOptions{}, "backends: none"},
		{2, SyntheticOptions{Backends: pods, FirstVIP: ip("255.255.255.255")}, "run past 255.255.255.255"},
	} {
		_, err := Synthetic(c.n, c.o)
		if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Synthetic(%d, %+v): %v, want %q", c.n, c.o, err, c.want)
		}
	}
}

// An iptables-save of a namespace where something else also uses nat.
const sharedSave = `# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j DOCKER
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AAAA
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
COMMIT
`

func TestRemovalInput(t *testing.T) {
	tables := parseSave([]byte(sharedSave))
	if len(tables) != 3 || tables[0].foreign || !tables[1].foreign || tables[2].hasKube() {
		t.Fatalf("%+v", tables)
	}
	// Something else in nat: remove surgically, with --noflush.
	in, noflush := removalInput(tables)
	want := `*filter
:KUBE-FORWARD - [0:0]
-D FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-X KUBE-FORWARD
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-X KUBE-SERVICES
COMMIT
`
	if !noflush || string(in) != want {
		t.Errorf("noflush %v, input:\n%s\nwant:\n%s", noflush, in, want)
	}
	// Only kube-proxy's: restore the tables empty.
	in, noflush = removalInput(tables[:1])
	want = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
	if noflush || string(in) != want {
		t.Errorf("noflush %v, input:\n%s\nwant:\n%s", noflush, in, want)
	}
	// Nothing of kube-proxy's: nothing to do.
	if in, _ := removalInput(tables[2:]); in != nil {
		t.Errorf("input %q for a clean table", in)
	}
}
