package cni

import "testing"

// The host veth name must never change: existing pods' veths are found by
// it. It is "tl" + the first 11 hex digits of sha256(containerID/ifname)
// (echo -n abc/eth0 | sha256sum starts 538f587a236).
func TestHostVethNameGolden(t *testing.T) {
	for _, tc := range []struct{ id, ifname, want string }{
		{"abc", "eth0", "tl538f587a236"},
		{"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "eth0", "tldc8ed2ee06e"},
		{"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "net1", "tld20894bbb0d"},
		{"", "", "tl8a5edab2826"},
	} {
		got := HostVethName(tc.id, tc.ifname)
		if got != tc.want {
			t.Errorf("HostVethName(%q, %q) = %q, want %q", tc.id, tc.ifname, got, tc.want)
		}
		if len(got) != 13 {
			t.Errorf("HostVethName(%q, %q) = %q: %d chars, want 13", tc.id, tc.ifname, got, len(got))
		}
	}
}
