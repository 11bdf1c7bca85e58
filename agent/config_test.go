package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExampleConfigIsValid(t *testing.T) {
	c, err := LoadConfig("../examples/trunkline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.validate()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.pods) != 2 || s.pods[1].VLAN != 102 || s.cfg.UMEM.Frames != 20480 {
		t.Errorf("example parsed as %+v", s.cfg)
	}
}

func TestInvalidConfigReportsEveryProblemWithItsPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte(`
trunk: ""
nodeIP: 10.0.0.300
gatewayMAC: "01:00:5e:00:00:01"
queues: 99
xdpMode: turbo
umem: {frameSize: 1000}
pods:
  - {name: a, vlan: 101, ip: 10.1.0.1, mac: "02:00:00:00:00:01", hostVeth: ha}
  - {name: a, vlan: 101, ip: 10.1.0.1, mac: "zz", hostVeth: ""}
  - {name: c, vlan: 4095, ip: "::1", mac: "02:00:00:00:00:03", hostVeth: averyveryverylongname}
`), 0o644)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(c, Options{})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{
		"trunk: required", "nodeIP:", "gatewayMAC:", "queues: 99", "xdpMode:", "umem.frameSize: 1000",
		"pods[1].name: name a is also used by pods[0].name", "pods[1].vlan: VLAN 101 is also used by pods[0].vlan",
		"pods[1].ip: IP 10.1.0.1 is also used", "pods[1].mac:", "pods[1].hostVeth: required",
		"pods[2].vlan: 4095", "pods[2].ip:", "pods[2].hostVeth:",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not report %q:\n%v", want, err)
		}
	}
}

func TestUnknownKeysAreErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "typo.yaml")
	os.WriteFile(path, []byte("trunk: eth1\nnodeIp: 10.0.0.1\n"), 0o644)
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "nodeIp") {
		t.Fatalf("err = %v, want one naming the unknown key nodeIp", err)
	}
}
