package cni

import (
	"encoding/json"
	"net"
	"net/netip"
	"testing"
)

func testResultInputs() (PodLink, Attachment) {
	hostMAC, _ := net.ParseMAC("8a:1b:2c:3d:4e:5f")
	podMAC, _ := net.ParseMAC("02:00:0a:64:01:05")
	link := PodLink{HostVeth: "tl538f587a236", HostVethMAC: hostMAC, HostIfindex: 42,
		PodIfname: "eth0", PodMAC: podMAC, PodIfindex: 2, MTU: 1500}
	a := Attachment{VLAN: 100, IP: netip.MustParsePrefix("10.100.1.5/24"), MAC: podMAC,
		Gateway: netip.MustParseAddr("169.254.1.1")}
	return link, a
}

func TestResultJSON(t *testing.T) {
	link, a := testResultInputs()
	for _, tc := range []struct{ version, want string }{
		{"0.4.0", `{"cniVersion":"0.4.0",
			"interfaces":[{"name":"tl538f587a236","mac":"8a:1b:2c:3d:4e:5f"},
				{"name":"eth0","mac":"02:00:0a:64:01:05","sandbox":"/var/run/netns/p1"}],
			"ips":[{"version":"4","interface":1,"address":"10.100.1.5/32","gateway":"169.254.1.1"}],
			"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
			"dns":{}}`},
		{"1.0.0", `{"cniVersion":"1.0.0",
			"interfaces":[{"name":"tl538f587a236","mac":"8a:1b:2c:3d:4e:5f","mtu":1500},
				{"name":"eth0","mac":"02:00:0a:64:01:05","mtu":1500,"sandbox":"/var/run/netns/p1"}],
			"ips":[{"interface":1,"address":"10.100.1.5/32","gateway":"169.254.1.1"}],
			"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}`},
		{"1.1.0", `{"cniVersion":"1.1.0",
			"interfaces":[{"name":"tl538f587a236","mac":"8a:1b:2c:3d:4e:5f","mtu":1500},
				{"name":"eth0","mac":"02:00:0a:64:01:05","mtu":1500,"sandbox":"/var/run/netns/p1"}],
			"ips":[{"interface":1,"address":"10.100.1.5/32","gateway":"169.254.1.1"}],
			"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}`},
	} {
		t.Run(tc.version, func(t *testing.T) {
			res, err := Result(tc.version, link, a, "/var/run/netns/p1", "eth0")
			if err != nil {
				t.Fatal(err)
			}
			if res.Version() != tc.version {
				t.Errorf("version = %s", res.Version())
			}
			got, err := json.Marshal(res)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := normJSON(t, got), normJSON(t, []byte(tc.want)); g != w {
				t.Errorf("JSON\n got %s\nwant %s", g, w)
			}
		})
	}
	if _, err := Result("0.3.1", link, a, "/var/run/netns/p1", "eth0"); err == nil {
		t.Error("Result for 0.3.1 succeeded")
	}
}

// normJSON re-encodes JSON with sorted keys and no spaces.
func normJSON(t *testing.T, b []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
