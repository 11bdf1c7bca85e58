package k8s

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/trunkline/trunkline/agent"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Labels read on Services and EndpointSlices.
const (
	// serviceNameLabel names the Service an EndpointSlice belongs to.
	serviceNameLabel = discoveryv1.LabelServiceName
	// proxyNameLabel marks a Service served by another proxy than the
	// default one; such Services are left alone, as kube-proxy does.
	proxyNameLabel = "service.kubernetes.io/service-proxy-name"
)

// defaultAffinitySeconds is Kubernetes' ClientIP affinity timeout when the
// Service does not set one.
const defaultAffinitySeconds = 10800

// Translate turns Services and their EndpointSlices into the agent's
// Service ports: one ServiceConfig per (Service, port), sorted by Name,
// backends sorted by address. It does not modify its arguments.
//
// Skipped: ExternalName and headless Services, Services without an IPv4
// cluster IP, Services labelled service.kubernetes.io/service-proxy-name,
// SCTP ports, EndpointSlices that are not IPv4. IPv6 external and
// load-balancer IPs are dropped, and so are load-balancer IPs of ipMode
// Proxy (as kube-proxy does). internalTrafficPolicy and topology hints
// are not read.
//
// Endpoints: ready (conditions.ready nil counts as ready) go to Backends;
// serving but not ready (terminating) to TerminatingBackends; the rest are
// left out. Only an endpoint's first address is used. An address listed by
// several slices is kept once, as ready if any slice has it ready.
//
// TargetPort is the endpoint port, resolved by name: the EndpointSlice
// port whose name (and protocol) is the Service port's. A slice without
// that port gives it no backends. If the endpoints of one Service port
// have different ports across slices (a rollout that renames or moves a
// container port), the port with the most endpoints wins (ties: the
// lowest) and the endpoints on other ports are left out until the slices
// agree again. A Service port without endpoints is still emitted, with
// no backends (the agent rejects its traffic) and TargetPort set to the
// Service's numeric targetPort, or its port when targetPort is a name.
func Translate(svcs []*corev1.Service, slices []*discoveryv1.EndpointSlice) []agent.ServiceConfig {
	cfgs, _ := translate(svcs, slices)
	return cfgs
}

// translate is Translate that also says what it skipped, one sentence
// per skipped object, for the log.
func translate(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice) (cfgs []agent.ServiceConfig, notes []string) {
	byService := map[string][]*discoveryv1.EndpointSlice{}
	for _, es := range eps {
		name := es.Labels[serviceNameLabel]
		if name == "" || es.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		key := es.Namespace + "/" + name
		byService[key] = append(byService[key], es)
	}
	for _, svc := range svcs {
		key := svc.Namespace + "/" + svc.Name
		switch {
		case svc.Spec.Type == corev1.ServiceTypeExternalName:
			continue
		case svc.Spec.ClusterIP == corev1.ClusterIPNone || svc.Spec.ClusterIP == "":
			continue // headless, or not allocated yet
		case svc.Labels[proxyNameLabel] != "":
			continue
		}
		clusterIP, ok := firstIPv4(svc.Spec.ClusterIPs)
		if !ok {
			clusterIP, ok = firstIPv4([]string{svc.Spec.ClusterIP})
		}
		if !ok {
			notes = append(notes, fmt.Sprintf("service %s skipped: no IPv4 cluster IP in %v", key, svc.Spec.ClusterIPs))
			continue
		}
		externalIPs := ipv4s(svc.Spec.ExternalIPs)
		var lbIPs []string
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IPMode != nil && *in.IPMode == corev1.LoadBalancerIPModeProxy {
				continue // the load balancer rewrites the destination: not ours
			}
			lbIPs = append(lbIPs, in.IP)
		}
		lbIPs = ipv4s(lbIPs)
		policy := ""
		switch svc.Spec.ExternalTrafficPolicy {
		case corev1.ServiceExternalTrafficPolicyLocal:
			policy = "Local"
		case corev1.ServiceExternalTrafficPolicyCluster:
			policy = "Cluster"
		}
		affinity, affinitySecs := "", 0
		if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
			affinity, affinitySecs = "ClientIP", defaultAffinitySeconds
			if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
				affinitySecs = int(*c.ClientIP.TimeoutSeconds)
			}
		}
		for _, sp := range svc.Spec.Ports {
			proto := sp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			portName := sp.Name
			if portName == "" {
				portName = strconv.Itoa(int(sp.Port))
			}
			name := key + ":" + portName
			if proto != corev1.ProtocolTCP && proto != corev1.ProtocolUDP {
				notes = append(notes, fmt.Sprintf("service port %s skipped: protocol %s is not supported", name, proto))
				continue
			}
			cfg := agent.ServiceConfig{
				Name:                   name,
				Protocol:               string(proto),
				Port:                   int(sp.Port),
				ClusterIP:              clusterIP,
				NodePort:               int(sp.NodePort),
				ExternalIPs:            slices.Clone(externalIPs),
				LoadBalancerIPs:        slices.Clone(lbIPs),
				ExternalTrafficPolicy:  policy,
				SessionAffinity:        affinity,
				SessionAffinitySeconds: affinitySecs,
			}
			var note string
			cfg.TargetPort, cfg.Backends, cfg.TerminatingBackends, note = endpoints(sp.Name, proto, byService[key])
			if note != "" {
				notes = append(notes, "service port "+name+": "+note)
			}
			if cfg.TargetPort == 0 {
				cfg.TargetPort = int(sp.TargetPort.IntVal)
				if cfg.TargetPort == 0 {
					cfg.TargetPort = int(sp.Port)
				}
			}
			cfgs = append(cfgs, cfg)
		}
	}
	slices.SortFunc(cfgs, func(a, b agent.ServiceConfig) int { return cmp.Compare(a.Name, b.Name) })
	return cfgs, notes
}

