package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/trunkline/trunkline/bench"
)

func cmdBench(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "throughput" {
		return errors.New("bench: want a scenario: throughput")
	}
	fs := newFlags("bench throughput")
	quick := fs.Bool("quick", false, "64-byte frames, 1 s per path, 1 round")
	repeat := fs.Int("repeat", bench.DefaultRepeat, "rounds; the paths are interleaved in each and the medians reported")
	dur := fs.Duration("duration", bench.DefaultDuration, "measured time per path and round")
	sizes := fs.String("sizes", "64", "frame sizes in bytes, e.g. 64,512,1500")
	jsonFile := fs.String("json", "", "also write the results as JSON to this file")
	perfDir := fs.String("perf", "", "profile the trunkline paths with perf into this directory (agent built with symbols)")
	prefix := fs.String("prefix", bench.DefaultThroughputPrefix, "bed name prefix")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o := bench.ThroughputOptions{Prefix: *prefix, AgentBinary: self, Duration: *dur, Repeat: *repeat, Quick: *quick, PerfDir: *perfDir, Out: os.Stderr}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--sizes %q: want numbers like 64,512,1500", *sizes)
		}
		o.Sizes = append(o.Sizes, n)
	}
	start := time.Now()
	rep, err := bench.Throughput(ctx, o)
	if err != nil {
		return err
	}
	if err := rep.WriteTable(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "(%s)\n", time.Since(start).Round(time.Second))
	if *jsonFile != "" {
		f, err := os.Create(*jsonFile)
		if err != nil {
			return err
		}
		defer f.Close()
		return rep.WriteJSON(f)
	}
	return nil
}
