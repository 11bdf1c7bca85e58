package agent

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trunkline/trunkline/dataplane"
)

// DefaultMetricsAddr is where the agent serves /metrics, /healthz and
// /readyz unless configured otherwise: loopback only.
const DefaultMetricsAddr = "127.0.0.1:9797"

// collector exports the agent's counters to Prometheus. The workers keep
// plain counters of their own; it reads them at scrape time (Agent.Stats),
// so the hot path never touches client_golang.
type collector struct{ a *Agent }

var (
	descRxPackets   = prometheus.NewDesc("trunkline_rx_packets_total", "Frames the agent received from an interface.", []string{"interface", "queue"}, nil)
	descRxBytes     = prometheus.NewDesc("trunkline_rx_bytes_total", "Bytes the agent received from an interface.", []string{"interface", "queue"}, nil)
	descTxPackets   = prometheus.NewDesc("trunkline_tx_packets_total", "Frames the agent sent on an interface.", []string{"interface", "queue"}, nil)
	descTxBytes     = prometheus.NewDesc("trunkline_tx_bytes_total", "Bytes the agent sent on an interface.", []string{"interface", "queue"}, nil)
	descPortDrops   = prometheus.NewDesc("trunkline_interface_drops_total", "Frames received on an interface that the dataplane dropped (trunkline_drops_total has the reasons).", []string{"interface", "queue"}, nil)
	descKernelDrops = prometheus.NewDesc("trunkline_kernel_drops_total", "Frames the kernel could not hand to an AF_XDP socket or take from it, by kind.", []string{"interface", "kind"}, nil)
	descDrops       = prometheus.NewDesc("trunkline_drops_total", "Frames the dataplane dropped, by reason.", []string{"reason"}, nil)
	descRejects     = prometheus.NewDesc("trunkline_service_rejects_total", "Packets to a Service without a usable backend, answered with a TCP RST or an ICMP port unreachable.", nil, nil)
	descRemaps      = prometheus.NewDesc("trunkline_nat_port_remaps_total", "New flows whose client port was translated because their reply tuple was another live flow's.", nil, nil)
	descCTEntries   = prometheus.NewDesc("trunkline_conntrack_entries", "Connections in the table.", nil, nil)
	descSNATInUse   = prometheus.NewDesc("trunkline_snat_ports_in_use", "Live flows holding one of the node's SNAT ports.", nil, nil)
	descCTMax       = prometheus.NewDesc("trunkline_conntrack_max_entries", "The bound on connections.", nil, nil)
	descCTInserts   = prometheus.NewDesc("trunkline_conntrack_inserts_total", "Connections created.", nil, nil)
	descCTFull      = prometheus.NewDesc("trunkline_conntrack_full_drops_total", "New flows dropped because the table was full.", nil, nil)
	descCTEarly     = prometheus.NewDesc("trunkline_conntrack_early_drops_total", "Embryonic connections evicted to make room.", nil, nil)
	descCTExpired   = prometheus.NewDesc("trunkline_conntrack_expirations_total", "Connections expired.", nil, nil)
	descUMEM        = prometheus.NewDesc("trunkline_umem_frames", "UMEM frames by owner: free, fill (posted for receive), tx (in flight), held (by the worker; must be 0).", []string{"queue", "state"}, nil)
	descBatches     = prometheus.NewDesc("trunkline_worker_batches_total", "Receive batches a worker processed.", []string{"queue"}, nil)
	descFrames      = prometheus.NewDesc("trunkline_worker_frames_total", "Frames in those batches.", []string{"queue"}, nil)
	descPolls       = prometheus.NewDesc("trunkline_worker_polls_total", "Times a worker blocked waiting for frames.", []string{"queue"}, nil)
	descPods        = prometheus.NewDesc("trunkline_pods", "Pods the agent forwards for.", nil, nil)
	descServices    = prometheus.NewDesc("trunkline_services", "Service ports the agent serves.", nil, nil)
	descSYNGate     = prometheus.NewDesc("trunkline_syn_gate_shut", "1 while the trunk's XDP program sheds SYNs to Service frontends beyond the flood rate (the connection table was found at its bound).", nil, nil)
	descDraining    = prometheus.NewDesc("trunkline_draining_backends", "Backends removed from every Service whose connections still run (translated until they end).", nil, nil)
	descReady       = prometheus.NewDesc("trunkline_ready", "1 when the agent forwards.", nil, nil)
	descSvcPackets  = prometheus.NewDesc("trunkline_service_packets_total", "Packets of a Service port's translated flows, both directions.", []string{"service"}, nil)
	descSvcConns    = prometheus.NewDesc("trunkline_service_new_connections_total", "New flows to a Service port.", []string{"service"}, nil)
	descBatchSize   = prometheus.NewDesc("trunkline_worker_batch_frames", "Frames per receive batch.", []string{"queue"}, nil)
	descRestored    = prometheus.NewDesc("trunkline_state_restored_total", "Connections and session affinities taken back from the state file at start, by kind (connection, affinity).", []string{"kind"}, nil)
	descRestoreDrop = prometheus.NewDesc("trunkline_state_restore_dropped_total", "Saved connections not taken back, by reason (expired, service, frontend, backend, snatPort, masquerade, exists, full, affinity).", []string{"reason"}, nil)
	descRefused     = prometheus.NewDesc("trunkline_state_file_refused", "1 when the state file found at start was damaged, truncated or of another version and the agent started empty.", nil, nil)
	descSnapshots   = prometheus.NewDesc("trunkline_state_snapshots_total", "State file writes, periodic and at shutdown.", nil, nil)
	descSnapErrors  = prometheus.NewDesc("trunkline_state_snapshot_errors_total", "State file writes that failed.", nil, nil)
	descSnapSeconds = prometheus.NewDesc("trunkline_state_snapshot_seconds", "How long the last state file write took.", nil, nil)
	descSnapBytes   = prometheus.NewDesc("trunkline_state_snapshot_bytes", "Size of the last state file written.", nil, nil)
	descBatchTime   = prometheus.NewDesc("trunkline_worker_batch_seconds", "Time to process a receive batch, from receive to transmit.", []string{"queue"}, nil)
)

