// Command trunkline is the trunkline agent and its operator CLI.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

const usage = `trunkline: a per-node Kubernetes dataplane over AF_XDP

Usage:
  trunkline run --config FILE [--xdp-mode native|generic] [--worker-cpus LIST]
                                  run the agent (in the node's network namespace)
  trunkline status [--socket PATH] [-o table|json]
  trunkline stats  [--socket PATH] [-o table|json]
  trunkline pods   [--socket PATH] [-o table|json]
  trunkline services [--socket PATH] [-o table|json]
  trunkline conntrack [--vip IP] [--pod IP] [--proto tcp|udp] [--limit N] [-o table|json]
  trunkline top    [--socket PATH] [--interval 1s]   live packets/s, bits/s, drops per interface and pod
  trunkline install-cni [--src FILE] [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d] [--conflist FILE]
                                  put the CNI plugin and its conflist on the host (atomic, idempotent)
  trunkline uninstall-cni [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d]
                                  remove them
  trunkline bed up [--pods N] [--prefix P] [--json]
                                  build the test bed (namespaces, veths, the VPC emulator)
  trunkline bed down [--prefix P] remove a bed
  trunkline bed sweep [--prefix P]
                                  remove what crashed runs left (every bed without --prefix)
  trunkline demo [--pods N]       bed + agent + real traffic to each pod, then tear down
  trunkline bench [SCENARIO…] [--quick] [--repeat N] [--json FILE] [--chart FILE] [--dataplanes LIST]
                                  trunkline against the kernel path (iptables, nftables), an
                                  in-kernel XDP program and a raw veth, side by side; scenarios:
                                  throughput service tcp latency cps scale (default all)

Every command that touches the network needs root. The agent alone needs
CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_PERFMON, CAP_IPC_LOCK (and
CAP_SYS_NICE for SCHED_FIFO workers): docs/configuration.md.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := dispatch(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "trunkline:", err)
		os.Exit(1)
	}
}

func dispatch(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return flag.ErrHelp
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(ctx, rest)
	case "status":
		return cmdStatus(ctx, rest, out)
	case "stats":
		return cmdStats(ctx, rest, out)
	case "pods":
		return cmdPods(ctx, rest, out)
	case "services":
		return cmdServices(ctx, rest, out)
	case "conntrack":
		return cmdConntrack(ctx, rest, out)
	case "top":
		return cmdTop(ctx, rest, out)
	case "install-cni":
		return cmdInstallCNI(ctx, rest, out)
	case "uninstall-cni":
		return cmdUninstallCNI(ctx, rest, out)
	case "bed":
		return cmdBed(ctx, rest, out)
	case "demo":
		return cmdDemo(ctx, rest, out)
	case "bench":
		return cmdBench(ctx, rest, out)
	case "serve-echo":
		return cmdServeEcho(ctx, rest)
	case "help", "-h", "--help":
		fmt.Fprint(out, usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

// newFlags makes a flag set that reports errors to the caller.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("trunkline "+name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	return fs
}

// logFlags adds --log-level and --log-format and returns a logger maker.
func logFlags(fs *flag.FlagSet) func() (*slog.Logger, error) {
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "text", "text or json")
	return func() (*slog.Logger, error) {
		var l slog.Level
		if err := l.UnmarshalText([]byte(*level)); err != nil {
			return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
		}
		o := &slog.HandlerOptions{Level: l}
		switch *format {
		case "text":
			return slog.New(slog.NewTextHandler(os.Stderr, o)), nil
		case "json":
			return slog.New(slog.NewJSONHandler(os.Stderr, o)), nil
		}
		return nil, fmt.Errorf("--log-format %q: want text or json", *format)
	}
}

// parseCPUs parses "1" or "0,1".
func parseCPUs(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var cpus []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("CPU list %q: want numbers like 0,1", s)
		}
		cpus = append(cpus, n)
	}
	return cpus, nil
}
