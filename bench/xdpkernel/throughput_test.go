package xdpkernel

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trunkline/trunkline/bench/bed"
	"github.com/trunkline/trunkline/bench/gen"
)

// CPUs of the generator and of the trunk's NAPI thread, as in the bench.
const (
	genCPU  = 0
	napiCPU = 1
)

// testGeneratorCrosses checks that the bench's generator frames cross the
// peer (tagged to a pod, and untagged to a Service VIP), and logs the
// rates, with the kernel path's for comparison. The figures are a
// one-second look on a shared machine, not a measurement: the bench makes
// those.
// It leaves the trunk's GRO and threaded NAPI on: run it last on a bed.
func testGeneratorCrosses(t *testing.T, b *bed.Bed) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs: the generator on one, forwarding on the other")
	}
	pod := b.Pods[0]
	// The trunk's NAPI as the bench has it: GRO on (a NAPI that outlives
	// the XDP programs), threaded, pinned away from the generator.
	if err := threadTrunkNAPI(b); err != nil {
		t.Fatal(err)
	}
	sink, err := gen.AttachSink(pod.Netns, pod.Ifname, gen.DefaultDstPort, gen.SinkTC)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	spec := gen.FrameSpec{SrcMAC: b.Wire.MAC, DstMAC: b.Node.TrunkMAC, VLAN: pod.VLAN, SrcIP: b.Wire.IP, DstIP: pod.IP, Flows: 64}
	toPod, err := gen.NewGenerator(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer toPod.Close()
	vip := netip.MustParseAddr("10.96.0.9")
	spec.VLAN, spec.DstIP = 0, vip
	toVIP, err := gen.NewGenerator(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer toVIP.Close()

	measure := func(name string, g *gen.Generator) {
		t.Helper()
		before, err := sink.Count()
		if err != nil {
			t.Fatal(err)
		}
		st, err := g.Run(t.Context(), gen.RunOptions{Netns: b.Wire.Netns, Ifname: b.Wire.Ifname, CPU: genCPU,
			Until: time.Now().Add(time.Second), Repeat: gen.MinRepeat})
		if err != nil {
			t.Fatal(err)
		}
		after, err := sink.Count()
		if err != nil {
			t.Fatal(err)
		}
		fwd := after - before
		t.Logf("%-28s %6.3f Mpps forwarded, %6.3f offered (%d frames in %v)", name,
			float64(fwd)/st.Elapsed.Seconds()/1e6, float64(st.Offered)/st.Elapsed.Seconds()/1e6, fwd, st.Elapsed.Round(time.Millisecond))
		if fwd == 0 {
			t.Errorf("%s: no frame reached the pod's sink", name)
		}
	}

	p := attach(t, b, Service{VIP: vip, Port: gen.DefaultDstPort, Protocol: UDP,
		Backends: []netip.AddrPort{netip.AddrPortFrom(pod.IP, gen.DefaultDstPort)}})
	measure("xdp-kernel, tagged to pod", toPod)
	measure("xdp-kernel, untagged to VIP", toVIP)
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counters: %+v", c)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	// The kernel path: with a permanent neighbour for the pod, as the
	// bench has it (the sink drops frames, ARP must not be needed).
	if out, err := exec.Command("ip", "-n", b.Node.Netns, "neigh", "replace", pod.IP.String(), "lladdr", pod.MAC.String(),
		"dev", pod.HostVeth, "nud", "permanent").CombinedOutput(); err != nil {
		t.Fatalf("neighbour: %v\n%s", err, out)
	}
	if err := b.EnableKernelPath(); err != nil {
		t.Fatal(err)
	}
	defer b.DisableKernelPath()
	measure("kernel path, tagged to pod", toPod)
}

// threadTrunkNAPI turns GRO and threaded NAPI on for the bed's trunk and
// pins the new NAPI thread to napiCPU. The thread is told from other beds'
// napi/trunk-* threads by appearing when threaded NAPI is turned on.
func threadTrunkNAPI(b *bed.Bed) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := bed.Run(ctx, "ip", "netns", "exec", b.Node.Netns, "ethtool", "-K", b.Node.Trunk, "gro", "on"); err != nil {
		return err
	}
	before := napiThreads(b.Node.Trunk)
	if _, err := bed.Run(ctx, "ip", "netns", "exec", b.Node.Netns, "sh", "-c", "echo 1 > /sys/class/net/"+b.Node.Trunk+"/threaded"); err != nil {
		return err
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for pid := range napiThreads(b.Node.Trunk) {
			if before[pid] {
				continue
			}
			var set unix.CPUSet
			set.Set(napiCPU)
			if err := unix.SchedSetaffinity(pid, &set); err != nil {
				return fmt.Errorf("pin NAPI thread %d: %w", pid, err)
			}
			return nil
		}
	}
	return fmt.Errorf("no new napi/%s-* thread after turning threaded NAPI on", b.Node.Trunk)
}

// napiThreads lists the kernel threads named napi/<ifname>-<id>.
func napiThreads(ifname string) map[int]bool {
	pids := map[int]bool{}
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, d := range dirs {
		comm, err := os.ReadFile(d)
		if err != nil || !strings.HasPrefix(string(comm), "napi/"+ifname+"-") {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(d))); err == nil {
			pids[pid] = true
		}
	}
	return pids
}
