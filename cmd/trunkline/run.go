package main

import (
	"context"
	"errors"

	"github.com/trunkline/trunkline/agent"
)

func cmdRun(ctx context.Context, args []string) error {
	fs := newFlags("run")
	config := fs.String("config", "", "agent configuration file (YAML; see examples/trunkline.yaml)")
	mode := fs.String("xdp-mode", "", "override the config's xdpMode: native or generic")
	cpus := fs.String("worker-cpus", "", "pin workers to these CPUs, e.g. 1 or 0,1 (overrides workerCPUs)")
	logger := logFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
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
	o := agent.Options{Logger: log, XDPMode: *mode}
	if o.WorkerCPUs, err = parseCPUs(*cpus); err != nil {
		return err
	}
	a, err := agent.New(cfg, o)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
