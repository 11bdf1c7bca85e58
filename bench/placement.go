package bench

import (
	"context"
	"encoding/binary"
	"errors"
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
	netdevANapiIfindex = 1 // attributes of a NAPI
	netdevANapiID      = 2
	netdevANapiPid     = 4
)

// errNoNAPI reports an interface without a NAPI thread.
var errNoNAPI = errors.New("no NAPI thread (is threaded NAPI on, and XDP or GRO?)")

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
	for try := 0; err != nil && errors.Is(err, errNoNAPI) && try < 20; try++ {
		time.Sleep(50 * time.Millisecond) // a NAPI being re-created (XDP attached or detached)
		th, err = findNAPI(netns, ifname)
	}
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

// findNAPI finds ifname's NAPI thread in netns. Threads are named
// napi/<ifname>-<napi id>; when other namespaces repeat the name, the
// netdev netlink family inside netns says which is ifname's. (Asked for one
// NAPI by id, or for a dump filtered by ifindex, it answers EINVAL here,
// and its dump lists only the first interface's NAPIs; hence the name
// first.)
func findNAPI(netns, ifname string) (napiThread, error) {
	cands, err := napiCandidates(ifname)
	if err != nil {
		return napiThread{}, err
	}
	switch len(cands) {
	case 0:
		return napiThread{}, fmt.Errorf("NAPI thread of %s/%s: %w", netns, ifname, errNoNAPI)
	case 1:
		return cands[0], nil
	}
	th, err := dumpNAPI(netns, ifname)
	if err != nil {
		return th, fmt.Errorf("NAPI thread of %s/%s: %d threads are named napi/%s-*: %w", netns, ifname, len(cands), ifname, err)
	}
	return th, nil
}

// dumpNAPI asks the netdev netlink family in netns for ifname's NAPI thread.
func dumpNAPI(netns, ifname string) (napiThread, error) {
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
		msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
		if err != nil {
			return fmt.Errorf("napi-get: %w", err)
		}
		for _, m := range msgs {
			attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
			if err != nil {
				return err
			}
			var id, idx, pid uint32
			for _, a := range attrs {
				if len(a.Value) < 4 {
					continue
				}
				switch v := binary.NativeEndian.Uint32(a.Value); a.Attr.Type {
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
		return errNoNAPI
	})
	return th, err
}

// napiCandidates lists the threads named napi/<ifname>-<id>.
func napiCandidates(ifname string) ([]napiThread, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	prefix := "napi/" + ifname + "-"
	var ths []napiThread
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil {
			continue
		}
		if rest, ok := strings.CutPrefix(strings.TrimSpace(string(comm)), prefix); ok {
			id, err1 := strconv.ParseUint(rest, 10, 32)
			pid, err2 := strconv.Atoi(e.Name())
			if err1 == nil && err2 == nil {
				ths = append(ths, napiThread{ID: uint32(id), Pid: pid})
			}
		}
	}
	return ths, nil
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