// endpoints resolves a Service port (by name and protocol) in the
// Service's IPv4 EndpointSlices. port is 0 when no slice has an endpoint
// on it.
func endpoints(portName string, proto corev1.Protocol, eps []*discoveryv1.EndpointSlice) (port int, ready, terminating []string, note string) {
	type endpoint struct {
		port  int
		ready bool
	}
	var found []endpoint
	addrs := map[endpoint][]string{}
	for _, es := range eps {
		p := 0
		for _, ep := range es.Ports {
			epProto := corev1.ProtocolTCP
			if ep.Protocol != nil {
				epProto = *ep.Protocol
			}
			if ep.Port != nil && ptrString(ep.Name) == portName && epProto == proto {
				p = int(*ep.Port)
				break
			}
		}
		if p < 1 || p > 65535 {
			continue
		}
		for _, e := range es.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			ip, err := netip.ParseAddr(e.Addresses[0])
			if err != nil || !ip.Is4() {
				continue
			}
			isReady := e.Conditions.Ready == nil || *e.Conditions.Ready
			serving := e.Conditions.Serving == nil || *e.Conditions.Serving
			if !isReady && !serving {
				continue
			}
			k := endpoint{port: p, ready: isReady}
			if _, ok := addrs[k]; !ok {
				found = append(found, k)
			}
			addrs[k] = append(addrs[k], ip.String())
		}
	}
	if len(found) == 0 {
		return 0, nil, nil, ""
	}
	count := map[int]int{}
	for k, a := range addrs {
		count[k.port] += len(a)
	}
	for p, n := range count {
		if n > count[port] || n == count[port] && (port == 0 || p < port) {
			port = p
		}
	}
	if len(count) > 1 {
		note = fmt.Sprintf("endpoints are on %d different ports; using %d (most endpoints), leaving out the others", len(count), port)
	}
	ready = dedup(addrs[endpoint{port: port, ready: true}], nil)
	terminating = dedup(addrs[endpoint{port: port, ready: false}], ready)
	return port, ready, terminating, note
}

// dedup sorts addrs by address and removes duplicates and the addresses
// in exclude (sorted).
func dedup(addrs, exclude []string) []string {
	if len(addrs) == 0 {
		return nil
	}
	slices.SortFunc(addrs, compareAddr)
	addrs = slices.Compact(addrs)
	addrs = slices.DeleteFunc(addrs, func(a string) bool {
		_, found := slices.BinarySearchFunc(exclude, a, compareAddr)
		return found
	})
	if len(addrs) == 0 {
		return nil
	}
	return addrs
}

// compareAddr orders IPv4 address strings numerically.
func compareAddr(a, b string) int {
	return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b))
}

func firstIPv4(ips []string) (string, bool) {
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() {
			return ip.String(), true
		}
	}
	return "", false
}

// ipv4s returns the IPv4 addresses of ips, sorted, or nil.
func ipv4s(ips []string) []string {
	var out []string
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() {
			out = append(out, ip.String())
		}
	}
	return dedup(out, nil)
}

func ptrString(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
