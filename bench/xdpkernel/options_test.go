package xdpkernel

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestOptionsReportEveryProblem(t *testing.T) {
	o := Options{
		TrunkMAC: net.HardwareAddr{1, 2, 3},
		NodeIP:   netip.MustParseAddr("::1"),
		MaxFlows: -1,
		Pods: []Pod{
			{IP: netip.MustParseAddr("10.0.0.1"), VLAN: 101, HostVeth: "h1", MAC: make(net.HardwareAddr, 6), HostVethMAC: make(net.HardwareAddr, 6)},
			{IP: netip.MustParseAddr("10.0.0.1"), VLAN: 101, HostVeth: "h1"},
			{VLAN: 5000},
		},
	}
	_, err := Attach(o)
	if !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("Attach: %v, want ErrInvalidOptions", err)
	}
	for _, want := range []string{
		"no trunk interface", "trunk MAC", "gateway MAC", "node IP", "MaxFlows -1",
		"pod 1: VLAN 101 is pod 0's", "pod 1: IP 10.0.0.1 is pod 0's", "pod 1: MACs", "pod 1: host veth h1 is pod 0's",
		"pod 2: VLAN 5000", "pod 2: IP invalid IP", "pod 2 (invalid IP): no host veth",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if _, err := Attach(Options{}); err == nil || !strings.Contains(err.Error(), "no pods") {
		t.Errorf("Attach with no pods: %v", err)
	}
}

func TestBuildLayout(t *testing.T) {
	a, b := netip.MustParseAddrPort("10.1.0.1:80"), netip.MustParseAddrPort("10.1.0.2:8080")
	svcs := []Service{
		{VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: TCP, Backends: []netip.AddrPort{a, b}},
		{VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: UDP},
		{VIP: netip.MustParseAddr("10.96.0.2"), Port: 53, Protocol: UDP, Backends: []netip.AddrPort{b}},
	}
	l, err := buildLayout(svcs, 3, 3, 100)
	if err != nil {
		t.Fatal(err)
	}
	wantSvc := []xdpKernelSvc{{First: 100, Count: 2}, {First: 102, Count: 0}, {First: 102, Count: 1}}
	for i, w := range wantSvc {
		if l.svcVals[i] != w {
			t.Errorf("service %d: %+v, want %+v", i, l.svcVals[i], w)
		}
	}
	if k := l.svcKeys[0]; addrFrom32(k.Vip) != svcs[0].VIP || be16(k.Port) != 80 || k.Proto != 6 {
		t.Errorf("key 0: %+v", k)
	}
	wantBe := []netip.AddrPort{a, b, b}
	for i, w := range wantBe {
		got := netip.AddrPortFrom(addrFrom32(l.beVals[i].Ip), be16(l.beVals[i].Port))
		if l.beIdx[i] != uint32(100+i) || got != w {
			t.Errorf("backend %d: slot %d %v, want slot %d %v", i, l.beIdx[i], got, 100+i, w)
		}
	}

	for _, tc := range []struct {
		name string
		svcs []Service
		want []string
	}{
		{"too many", append(svcs, svcs[0]), []string{"4 Services: room for 3 (raise Options.MaxServices)", "5 backends in all: room for 3"}},
		{"bad", []Service{
			svcs[0], svcs[0],
			{VIP: netip.MustParseAddr("::1"), Port: 1, Protocol: TCP},
			{VIP: netip.MustParseAddr("10.96.0.3"), Port: 0, Protocol: TCP},
			{VIP: netip.MustParseAddr("10.96.0.3"), Port: 1, Protocol: 1},
			{VIP: netip.MustParseAddr("10.96.0.3"), Port: 1, Protocol: UDP, Backends: []netip.AddrPort{netip.MustParseAddrPort("[::1]:1")}},
		}, []string{"service 1: 10.96.0.1:80/TCP is service 0 too", "service 2: ::1:1/TCP", "service 3", "service 4: 10.96.0.3:1/protocol(1)", "service 5 (10.96.0.3:1/UDP): backend [::1]:1"}},
	} {
		_, err := buildLayout(tc.svcs, 10, 10, 0)
		if tc.name == "too many" {
			_, err = buildLayout(tc.svcs, 3, 3, 0)
		}
		if !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: %v, want ErrInvalidOptions", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error does not say %q:\n%v", tc.name, w, err)
			}
		}
	}

	// A long list of bad Services is cut short.
	bad := make([]Service, 50)
	_, err = buildLayout(bad, 100, 100, 0)
	if n := strings.Count(err.Error(), "\n"); n != maxListedErrors || !strings.Contains(err.Error(), "and 40 more") {
		t.Errorf("%d lines, want %d and a count of the rest:\n%v", n, maxListedErrors, err)
	}
}

func TestEncodings(t *testing.T) {
	for _, a := range []string{"10.96.0.1", "255.0.128.7"} {
		ip := netip.MustParseAddr(a)
		if got := addrFrom32(be32(ip)); got != ip {
			t.Errorf("be32 round trip of %v: %v", ip, got)
		}
	}
	if be16(be16(0x1234)) != 0x1234 {
		t.Error("be16 is not its own inverse")
	}
	var c Counters
	for i, f := range c.fields() {
		if f == nil {
			t.Errorf("counter %d has no field", i)
		}
		*f = 1
	}
	if c.Redirected() != 4 || c.Dropped() != 8 || c.Redirected()+c.Dropped()+c.TrunkPassed+c.PodPassed != uint64(numCounters) {
		t.Errorf("sums: redirected %d, dropped %d", c.Redirected(), c.Dropped())
	}
	if TCP.String() != "TCP" || UDP.String() != "UDP" || Protocol(1).String() != "protocol(1)" {
		t.Error("Protocol.String")
	}
}
