package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/trunkline/trunkline/agent"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// recorder is an apply callback that keeps every update and passes it on.
type recorder struct {
	updates chan []agent.ServiceConfig
	mu      sync.Mutex
	calls   int
	fail    int // the first fail calls return an error
}

func newRecorder() *recorder { return &recorder{updates: make(chan []agent.ServiceConfig, 100)} }

func (r *recorder) apply(cfgs []agent.ServiceConfig) error {
	r.mu.Lock()
	r.calls++
	fail := r.calls <= r.fail
	r.mu.Unlock()
	r.updates <- cfgs
	if fail {
		return errors.New("agent says no")
	}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

// find returns the config named name, if cfgs has it.
func find(cfgs []agent.ServiceConfig, name string) (agent.ServiceConfig, bool) {
	for _, c := range cfgs {
		if c.Name == name {
			return c, true
		}
	}
	return agent.ServiceConfig{}, false
}

// waitFor waits up to timeout for an update that satisfies ok and returns
// it and how long it took from start.
func waitFor(t *testing.T, r *recorder, start time.Time, timeout time.Duration, what string, ok func([]agent.ServiceConfig) bool) ([]agent.ServiceConfig, time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	var last []agent.ServiceConfig
	for {
		select {
		case cfgs := <-r.updates:
			if ok(cfgs) {
				return cfgs, time.Since(start)
			}
			last = cfgs
		case <-deadline:
			t.Fatalf("%s: no such update within %v; last update: %+v", what, timeout, last)
		}
	}
}

// runSource runs a Source on client until the test ends.
func runSource(t *testing.T, o Options, r *recorder) {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, r.apply) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func fakeClient(t *testing.T) kubernetes.Interface {
	c := fake.NewClientset(
		svc("web", "10.96.0.10", sport("http", 80, intstr.FromString("web"))),
		slice("web-1", "web", []discoveryv1.EndpointPort{eport("http", 8080)}, ep("10.0.0.1", "ready")),
	)
	return c
}

func TestSourceDebouncesBursts(t *testing.T) {
	c := fakeClient(t)
	r := newRecorder()
	runSource(t, Options{Client: c, Debounce: 100 * time.Millisecond}, r)
	waitFor(t, r, time.Now(), 5*time.Second, "initial", func(cfgs []agent.ServiceConfig) bool {
		c, ok := find(cfgs, "default/web:http")
		return ok && len(c.Backends) == 1 && c.TargetPort == 8080
	})
	time.Sleep(300 * time.Millisecond) // informers' initial events settle
	before := r.count()
	ctx := context.Background()
	start := time.Now()
	for i := 2; i <= 11; i++ {
		es := slice(fmt.Sprintf("web-%d", i), "web", []discoveryv1.EndpointPort{eport("http", 8080)}, ep(fmt.Sprintf("10.0.0.%d", i), "ready"))
		if _, err := c.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	_, took := waitFor(t, r, start, 5*time.Second, "burst", func(cfgs []agent.ServiceConfig) bool {
		c, _ := find(cfgs, "default/web:http")
		return len(c.Backends) == 11
	})
	time.Sleep(300 * time.Millisecond)
	if n := r.count() - before; n != 1 {
		t.Errorf("a burst of 10 creates made %d updates, want 1", n)
	}
	t.Logf("burst of 10 slices: one update after %v", took)

	// A change that does not change the result makes no update.
	es, err := c.DiscoveryV1().EndpointSlices("default").Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Annotations = map[string]string{"unrelated": "yes"}
	if _, err := c.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if n := r.count() - before; n != 1 {
		t.Errorf("an unrelated change made an update (%d in all)", n)
	}
}

func TestSourceRetriesFailedApply(t *testing.T) {
	r := newRecorder()
	r.fail = 2 // back-off 1 s, then 2 s: the third try by ~3 s
	runSource(t, Options{Client: fakeClient(t)}, r)
	start := time.Now()
	for i := range 3 {
		cfgs, took := waitFor(t, r, start, 6*time.Second, fmt.Sprintf("try %d", i+1), func([]agent.ServiceConfig) bool { return true })
		if _, ok := find(cfgs, "default/web:http"); !ok {
			t.Errorf("try %d applied %+v", i+1, cfgs)
		}
		t.Logf("try %d after %v", i+1, took)
	}
	time.Sleep(300 * time.Millisecond)
	if n := r.count(); n != 3 {
		t.Errorf("%d applies, want 3 (2 failed, then one that stands)", n)
	}
}

func TestNewOptions(t *testing.T) {
	if _, err := New(Options{Client: fake.NewClientset(), Debounce: -1}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("negative debounce: %v, want ErrInvalidOptions", err)
	}
	if _, err := New(Options{Kubeconfig: "/nonexistent/kubeconfig"}); err == nil {
		t.Error("missing kubeconfig: no error")
	}
}
