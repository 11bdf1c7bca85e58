package k8s

import (
	"context"
	"testing"
	"time"

	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/internal/kubetest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// TestSourceAgainstAPIServer drives a Source with a real kube-apiserver:
// each change must reach the callback within a second.
func TestSourceAgainstAPIServer(t *testing.T) {
	kubeconfig, client := kubetest.Start(t)
	ctx := context.Background()
	const ns, name = "trunkline-test", "web"
	const want = ns + "/" + name + ":http"
	const within = time.Second

	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := newRecorder()
	runSource(t, Options{Kubeconfig: kubeconfig, NodeName: "node-a"}, r)
	waitFor(t, r, time.Now(), 30*time.Second, "synced", func([]agent.ServiceConfig) bool { return true })

	// A Service and a slice with 3 ready endpoints.
	start := time.Now()
	svc, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web"),
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name + "-abc",
			Labels: map[string]string{discoveryv1.LabelServiceName: name},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{ep("10.0.0.1", "ready"), ep("10.0.0.2", "ready"), ep("10.0.0.3", "ready")},
	}
	if es, err = client.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfgs, took := waitFor(t, r, start, within, "3 backends", func(cfgs []agent.ServiceConfig) bool {
		c, ok := find(cfgs, want)
		return ok && len(c.Backends) == 3
	})
	c, _ := find(cfgs, want)
	if c.TargetPort != 8080 || c.ClusterIP != svc.Spec.ClusterIP || c.NodePort != int(svc.Spec.Ports[0].NodePort) || c.NodePort == 0 || c.Port != 80 {
		t.Errorf("got %+v; want targetPort 8080, clusterIP %s, nodePort %d", c, svc.Spec.ClusterIP, svc.Spec.Ports[0].NodePort)
	}
	t.Logf("create Service + slice (3 ready): %v  %+v", took, c)

	// Scale to 2.
	start = time.Now()
	es.Endpoints = es.Endpoints[:2]
	if es, err = client.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, took = waitFor(t, r, start, within, "2 backends", func(cfgs []agent.ServiceConfig) bool {
		c, ok := find(cfgs, want)
		return ok && len(c.Backends) == 2 && len(c.TerminatingBackends) == 0
	})
	t.Logf("scale to 2: %v", took)

	// One endpoint terminating: serving, not ready.
	start = time.Now()
	es.Endpoints[1] = ep("10.0.0.2", "terminating")
	if _, err = client.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, took = waitFor(t, r, start, within, "1 terminating", func(cfgs []agent.ServiceConfig) bool {
		c, ok := find(cfgs, want)
		return ok && len(c.Backends) == 1 && c.Backends[0] == "10.0.0.1" &&
			len(c.TerminatingBackends) == 1 && c.TerminatingBackends[0] == "10.0.0.2"
	})
	t.Logf("one endpoint terminating: %v", took)

	// Delete the Service.
	start = time.Now()
	if err := client.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	_, took = waitFor(t, r, start, within, "Service gone", func(cfgs []agent.ServiceConfig) bool {
		_, ok := find(cfgs, want)
		return !ok
	})
	t.Logf("delete Service: %v", took)
}
