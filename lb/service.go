// Package lb is trunkline's Service load balancer: the table of Service
// frontends (ClusterIP, NodePort, ExternalIP, LoadBalancer ingress) and
// their backends, built off the hot path from ServiceSpecs and published as
// an immutable snapshot, and the choice of a backend for a new flow
// (Maglev, session affinity).
package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/trunkline/trunkline/lb/maglev"
)

// IP protocol numbers of the Services' frontends.
const (
	TCP uint8 = 6
	UDP uint8 = 17
)

// Frontend is what a packet's destination is matched against.
type Frontend struct {
	IP    [4]byte
	Port  uint16
	Proto uint8
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s:%d/%s", netip.AddrFrom4(f.IP), f.Port, ProtoName(f.Proto))
}

// ProtoName is "tcp", "udp" or the number.
func ProtoName(p uint8) string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprint(p)
}

// Kind says how a frontend is reached.
type Kind uint8

const (
	ClusterIP Kind = iota
	NodePort
	ExternalIP
	LoadBalancer
)

func (k Kind) String() string {
	return [...]string{"ClusterIP", "NodePort", "ExternalIP", "LoadBalancer"}[k]
}

// Backend is one endpoint of a Service port.
type Backend struct {
	IP   [4]byte
	Port uint16
	// Ready endpoints get new flows. Serving but not ready endpoints
	// (terminating) keep their flows and get no new ones.
	Ready, Serving bool
	// Local is set for endpoints on this node.
	Local bool
	// Weight scales the share of new flows (default 1).
	Weight uint32
}

func (b Backend) key() string {
	return fmt.Sprintf("%s:%d", netip.AddrFrom4(b.IP), b.Port)
}

// ServiceSpec is one Service port as a source (the config file, the
// Kubernetes watch) describes it.
type ServiceSpec struct {
	// ID identifies the Service port in counters and affinity; the caller
	// keeps it stable across rebuilds. 0 means "its index in the specs + 1".
	ID uint32
	// Name is namespace/name:port for people and metrics.
	Name     string
	Proto    uint8
	Port     uint16
	NodePort uint16 // 0: none
	// ClusterIPs, ExternalIPs and LoadBalancerIPs are IPv4 frontends on Port.
	ClusterIPs, ExternalIPs, LoadBalancerIPs []netip.Addr
	Backends                                 []Backend
	// ExternalLocal is externalTrafficPolicy: Local: external frontends
	// (NodePort, ExternalIP, LoadBalancer) use node-local backends only,
	// without SNAT, so backends see the client's IP.
	ExternalLocal bool
	// Affinity is sessionAffinity: ClientIP's timeout; 0 is none.
	Affinity time.Duration
}

// Service is a built Service port: its backends in Maglev order and its
// tables. Immutable.
type Service struct {
	ID       uint32
	Name     string
	Proto    uint8
	Affinity time.Duration
	// Backends in the order the tables index them (sorted by address).
	Backends []Backend
	all      *maglev.Table // ready backends
	local    *maglev.Table // ready node-local backends (ExternalLocal)
	// ExternalLocal as in ServiceSpec.
	ExternalLocal bool
}

// Pick chooses a backend for a new flow with hash h: an index into
// Backends, or -1 when none can take new flows. External frontends of an
// ExternalLocal Service pick among node-local backends only.
func (s *Service) Pick(h uint64, external bool) int {
	if external && s.ExternalLocal {
		return s.local.Lookup(h)
	}
	return s.all.Lookup(h)
}

// only returns the single backend that takes new flows from a frontend of
// the kind (external or not), if there is exactly one.
func (s *Service) only(external bool) (int, bool) {
	idx := -1
	for i, b := range s.Backends {
		if !b.Ready || (external && s.ExternalLocal && !b.Local) {
			continue
		}
		if idx >= 0 {
			return 0, false
		}
		idx = i
	}
	return idx, idx >= 0
}

// Usable returns the index of the backend with b's address and port if it
// still takes new flows from a frontend of the kind, or -1.
func (s *Service) Usable(b Backend, external bool) int {
	for i, x := range s.Backends {
		if x.IP == b.IP && x.Port == b.Port {
			if !x.Ready || (external && s.ExternalLocal && !x.Local) {
				return -1
			}
			return i
		}
	}
	return -1
}

// Bytes is the memory the Service's tables hold.
func (s *Service) Bytes() int { return s.all.Bytes() + s.local.Bytes() }

// FrontendEntry is what a frontend maps to. For a frontend with exactly
// one backend that takes new flows, it carries that backend too, so a new
// flow needs no further memory access than the lookup's.
type FrontendEntry struct {
	Service *Service
	Kind    Kind
	// Only is set when exactly one backend takes new flows through this
	// frontend: OnlyIndex is its index in Service.Backends and OnlyBackend
	// a copy.
	Only        bool
	OnlyIndex   uint16
	OnlyBackend Backend
	// ServiceID is Service.ID.
	ServiceID uint32
	// Affinity is Service.Affinity > 0.
	Affinity bool
}

