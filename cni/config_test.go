package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		wantCode uint     // 0: no error
		wantMsgs []string // substrings of the error's details
		check    func(t *testing.T, c *Config)
	}{
		{
			name: "defaults 1.1.0",
			in:   `{"cniVersion":"1.1.0","name":"pods","type":"trunkline"}`,
			check: func(t *testing.T, c *Config) {
				if c.AgentSocket != DefaultAgentSocket || c.MTU != DefaultMTU || c.IPAM != nil || c.PrevResult != nil {
					t.Errorf("defaults not applied: %+v", c)
				}
			},
		},
		{
			name: "all fields 1.0.0",
			in: `{"cniVersion":"1.0.0","name":"pods","type":"trunkline","mtu":9000,"agentSocket":"/run/x/../y.sock",
				"ipam":{"type":"host-local"},
				"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.1.2.3/32","interface":0}]}}`,
			check: func(t *testing.T, c *Config) {
				if c.MTU != 9000 || c.AgentSocket != "/run/y.sock" || string(c.IPAM) != `{"type":"host-local"}` {
					t.Errorf("fields: %+v", c)
				}
				r, err := types100.GetResult(c.PrevResult)
				if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.1.2.3/32" {
					t.Errorf("prevResult = %+v, %v", c.PrevResult, err)
				}
			},
		},
		{
			name: "0.4.0 with prevResult without version",
			in:   `{"cniVersion":"0.4.0","name":"pods","type":"trunkline","mtu":576,"prevResult":{"ips":[{"version":"4","address":"10.1.2.3/32"}]}}`,
			check: func(t *testing.T, c *Config) {
				if c.MTU != 576 {
					t.Errorf("mtu = %d", c.MTU)
				}
				if _, ok := c.PrevResult.(*types040.Result); !ok || c.PrevResult.Version() != "0.4.0" {
					t.Errorf("prevResult = %#v", c.PrevResult)
				}
			},
		},
		{name: "0.3.1 rejected", in: `{"cniVersion":"0.3.1","name":"pods","type":"trunkline"}`,
			wantCode: types.ErrIncompatibleCNIVersion, wantMsgs: []string{`cniVersion "0.3.1" is not supported`}},
		{name: "2.0.0 rejected", in: `{"cniVersion":"2.0.0","name":"pods","type":"trunkline"}`,
			wantCode: types.ErrIncompatibleCNIVersion, wantMsgs: []string{`cniVersion "2.0.0"`}},
		{name: "missing version", in: `{"name":"pods","type":"trunkline"}`,
			wantCode: types.ErrIncompatibleCNIVersion, wantMsgs: []string{"cniVersion is missing"}},
		{name: "bad version and more", in: `{"cniVersion":"0.2.0","mtu":100}`,
			wantCode: types.ErrIncompatibleCNIVersion, wantMsgs: []string{`"0.2.0"`, "name is missing", "type is missing", "mtu 100 is out of range 576..9000"}},
		{name: "every problem at once", in: `{"cniVersion":"1.1.0","mtu":9001,"agentSocket":"rel.sock","ipam":[1],"prevResult":{"ips":"x"}}`,
			wantCode: types.ErrInvalidNetworkConfig,
			wantMsgs: []string{"name is missing", "type is missing", "mtu 9001 is out of range", `agentSocket "rel.sock" is not an absolute path`, "ipam must be a JSON object", "prevResult is not a valid 1.1.0 result"}},
		{name: "empty agentSocket", in: `{"cniVersion":"1.1.0","name":"n","type":"t","agentSocket":""}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsgs: []string{"agentSocket is empty"}},
		{name: "not JSON", in: `{"cniVersion":`, wantCode: types.ErrDecodingFailure},
		{name: "mtu wrong type", in: `{"cniVersion":"1.1.0","name":"n","type":"t","mtu":"1500"}`, wantCode: types.ErrDecodingFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.in))
			if tc.wantCode == 0 {
				if err != nil {
					t.Fatalf("ParseConfig: %v", err)
				}
				tc.check(t, c)
				return
			}
			var cerr *types.Error
			if !errors.As(err, &cerr) {
				t.Fatalf("err = %v (%T), want *types.Error code %d", err, err, tc.wantCode)
			}
			if cerr.Code != tc.wantCode {
				t.Errorf("code = %d (%v), want %d", cerr.Code, cerr, tc.wantCode)
			}
			if tc.wantCode == types.ErrIncompatibleCNIVersion && cerr.Msg != "incompatible CNI version" {
				t.Errorf("msg = %q", cerr.Msg)
			}
			for _, m := range tc.wantMsgs {
				if !strings.Contains(cerr.Details, m) {
					t.Errorf("details %q lack %q", cerr.Details, m)
				}
			}
			if c != nil {
				t.Errorf("config returned with an error: %+v", c)
			}
		})
	}
}
