package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/internal/kubetest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// TestKubernetesServices runs the agent with --kubeconfig against a real
// kube-apiserver: a Service and its EndpointSlice, created, scaled, with a
// terminating endpoint and deleted, change what the dataplane serves
// within a second.
func TestKubernetesServices(t *testing.T) {
	e := newEnv(t, fmt.Sprintf("tlk8s%d", os.Getpid()%10000), 3)
	b := e.b
	// The apiserver runs on the node's network, as the agent reaches it.
	kubeconfig, client := kubetest.StartIn(t, b.Node.Netns)
	e.startAgent("--kubeconfig", kubeconfig)
	ctx := t.Context()
	vip := netip.MustParseAddr("10.96.1.10")
	dst := netip.AddrPortFrom(vip, 80)

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "shop", Namespace: "default"},
		Spec: corev1.ServiceSpec{ClusterIP: vip.String(), Ports: []corev1.ServicePort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")},
		}},
	}
	endpoints := func(ready map[string]bool) []discoveryv1.Endpoint {
		var eps []discoveryv1.Endpoint
		for _, p := range b.Pods {
			r, ok := ready[p.Name]
			if !ok {
				continue
			}
			eps = append(eps, discoveryv1.Endpoint{Addresses: []string{p.IP.String()},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(r), Serving: ptr.To(true), Terminating: ptr.To(!r)}})
		}
		return eps
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "shop-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "shop"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(bed.HTTPPort)), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   endpoints(map[string]bool{"pod1": true, "pod2": true, "pod3": true}),
	}
	// servedBy polls until a new connection gets an answer ok accepts, for
	// at most 1 s, and says how long it took.
	within := func(what string, ok func(body string, err error) bool) {
		t.Helper()
		start := time.Now()
		for time.Since(start) < time.Second {
			body, err := tryGet(b.Wire.Netns, dst)
			if ok(body, err) {
				t.Logf("%s: %v", what, time.Since(start).Round(time.Millisecond))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("%s: not within 1 s", what)
	}

	start := time.Now()
	if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	within("created: served", func(body string, err error) bool { return err == nil && strings.HasPrefix(body, "hello from pod") })
	t.Logf("create to first answer: %v", time.Since(start).Round(time.Millisecond))

	// Scale to pod2 alone.
	slice.Endpoints = endpoints(map[string]bool{"pod2": true})
	if slice, _ = client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); slice == nil {
		t.Fatal("update failed")
	}
	within("scaled to pod2", func(body string, err error) bool {
		if body != "hello from pod2" {
			return false
		}
		for range 20 { // and it stays so
			if body, _ := tryGet(b.Wire.Netns, dst); body != "hello from pod2" {
				return false
			}
		}
		return true
	})

	// A running stream to pod2, then pod2 terminates and pod3 comes up.
	stream := &keepAlive{c: dial(t, b.Wire.Netns, "tcp", dst)}
	stream.br = bufio.NewReader(stream.c)
	if got := stream.get(t); got != "hello from pod2" {
		t.Fatalf("stream served by %q", got)
	}
	slice.Endpoints = endpoints(map[string]bool{"pod2": false, "pod3": true})
	if slice, _ = client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); slice == nil {
		t.Fatal("update failed")
	}
	within("pod2 terminating: new connections to pod3", func(body string, err error) bool { return body == "hello from pod3" })
	for range 5 {
		if got := stream.get(t); got != "hello from pod2" {
			t.Fatalf("the terminating endpoint's stream moved to %q", got)
		}
	}

	// Delete the Service: the VIP is served no more.
	if err := client.CoreV1().Services("default").Delete(ctx, "shop", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	within("deleted: not served", func(body string, err error) bool { return err != nil })
}

// tryGet does GET / once, with short timeouts.
func tryGet(netns string, dst netip.AddrPort) (string, error) {
	var c net.Conn
	err := bed.InNetns(netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), 200*time.Millisecond)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	ka := &keepAlive{c: c, br: bufio.NewReader(c)}
	return ka.getErr()
}