// External reports whether the frontend is reached from outside the
// cluster (NodePort, ExternalIP, LoadBalancer): externalTrafficPolicy
// applies to it.
func (e FrontendEntry) External() bool { return e.Kind != ClusterIP }

// Table maps frontends to Services. It is immutable once built; the control
// plane builds a new one and swaps it in atomically.
type Table struct {
	frontends map[Frontend]FrontendEntry
	vips      map[[4]byte]struct{}
	nodePorts []Frontend
	// endpoints are every backend (IP, port, protocol): a packet from one
	// may be a reply to a translated flow.
	endpoints map[Frontend]struct{}
	// remoteIPs are backends' IPs not on this node: a packet from one to a
	// local pod may be a reply to a pod's translated flow.
	remoteIPs map[[4]byte]struct{}
	services  []*Service
	// draining are backends no Service has any more whose flows have not
	// ended (see WithDraining); drainingIPs are the remote ones' IPs.
	draining    map[Frontend]Draining
	drainingIPs map[[4]byte]struct{}
}

// Draining is a backend removed from every Service while connections to it
// still run: it takes no new flows, and its flows' packets are still
// translated until they end (as nf_conntrack keeps translating a flow
// whose endpoint kube-proxy removed).
type Draining struct {
	Frontend
	// Remote: the backend is not on this node.
	Remote bool
}

// IsEndpoint reports whether (ip, port, proto) is some Service's backend,
// or a draining one.
func (t *Table) IsEndpoint(f Frontend) bool {
	if _, ok := t.endpoints[f]; ok {
		return true
	}
	_, ok := t.draining[f]
	return ok
}

// IsRemoteBackend reports whether ip is a backend on another node, or a
// draining one.
func (t *Table) IsRemoteBackend(ip [4]byte) bool {
	if _, ok := t.remoteIPs[ip]; ok {
		return true
	}
	_, ok := t.drainingIPs[ip]
	return ok
}

// Removed returns t's backends (with the protocol of their Service) that
// are not endpoints of next, draining ones included: the backends that
// next removes.
func (t *Table) Removed(next *Table) []Draining {
	seen := map[Frontend]bool{}
	var out []Draining
	add := func(d Draining) {
		if !seen[d.Frontend] && !next.IsEndpoint(d.Frontend) {
			seen[d.Frontend] = true
			out = append(out, d)
		}
	}
	for _, s := range t.services {
		for _, b := range s.Backends {
			add(Draining{Frontend{IP: b.IP, Port: b.Port, Proto: s.Proto}, !b.Local})
		}
	}
	for _, d := range t.draining {
		add(d)
	}
	slices.SortFunc(out, func(a, b Draining) int { return compareFrontends(a.Frontend, b.Frontend) })
	return out
}

// WithDraining returns a copy of t, sharing its immutable parts, whose
// draining backends are d (those that are t's endpoints already are left
// out).
func (t *Table) WithDraining(d []Draining) *Table {
	c := *t
	c.draining, c.drainingIPs = nil, nil
	for _, x := range d {
		if _, ok := t.endpoints[x.Frontend]; ok {
			continue
		}
		if c.draining == nil {
			c.draining, c.drainingIPs = map[Frontend]Draining{}, map[[4]byte]struct{}{}
		}
		c.draining[x.Frontend] = x
		if x.Remote {
			c.drainingIPs[x.IP] = struct{}{}
		}
	}
	return &c
}

// Draining returns the draining backends, sorted.
func (t *Table) Draining() []Draining {
	out := make([]Draining, 0, len(t.draining))
	for _, d := range t.draining {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Draining) int { return compareFrontends(a.Frontend, b.Frontend) })
	return out
}

func compareFrontends(a, b Frontend) int {
	if c := slices.Compare(a.IP[:], b.IP[:]); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return int(a.Port) - int(b.Port)
	}
	return int(a.Proto) - int(b.Proto)
}

// NodePorts returns the NodePort frontends (on the node's address).
func (t *Table) NodePorts() []Frontend { return t.nodePorts }

// Lookup finds the Service behind a destination; ok is false for none.
func (t *Table) Lookup(f Frontend) (FrontendEntry, bool) {
	e, ok := t.frontends[f]
	return e, ok
}

// IsVIP reports whether ip is a frontend address of any Service (other than
// the node's own, which NodePorts use).
func (t *Table) IsVIP(ip [4]byte) bool {
	_, ok := t.vips[ip]
	return ok
}

// VIPs returns every frontend address but the node's, for the XDP program.
func (t *Table) VIPs() [][4]byte {
	out := make([][4]byte, 0, len(t.vips))
	for ip := range t.vips {
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b [4]byte) int { return slices.Compare(a[:], b[:]) })
	return out
}

