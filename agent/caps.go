package agent

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrCapabilities is wrapped by the error Run returns when the agent lacks
// a capability it needs.
var ErrCapabilities = errors.New("missing capabilities")

// Capabilities are the capabilities the agent needs, as a container's
// securityContext names them (deploy/daemonset.yaml adds exactly these):
//
//   - NET_ADMIN: attach XDP programs, create the XSKMAP, netlink, SO_SNDBUFFORCE;
//   - NET_RAW: open AF_XDP sockets;
//   - BPF: load the XDP programs and create their maps;
//   - PERFMON: the verifier accepts the programs' packet-pointer arithmetic
//     only from a process with it (otherwise: "pointer arithmetic … prohibited for !root");
//   - IPC_LOCK: register each worker's UMEM whatever RLIMIT_MEMLOCK is;
//   - SYS_NICE: run the workers SCHED_FIFO (workerPolicy: fifo); without
//     it the agent warns and runs them normally.
//
// On kernels before 5.8, which have neither CAP_BPF nor CAP_PERFMON,
// SYS_ADMIN stands for both.
func Capabilities() []string {
	return []string{"NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "IPC_LOCK", "SYS_NICE"}
}

// checkCapabilities reports, all together, the capabilities the calling
// process lacks to register umemBytes of UMEM and attach the programs,
// before anything is set up. (SYS_NICE is not required: see runWorker.)
func checkCapabilities(umemBytes uint64) error {
	eff, err := effectiveCaps()
	if err != nil {
		return nil // cannot tell: let the kernel say
	}
	has := func(c int) bool { return eff&(1<<uint(c)) != 0 }
	var missing []string
	for _, c := range []struct {
		cap      int
		name, or string
	}{
		{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN", ""},
		{unix.CAP_NET_RAW, "CAP_NET_RAW", ""},
		{unix.CAP_BPF, "CAP_BPF", "CAP_SYS_ADMIN"},
		{unix.CAP_PERFMON, "CAP_PERFMON", "CAP_SYS_ADMIN"},
	} {
		if !has(c.cap) && (c.or == "" || !has(unix.CAP_SYS_ADMIN)) {
			missing = append(missing, c.name)
		}
	}
	if !has(unix.CAP_IPC_LOCK) {
		var rl unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl) == nil && rl.Cur != unix.RLIM_INFINITY && rl.Cur < umemBytes {
			missing = append(missing, fmt.Sprintf("CAP_IPC_LOCK (the UMEM is %d MiB; RLIMIT_MEMLOCK allows %d KiB)", umemBytes>>20, rl.Cur>>10))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: the agent lacks %s; it needs CAP_%s (docs/configuration.md, \"Capabilities\")",
		ErrCapabilities, strings.Join(missing, ", "), strings.Join(Capabilities(), ", CAP_"))
}

// effectiveCaps is the calling thread's effective capability set.
func effectiveCaps() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, err
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}
