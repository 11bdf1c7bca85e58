package bed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// InNetns runs fn on an OS thread that has joined the named network
// namespace (a name under /run/netns, or a path). The thread is locked for
// fn's duration and never unlocked, so Go throws it away afterwards: no other
// goroutine ever runs in the namespace by accident. Sockets fn opens stay in
// the namespace and may be used from any goroutine; processes it starts
// (os/exec) start in it.
func InNetns(netns string, fn func() error) error {
	path := netns
	if !strings.ContainsRune(netns, '/') {
		path = filepath.Join(netnsDir, netns)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("netns %s: %w", netns, err)
	}
	defer f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", netns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// withHandle runs fn with a netlink handle whose socket lives in netns; the
// handle is closed afterwards. fn itself runs on an ordinary goroutine.
func withHandle(netns string, fn func(h *netlink.Handle) error) error {
	var h *netlink.Handle
	err := InNetns(netns, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return fmt.Errorf("netlink socket in %s: %w", netns, err)
	}
	defer h.Close()
	return fn(h)
}

// Run runs a command and wraps a failure with its command line and stderr.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.String(), nil
}

// netnsExists reports whether /run/netns/name is there.
func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// listNetns lists the named namespaces.
func listNetns() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// addNetns creates a named namespace with lo up.
func addNetns(ctx context.Context, name string) error {
	if _, err := Run(ctx, "ip", "netns", "add", name); err != nil {
		return err
	}
	_, err := Run(ctx, "ip", "-n", name, "link", "set", "lo", "up")
	return err
}

// netnsPids lists the processes whose network namespace is netns, except
// this process (a thread of it may be visiting).
func netnsPids(ctx context.Context, netns string) ([]int, error) {
	out, err := Run(ctx, "ip", "netns", "pids", netns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// removeNetns kills the processes in a namespace, waits (bounded) until they
// are gone, then deletes the namespace's name. A missing namespace is fine.
func removeNetns(ctx context.Context, name string) error {
	if !netnsExists(name) {
		return nil
	}
	pids, err := netnsPids(ctx, name)
	if err != nil {
		return err
	}
	// Each scan kills what it finds: a process that entered the namespace
	// after the first scan (an `ip netns exec` between open and exec) is
	// caught by the next.
	for deadline := time.Now().Add(3 * time.Second); len(pids) > 0 && time.Now().Before(deadline); {
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("kill %d in %s: %w", pid, name, err)
			}
		}
		time.Sleep(20 * time.Millisecond)
		if pids, err = netnsPids(ctx, name); err != nil {
			return err
		}
	}
	if len(pids) > 0 {
		return fmt.Errorf("processes %v still in %s after SIGKILL", pids, name)
	}
	if _, err := Run(ctx, "ip", "netns", "del", name); err != nil && netnsExists(name) {
		return err
	}
	return nil
}

// sysctls writes net sysctls ("net.ipv4.ip_forward" → "1") inside netns, in
// order.
func sysctls(netns string, kv ...string) error {
	return InNetns(netns, func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			path := "/proc/sys/" + strings.ReplaceAll(kv[i], ".", "/")
			if err := os.WriteFile(path, []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", kv[i], kv[i+1], netns, err)
			}
		}
		return nil
	})
}

// ethtoolOff turns offloads off (`ethtool -K ifname f1 off f2 off`) inside
// netns.
func ethtoolOff(ctx context.Context, netns, ifname string, features ...string) error {
	args := []string{"netns", "exec", netns, "ethtool", "-K", ifname}
	for _, f := range features {
		args = append(args, f, "off")
	}
	_, err := Run(ctx, "ip", args...)
	return err
}
