package cni

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Defaults and limits for [Config].
const (
	DefaultAgentSocket = "/run/trunkline/trunkline.sock"
	DefaultMTU         = 1500
	MinMTU             = 576
	MaxMTU             = 9000
)

// SupportedVersions are the CNI spec versions the plugin accepts in its
// network configuration and can produce results for.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// Config is the plugin's network configuration as read from stdin.
type Config struct {
	// Standard CNI fields.
	CNIVersion string
	Name       string
	Type       string
	// IPAM is the raw "ipam" object, nil when absent. trunkline gets
	// addresses from the agent, so it is only carried along.
	IPAM json.RawMessage
	// PrevResult is the parsed "prevResult", nil when absent.
	PrevResult types.Result

	// AgentSocket is the agent's Unix socket ("agentSocket").
	AgentSocket string
	// MTU of both veth ends ("mtu"), MinMTU..MaxMTU.
	MTU int
}

// rawConfig is the JSON shape of Config; pointer fields tell "absent" from
// "zero".
type rawConfig struct {
	CNIVersion  string          `json:"cniVersion"`
	Name        string          `json:"name"`
	Type        string          `json:"type"`
	IPAM        json.RawMessage `json:"ipam,omitempty"`
	PrevResult  json.RawMessage `json:"prevResult,omitempty"`
	AgentSocket *string         `json:"agentSocket,omitempty"`
	MTU         *int            `json:"mtu,omitempty"`
}

// ParseConfig parses and validates the network configuration a runtime
// passes on stdin, applying defaults. Every problem found is reported in one
// *types.Error: its code is types.ErrIncompatibleCNIVersion (1) when the
// cniVersion is missing or not one of SupportedVersions, types.ErrDecodingFailure
// (6) when stdin is not a JSON object, and types.ErrInvalidNetworkConfig (7)
// otherwise.
func ParseConfig(stdin []byte) (*Config, error) {
	var raw rawConfig
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure,
			"cannot decode network configuration", err.Error())
	}
	var problems []string
	code := types.ErrInvalidNetworkConfig
	switch {
	case raw.CNIVersion == "":
		code = types.ErrIncompatibleCNIVersion
		problems = append(problems, fmt.Sprintf("cniVersion is missing; use one of %s", strings.Join(SupportedVersions, ", ")))
	case !slices.Contains(SupportedVersions, raw.CNIVersion):
		code = types.ErrIncompatibleCNIVersion
		problems = append(problems, fmt.Sprintf("cniVersion %q is not supported; use one of %s", raw.CNIVersion, strings.Join(SupportedVersions, ", ")))
	}
	c := &Config{
		CNIVersion:  raw.CNIVersion,
		Name:        raw.Name,
		Type:        raw.Type,
		AgentSocket: DefaultAgentSocket,
		MTU:         DefaultMTU,
	}
	if raw.Name == "" {
		problems = append(problems, "name is missing")
	}
	if raw.Type == "" {
		problems = append(problems, "type is missing")
	}
	if len(raw.IPAM) > 0 && string(raw.IPAM) != "null" {
		if raw.IPAM[0] != '{' {
			problems = append(problems, "ipam must be a JSON object")
		} else {
			c.IPAM = raw.IPAM
		}
	}
	if raw.AgentSocket != nil {
		switch s := *raw.AgentSocket; {
		case s == "":
			problems = append(problems, "agentSocket is empty; leave it out for "+DefaultAgentSocket)
		case !filepath.IsAbs(s):
			problems = append(problems, fmt.Sprintf("agentSocket %q is not an absolute path", s))
		default:
			c.AgentSocket = filepath.Clean(s)
		}
	}
	if raw.MTU != nil {
		if *raw.MTU < MinMTU || *raw.MTU > MaxMTU {
			problems = append(problems, fmt.Sprintf("mtu %d is out of range %d..%d", *raw.MTU, MinMTU, MaxMTU))
		} else {
			c.MTU = *raw.MTU
		}
	}
	// prevResult can only be read once the version is known to be good.
	if len(raw.PrevResult) > 0 && string(raw.PrevResult) != "null" && code != types.ErrIncompatibleCNIVersion {
		prev, err := parsePrevResult(raw.CNIVersion, raw.PrevResult)
		if err != nil {
			problems = append(problems, err.Error())
		} else {
			c.PrevResult = prev
		}
	}
	if len(problems) > 0 {
		msg := "invalid network configuration"
		if code == types.ErrIncompatibleCNIVersion {
			msg = "incompatible CNI version"
		}
		return nil, types.NewError(code, msg, strings.Join(problems, "; "))
	}
	return c, nil
}

// parsePrevResult decodes prevResult as a result of the config's version
// (results before 1.0.0 may not carry their own cniVersion).
func parsePrevResult(cniVersion string, data json.RawMessage) (types.Result, error) {
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("prevResult is not a JSON object: %v", err)
	}
	if v, ok := m["cniVersion"].(string); !ok || v == "" {
		m["cniVersion"] = cniVersion
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("prevResult: %v", err)
	}
	res, err := version.NewResult(cniVersion, b)
	if err != nil {
		return nil, fmt.Errorf("prevResult is not a valid %s result: %v", cniVersion, err)
	}
	return res, nil
}
