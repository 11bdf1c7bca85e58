package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/trunkline/trunkline/lb"
	"github.com/trunkline/trunkline/lb/conntrack"
)

// ServicesUpdate is the answer of PUT /v1/services.
type ServicesUpdate struct {
	Services int `json:"services"`
	// ExpiredFlows are UDP flows to backends that went away, removed at
	// once so their clients' next datagrams pick a live backend.
	ExpiredFlows int `json:"expiredFlows"`
}

// ServicesBody is the body of PUT /v1/services and the answer of GET.
type ServicesBody struct {
	Services []ServiceConfig `json:"services"`
}

// UpdateServices replaces every Service: it builds a new table off the hot
// path and swaps it in (no packet sees half an update), steers the new
// frontends, and expires the UDP flows of removed backends. Flows to
// backends still present never move; terminating backends keep their
// flows and get no new ones; TCP flows to removed backends go on until
// they end (the backends drain).
func (a *Agent) UpdateServices(cfgs []ServiceConfig) (ServicesUpdate, error) {
	select {
	case <-a.readyCh:
	default:
		return ServicesUpdate{}, errors.New("update services: the agent is not running yet")
	}
	a.svcMu.Lock()
	defer a.svcMu.Unlock()
	specs, err := a.s.serviceSpecs(cfgs)
	if err != nil {
		return ServicesUpdate{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	freed := a.assignServiceIDs(specs)
	t, err := lb.Build(a.s.nodeIP, specs, 0)
	if err != nil {
		return ServicesUpdate{}, err
	}
	// Backends the update removes keep their running flows: they drain
	// (pruneDraining forgets them once no connection uses them).
	var removed []lb.Draining
	if old := a.services.Load(); old != nil {
		removed = old.Removed(t)
		t = t.WithDraining(removed)
	}
	a.services.Store(t)
	a.svcCfgs = slices.Clone(cfgs)
	a.adoptPending(t)
	for _, id := range freed {
		for _, ws := range a.workers {
			ws.w.ResetService(id)
		}
		a.freeSvcIDs = append(a.freeSvcIDs, id)
	}
	if err := a.steerServices(t); err != nil {
		return ServicesUpdate{}, err
	}
	gone := map[lb.Frontend]bool{}
	for _, d := range removed {
		if d.Proto == lb.UDP {
			gone[d.Frontend] = true
		}
	}
	expired := 0
	if len(gone) > 0 {
		expired = a.ct.DeleteIf(func(c *conntrack.Conn) bool {
			return c.Orig.Proto == lb.UDP && gone[lb.Frontend{IP: c.Reply.SrcIP, Port: c.Reply.SrcPort, Proto: lb.UDP}]
		})
	}
	a.log.Info("services updated", "services", len(specs), "frontends", t.Len(), "removedBackends", len(removed), "expiredUDPFlows", expired)
	return ServicesUpdate{Services: len(specs), ExpiredFlows: expired}, nil
}

func (a *Agent) handleServices(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		a.svcMu.Lock()
		body := ServicesBody{Services: a.svcCfgs}
		a.svcMu.Unlock()
		writeJSON(w, body)
		return
	}
	var body ServicesBody
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		http.Error(w, "services: "+err.Error(), http.StatusBadRequest)
		return
	}
	res, err := a.UpdateServices(body.Services)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrInvalidConfig) {
			code = http.StatusBadRequest
		}
		http.Error(w, err.Error(), code)
		return
	}
	writeJSON(w, res)
}

// assignServiceIDs gives each spec its Service's stable ID (by name; new
// names take a free or a new ID) and returns the IDs of Services that are
// gone, to be reset and freed once the new table is in place. The caller
// holds svcMu.
func (a *Agent) assignServiceIDs(specs []lb.ServiceSpec) (gone []uint32) {
	if a.svcIDs == nil {
		a.svcIDs = map[string]uint32{}
	}
	keep := make(map[string]bool, len(specs))
	for i := range specs {
		name := specs[i].Name
		keep[name] = true
		id, ok := a.svcIDs[name]
		if !ok {
			if n := len(a.freeSvcIDs); n > 0 {
				id, a.freeSvcIDs = a.freeSvcIDs[n-1], a.freeSvcIDs[:n-1]
			} else {
				a.nextSvcID++
				id = a.nextSvcID
			}
			a.svcIDs[name] = id
		}
		specs[i].ID = id
	}
	for name, id := range a.svcIDs {
		if !keep[name] {
			delete(a.svcIDs, name)
			gone = append(gone, id)
		}
	}
	return gone
}

// pruneDraining forgets the draining backends no connection uses any more
// (a walk of the connection table, only while some backend drains).
func (a *Agent) pruneDraining() {
	t := a.services.Load()
	if t == nil {
		return
	}
	d := t.Draining()
	if len(d) == 0 {
		return
	}
	draining := make(map[lb.Frontend]bool, len(d))
	for _, x := range d {
		draining[x.Frontend] = false
	}
	used := 0
	a.ct.Range(func(c conntrack.Conn) bool {
		f := lb.Frontend{IP: c.Reply.SrcIP, Port: c.Reply.SrcPort, Proto: c.Orig.Proto}
		if u, ok := draining[f]; ok && !u && c.ServiceID != 0 {
			draining[f] = true
			used++
		}
		return used < len(d)
	})
	if used == len(d) {
		return
	}
	a.svcMu.Lock()
	defer a.svcMu.Unlock()
	if a.services.Load() != t {
		return // updated meanwhile: the next round looks again
	}
	keep := slices.DeleteFunc(d, func(x lb.Draining) bool { return !draining[x.Frontend] })
	a.services.Store(t.WithDraining(keep))
	a.log.Info("drained backends forgotten", "forgotten", len(draining)-used, "stillDraining", len(keep))
}