// Services returns the Services by ID.
func (t *Table) Services() []*Service { return t.services }

// Len is the number of frontends.
func (t *Table) Len() int { return len(t.frontends) }

// ErrInvalidService is wrapped by Build's errors.
var ErrInvalidService = errors.New("invalid service")

// Build builds a table for a node whose address is nodeIP (NodePort
// frontends are nodeIP:nodePort), with Maglev tables of at least tableSize
// entries (maglev.DefaultSize if 0; more for Services with many backends,
// see maglev.SizeFor). It reports every invalid spec together.
func Build(nodeIP netip.Addr, specs []ServiceSpec, tableSize int) (*Table, error) {
	if tableSize == 0 {
		tableSize = maglev.DefaultSize
	}
	t := &Table{frontends: make(map[Frontend]FrontendEntry, len(specs)), vips: map[[4]byte]struct{}{},
		endpoints: map[Frontend]struct{}{}, remoteIPs: map[[4]byte]struct{}{}}
	var errs []error
	for i, sp := range specs {
		id := sp.ID
		if id == 0 {
			id = uint32(i) + 1
		}
		svc, err := buildService(id, sp, tableSize)
		if err != nil {
			errs = append(errs, fmt.Errorf("service %q: %w", sp.Name, err))
			continue
		}
		t.services = append(t.services, svc)
		add := func(ip netip.Addr, port uint16, kind Kind) {
			if !ip.Is4() {
				errs = append(errs, fmt.Errorf("service %q: %s frontend %s is not IPv4", sp.Name, kind, ip))
				return
			}
			f := Frontend{IP: ip.As4(), Port: port, Proto: sp.Proto}
			if prev, ok := t.frontends[f]; ok {
				errs = append(errs, fmt.Errorf("service %q: frontend %s is also service %q's", sp.Name, f, prev.Service.Name))
				return
			}
			e := FrontendEntry{Service: svc, Kind: kind, ServiceID: svc.ID, Affinity: svc.Affinity > 0}
			if i, ok := svc.only(e.External()); ok {
				e.Only, e.OnlyIndex, e.OnlyBackend = true, uint16(i), svc.Backends[i]
			}
			t.frontends[f] = e
			if kind != NodePort {
				t.vips[f.IP] = struct{}{}
			} else {
				t.nodePorts = append(t.nodePorts, f)
			}
		}
		for _, b := range svc.Backends {
			t.endpoints[Frontend{IP: b.IP, Port: b.Port, Proto: sp.Proto}] = struct{}{}
			if !b.Local {
				t.remoteIPs[b.IP] = struct{}{}
			}
		}
		for _, ip := range sp.ClusterIPs {
			add(ip, sp.Port, ClusterIP)
		}
		for _, ip := range sp.ExternalIPs {
			add(ip, sp.Port, ExternalIP)
		}
		for _, ip := range sp.LoadBalancerIPs {
			add(ip, sp.Port, LoadBalancer)
		}
		if sp.NodePort != 0 {
			add(nodeIP, sp.NodePort, NodePort)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalidService, errors.Join(errs...))
	}
	return t, nil
}

func buildService(id uint32, sp ServiceSpec, size int) (*Service, error) {
	if sp.Proto != TCP && sp.Proto != UDP {
		return nil, fmt.Errorf("protocol %d: want TCP or UDP", sp.Proto)
	}
	if sp.Port == 0 {
		return nil, errors.New("port 0")
	}
	bs := slices.Clone(sp.Backends)
	slices.SortFunc(bs, func(a, b Backend) int {
		if c := slices.Compare(a.IP[:], b.IP[:]); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	size = maglev.SizeFor(len(bs), size)
	all := make([]maglev.Backend, len(bs))
	local := make([]maglev.Backend, len(bs))
	for i, b := range bs {
		if b.Port == 0 {
			return nil, fmt.Errorf("backend %s: port 0", b.key())
		}
		w := b.Weight
		if w == 0 {
			w = 1
		}
		if !b.Ready {
			w = 0
		}
		all[i] = maglev.Backend{Key: b.key(), Weight: w}
		local[i] = all[i]
		if !b.Local {
			local[i].Weight = 0
		}
	}
	s := &Service{ID: id, Name: sp.Name, Proto: sp.Proto, Affinity: sp.Affinity, Backends: bs, ExternalLocal: sp.ExternalLocal}
	var err error
	if s.all, err = maglev.New(all, size); err != nil {
		return nil, err
	}
	if sp.ExternalLocal {
		if s.local, err = maglev.New(local, size); err != nil {
			return nil, err
		}
	} else {
		s.local = s.all
	}
	return s, nil
}

// Describe is a one-line summary for logs.
func (s *Service) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s ->", s.Name, ProtoName(s.Proto))
	for _, be := range s.Backends {
		fmt.Fprintf(&b, " %s", be.key())
		if !be.Ready {
			b.WriteString("(terminating)")
		}
	}
	return b.String()
}
