package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/trunkline/trunkline/agent"
)

func cmdConntrack(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("conntrack")
	socket := fs.String("socket", agent.DefaultAPISocket, "the agent's API socket")
	output := fs.String("o", "table", "output: table or json")
	vip := fs.String("vip", "", "only flows to this frontend address")
	pod := fs.String("pod", "", "only flows from or to this pod address")
	proto := fs.String("proto", "", "tcp or udp")
	limit := fs.Int("limit", 1000, "list at most this many flows (the counts cover all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("-o %q: want table or json", *output)
	}
	q := url.Values{}
	for k, v := range map[string]string{"vip": *vip, "pod": *pod, "proto": *proto} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", fmt.Sprint(*limit))
	l, err := agent.NewClient(*socket).Conntrack(ctx, q.Encode())
	if err != nil {
		return err
	}
	if *output == "json" {
		return printJSON(out, l)
	}
	return writeConntrackTable(out, l, *limit)
}

func writeConntrackTable(out io.Writer, l agent.ConntrackList, limit int) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tCLIENT\tSERVICE\tBACKEND\tSNAT\tSTATE\tEXPIRES")
	for _, f := range l.Flows {
		state := f.State
		if state == "" {
			state = map[bool]string{true: "replied", false: "unreplied"}[f.Replied]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0fs\n", f.Proto, f.Client, f.Service, f.Backend, dash(f.SNAT), state, f.ExpiresIn)
	}
	tw.Flush()
	states := make([]string, 0, len(l.ByState))
	for s := range l.ByState {
		states = append(states, s)
	}
	sort.Strings(states)
	var parts []string
	for _, s := range states {
		parts = append(parts, fmt.Sprintf("%s %d", s, l.ByState[s]))
	}
	fmt.Fprintf(out, "by state: %s", strings.Join(parts, ", "))
	if l.Truncated {
		fmt.Fprintf(out, " (list cut at %d)", limit)
	}
	fmt.Fprintln(out)
	return nil
}

func cmdServices(ctx context.Context, args []string, out io.Writer) error {
	return show(ctx, args, "services", out, (*agent.Client).Services, writeServicesTable)
}

func writeServicesTable(out io.Writer, svcs []agent.ServiceConfig) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tFRONTENDS\tBACKENDS")
	for _, s := range svcs {
		proto := strings.ToLower(s.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		var fes []string
		if s.ClusterIP != "" {
			fes = append(fes, fmt.Sprintf("%s:%d/%s", s.ClusterIP, s.Port, proto))
		}
		if s.NodePort != 0 {
			fes = append(fes, fmt.Sprintf("node:%d/%s", s.NodePort, proto))
		}
		for _, ip := range append(append([]string{}, s.ExternalIPs...), s.LoadBalancerIPs...) {
			fes = append(fes, fmt.Sprintf("%s:%d/%s", ip, s.Port, proto))
		}
		var bes []string
		for _, b := range s.Backends {
			bes = append(bes, fmt.Sprintf("%s:%d (active)", b, s.TargetPort))
		}
		for _, b := range s.TerminatingBackends {
			bes = append(bes, fmt.Sprintf("%s:%d (terminating)", b, s.TargetPort))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, strings.Join(fes, " "), dash(strings.Join(bes, ", ")))
	}
	return tw.Flush()
}

func cmdPods(ctx context.Context, args []string, out io.Writer) error {
	pods := func(c *agent.Client, ctx context.Context) ([]agent.PodStats, error) {
		st, err := c.Stats(ctx)
		return st.Pods, err
	}
	return show(ctx, args, "pods", out, pods, writePodsTable)
}

func writePodsTable(out io.Writer, pods []agent.PodStats) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tVLAN\tIP\tHOST VETH\tTO POD PKTS\tFROM POD PKTS\tKERNEL DROPS")
	for _, p := range pods {
		kd := p.Kernel.RxDropped + p.Kernel.RxRingFull + p.Kernel.FillRingEmpty + p.Kernel.TxInvalid
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%d\n", p.Name, p.VLAN, p.IP, p.HostVeth, p.TxPackets, p.RxPackets, kd)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