// newCNIRequests makes the histogram that times the registration API's
// requests (the CNI plugin's calls), by operation and status code.
func newCNIRequests() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "trunkline_cni_request_duration_seconds",
		Help:    "Registration API requests (the CNI plugin's calls) by operation and status code.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"op", "code"})
}

// statusRecorder remembers a handler's status code.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) { r.code = code; r.ResponseWriter.WriteHeader(code) }

// timed wraps a registration handler so that a.cniRequests times it.
func (a *Agent) timed(op string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		a.cniRequests.WithLabelValues(op, strconv.Itoa(rec.code)).Observe(time.Since(start).Seconds())
	}
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPortDrops, descRxPackets, descRxBytes, descTxPackets, descTxBytes, descKernelDrops, descDrops,
		descRejects, descRemaps, descCTEntries, descSNATInUse, descCTMax, descCTInserts, descCTFull, descCTEarly, descCTExpired, descUMEM,
		descBatches, descFrames, descPolls, descPods, descServices, descReady, descBatchSize, descBatchTime, descSvcPackets, descSvcConns,
		descRestored, descRestoreDrop, descRefused, descSnapshots, descSnapErrors, descSnapSeconds, descSnapBytes, descDraining, descSYNGate} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ports := func(name, queue string, k Counters, kd KernelDrops) {
		counter(descRxPackets, k.RxPackets, name, queue)
		counter(descRxBytes, k.RxBytes, name, queue)
		counter(descTxPackets, k.TxPackets, name, queue)
		counter(descTxBytes, k.TxBytes, name, queue)
		counter(descPortDrops, k.Drops, name, queue)
		counter(descKernelDrops, kd.RxRingFull, name, "rx_ring_full")
		counter(descKernelDrops, kd.FillRingEmpty, name, "fill_ring_empty")
		counter(descKernelDrops, kd.RxDropped, name, "rx_dropped")
		counter(descKernelDrops, kd.TxInvalid, name, "tx_invalid")
	}
	st := c.a.Stats()
	for _, i := range st.Interfaces {
		ports(i.Name, strconv.Itoa(i.Queue), i.Counters, i.Kernel)
	}
	for _, p := range st.Pods {
		ports(p.HostVeth, "all", p.Counters, p.Kernel) // summed over the workers' queues
	}
	for r, n := range st.Drops {
		counter(descDrops, n, r)
	}
	counter(descRejects, st.Rejects)
	counter(descRemaps, st.PortRemaps)
	gauge(descCTEntries, float64(st.Conntrack.Entries))
	gauge(descSNATInUse, float64(st.Conntrack.SNATPortsInUse))
	gauge(descCTMax, float64(st.Conntrack.MaxEntries))
	counter(descCTInserts, st.Conntrack.Inserts)
	counter(descCTFull, st.Conntrack.InsertFull)
	counter(descCTEarly, st.Conntrack.EarlyDrops)
	counter(descCTExpired, st.Conntrack.Expirations)
	counter(descRestored, uint64(st.State.Restored), "connection")
	counter(descRestored, uint64(st.State.RestoredAffinity), "affinity")
	for r, n := range st.State.Dropped {
		counter(descRestoreDrop, uint64(n), r)
	}
	counter(descRestoreDrop, uint64(st.State.AffinityDropped), "affinity")
	refused := 0.0
	if st.State.Refused != "" {
		refused = 1
	}
	gauge(descRefused, refused)
	counter(descSnapshots, st.State.Snapshots)
	counter(descSnapErrors, st.State.SnapshotErrors)
	gauge(descSnapSeconds, st.State.LastSeconds)
	gauge(descSnapBytes, float64(st.State.LastBytes))
	for _, u := range st.UMEM {
		q := strconv.Itoa(u.Queue)
		gauge(descUMEM, float64(u.Free), q, "free")
		gauge(descUMEM, float64(u.Fill), q, "fill")
		gauge(descUMEM, float64(u.TX), q, "tx")
		gauge(descUMEM, float64(u.Held), q, "held")
	}
	for _, w := range st.Workers {
		q := strconv.Itoa(w.Queue)
		counter(descBatches, w.Batches, q)
		counter(descFrames, w.Frames, q)
		counter(descPolls, w.Polls, q)
	}
	for _, ws := range c.a.workers {
		q := strconv.Itoa(ws.queue)
		k := ws.w.Counters()
		sizes, times := map[float64]uint64{}, map[float64]uint64{}
		var n, cum uint64
		for i, b := range dataplane.BatchSizeBuckets {
			cum += k.BatchSizes[i].Load()
			sizes[b] = cum
		}
		n = cum + k.BatchSizes[len(dataplane.BatchSizeBuckets)].Load()
		ch <- prometheus.MustNewConstHistogram(descBatchSize, n, float64(k.Frames.Load()), sizes, q)
		cum = 0
		for i, b := range dataplane.BatchTimeBuckets {
			cum += k.BatchTimes[i].Load()
			times[b] = cum
		}
		n = cum + k.BatchTimes[len(dataplane.BatchTimeBuckets)].Load()
		ch <- prometheus.MustNewConstHistogram(descBatchTime, n, float64(k.BatchNanos.Load())/1e9, times, q)
	}
	if t := c.a.services.Load(); t != nil {
		for _, svc := range t.Services() {
			var pk, nc uint64
			for _, ws := range c.a.workers {
				p, n := ws.w.ServiceCounts(svc.ID)
				pk, nc = pk+p, nc+n
			}
			counter(descSvcPackets, pk, svc.Name)
			counter(descSvcConns, nc, svc.Name)
		}
	}
	s := c.a.Status()
	gauge(descPods, float64(len(st.Pods)))
	gauge(descServices, float64(s.Services))
	gauge(descDraining, float64(s.DrainingBackends))
	shut := 0.0
	if st.SYNGateShut {
		shut = 1
	}
	gauge(descSYNGate, shut)
	ready := 0.0
	if s.Ready {
		ready = 1
	}
	gauge(descReady, ready)
}

// serveMetrics serves /metrics, /healthz and /readyz on addr.
func (a *Agent) serveMetrics(addr string) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{a}, a.cniRequests, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", a.handleReadyz)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics server", "err", err)
		}
	}()
	return srv, nil
}
