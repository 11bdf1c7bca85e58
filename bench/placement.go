package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/trunkline/trunkline/bench/bed"
)

// The netdev generic netlink family's NAPI query (include/uapi/linux/netdev.h).
const (
	netdevCmdNapiGet   = 11
	netdevANapiIfindex = 1
	netdevANapiID      = 2
	netdevANapiPid     = 4
)

// napiThread is the kernel thread that runs an interface's NAPI poll once
// threaded NAPI is on.
type napiThread struct {
	ID  uint32
	Pid int
}

// threadNAPI turns threaded NAPI on for ifname in netns and pins its thread
// to cpu. veth has a NAPI only while XDP or GRO is on, so GRO is turned on
// first (it stays on for the bench's lifetime: it keeps the NAPI, its thread
// and its pinning alive while XDP programs come and go).
func threadNAPI(ctx context.Context, netns, ifname string, cpu int) (napiThread, error) {
	if _, err := runIn(ctx, netns, "ethtool", "-K", ifname, "gro", "on"); err != nil {
		return napiThread{}, err
	}
	if _, err := runIn(ctx, netns, "sh", "-c", "echo 1 > /sys/class/net/"+ifname+"/threaded"); err != nil {
		return napiThread{}, fmt.Errorf("threaded NAPI on %s/%s: %w", netns, ifname, err)
	}
	return pinNAPI(netns, ifname, cpu, napiThread{})
}

// pinNAPI finds the NAPI thread of ifname and pins it to cpu. The thread's
// name (napi/<ifname>-<id>) repeats across namespaces, so it is found by
// asking the netdev netlink family inside netns for its pid. When that query
// fails, a known thread (known.Pid != 0) still named napi/<ifname>-… is used.
func pinNAPI(netns, ifname string, cpu int, known napiThread) (napiThread, error) {
	th, err := findNAPI(netns, ifname)
	if err != nil && known.Pid != 0 {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(known.Pid) + "/comm")
		if strings.TrimSpace(string(comm)) == fmt.Sprintf("napi/%s-%d", ifname, known.ID) {
			th, err = known, nil
		}
	}
	if err != nil {
		return th, err
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(th.Pid, &set); err != nil {
		return th, fmt.Errorf("pin NAPI thread %d of %s/%s to CPU %d: %w", th.Pid, netns, ifname, cpu, err)
	}
	return th, nil
}

// findNAPI asks the netdev netlink family in netns for ifname's NAPI thread.
func findNAPI(netns, ifname string) (napiThread, error) {
	var th napiThread
	err := bed.InNetns(netns, func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fam, err := netlink.GenlFamilyGet("netdev")
		if err != nil {
			return fmt.Errorf("netdev genl family: %w", err)
		}
		req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_DUMP)
		req.AddData(&nl.Genlmsg{Command: netdevCmdNapiGet, Version: 1})
		// A dump filtered by NETDEV_A_NAPI_IFINDEX fails with EINVAL
		// here; dump all and filter.
		// The dump fails now and then with EINVAL while NAPIs come and
		// go (an agent attaching XDP to the pods' veths): retry.
		var msgs [][]byte
		for try := 0; ; try++ {
			msgs, err = req.Execute(unix.NETLINK_GENERIC, 0)
			if err == nil {
				break
			}
			if try == 10 {
				return fmt.Errorf("napi-get: %w", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, m := range msgs {
			attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
			if err != nil {
				return err
			}
			var id, pid uint32
			var idx uint32
			for _, a := range attrs {
				if len(a.Value) < 4 {
					continue
				}
				v := binary.NativeEndian.Uint32(a.Value)
				switch a.Attr.Type {
				case netdevANapiIfindex:
					idx = v
				case netdevANapiID:
					id = v
				case netdevANapiPid:
					pid = v
				}
			}
			if idx == uint32(ifc.Index) && pid != 0 {
				th = napiThread{ID: id, Pid: int(pid)}
				return nil
			}
		}
		return fmt.Errorf("no NAPI thread (is threaded NAPI on, and XDP or GRO?)")
	})
	if err != nil {
		return th, fmt.Errorf("NAPI thread of %s/%s: %w", netns, ifname, err)
	}
	return th, nil
}

// threadRuntime is the CPU time a thread has run (/proc/<pid>/schedstat).
func threadRuntime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/schedstat")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, fmt.Errorf("schedstat of %d: %q", pid, b)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(ns), err
}

// cpuTimes reads the busy and total jiffies of one CPU from /proc/stat.
func cpuTimes(cpu int) (busy, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	want := "cpu" + strconv.Itoa(cpu)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != want {
			continue
		}
		for i, s := range f[1:] {
			v, _ := strconv.ParseUint(s, 10, 64)
			if i >= 7 { // steal, guest, guest_nice: not this guest's work
				break
			}
			total += v
			if i != 3 && i != 4 { // idle, iowait
				busy += v
			}
		}
		return busy, total, nil
	}
	return 0, 0, fmt.Errorf("/proc/stat: no %s", want)
}

// runIn runs a command inside netns (ip netns exec, so /sys is the
// namespace's) and returns its output, or an error with its stderr.
func runIn(ctx context.Context, netns, name string, args ...string) (string, error) {
	return run(ctx, "ip", append([]string{"netns", "exec", netns, name}, args...)...)
}
