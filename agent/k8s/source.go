// Package k8s watches a Kubernetes cluster's Services and EndpointSlices
// and turns them into the agent's Service ports.
//
// The agent does not import this package; the command wires a Source's
// updates into agent.UpdateServices.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/trunkline/trunkline/agent"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrInvalidOptions is wrapped by every Options error.
var ErrInvalidOptions = errors.New("k8s: invalid options")

// Defaults of Options.
const (
	DefaultDebounce = 50 * time.Millisecond
	// maxDebounceFactor bounds a burst: under endless churn an update
	// still goes out every maxDebounceFactor × Debounce.
	maxDebounceFactor = 20
	// retryMin and retryMax bound the delay before a failed apply is
	// tried again (doubling), if nothing changes meanwhile.
	retryMin = time.Second
	retryMax = 30 * time.Second
)

// Options configure a Source.
type Options struct {
	// Kubeconfig is a kubeconfig file; empty: the in-cluster config
	// (the pod's service account).
	Kubeconfig string
	// Client, if set, is used instead of Kubeconfig (tests: a fake
	// clientset).
	Client kubernetes.Interface
	// NodeName is this node's name, for the log. Node-local backends need
	// no node name: the agent recognises them by their pod IPs.
	NodeName string
	// Logger receives skipped objects and apply errors; nil: discarded.
	Logger *slog.Logger
	// Debounce is how long the Source waits after a change for more
	// before it translates (default DefaultDebounce).
	Debounce time.Duration
}

// Source watches Services and EndpointSlices with shared informers and
// hands the agent's Service ports to a callback.
type Source struct {
	o       Options
	client  kubernetes.Interface
	factory informers.SharedInformerFactory
	svcs    cache.SharedIndexInformer
	slices  cache.SharedIndexInformer
	// changed has room for one signal: informer handlers never block.
	changed chan struct{}
	running atomic.Bool
}

// New checks o and connects the informers; nothing is listed or watched
// before Run.
func New(o Options) (*Source, error) {
	var errs []error
	if o.Debounce < 0 {
		errs = append(errs, fmt.Errorf("%w: debounce %v is negative", ErrInvalidOptions, o.Debounce))
	}
	if o.Debounce == 0 {
		o.Debounce = DefaultDebounce
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	client := o.Client
	if client == nil {
		cfg, err := restConfig(o.Kubeconfig)
		if err != nil {
			errs = append(errs, err)
		} else if client, err = kubernetes.NewForConfig(cfg); err != nil {
			errs = append(errs, fmt.Errorf("k8s: client: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s := &Source{
		o:       o,
		client:  client,
		factory: informers.NewSharedInformerFactory(client, 0),
		changed: make(chan struct{}, 1),
	}
	s.svcs = s.factory.Core().V1().Services().Informer()
	s.slices = s.factory.Discovery().V1().EndpointSlices().Informer()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.signal() },
		UpdateFunc: func(any, any) { s.signal() },
		DeleteFunc: func(any) { s.signal() },
	}
	for _, inf := range []cache.SharedIndexInformer{s.svcs, s.slices} {
		if err := inf.SetTransform(stripManagedFields); err != nil {
			return nil, fmt.Errorf("k8s: informer transform: %w", err)
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, fmt.Errorf("k8s: informer handler: %w", err)
		}
	}
	return s, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("k8s: in-cluster config: %w (outside a pod, set a kubeconfig)", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("k8s: kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// stripManagedFields drops what the Source never reads before the object
// is cached.
func stripManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// signal records a change without blocking the informer's goroutine.
func (s *Source) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Run starts the informers and, once they have synced, calls apply with
// every Service port of the cluster, then again after each change
// (debounced: a burst of events makes one call; an unchanged result
// makes none). apply runs on Run's goroutine, never on an informer's. An
// apply error is logged and the same result tried again after a
// back-off, unless a change comes first. Run returns nil when ctx ends,
// or an error if ctx ends before the informers synced. A Source runs
// once.
func (s *Source) Run(ctx context.Context, apply func([]agent.ServiceConfig) error) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("k8s: Source.Run called twice")
	}
	log := s.o.Logger
	s.factory.Start(ctx.Done())
	defer s.factory.Shutdown()
	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), s.svcs.HasSynced, s.slices.HasSynced) {
		return fmt.Errorf("k8s: informers did not sync: %w", context.Cause(ctx))
	}
	log.Info("kubernetes informers synced", "node", s.o.NodeName, "after", time.Since(start).Round(time.Millisecond))

	var (
		last      []agent.ServiceConfig // last applied; nil before the first
		applied   bool
		lastNotes = map[string]bool{}
		retry     = retryMin
	)
	timer := time.NewTimer(0) // first update at once
	defer timer.Stop()
	var burstStart time.Time // zero: no change pending
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
			now := time.Now()
			if burstStart.IsZero() {
				burstStart = now
			}
			wait := s.o.Debounce
			if deadline := burstStart.Add(maxDebounceFactor * s.o.Debounce); now.Add(wait).After(deadline) {
				wait = max(deadline.Sub(now), 0)
			}
			timer.Reset(wait)
			continue
		case <-timer.C:
		}
		burstStart = time.Time{}
		cfgs, notes := translate(s.services(), s.endpointSlices())
		notesNow := map[string]bool{}
		for _, n := range notes {
			notesNow[n] = true
			if !lastNotes[n] {
				log.Info(n)
			}
		}
		lastNotes = notesNow
		if applied && reflect.DeepEqual(cfgs, last) {
			continue
		}
		if err := apply(cfgs); err != nil {
			log.Error("applying kubernetes services failed", "err", err, "services", len(cfgs), "retryIn", retry)
			applied = false
			timer.Reset(retry)
			retry = min(2*retry, retryMax)
			continue
		}
		last, applied, retry = cfgs, true, retryMin
	}
}

func (s *Source) services() []*corev1.Service {
	objs := s.svcs.GetStore().List()
	out := make([]*corev1.Service, 0, len(objs))
	for _, o := range objs {
		if svc, ok := o.(*corev1.Service); ok {
			out = append(out, svc)
		}
	}
	return out
}

func (s *Source) endpointSlices() []*discoveryv1.EndpointSlice {
	objs := s.slices.GetStore().List()
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, es)
		}
	}
	return out
}
