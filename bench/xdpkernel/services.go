package xdpkernel

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// maxListedErrors bounds how many bad Services an error names.
const maxListedErrors = 10

// serviceTable is the Go side of the services and backends maps: which
// Services are in the map, and which half of the backend map they use.
type serviceTable struct {
	maxServices, maxBackends int
	half                     int // the half in use, 0 or 1
	keys                     map[xdpKernelSvcKey]struct{}
}

func newServiceTable(maxServices, maxBackends int) serviceTable {
	return serviceTable{maxServices: maxServices, maxBackends: maxBackends, keys: map[xdpKernelSvcKey]struct{}{}}
}

// layout is a set of Services as map entries: svcKeys[i] → svcVals[i],
// backend slot beIdx[j] → beVals[j] (contiguous slots).
type layout struct {
	svcKeys []xdpKernelSvcKey
	svcVals []xdpKernelSvc
	beIdx   []uint32
	beVals  []xdpKernelBackend
}

// buildLayout validates svcs and lays their backends out from slot first, in
// the order given. It reports every problem (the first maxListedErrors).
func buildLayout(svcs []Service, maxServices, maxBackends int, first uint32) (layout, error) {
	var errs []error
	bad := 0
	fail := func(err error) {
		bad++
		if bad <= maxListedErrors {
			errs = append(errs, err)
		}
	}
	if len(svcs) > maxServices {
		fail(fmt.Errorf("%d Services: room for %d (raise Options.MaxServices)", len(svcs), maxServices))
	}
	total := 0
	for _, s := range svcs {
		total += len(s.Backends)
	}
	if total > maxBackends {
		fail(fmt.Errorf("%d backends in all: room for %d (raise Options.MaxBackends)", total, maxBackends))
	}
	if bad > 0 {
		return layout{}, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	l := layout{
		svcKeys: make([]xdpKernelSvcKey, 0, len(svcs)),
		svcVals: make([]xdpKernelSvc, 0, len(svcs)),
		beIdx:   make([]uint32, 0, total),
		beVals:  make([]xdpKernelBackend, 0, total),
	}
	seen := make(map[xdpKernelSvcKey]int, len(svcs))
	for i, s := range svcs {
		if !s.VIP.Is4() || s.Port == 0 || (s.Protocol != TCP && s.Protocol != UDP) {
			fail(fmt.Errorf("service %d: %v:%d/%v: want an IPv4 VIP, a port and TCP or UDP", i, s.VIP, s.Port, s.Protocol))
			continue
		}
		k := xdpKernelSvcKey{Vip: be32(s.VIP), Port: be16(s.Port), Proto: uint8(s.Protocol)}
		if j, dup := seen[k]; dup {
			fail(fmt.Errorf("service %d: %v:%d/%v is service %d too", i, s.VIP, s.Port, s.Protocol, j))
			continue
		}
		seen[k] = i
		v := xdpKernelSvc{First: first + uint32(len(l.beIdx)), Count: uint32(len(s.Backends))}
		for _, b := range s.Backends {
			if !b.Addr().Is4() || b.Port() == 0 {
				fail(fmt.Errorf("service %d (%v:%d/%v): backend %v: want IPv4 address and port", i, s.VIP, s.Port, s.Protocol, b))
				continue
			}
			l.beIdx = append(l.beIdx, first+uint32(len(l.beIdx)))
			l.beVals = append(l.beVals, xdpKernelBackend{Ip: be32(b.Addr()), Port: be16(b.Port())})
		}
		l.svcKeys = append(l.svcKeys, k)
		l.svcVals = append(l.svcVals, v)
	}
	if bad > 0 {
		if bad > maxListedErrors {
			errs = append(errs, fmt.Errorf("and %d more", bad-maxListedErrors))
		}
		return layout{}, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return l, nil
}

// setServices writes svcs into the maps: deletes the Services no longer
// there (one batch; the map then never needs room for both sets), writes the
// backends into the half of the backend map not in use, then the Services
// (one batch). p.mu held or p not yet shared.
func (p *Peer) setServices(svcs []Service) error {
	t := &p.svcs
	next := 1 - t.half
	l, err := buildLayout(svcs, t.maxServices, t.maxBackends, uint32(next*t.maxBackends))
	if err != nil {
		return err
	}
	keep := make(map[xdpKernelSvcKey]struct{}, len(l.svcKeys))
	for _, k := range l.svcKeys {
		keep[k] = struct{}{}
	}
	var gone []xdpKernelSvcKey
	for k := range t.keys {
		if _, ok := keep[k]; !ok {
			gone = append(gone, k)
		}
	}
	if len(gone) > 0 {
		if _, err := p.objs.Services.BatchDelete(gone, nil); err != nil {
			// The batch stops at the first failure: delete one by one.
			for _, k := range gone {
				if err := p.objs.Services.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("delete service: %w", err)
				}
			}
		}
		for _, k := range gone {
			delete(t.keys, k)
		}
	}
	if len(l.beIdx) > 0 {
		if _, err := p.objs.Backends.BatchUpdate(l.beIdx, l.beVals, nil); err != nil {
			return fmt.Errorf("write %d backends: %w", len(l.beIdx), err)
		}
	}
	if len(l.svcKeys) > 0 {
		// From here on, some Services may point into the new half.
		t.half = next
		for _, k := range l.svcKeys {
			t.keys[k] = struct{}{}
		}
		if _, err := p.objs.Services.BatchUpdate(l.svcKeys, l.svcVals, nil); err != nil {
			return fmt.Errorf("write %d services: %w", len(l.svcKeys), err)
		}
	}
	return nil
}
