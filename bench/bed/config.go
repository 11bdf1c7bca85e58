package bed

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// plainScalar matches the strings written unquoted into the agent's config.
var plainScalar = regexp.MustCompile(`^[A-Za-z0-9/._-]+$`)

// yamlString quotes s unless it is safe as a plain YAML scalar. A Go-quoted
// string is a valid double-quoted YAML scalar.
func yamlString(s string) string {
	if plainScalar.MatchString(s) {
		return s
	}
	return strconv.Quote(s)
}

// agentConfig is the agent's config for this bed, in the schema the agent
// reads (see trunkline.yaml in the bed's state directory).
func (b *Bed) agentConfig() string {
	var s strings.Builder
	fmt.Fprintf(&s, "# written by `trunkline bed up`; run the agent inside netns %s\n", b.Node.Netns)
	fmt.Fprintf(&s, "trunk: %s\n", yamlString(b.Node.Trunk))
	fmt.Fprintf(&s, "nodeIP: %s\n", b.Node.IP)
	fmt.Fprintf(&s, "gatewayMAC: %q\n", b.Wire.MAC.String())
	fmt.Fprintf(&s, "queues: 1\n")
	fmt.Fprintf(&s, "xdpMode: native\n")
	fmt.Fprintf(&s, "apiSocket: %s\n", yamlString(b.APISocket()))
	fmt.Fprintf(&s, "pods:\n")
	for _, p := range b.Pods {
		fmt.Fprintf(&s, "  - name: %s\n", yamlString(p.Name))
		fmt.Fprintf(&s, "    vlan: %d\n", p.VLAN)
		fmt.Fprintf(&s, "    ip: %s\n", p.IP)
		fmt.Fprintf(&s, "    mac: %q\n", p.MAC.String())
		fmt.Fprintf(&s, "    hostVeth: %s\n", yamlString(p.HostVeth))
	}
	fmt.Fprintf(&s, "gatewayIP: %s\n", b.Wire.IP)
	fmt.Fprintf(&s, "registryFile: %s\n", yamlString(filepath.Join(b.Dir(), "registry.json")))
	fmt.Fprintf(&s, "branches:\n")
	for _, br := range b.Branches {
		fmt.Fprintf(&s, "  - {vlan: %d, ip: %s, mac: %q}\n", br.VLAN, br.IP, br.MAC.String())
	}
	fmt.Fprintf(&s, "nonMasqueradeCIDRs: [%s]\n", vpcPrefix)
	fmt.Fprintf(&s, "stateFile: %s\n", yamlString(filepath.Join(b.Dir(), "trunkline.state")))
	fmt.Fprintf(&s, "services:\n")
	for _, sv := range b.Services {
		fmt.Fprintf(&s, "  - name: %s\n", yamlString(sv.Name))
		fmt.Fprintf(&s, "    protocol: %s\n", sv.Protocol)
		fmt.Fprintf(&s, "    clusterIP: %s\n", sv.VIP)
		fmt.Fprintf(&s, "    port: %d\n", sv.Port)
		fmt.Fprintf(&s, "    targetPort: %d\n", sv.TargetPort)
		if sv.NodePort != 0 {
			fmt.Fprintf(&s, "    nodePort: %d\n", sv.NodePort)
		}
		if sv.Local {
			fmt.Fprintf(&s, "    externalTrafficPolicy: Local\n")
		}
		if sv.Affinity {
			fmt.Fprintf(&s, "    sessionAffinity: ClientIP\n")
		}
		fmt.Fprintf(&s, "    backends:\n")
		for _, p := range b.Pods {
			fmt.Fprintf(&s, "      - %s\n", yamlString(p.Name))
		}
	}
	return s.String()
}

func (b *Bed) writeConfig() error {
	return writeFileAtomic(b.ConfigPath, []byte(b.agentConfig()))
}
