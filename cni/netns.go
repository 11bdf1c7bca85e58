package cni

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread switched into the network namespace ns.
// The goroutine locks its thread and never unlocks it, so the runtime
// discards the thread when the goroutine returns instead of handing a
// thread in the wrong namespace to other goroutines.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("switch to network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// socketIn opens an AF_INET datagram socket that belongs to ns. A socket
// keeps the namespace it was created in, so it can be used from any thread.
func socketIn(ns netns.NsHandle) (int, error) {
	fd := -1
	err := inNetns(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	return fd, err
}

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with ifr_data.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtool issues a SIOCETHTOOL get/set of one ethtool_value on ifname
// through the socket fd (which decides the namespace).
func ethtool(fd int, ifname string, cmd, data uint32) (uint32, error) {
	v := ethtoolValue{cmd: cmd, data: data}
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], ifname)
	ifr.data = unsafe.Pointer(&v)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&v)
	if errno != 0 {
		return 0, errno
	}
	return v.data, nil
}

// setTxChecksum turns TX checksum offload of ifname in ns on or off.
func setTxChecksum(ns netns.NsHandle, ifname string, on bool) error {
	fd, err := socketIn(ns)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var v uint32
	if on {
		v = 1
	}
	if _, err := ethtool(fd, ifname, unix.ETHTOOL_STXCSUM, v); err != nil {
		return fmt.Errorf("ethtool set tx checksum on %s: %w", ifname, err)
	}
	return nil
}

// txChecksum reports whether TX checksum offload is on for ifname in ns.
func txChecksum(ns netns.NsHandle, ifname string) (bool, error) {
	fd, err := socketIn(ns)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	v, err := ethtool(fd, ifname, unix.ETHTOOL_GTXCSUM, 0)
	if err != nil {
		return false, fmt.Errorf("ethtool get tx checksum on %s: %w", ifname, err)
	}
	return v != 0, nil
}
