package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/trunkline/trunkline/agent"
	"github.com/trunkline/trunkline/bench/agentproc"
	"github.com/trunkline/trunkline/bench/bed"
)

// cmdDemo builds a bed, runs the agent on it, sends real traffic from the
// VPC to every pod and shows what crossed the agent, then tears it all
// down (also on Ctrl-C).
func cmdDemo(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("demo")
	pods := fs.Int("pods", 3, "number of pods")
	prefix := fs.String("prefix", "tldemo", "bed name prefix")
	verbose := fs.Bool("v", false, "show the agent's log")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("demo: needs root (network namespaces, XDP, AF_XDP); run: sudo make demo")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bed.Sweep(bed.DefaultStateDir, *prefix) // a previous demo killed mid-way
	fmt.Fprintf(out, "== building the test bed %q: a VPC namespace, a node with a trunk, %d pods\n", *prefix, *pods)
	b, err := bed.Up(ctx, bed.Options{Prefix: *prefix, Pods: *pods})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintf(out, "== tearing down the bed\n")
		if err := b.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "trunkline: demo teardown:", err)
		}
	}()
	printLayout(out, b)

	for _, p := range b.Pods {
		srv := b.Command(context.Background(), p.Netns, self, "serve-echo", "--name", p.Name, "--timeout", "5m")
		if err := srv.Start(); err != nil {
			return fmt.Errorf("start server in %s: %w", p.Name, err)
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
	}
	for _, p := range b.Pods {
		if err := bed.WaitListening(ctx, p.Netns, bed.HTTPPort); err != nil {
			return err
		}
	}

	fmt.Fprintf(out, "\n== starting the agent in %s\n", b.Node.Netns)
	var agentLog io.Writer
	if *verbose {
		agentLog = os.Stderr
	}
	proc, err := agentproc.Start(ctx, agentproc.Options{Binary: self, Netns: b.Node.Netns, Config: b.ConfigPath, Socket: b.APISocket(), Log: agentLog})
	if err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			proc.Stop(2 * time.Second)
		}
	}()
	st, err := proc.Client.Status(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "agent %s ready: trunk %s, XDP %s, %d queue(s), %d pods\n", st.Version, st.Trunk, st.XDPMode, st.Queues, st.Pods)

	before, err := proc.Client.Stats(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n== traffic from the VPC (%s) to each pod, through the agent\n", b.Wire.IP)
	type result struct{ ping, http string }
	results := map[string]result{}
	for _, p := range b.Pods {
		if err := ctx.Err(); err != nil {
			return err
		}
		r := result{}
		var rtts []string
		for range 3 {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			rtt, err := bed.Ping(pctx, b.Wire.Netns, p.IP)
			cancel()
			if err != nil {
				rtts = append(rtts, "lost")
				continue
			}
			rtts = append(rtts, fmt.Sprintf("%.0fµs", float64(rtt.Microseconds())))
		}
		r.ping = strings.Join(rtts, " ")
		body, err := httpGet(ctx, b.Wire.Netns, netip.AddrPortFrom(p.IP, 8080))
		if err != nil {
			r.http = "error: " + err.Error()
		} else {
			r.http = strings.TrimSpace(body)
		}
		results[p.Name] = r
		fmt.Fprintf(out, "  %-6s %-12s ping %-22s GET / → %q\n", p.Name, p.IP, r.ping, r.http)
	}
	if web := b.Service("default/web"); web != nil {
		fmt.Fprintf(out, "\n== Service %s: 30 HTTP requests from the VPC to its ClusterIP %s:%d, spread by Maglev\n", web.Name, web.VIP, web.Port)
		per := map[string]int{}
		for range 30 {
			body, err := httpGet(ctx, b.Wire.Netns, netip.AddrPortFrom(web.VIP, web.Port))
			if err != nil {
				return fmt.Errorf("demo: GET %s: %w", web.VIP, err)
			}
			per[strings.TrimPrefix(strings.TrimSpace(body), "hello from ")]++
		}
		for _, p := range b.Pods {
			fmt.Fprintf(out, "  %-6s %2d %s\n", p.Name, per[p.Name], strings.Repeat("█", per[p.Name]))
		}
		body, err := httpGet(ctx, b.Wire.Netns, netip.AddrPortFrom(b.Node.IP, web.NodePort))
		if err != nil {
			return fmt.Errorf("demo: GET NodePort %d: %w", web.NodePort, err)
		}
		fmt.Fprintf(out, "  NodePort %s:%d → %q\n", b.Node.IP, web.NodePort, strings.TrimSpace(body))
	}
	after, err := proc.Client.Stats(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n== what crossed the agent\n")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "POD\tVLAN\tTO POD PKTS\tBYTES\tFROM POD PKTS\tBYTES\t")
	for i, p := range after.Pods {
		var b0 agent.PodStats
		if i < len(before.Pods) {
			b0 = before.Pods[i]
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t\n", p.Name, p.VLAN, p.TxPackets-b0.TxPackets, p.TxBytes-b0.TxBytes, p.RxPackets-b0.RxPackets, p.RxBytes-b0.RxBytes)
	}
	tw.Flush()
	drops := 0
	for _, n := range after.Drops {
		drops += int(n)
	}
	fmt.Fprintf(out, "drops: %d", drops)
	for r, n := range after.Drops {
		if n > 0 {
			fmt.Fprintf(out, "  %s=%d", r, n)
		}
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "conntrack: %d flows tracked\n", after.Conntrack.Entries)
	for _, u := range after.UMEM {
		fmt.Fprintf(out, "UMEM queue %d: %d frames: %d free, %d posted for receive, %d in TX, %d held\n", u.Queue, u.Total, u.Free, u.Fill, u.TX, u.Held)
	}

	fmt.Fprintf(out, "\n== stopping the agent: traffic must stop with it\n")
	took, err := proc.Stop(2 * time.Second)
	stopped = true
	if err != nil {
		fmt.Fprintf(out, "agent exit: %v\n", err)
	}
	fmt.Fprintf(out, "agent exited %.0f ms after SIGTERM\n", float64(took.Microseconds())/1000)
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	_, perr := bed.Ping(pctx, b.Wire.Netns, b.Pods[0].IP)
	cancel()
	if perr != nil {
		fmt.Fprintf(out, "ping %s with the agent stopped: no reply (as it must be)\n", b.Pods[0].IP)
	} else {
		fmt.Fprintf(out, "ping %s with the agent stopped: ANSWERED — traffic bypassed the agent\n", b.Pods[0].IP)
	}
	for name, r := range results {
		if strings.HasPrefix(r.http, "error") {
			return fmt.Errorf("demo: HTTP to %s failed: %s", name, r.http)
		}
	}
	return nil
}

// httpGet does GET / against dst from inside netns.
func httpGet(ctx context.Context, netns string, dst netip.AddrPort) (string, error) {
	var conn net.Conn
	err := bed.InNetns(netns, func() error {
		var err error
		d := net.Dialer{Timeout: 2 * time.Second}
		conn, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", dst)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return string(body), err
}
