// Package privtest helps privileged tests: it refuses to let them skip under
// CI, and makes network namespaces that are removed when the test ends.
package privtest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// Require skips t with the reason when the process is not root, except under
// CI=true, where a privileged test that cannot run is a failure.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	msg := "needs root (CAP_NET_ADMIN, CAP_BPF) for network namespaces and AF_XDP; run `sudo make test`"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: privileged tests must run)")
	}
	t.Skip(msg)
}

// Netns creates a named network namespace (visible to `ip netns`) with lo up
// and deletes it, killing what still runs in it, when the test ends.
func Netns(t testing.TB, name string) string {
	t.Helper()
	Require(t)
	Delete(name)
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { Delete(name) })
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// Delete removes a namespace and kills the processes in it; missing is fine.
func Delete(name string) {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		self := strconv.Itoa(os.Getpid())
		for _, pid := range strings.Fields(string(out)) {
			if pid == self { // a thread of this process that entered the namespace
				continue
			}
			exec.Command("kill", "-9", pid).Run()
		}
	}
	exec.Command("ip", "netns", "del", name).Run()
}

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// In runs fn on an OS thread switched into the named namespace; the thread is
// discarded afterwards, so no other goroutine ever runs in the namespace.
func In(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		h, err := netns.GetFromName(name)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
