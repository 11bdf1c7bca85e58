package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/trunkline/trunkline/bench"
)

func cmdBench(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("bench")
	quick := fs.Bool("quick", false, "the smoke run, under a minute: throughput 64 B, service and latency against kernel and raw, 1 s each, one round")
	repeat := fs.Int("repeat", bench.DefaultRepeat, "rounds; the dataplanes are interleaved in each and the medians and spreads reported")
	rate := fs.Uint64("rate", 0, "cap the frames/s the generator offers in the frame scenarios (0: as fast as it can)")
	dur := fs.Duration("duration", bench.DefaultDuration, "measured time of each measurement")
	scenarios := fs.String("scenarios", strings.Join(bench.AllScenarios, ","), "scenarios to run (also given as arguments)")
	dataplanes := fs.String("dataplanes", strings.Join(bench.AllDataplanes, ","), "dataplanes to compare (kernel is always measured)")
	sizes := fs.String("sizes", "64,512,1500", "throughput frame sizes in bytes")
	scaleSvcs := fs.String("scale-services", "1,10000,100000", "the scale scenario's Service counts")
	scalePods := fs.String("scale-pods", "1,64,250", "the scale scenario's pod counts")
	scaleCT := fs.String("scale-conntrack", "1000000", "the scale scenario's connection-table fills (flows put in before measuring)")
	jsonFile := fs.String("json", "", "also write the results as JSON to this file")
	chartFile := fs.String("chart", "", "also draw the results as an SVG chart into this file")
	perfDir := fs.String("perf", "", "profile the trunkline throughput paths with perf into this directory (agent built with symbols)")
	prefix := fs.String("prefix", bench.DefaultPrefix, "bed name prefix")
	agentArgs := fs.String("agent-args", "", "extra arguments to the agent's `trunkline run`, space-separated (e.g. \"--busy-poll 50\")")
	// Scenarios may come first: `trunkline bench throughput --quick`.
	var named []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		named, args = append(named, args[0]), args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	named = append(named, fs.Args()...)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o := bench.Options{Prefix: *prefix, AgentBinary: self, Duration: *dur, Repeat: *repeat, Rate: *rate, Quick: *quick, PerfDir: *perfDir, Progress: os.Stderr}
	o.Scenarios = splitList(*scenarios)
	if len(named) > 0 {
		o.Scenarios = named
	}
	o.Dataplanes = splitList(*dataplanes)
	o.AgentArgs = strings.Fields(*agentArgs)
	for _, l := range []struct {
		flag, text string
		into       *[]int
	}{{"sizes", *sizes, &o.Sizes}, {"scale-services", *scaleSvcs, &o.ScaleServices}, {"scale-pods", *scalePods, &o.ScalePods}, {"scale-conntrack", *scaleCT, &o.ScaleConntrack}} {
		for _, s := range splitList(l.text) {
			n, err := strconv.Atoi(s)
			if err != nil {
				return fmt.Errorf("--%s %q: want numbers like 1,2,3", l.flag, l.text)
			}
			*l.into = append(*l.into, n)
		}
	}
	rep, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	if err := rep.WriteTable(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "(%s)\n", time.Duration(rep.Seconds*float64(time.Second)).Round(time.Second))
	if *jsonFile != "" {
		if err := writeFile(*jsonFile, rep.WriteJSON); err != nil {
			return err
		}
	}
	if *chartFile != "" {
		if err := writeFile(*chartFile, rep.WriteChart); err != nil {
			return err
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// writeFile writes a file through write, reporting a failure to close.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}
