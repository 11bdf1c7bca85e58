package load

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// openNetns opens a network namespace by name (under /run/netns) or path;
// "" returns nil, standing for the namespace the process started in.
func openNetns(name string) (*os.File, error) {
	if name == "" {
		return nil, nil
	}
	path := name
	if !strings.ContainsRune(name, '/') {
		path = filepath.Join(netnsDir, name)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w (does it exist? `ip netns list`)", name, err)
	}
	return f, nil
}

// lockInto locks the calling goroutine to its OS thread and moves the
// thread into ns (nil: it stays where it is). The thread is never unlocked,
// so Go throws it away when the goroutine returns: call it only from a
// goroutine of its own that ends when its work does. Sockets made on the
// thread afterwards live in ns.
func lockInto(ns *os.File) error {
	runtime.LockOSThread()
	if ns == nil {
		return nil
	}
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w (needs CAP_SYS_ADMIN: run as root)", ns.Name(), err)
	}
	return nil
}

// sockaddr is the socket domain and address of ap. Each goroutine needs its
// own: the kernel form is built inside the Sockaddr on every use.
func sockaddr(ap netip.AddrPort) (domain int, sa unix.Sockaddr) {
	a := ap.Addr().Unmap()
	if a.Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
}

// checkTarget reports why ap cannot be a target, or nil.
func checkTarget(ap netip.AddrPort) error {
	switch {
	case !ap.Addr().IsValid():
		return errors.New("target: no address (set Target, e.g. netip.MustParseAddrPort(\"10.100.1.1:9000\"))")
	case ap.Addr().Zone() != "":
		return fmt.Errorf("target %s: zoned addresses are not supported", ap)
	case ap.Addr().IsUnspecified():
		return fmt.Errorf("target %s: unspecified address", ap)
	case ap.Port() == 0:
		return fmt.Errorf("target %s: port 0", ap)
	}
	return nil
}
