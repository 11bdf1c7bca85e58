package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"

	"github.com/trunkline/trunkline/agent"
)

func outputFlags(args []string, name string) (socket, output string, err error) {
	fs := newFlags(name)
	s := fs.String("socket", agent.DefaultAPISocket, "the agent's API socket")
	o := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return "", "", err
	}
	if *o != "table" && *o != "json" {
		return "", "", fmt.Errorf("-o %q: want table or json", *o)
	}
	return *s, *o, nil
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdStatus(ctx context.Context, args []string, out io.Writer) error {
	return show(ctx, args, "status", out, (*agent.Client).Status, writeStatusTable)
}

// show is an operator command that fetches one thing from the agent and
// prints it as JSON (-o json) or as a table.
func show[T any](ctx context.Context, args []string, name string, out io.Writer,
	fetch func(*agent.Client, context.Context) (T, error), table func(io.Writer, T) error) error {
	socket, output, err := outputFlags(args, name)
	if err != nil {
		return err
	}
	v, err := fetch(agent.NewClient(socket), ctx)
	if err != nil {
		return err
	}
	if output == "json" {
		return printJSON(out, v)
	}
	return table(out, v)
}

func writeStatusTable(out io.Writer, st agent.Status) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "version\t%s\ntrunk\t%s\nnode IP\t%s\nXDP mode\t%s\nqueues\t%d\npods\t%d\nservices\t%d (%d frontends)\ndraining backends\t%d\nready\t%v\nuptime\t%.0fs\n",
		st.Version, st.Trunk, st.NodeIP, st.XDPMode, st.Queues, st.Pods, st.Services, st.Frontends, st.DrainingBackends, st.Ready, st.UptimeSec)
	return tw.Flush()
}

func cmdStats(ctx context.Context, args []string, out io.Writer) error {
	return show(ctx, args, "stats", out, (*agent.Client).Stats, writeStatsTable)
}

func writeStatsTable(out io.Writer, st agent.Stats) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "INTERFACE\tQUEUE\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\t")
	for _, i := range st.Interfaces {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t\n", i.Name, i.Queue, i.RxPackets, i.RxBytes, i.TxPackets, i.TxBytes)
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	fmt.Fprintln(tw, "POD\tVLAN\tFROM POD PKTS\tBYTES\tTO POD PKTS\tBYTES\t")
	for _, p := range st.Pods {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t\n", p.Name, p.VLAN, p.RxPackets, p.RxBytes, p.TxPackets, p.TxBytes)
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	reasons := make([]string, 0, len(st.Drops))
	for r := range st.Drops {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	fmt.Fprintln(tw, "DROP REASON\tFRAMES\t\t\t\t\t")
	for _, r := range reasons {
		fmt.Fprintf(tw, "%s\t%d\t\t\t\t\t\n", r, st.Drops[r])
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	fmt.Fprintf(tw, "CONNTRACK\t%d of %d\tinserts %d\tfull %d\tearly drops %d\trejects %d\t\n",
		st.Conntrack.Entries, st.Conntrack.MaxEntries, st.Conntrack.Inserts, st.Conntrack.InsertFull, st.Conntrack.EarlyDrops, st.Rejects)
	fmt.Fprintln(tw, "\t\t\t\t\t\t")
	fmt.Fprintln(tw, "UMEM QUEUE\tTOTAL\tFREE\tFILL\tTX\tHELD\t")
	for _, u := range st.UMEM {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t\n", u.Queue, u.Total, u.Free, u.Fill, u.TX, u.Held)
	}
	return tw.Flush()
}
