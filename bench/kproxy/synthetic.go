package kproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
)

// DefaultSyntheticFirstVIP is where Synthetic's VIPs start by default: in
// the bed's Service range (bed.ServiceCIDR, 10.96.0.0/12), past the bed's
// own Services (10.96.0.x), with room for a million.
var DefaultSyntheticFirstVIP = netip.MustParseAddr("10.96.1.0")

// SyntheticOptions shapes the Services Synthetic makes.
type SyntheticOptions struct {
	// Namespace of the Services, named svc-0, svc-1, …; default "bench".
	Namespace string
	// FirstVIP is the first Service's ClusterIP; the next ones count up
	// from it. Default DefaultSyntheticFirstVIP.
	FirstVIP netip.Addr
	// Protocol is TCP (default) or UDP.
	Protocol string
	// Port is the Service port (default 80), TargetPort the backends'
	// (default Port).
	Port       uint16
	TargetPort uint16
	// Backends are every Service's endpoints; at least one.
	Backends []netip.Addr
}

// Synthetic returns n Services for scale runs: bench/svc-<i> at VIP
// FirstVIP+i, each with all of o.Backends. Install validates them further.
func Synthetic(n int, o SyntheticOptions) ([]Service, error) {
	if o.Namespace == "" {
		o.Namespace = "bench"
	}
	if !o.FirstVIP.IsValid() {
		o.FirstVIP = DefaultSyntheticFirstVIP
	}
	if o.Protocol == "" {
		o.Protocol = TCP
	}
	if o.Port == 0 {
		o.Port = 80
	}
	if o.TargetPort == 0 {
		o.TargetPort = o.Port
	}
	var errs []error
	if n < 1 {
		errs = append(errs, fmt.Errorf("n %d: want at least 1", n))
	}
	if !o.FirstVIP.Is4() {
		errs = append(errs, fmt.Errorf("first VIP %v: want IPv4", o.FirstVIP))
	} else if a := o.FirstVIP.As4(); n > 0 && uint64(n-1) > uint64(math.MaxUint32-binary.BigEndian.Uint32(a[:])) {
		errs = append(errs, fmt.Errorf("first VIP %v: %d Services run past 255.255.255.255", o.FirstVIP, n))
	}
	if len(o.Backends) == 0 {
		errs = append(errs, errors.New("backends: none; give at least one"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("synthetic services: %w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	svcs := make([]Service, n)
	vip := o.FirstVIP
	for i := range svcs {
		svcs[i] = Service{
			Name:       o.Namespace + "/svc-" + strconv.Itoa(i),
			VIP:        vip,
			Port:       o.Port,
			Protocol:   o.Protocol,
			TargetPort: o.TargetPort,
			Backends:   o.Backends,
		}
		vip = vip.Next()
	}
	return svcs, nil
}
