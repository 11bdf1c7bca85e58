package kproxy

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trunkline/trunkline/internal/privtest"
)

// sizesEnv lists the Service counts BenchmarkInstall loads, e.g.
// "1,10000,100000"; by default 1 and 1000, which run in seconds. See
// Options.NoFlush and Options.NFTBatch for what large counts cost.
const sizesEnv = "TRUNKLINE_KPROXY_SIZES"

// BenchmarkInstall installs and removes rulesets of synthetic Services
// (two backends each) in a scratch namespace, in each mode, and reports
// seconds per Install (load-s: the iptables-restore or nft calls alone) and
// per Remove.
func BenchmarkInstall(b *testing.B) {
	privtest.Require(b)
	sizes := []int{1, 1000}
	if env := os.Getenv(sizesEnv); env != "" {
		sizes = nil
		for _, f := range strings.Split(env, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("%s=%q: want Service counts like 1,10000,100000", sizesEnv, env)
			}
			sizes = append(sizes, n)
		}
	}
	netns := privtest.Netns(b, "tlkp-bench")
	for _, m := range []struct {
		name string
		o    Options
	}{
		{"iptables", Options{Mode: ModeIPTables}},
		{"iptables-legacy", Options{Mode: ModeIPTables, IPTables: IPTablesLegacy}},
		{"nftables", Options{Mode: ModeNFTables}},
	} {
		for _, n := range sizes {
			b.Run(m.name+"/"+strconv.Itoa(n), func(b *testing.B) {
				if m.o.IPTables == IPTablesLegacy {
					if _, err := exec.LookPath("iptables-legacy-restore"); err != nil {
						b.Skip("no iptables-legacy-restore here; install iptables (it ships both variants)")
					}
				}
				svcs, err := Synthetic(n, SyntheticOptions{Backends: pods})
				if err != nil {
					b.Fatal(err)
				}
				o := m.o
				o.Netns, o.ClusterCIDR, o.Services = netns, cidr, svcs
				ctx := context.Background()
				b.ReportAllocs()
				var install, load, remove time.Duration
				for b.Loop() {
					start := time.Now()
					r, err := Install(ctx, o)
					if err != nil {
						b.Fatal(err)
					}
					install += time.Since(start)
					load += r.LoadTime
					start = time.Now()
					if err := r.Remove(ctx); err != nil {
						b.Fatal(err)
					}
					remove += time.Since(start)
				}
				ops := float64(b.N)
				b.ReportMetric(install.Seconds()/ops, "install-s/op")
				b.ReportMetric(load.Seconds()/ops, "load-s/op")
				b.ReportMetric(remove.Seconds()/ops, "remove-s/op")
			})
		}
	}
	if left, err := Leftovers(context.Background(), netns); err != nil || len(left) > 0 {
		b.Errorf("left in %s: %v, %v", netns, left, err)
	}
}
