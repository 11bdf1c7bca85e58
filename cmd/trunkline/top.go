package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/trunkline/trunkline/agent"
)

// cmdTop is a live view, refreshed every interval, of packets/s, bits/s
// and drops per interface and pod — plain ANSI, usable over SSH.
func cmdTop(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("top")
	socket := fs.String("socket", agent.DefaultAPISocket, "the agent's API socket")
	interval := fs.Duration("interval", time.Second, "refresh interval")
	count := fs.Int("count", 0, "stop after this many refreshes (0: until Ctrl-C)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c := agent.NewClient(*socket)
	prev, err := c.Stats(ctx)
	if err != nil {
		return err
	}
	prevAt := time.Now()
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for n := 0; *count == 0 || n < *count; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		cur, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		renderTop(out, prev, cur, now.Sub(prevAt), now)
		prev, prevAt = cur, now
	}
	return nil
}

func renderTop(out io.Writer, prev, cur agent.Stats, dt time.Duration, now time.Time) {
	sec := dt.Seconds()
	rate := func(a, b uint64) float64 { return float64(b-a) / sec }
	fmt.Fprint(out, "\x1b[H\x1b[2J") // home, clear
	fmt.Fprintf(out, "trunkline top — %s — every %.1fs — Ctrl-C to quit\n\n", now.Format("15:04:05"), sec)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "INTERFACE\tRX PPS\tRX BIT/S\tTX PPS\tTX BIT/S\tDROPS/S\tKERNEL DROPS/S\t")
	line := func(name string, a, b agent.Counters, ka, kb agent.KernelDrops) {
		kd := func(k agent.KernelDrops) uint64 { return k.RxDropped + k.RxRingFull + k.FillRingEmpty + k.TxInvalid }
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name,
			human(rate(a.RxPackets, b.RxPackets)), human(8*rate(a.RxBytes, b.RxBytes)),
			human(rate(a.TxPackets, b.TxPackets)), human(8*rate(a.TxBytes, b.TxBytes)),
			human(rate(a.Drops, b.Drops)), human(rate(kd(ka), kd(kb))))
	}
	for i, x := range cur.Interfaces {
		var p agent.InterfaceStats
		if i < len(prev.Interfaces) {
			p = prev.Interfaces[i]
		}
		line(fmt.Sprintf("%s/%d", x.Name, x.Queue), p.Counters, x.Counters, p.Kernel, x.Kernel)
	}
	old := map[string]agent.PodStats{}
	for _, p := range prev.Pods {
		old[p.Name] = p
	}
	for _, p := range cur.Pods {
		o := old[p.Name]
		line(fmt.Sprintf("%s (vlan %d)", p.Name, p.VLAN), o.Counters, p.Counters, o.Kernel, p.Kernel)
	}
	tw.Flush()
	var drops []string
	for r, n := range cur.Drops {
		if d := rate(prev.Drops[r], n); d > 0 {
			drops = append(drops, fmt.Sprintf("%s %s/s", r, human(d)))
		}
	}
	sort.Strings(drops)
	if len(drops) == 0 {
		drops = []string{"none"}
	}
	fmt.Fprintf(out, "\ndrops: %s\nconntrack: %d flows, %s new/s\n", strings.Join(drops, ", "),
		cur.Conntrack.Entries, human(rate(prev.Conntrack.Inserts, cur.Conntrack.Inserts)))
}

// human prints a rate with k/M/G suffixes.
func human(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2fG", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
