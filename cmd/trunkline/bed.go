package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/trunkline/trunkline/bench/bed"
)

func cmdBed(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("bed: want up, down or sweep")
	}
	fs := newFlags("bed " + args[0])
	prefix := fs.String("prefix", "", "bed name prefix (default "+bed.DefaultPrefix+")")
	stateDir := fs.String("state-dir", bed.DefaultStateDir, "where beds keep their state")
	verbose := fs.Bool("v", false, "log each step")
	switch args[0] {
	case "up":
		pods := fs.Int("pods", bed.DefaultPods, "number of pods")
		asJSON := fs.Bool("json", false, "print the layout as one JSON object")
		servers := fs.Bool("servers", false, "run an HTTP, UDP echo and TCP echo server in every pod (their Services' target ports)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		var err error
		o := bed.Options{Prefix: *prefix, Pods: *pods, StateDir: *stateDir, Logger: bedLogger(*verbose)}
		if *servers {
			if o.Servers, err = os.Executable(); err != nil {
				return err
			}
		}
		b, err := bed.Up(ctx, o)
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(out).Encode(b.Layout())
		}
		printLayout(out, b)
		return nil
	case "down":
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		p := *prefix
		if p == "" {
			p = bed.DefaultPrefix
		}
		return bed.Sweep(*stateDir, p)
	case "sweep":
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return bed.Sweep(*stateDir, *prefix)
	}
	return fmt.Errorf("bed %s: want up, down or sweep", args[0])
}

func bedLogger(verbose bool) *slog.Logger {
	if !verbose {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func printLayout(out io.Writer, b *bed.Bed) {
	fmt.Fprintf(out, "bed %s\n", b.Prefix)
	fmt.Fprintf(out, "  VPC    netns %-14s %s  %s (gateway)  outside %s\n", b.Wire.Netns, b.Wire.Ifname, b.Wire.IP, b.Wire.OutsideIP)
	fmt.Fprintf(out, "  node   netns %-14s trunk %s  %s\n", b.Node.Netns, b.Node.Trunk, b.Node.IP)
	for _, p := range b.Pods {
		fmt.Fprintf(out, "  %-6s netns %-14s %s %s  VLAN %d  host veth %s\n", p.Name, p.Netns, p.Ifname, p.IP, p.VLAN, p.HostVeth)
	}
	for _, s := range b.Services {
		np := ""
		if s.NodePort != 0 {
			np = fmt.Sprintf("  nodePort %s:%d", b.Node.IP, s.NodePort)
		}
		fmt.Fprintf(out, "  service %-18s %s:%d/%s → pods:%d%s\n", s.Name, s.VIP, s.Port, s.Protocol, s.TargetPort, np)
	}
	fmt.Fprintf(out, "agent config: %s\nrun the agent: ip netns exec %s trunkline run --config %s\n", b.ConfigPath, b.Node.Netns, b.ConfigPath)
}
