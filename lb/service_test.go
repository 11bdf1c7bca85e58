package lb

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

var node = netip.MustParseAddr("10.100.0.2")

func be(last byte, port uint16, ready, local bool) Backend {
	return Backend{IP: [4]byte{10, 100, 1, last}, Port: port, Ready: ready, Serving: true, Local: local}
}

func TestBuildFrontendsAndPick(t *testing.T) {
	specs := []ServiceSpec{{
		Name: "default/web:http", Proto: TCP, Port: 80, NodePort: 30080,
		ClusterIPs:    []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		ExternalIPs:   []netip.Addr{netip.MustParseAddr("198.18.1.1")},
		Backends:      []Backend{be(3, 8080, true, true), be(1, 8080, true, true), be(2, 8080, false, true), be(9, 8080, true, false)},
		ExternalLocal: true,
	}}
	tb, err := Build(node, specs, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tb.Len() != 3 {
		t.Fatalf("%d frontends, want 3", tb.Len())
	}
	e, ok := tb.Lookup(Frontend{IP: [4]byte{10, 96, 0, 10}, Port: 80, Proto: TCP})
	if !ok || e.Kind != ClusterIP || e.External() {
		t.Fatalf("ClusterIP lookup = %+v, %v", e, ok)
	}
	if _, ok := tb.Lookup(Frontend{IP: [4]byte{10, 96, 0, 10}, Port: 80, Proto: UDP}); ok {
		t.Error("UDP matched a TCP frontend")
	}
	np, ok := tb.Lookup(Frontend{IP: node.As4(), Port: 30080, Proto: TCP})
	if !ok || np.Kind != NodePort || !np.External() {
		t.Fatalf("NodePort lookup = %+v, %v", np, ok)
	}
	if !tb.IsVIP([4]byte{198, 18, 1, 1}) || tb.IsVIP(node.As4()) {
		t.Error("VIP set wrong: want the ClusterIP and ExternalIP, not the node IP")
	}
	svc := e.Service
	if got := svc.Backends[0].IP; got != [4]byte{10, 100, 1, 1} {
		t.Errorf("backends not sorted: first %v", got)
	}
	seen := map[int]int{}
	for h := uint64(0); h < 30000; h++ {
		seen[svc.Pick(h*0x9E3779B97F4A7C15, false)]++
	}
	for i, b := range svc.Backends {
		if !b.Ready && seen[i] != 0 {
			t.Errorf("not-ready backend %d picked %d times", i, seen[i])
		}
		if b.Ready && seen[i] == 0 {
			t.Errorf("ready backend %d never picked", i)
		}
	}
	for h := uint64(0); h < 3000; h++ {
		i := svc.Pick(h*0x9E3779B97F4A7C15, true)
		if i < 0 || !svc.Backends[i].Local || !svc.Backends[i].Ready {
			t.Fatalf("external pick %d is not a ready local backend", i)
		}
	}
}

func TestBuildReportsEveryProblem(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	_, err := Build(node, []ServiceSpec{
		{Name: "a", Proto: TCP, Port: 80, ClusterIPs: []netip.Addr{vip}},
		{Name: "b", Proto: TCP, Port: 80, ClusterIPs: []netip.Addr{vip}},
		{Name: "c", Proto: 1, Port: 80},
		{Name: "d", Proto: UDP, Port: 0},
	}, 0)
	if !errors.Is(err, ErrInvalidService) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{`"b": frontend 10.96.0.10:80/tcp is also service "a"`, `"c": protocol 1`, `"d": port 0`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not report %q: %v", want, err)
		}
	}
}

func TestNoReadyBackendPicksNone(t *testing.T) {
	tb, err := Build(node, []ServiceSpec{{Name: "x", Proto: UDP, Port: 53, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.53")},
		Backends: []Backend{be(1, 53, false, true)}}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := tb.Lookup(Frontend{IP: [4]byte{10, 96, 0, 53}, Port: 53, Proto: UDP})
	if i := e.Service.Pick(12345, false); i != -1 {
		t.Errorf("Pick = %d, want -1 (reject)", i)
	}
}
