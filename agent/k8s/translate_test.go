package k8s

import (
	"reflect"
	"strings"
	"testing"

	"github.com/trunkline/trunkline/agent"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// svc is a ClusterIP Service default/<name> at ip with the given ports.
func svc(name, ip string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  ip,
			ClusterIPs: []string{ip},
			Ports:      ports,
		},
	}
}

func sport(name string, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: port, TargetPort: target}
}

// ep is an endpoint at addr; cond is "ready", "terminating" (serving, not
// ready), "down" (neither) or "nil" (no conditions: ready).
func ep(addr, cond string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}}
	switch cond {
	case "ready":
		e.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)}
	case "terminating":
		e.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	case "down":
		e.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false)}
	}
	return e
}

func eport(name string, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}
}

// slice is an IPv4 EndpointSlice of default/<service>.
func slice(name, service string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: service},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func TestTranslate(t *testing.T) {
	web := sport("http", 80, intstr.FromString("web"))
	tests := []struct {
		name   string
		svcs   []*corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   []agent.ServiceConfig
		note   string // a substring of a note, if one is expected
	}{{
		name: "named target port resolved from slice, ready and terminating",
		svcs: []*corev1.Service{svc("web", "10.96.0.10", web)},
		slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", []discoveryv1.EndpointPort{eport("http", 8080)},
			ep("10.0.0.3", "ready"), ep("10.0.0.1", "nil"), ep("10.0.0.20", "terminating"), ep("10.0.0.4", "down"))},
		want: []agent.ServiceConfig{{
			Name: "default/web:http", Protocol: "TCP", Port: 80, TargetPort: 8080, ClusterIP: "10.96.0.10",
			Backends: []string{"10.0.0.1", "10.0.0.3"}, TerminatingBackends: []string{"10.0.0.20"},
		}},
	}, {
		name: "no endpoints: empty backends, numeric targetPort",
		svcs: []*corev1.Service{svc("db", "10.96.0.11", sport("", 5432, intstr.FromInt32(5433)))},
		want: []agent.ServiceConfig{{Name: "default/db:5432", Protocol: "TCP", Port: 5432, TargetPort: 5433, ClusterIP: "10.96.0.11"}},
	}, {
		name: "no endpoints, named targetPort: port",
		svcs: []*corev1.Service{svc("web", "10.96.0.10", web)},
		want: []agent.ServiceConfig{{Name: "default/web:http", Protocol: "TCP", Port: 80, TargetPort: 80, ClusterIP: "10.96.0.10"}},
	}, {
		name: "slice without the port gives no backends",
		svcs: []*corev1.Service{svc("web", "10.96.0.10", web)},
		slices: []*discoveryv1.EndpointSlice{
			slice("web-1", "web", []discoveryv1.EndpointPort{eport("metrics", 9090)}, ep("10.0.0.1", "ready")),
			slice("web-2", "web", []discoveryv1.EndpointPort{eport("http", 8080)}, ep("10.0.0.2", "ready")),
		},
		want: []agent.ServiceConfig{{Name: "default/web:http", Protocol: "TCP", Port: 80, TargetPort: 8080, ClusterIP: "10.96.0.10", Backends: []string{"10.0.0.2"}}},
	}, {
		name: "ports differ across slices: most endpoints win",
		svcs: []*corev1.Service{svc("web", "10.96.0.10", web)},
		slices: []*discoveryv1.EndpointSlice{
			slice("web-1", "web", []discoveryv1.EndpointPort{eport("http", 8080)}, ep("10.0.0.1", "ready")),
			slice("web-2", "web", []discoveryv1.EndpointPort{eport("http", 8081)}, ep("10.0.0.2", "ready"), ep("10.0.0.3", "terminating")),
		},
		want: []agent.ServiceConfig{{Name: "default/web:http", Protocol: "TCP", Port: 80, TargetPort: 8081, ClusterIP: "10.96.0.10",
			Backends: []string{"10.0.0.2"}, TerminatingBackends: []string{"10.0.0.3"}}},
		note: "2 different ports; using 8081",
	}, {
		name: "address in two slices: once, ready wins",
		svcs: []*corev1.Service{svc("web", "10.96.0.10", web)},
		slices: []*discoveryv1.EndpointSlice{
			slice("web-1", "web", []discoveryv1.EndpointPort{eport("http", 8080)}, ep("10.0.0.1", "terminating")),
			slice("web-2", "web", []discoveryv1.EndpointPort{eport("http", 8080)}, ep("10.0.0.1", "ready"), ep("10.0.0.1", "ready")),
		},
		want: []agent.ServiceConfig{{Name: "default/web:http", Protocol: "TCP", Port: 80, TargetPort: 8080, ClusterIP: "10.96.0.10", Backends: []string{"10.0.0.1"}}},
	}, {
		name: "IPv6 and unlabelled slices and other services' slices ignored",
		svcs: []*corev1.Service{svc("web", "10.96.0.10", web)},
		slices: func() []*discoveryv1.EndpointSlice {
			v6 := slice("web-v6", "web", []discoveryv1.EndpointPort{eport("http", 8080)}, ep("fd00::1", "ready"))
			v6.AddressType = discoveryv1.AddressTypeIPv6
			bare := slice("bare", "web", []discoveryv1.EndpointPort{eport("http", 8080)}, ep("10.0.0.8", "ready"))
			bare.Labels = nil
			other := slice("other-1", "other", []discoveryv1.EndpointPort{eport("http", 8080)}, ep("10.0.0.9", "ready"))
			return []*discoveryv1.EndpointSlice{v6, bare, other}
		}(),
		want: []agent.ServiceConfig{{Name: "default/web:http", Protocol: "TCP", Port: 80, TargetPort: 80, ClusterIP: "10.96.0.10"}},
	}, {
		name: "LoadBalancer with everything, one port per config, UDP, SCTP skipped",
		svcs: []*corev1.Service{func() *corev1.Service {
			s := svc("dns", "10.96.0.53",
				corev1.ServicePort{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53), NodePort: 30053},
				corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53), NodePort: 30054},
				corev1.ServicePort{Name: "sig", Protocol: corev1.ProtocolSCTP, Port: 99, TargetPort: intstr.FromInt32(99)})
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ExternalIPs = []string{"192.0.2.2", "2001:db8::1", "192.0.2.1"}
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.1"}, {Hostname: "lb.example"},
				{IP: "198.51.100.2", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)}}
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
			return s
		}()},
		slices: []*discoveryv1.EndpointSlice{slice("dns-1", "dns", []discoveryv1.EndpointPort{
			eport("dns-tcp", 5353),
			{Name: ptr.To("dns"), Port: ptr.To[int32](5354), Protocol: ptr.To(corev1.ProtocolUDP)},
		}, ep("10.0.0.5", "ready"))},
		want: func() []agent.ServiceConfig {
			base := agent.ServiceConfig{ClusterIP: "10.96.0.53", Port: 53,
				ExternalIPs: []string{"192.0.2.1", "192.0.2.2"}, LoadBalancerIPs: []string{"198.51.100.1"},
				ExternalTrafficPolicy: "Local", SessionAffinity: "ClientIP", SessionAffinitySeconds: 60,
				Backends: []string{"10.0.0.5"}}
			udp, tcp := base, base
			udp.Name, udp.Protocol, udp.NodePort, udp.TargetPort = "default/dns:dns", "UDP", 30054, 5354
			tcp.Name, tcp.Protocol, tcp.NodePort, tcp.TargetPort = "default/dns:dns-tcp", "TCP", 30053, 5353
			return []agent.ServiceConfig{udp, tcp}
		}(),
		note: "protocol SCTP",
	}, {
		name: "ClientIP affinity default timeout, Cluster policy",
		svcs: []*corev1.Service{func() *corev1.Service {
			s := svc("a", "10.96.0.1", sport("p", 1, intstr.FromInt32(1)))
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
			return s
		}()},
		want: []agent.ServiceConfig{{Name: "default/a:p", Protocol: "TCP", Port: 1, TargetPort: 1, ClusterIP: "10.96.0.1",
			ExternalTrafficPolicy: "Cluster", SessionAffinity: "ClientIP", SessionAffinitySeconds: 10800}},
	}, {
		name: "headless, ExternalName, other proxy's and IPv6-only Services skipped; sorted by name",
		svcs: func() []*corev1.Service {
			headless := svc("headless", "None", web)
			extName := svc("ext", "", web)
			extName.Spec.Type = corev1.ServiceTypeExternalName
			other := svc("other-proxy", "10.96.0.7", web)
			other.Labels = map[string]string{proxyNameLabel: "someone-else"}
			v6 := svc("v6", "fd00::10", web)
			dual := svc("dual", "fd00::11", web)
			dual.Spec.ClusterIPs = []string{"fd00::11", "10.96.0.11"}
			return []*corev1.Service{svc("z", "10.96.0.2", web), headless, extName, other, v6, dual}
		}(),
		want: []agent.ServiceConfig{
			{Name: "default/dual:http", Protocol: "TCP", Port: 80, TargetPort: 80, ClusterIP: "10.96.0.11"},
			{Name: "default/z:http", Protocol: "TCP", Port: 80, TargetPort: 80, ClusterIP: "10.96.0.2"},
		},
		note: "no IPv4 cluster IP",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, notes := translate(tt.svcs, tt.slices)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, tt.want)
			}
			if tt.note != "" && !strings.Contains(strings.Join(notes, "\n"), tt.note) {
				t.Errorf("notes %q lack %q", notes, tt.note)
			}
			if tt.note == "" && len(notes) > 0 {
				t.Errorf("unexpected notes %q", notes)
			}
			if again := Translate(tt.svcs, tt.slices); !reflect.DeepEqual(again, got) {
				t.Errorf("not deterministic:\n%+v\n%+v", again, got)
			}
		})
	}
}
