package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/agent/k8s"
)

func cmdRun(ctx context.Context, args []string) error {
	fs := newFlags("run")
	config := fs.String("config", "", "agent configuration file (YAML; see examples/trunkline.yaml)")
	mode := fs.String("xdp-mode", "", "override the config's xdpMode: native or generic")
	cpus := fs.String("worker-cpus", "", "pin workers to these CPUs, e.g. 1 or 0,1 (overrides workerCPUs)")
	kubeconfig := fs.String("kubeconfig", "", "watch Services and EndpointSlices of the cluster this kubeconfig names")
	inCluster := fs.Bool("kube-in-cluster", false, "watch Services and EndpointSlices with the pod's service account (in a DaemonSet)")
	nodeName := fs.String("node-name", "", "this node's name in the cluster (for logs)")
	metricsAddr := fs.String("metrics-addr", "", "serve /metrics, /healthz and /readyz here (overrides metricsAddr; default "+agent.DefaultMetricsAddr+"; off: none)")
	busyPoll := fs.Int("busy-poll", -1, "override the config's busyPollMicros: preferred busy polling of the trunk, in µs (0: off)")
	logger := logFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *busyPoll > 10000 {
		return fmt.Errorf("run: --busy-poll %d: want 0 (off)..10000 µs", *busyPoll)
	}
	if *config == "" {
		return errors.New("run: --config FILE is required")
	}
	log, err := logger()
	if err != nil {
		return err
	}
	cfg, err := agent.LoadConfig(*config)
	if err != nil {
		return err
	}
	if *metricsAddr != "" {
		cfg.MetricsAddr = *metricsAddr
	}
	if *busyPoll >= 0 {
		cfg.BusyPollMicros = *busyPoll
	}
	o := agent.Options{Logger: log, XDPMode: *mode}
	if o.WorkerCPUs, err = parseCPUs(*cpus); err != nil {
		return err
	}
	a, err := agent.New(cfg, o)
	if err != nil {
		return err
	}
	if *kubeconfig != "" || *inCluster {
		if *kubeconfig != "" && *inCluster {
			return errors.New("run: --kubeconfig and --kube-in-cluster: choose one")
		}
		src, err := k8s.New(k8s.Options{Kubeconfig: *kubeconfig, NodeName: *nodeName, Logger: log})
		if err != nil {
			return err
		}
		go watchServices(ctx, a, src, cfg.Services, log)
	}
	return a.Run(ctx)
}

// watchServices feeds the cluster's Services to the agent once it runs,
// after the configuration file's own.
func watchServices(ctx context.Context, a *agent.Agent, src *k8s.Source, static []agent.ServiceConfig, log *slog.Logger) {
	select {
	case <-a.Ready():
	case <-ctx.Done():
		return
	}
	err := src.Run(ctx, func(svcs []agent.ServiceConfig) error {
		_, err := a.UpdateServices(append(slices.Clone(static), svcs...))
		return err
	})
	if err != nil {
		log.Error("kubernetes watch stopped", "err", err)
	}
}
